//! Platform modules: versioned artifacts (tar.gz layers, stored by hash) installed cluster-wide
//! and attached to groups, whose instances get the active version in their plans. Uploading a
//! version stores it; install / upgrade / uninstall / storage deletion are mutation intents that
//! the holder of `prexor:v1:lease:platform-module` carries out step by step. One mutation at a
//! time, cluster-wide: a second request while one is in flight is a 409.

use axum::Router;
use axum::body::Body as Raw;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use mongodb::bson::doc;
use prexor_domain::now_ms;
use prexor_model::workflows::modules::{
    ActiveModule, ModuleRecord, ModuleVersion, MutationOutcome, MutationRecord,
};
use prexor_model::workflows::{CURRENT_MUTATION, ModuleState, MutationStep};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, Json, conflict_if_taken};
use crate::paging::{Page, PageRequest};
use crate::templates::{Layer, LayerVersionView, receive_layer, version_document};

pub use prexor_model::workflows::MODULE_MUTATION;
pub use prexor_model::workflows::MODULES;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/modules", get(list))
        .route("/modules/{name}", get(show).delete(delete_storage))
        .route("/modules/{name}/versions/{version}", put(upload))
        .route("/modules/{name}/install", post(install))
        .route("/modules/{name}/upgrade", post(upgrade))
        .route("/modules/{name}/uninstall", post(uninstall))
        .route("/modules/mutation", get(mutation))
}

/// A platform module with its versions and what its mutations did.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ModuleView {
    /// The module's name.
    pub(crate) id: String,
    pub(crate) versions: Vec<LayerVersionView<String>>,
    /// `NEW` (never installed), `ACTIVE` or `UNINSTALLED`.
    #[schema(value_type = String)]
    pub(crate) state: ModuleState,
    pub(crate) created_at_ms: i64,
    /// The version it runs; `null` once uninstalled; absent while `NEW`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) active: Option<Option<ActiveModuleView>>,
    /// Absent before the first mutation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) last_mutation: Option<MutationOutcomeView>,
    /// Every mutation's outcome, oldest first; absent before the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) history: Vec<MutationOutcomeView>,
}

impl From<&ModuleRecord> for ModuleView {
    fn from(module: &ModuleRecord) -> ModuleView {
        ModuleView {
            id: module.name.clone(),
            versions: module.versions.iter().map(LayerVersionView::from).collect(),
            state: module.state,
            created_at_ms: module.created_at_ms,
            // Every install or uninstall sets it, so only a module still NEW never had one.
            active: (module.state != ModuleState::New)
                .then(|| module.active.as_ref().map(ActiveModuleView::from)),
            last_mutation: module.last_mutation.as_ref().map(MutationOutcomeView::from),
            history: module
                .history
                .iter()
                .map(MutationOutcomeView::from)
                .collect(),
        }
    }
}

/// What an installed module runs.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ActiveModuleView {
    pub(crate) version: String,
    pub(crate) hash: String,
    pub(crate) since_ms: i64,
}

impl From<&ActiveModule> for ActiveModuleView {
    fn from(active: &ActiveModule) -> ActiveModuleView {
        ActiveModuleView {
            version: active.version.clone(),
            hash: active.hash.clone(),
            since_ms: active.since_ms,
        }
    }
}

/// How a mutation ended.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MutationOutcomeView {
    pub(crate) action: String,
    /// `null` for uninstall and delete-storage.
    pub(crate) version: Option<String>,
    /// Who requested it.
    pub(crate) by: String,
    pub(crate) at_ms: i64,
    /// `DONE` or `FAILED: <problem>`.
    pub(crate) result: String,
}

impl From<&MutationOutcome> for MutationOutcomeView {
    fn from(outcome: &MutationOutcome) -> MutationOutcomeView {
        MutationOutcomeView {
            action: outcome.action.clone(),
            version: outcome.version.clone(),
            by: outcome.by.clone(),
            at_ms: outcome.at_ms,
            result: outcome.result.clone(),
        }
    }
}

/// The module mutation in flight.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MutationView {
    /// Always `current`: there is one at a time.
    pub(crate) id: String,
    pub(crate) module: String,
    /// `install`, `upgrade`, `uninstall` or `delete-storage`.
    pub(crate) action: String,
    /// `REQUESTED`, then `VERIFIED` by the platform-module holder, which then applies it.
    #[schema(value_type = String)]
    pub(crate) step: MutationStep,
    pub(crate) requested_by: String,
    pub(crate) requested_at_ms: i64,
    /// The version to install or upgrade to, and its layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verified_at_ms: Option<i64>,
}

impl From<&MutationRecord> for MutationView {
    fn from(mutation: &MutationRecord) -> MutationView {
        MutationView {
            id: mutation.id.clone(),
            module: mutation.module.clone(),
            action: mutation.action.clone(),
            step: mutation.step,
            requested_by: mutation.requested_by.clone(),
            requested_at_ms: mutation.requested_at_ms,
            version: mutation.version.clone(),
            hash: mutation.hash.clone(),
            verified_at_ms: mutation.verified_at_ms,
        }
    }
}

#[utoipa::path(
    get, path = "/api/v1/modules", tag = "modules", params(PageRequest),
    responses((status = 200, body = Page<ModuleView>))
)]
async fn list(Caller(app, who): Caller, page: PageRequest) -> ApiResult<Json<Page<ModuleView>>> {
    Ok(Json(list_modules(&app, &who, &page).await?))
}

/// A page of the modules, for `who` (`modules:read`).
pub(crate) async fn list_modules(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<ModuleView>> {
    who.require("modules:read")?;
    let view = |record: ModuleRecord| ModuleView::from(&record);
    Ok(app.views("listing modules", doc! {}, page, view).await?.0)
}

#[utoipa::path(
    get, path = "/api/v1/modules/{name}", tag = "modules",
    responses((status = 200, body = ModuleView))
)]
async fn show(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<ModuleView>> {
    Ok(Json(show_module(&app, &who, &name).await?))
}

/// Module `name` with its versions and mutations, for `who` (`modules:read`).
pub(crate) async fn show_module(app: &App, who: &Principal, name: &str) -> ApiResult<ModuleView> {
    who.require("modules:read")?;
    Ok(ModuleView::from(&app.find(name).await?))
}

async fn current_mutation(app: &App) -> ApiResult<Option<MutationRecord>> {
    app.record(MODULE_MUTATION, CURRENT_MUTATION).await
}

/// The mutation in flight, if any (`null` otherwise).
#[utoipa::path(
    get, path = "/api/v1/modules/mutation", tag = "modules",
    responses(
        (status = 200, description = "the mutation in flight, or null", body = Option<MutationView>),
    )
)]
async fn mutation(Caller(app, who): Caller) -> ApiResult<Json<Option<MutationView>>> {
    Ok(Json(mutation_in_flight(&app, &who).await?))
}

/// The module mutation in flight, if any, for `who` (`modules:read`).
pub(crate) async fn mutation_in_flight(
    app: &App,
    who: &Principal,
) -> ApiResult<Option<MutationView>> {
    who.require("modules:read")?;
    let current = current_mutation(app).await?;
    Ok(current.as_ref().map(MutationView::from))
}

fn check_version(version: &str) -> ApiResult<()> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "version",
            "must be 1 to 64 characters of letters, digits and . _ - +",
        ))
    }
}

/// `PUT /modules/{name}/versions/{version}` with the artifact (tar.gz): stores a version.
#[utoipa::path(
    put, path = "/api/v1/modules/{name}/versions/{version}", tag = "modules",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the layer as .tar.gz bytes"),
    responses(
        (status = 201, description = "stored", body = ModuleView),
        (status = 200, description = "the same bytes are this version already: nothing changed", body = ModuleView),
    )
)]
async fn upload(
    Caller(app, who): Caller,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Raw,
) -> ApiResult<(StatusCode, Json<ModuleView>)> {
    who.require("modules:write")?;
    crate::error::check_name("name", &name)?;
    check_version(&version)?;
    let Layer { hash, size, files } = receive_layer(&app, &headers, body).await?;
    let existing: Option<ModuleRecord> = app.record(MODULES, &name).await?;
    if let Some(module) = &existing
        && let Some(stored) = module.version(&version)
    {
        if stored.hash == hash {
            return Ok((StatusCode::OK, Json(ModuleView::from(module))));
        }
        return Err(ApiError::conflict(format!(
            "module {name:?} already has a different version {version:?}; versions are immutable, upload it under a new version"
        )));
    }
    let entry = ModuleVersion {
        version: version.clone(),
        hash,
        size: size as i64,
        files: files as i64,
        uploaded_by: who.user.clone(),
        uploaded_at_ms: now_ms(),
    };
    let push = doc! {
        "$push": { "versions": version_document(&entry)? },
        "$setOnInsert": { "state": ModuleState::New, "createdAtMs": now_ms() },
    };
    let filter = doc! { "_id": &name, "versions.version": { "$ne": &version } };
    app.update_one(
        MODULES,
        "recording the module version",
        filter,
        push,
        existing.is_none(),
    )
    .await
    .map_err(|err| {
        conflict_if_taken(err, || {
            format!("module {name:?} changed concurrently; upload again")
        })
    })?;
    app.audit::<(), _>(&who, "module.upload", &name, None, Some(&entry))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(ModuleView::from(&app.find(&name).await?)),
    ))
}

/// Records `action` as the cluster's one module mutation in flight (409 if there is one).
async fn request(
    app: &App,
    who: &Principal,
    name: &str,
    action: &str,
    version: Option<(&str, &str)>,
) -> Requested {
    let record = MutationRecord {
        id: CURRENT_MUTATION.to_owned(),
        module: name.to_owned(),
        action: action.to_owned(),
        step: MutationStep::Requested,
        requested_by: who.user.clone(),
        requested_at_ms: now_ms(),
        version: version.map(|(v, _)| v.to_owned()),
        hash: version.map(|(_, h)| h.to_owned()),
        verified_at_ms: None,
    };
    match app
        .insert(MODULE_MUTATION, "recording the module mutation", &record)
        .await
    {
        Ok(()) => {}
        Err(err) if err.is_duplicate_key() => {
            let current = current_mutation(app).await?;
            let said = |field: fn(&MutationRecord) -> &str| current.as_ref().map_or("?", field);
            return Err(ApiError::conflict(format!(
                "another module mutation is in flight ({} of {}, step {}); wait until it is done",
                said(|m| &m.action),
                said(|m| &m.module),
                said(|m| m.step.as_str()),
            )));
        }
        Err(err) => return Err(err.into()),
    }
    app.audit_and_publish::<(), _>(
        who,
        &format!("module.{action}"),
        name,
        None,
        Some(&record),
        "MODULE_MUTATION_REQUESTED",
        serde_json::json!({ "action": action, "version": version.map(|v| v.0) }),
    )
    .await;
    Ok((StatusCode::ACCEPTED, Json(MutationView::from(&record))))
}

/// What a mutation request answers: the mutation now in flight.
pub(crate) type Requested = ApiResult<(StatusCode, Json<MutationView>)>;

/// A mutation an operator asks for.
pub(crate) enum Mutation {
    /// Of the version given.
    Install(String),
    /// To the version given.
    Upgrade(String),
    Uninstall,
    DeleteStorage,
}

impl Mutation {
    fn action(&self) -> &'static str {
        match self {
            Mutation::Install(_) => "install",
            Mutation::Upgrade(_) => "upgrade",
            Mutation::Uninstall => "uninstall",
            Mutation::DeleteStorage => "delete-storage",
        }
    }
}

/// Groups that attach `name`.
async fn attached_to(app: &App, name: &str) -> ApiResult<Vec<String>> {
    let groups = app
        .store()
        .find_all(
            prexor_model::groups::GROUPS,
            "finding the module's groups",
            doc! { "spec.modules": name },
        )
        .await?;
    Ok(groups
        .iter()
        .filter_map(|g| g.get_str("_id").ok().map(str::to_owned))
        .collect())
}

/// 409 unless `module`'s state allows `mutation`: install one not installed, upgrade an installed
/// one to another version, uninstall an installed one no group attaches, delete the storage of
/// one not installed.
async fn check_allowed(app: &App, module: &ModuleRecord, mutation: &Mutation) -> ApiResult<()> {
    let name = &module.name;
    let installed = module.state == ModuleState::Active;
    let active = module.active_version();
    let refused = match mutation {
        Mutation::Install(_) if installed => format!(
            "module {name:?} is installed (version {}); upgrade it instead",
            active.unwrap_or("?")
        ),
        Mutation::Upgrade(_) if !installed => {
            format!("module {name:?} is not installed; install it instead")
        }
        Mutation::Upgrade(version) if active.unwrap_or_default() == version => {
            format!("module {name:?} already runs version {version}")
        }
        Mutation::Uninstall if !installed => format!("module {name:?} is not installed"),
        Mutation::Uninstall => {
            let groups = attached_to(app, name).await?;
            if groups.is_empty() {
                return Ok(());
            }
            format!(
                "module {name:?} is attached to group(s) {}; detach it first",
                groups.join(", ")
            )
        }
        Mutation::DeleteStorage if installed => {
            format!("module {name:?} is installed; uninstall it first")
        }
        _ => return Ok(()),
    };
    Err(ApiError::conflict(refused))
}

/// Requests `mutation` of module `name` for a caller who may change modules, if the module's
/// state allows it; the version to install or upgrade to must have been uploaded.
pub(crate) async fn mutate(
    app: App,
    who: Principal,
    name: String,
    mutation: Mutation,
) -> Requested {
    who.require("modules:write")?;
    let module = app.find(&name).await?;
    check_allowed(&app, &module, &mutation).await?;
    let (Mutation::Install(version) | Mutation::Upgrade(version)) = &mutation else {
        return request(&app, &who, &name, mutation.action(), None).await;
    };
    let stored = module.version(version).ok_or_else(|| {
        ApiError::field(
            "version",
            format!("module {name:?} has no version {version:?}; upload it first"),
        )
    })?;
    let version = Some((version.as_str(), stored.hash.as_str()));
    request(&app, &who, &name, mutation.action(), version).await
}

/// [`mutate`] to the version the request body names.
async fn mutate_to(
    app: App,
    who: Principal,
    name: String,
    body: VersionRequest,
    mutation: fn(String) -> Mutation,
) -> Requested {
    mutate(app, who, name, mutation(body.version)).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct VersionRequest {
    version: String,
}

crate::app::variants! {
    mutate_to -> (StatusCode, Json<MutationView>), "modules", request_body = VersionRequest,
    responses((status = 202, description = "requested", body = MutationView)) {
        install = post "/api/v1/modules/{name}/install" (Mutation::Install);
        upgrade = post "/api/v1/modules/{name}/upgrade" (Mutation::Upgrade);
    }
}

crate::app::variants! {
    mutate -> (StatusCode, Json<MutationView>), "modules",
    responses((status = 202, description = "requested", body = MutationView)) {
        uninstall = post "/api/v1/modules/{name}/uninstall" (Mutation::Uninstall);
        /// `DELETE /modules/{name}`: removes the module and its stored versions (not while installed).
        delete_storage = delete "/api/v1/modules/{name}" (Mutation::DeleteStorage);
    }
}

/// Every module a group spec attaches must be installed (400 naming the one that is not).
pub async fn check_attached(app: &App, modules: &[String]) -> ApiResult<()> {
    for (i, name) in modules.iter().enumerate() {
        let module: Option<ModuleRecord> = app.record(MODULES, name).await?;
        if module.map(|m| m.state) != Some(ModuleState::Active) {
            return Err(ApiError::field(
                &format!("modules[{i}]"),
                format!("module {name:?} is not installed; install it first"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, Bson, Document, doc};

    use super::*;

    fn shown(stored: &Document) -> serde_json::Value {
        let record: ModuleRecord = bson::from_document(stored.clone()).unwrap();
        serde_json::to_value(ModuleView::from(&record)).unwrap()
    }

    #[test]
    fn a_module_is_shown_as_stored_at_every_stage() {
        let version = doc! { "version": "1.0", "hash": "a", "size": 3_i64, "files": 1_i64, "uploadedBy": "ann", "uploadedAtMs": 1_i64 };
        let new = doc! { "_id": "essentials", "versions": [version.clone()], "state": "NEW", "createdAtMs": 1_i64 };
        assert_eq!(shown(&new), crate::json::record(new));

        let done = doc! { "action": "install", "version": "1.0", "by": "ann", "atMs": 2_i64, "result": "DONE" };
        let active = doc! {
            "_id": "essentials", "versions": [version.clone()], "state": "ACTIVE", "createdAtMs": 1_i64,
            "active": { "version": "1.0", "hash": "a", "sinceMs": 2_i64 },
            "lastMutation": done.clone(), "history": [done.clone()],
            "_fence": { "scope": "platform-module", "token": 4_i64 },
        };
        assert_eq!(shown(&active), crate::json::record(active));

        let gone = doc! { "action": "uninstall", "version": Bson::Null, "by": "ann", "atMs": 3_i64, "result": "DONE" };
        let uninstalled = doc! {
            "_id": "essentials", "versions": [version], "state": "UNINSTALLED", "createdAtMs": 1_i64,
            "active": Bson::Null, "lastMutation": gone.clone(), "history": [done, gone],
        };
        assert_eq!(shown(&uninstalled), crate::json::record(uninstalled));
    }

    #[test]
    fn a_mutation_is_shown_as_stored() {
        for stored in [
            doc! { "_id": "current", "module": "m", "action": "install", "step": "VERIFIED", "requestedBy": "ann", "requestedAtMs": 1_i64, "version": "1.0", "hash": "a", "verifiedAtMs": 2_i64 },
            doc! { "_id": "current", "module": "m", "action": "uninstall", "step": "REQUESTED", "requestedBy": "ann", "requestedAtMs": 1_i64 },
        ] {
            let record: MutationRecord = bson::from_document(stored.clone()).unwrap();
            let shown = serde_json::to_value(MutationView::from(&record)).unwrap();
            assert_eq!(shown, crate::json::record(stored));
        }
    }
}
