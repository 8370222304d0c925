//! Rolling deployments of a group to a new spec: create, list, show progress, pause, resume,
//! roll back (restores the previous spec and rolls the instances back to it). The group's lease
//! holder carries them out (`services/scheduler/src/groups/deployments.rs`).

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use mongodb::bson::doc;
use prexor_domain::canary::{CanaryGate, Strategy};
use prexor_domain::{GroupSpec, ScalingMode, now_ms};
use prexor_model::instances::InstanceState;
use prexor_model::workflows::DeploymentState;
use prexor_model::workflows::deployments::DeploymentRecord;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, Json};
use crate::groups::INSTANCES;
use crate::paging::{Page, PageRequest};

pub use prexor_model::workflows::DEPLOYMENTS;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/groups/{name}/deployments", get(list).post(create))
        .route("/deployments/{id}", get(show))
        .route("/deployments/{id}/pause", post(pause))
        .route("/deployments/{id}/resume", post(resume))
        .route("/deployments/{id}/rollback", post(rollback))
}

/// The group's open deployment, if any.
pub async fn open_deployment(app: &App, group: &str) -> ApiResult<Option<DeploymentRecord>> {
    let open = app
        .records(
            DEPLOYMENTS,
            "reading deployments",
            doc! { "group": group, "state": DeploymentState::open_filter() },
            doc! {},
            Some(1),
        )
        .await?;
    Ok(open.into_iter().next())
}

/// A deployment as the API shows it: its record (without the spec it started from) and live
/// progress from the instances.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeploymentView {
    pub(crate) id: String,
    pub(crate) group: String,
    #[schema(value_type = String, example = "ROLLING")]
    pub(crate) state: DeploymentState,
    pub(crate) batch_size: i64,
    pub(crate) max_unavailable: i64,
    pub(crate) from_revision: i64,
    pub(crate) from_spec_hash: String,
    pub(crate) to_revision: i64,
    /// The spec hash every instance is rolled to (the old one after a rollback).
    pub(crate) target_spec_hash: String,
    pub(crate) rolled_back: bool,
    pub(crate) created_by: String,
    pub(crate) created_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) updated_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rolled_back_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) finished_at_ms: Option<i64>,
    /// Progress the group's holder last recorded: instances updated...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) updated: Option<i64>,
    /// ...of those the group wants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) total: Option<i64>,
    pub(crate) live: DeploymentProgress,
    /// ROLLING or CANARY.
    #[schema(value_type = String, example = "CANARY")]
    pub(crate) strategy: Strategy,
    /// CANARY: the health gate, and (from the group's holder) how it stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub(crate) canary: Option<CanaryGate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) gate_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) canary_passed_at_ms: Option<i64>,
}

/// Progress read from the instances now.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DeploymentProgress {
    /// RUNNING the target spec.
    pub(crate) updated: usize,
    /// Not ended.
    pub(crate) active: usize,
}

impl DeploymentView {
    fn new(deployment: DeploymentRecord, live: DeploymentProgress) -> DeploymentView {
        DeploymentView {
            id: deployment.id,
            group: deployment.group,
            state: deployment.state,
            batch_size: deployment.batch_size,
            max_unavailable: deployment.max_unavailable,
            from_revision: deployment.from_revision,
            from_spec_hash: deployment.from_spec_hash,
            to_revision: deployment.to_revision,
            target_spec_hash: deployment.target_spec_hash,
            rolled_back: deployment.rolled_back,
            created_by: deployment.created_by,
            created_at_ms: deployment.created_at_ms,
            updated_at_ms: deployment.updated_at_ms,
            rolled_back_by: deployment.rolled_back_by,
            finished_at_ms: deployment.finished_at_ms,
            updated: deployment.updated,
            total: deployment.total,
            live,
            strategy: deployment.strategy,
            canary: deployment.canary,
            gate: deployment.gate,
            gate_since_ms: deployment.gate_since_ms,
            canary_passed_at_ms: deployment.canary_passed_at_ms,
        }
    }
}

/// How many of a group's live instances run one spec hash in one state.
#[derive(Deserialize)]
struct SpecCount {
    #[serde(rename = "_id")]
    of: SpecAndState,
    count: usize,
}

#[derive(Deserialize)]
struct SpecAndState {
    #[serde(rename = "specHash")]
    spec_hash: Option<String>,
    state: Option<String>,
}

/// The live (not ended) instances of `group`, counted by spec hash and state by the store.
async fn live_counts(app: &App, group: &str) -> ApiResult<Vec<SpecCount>> {
    let pipeline = vec![
        doc! { "$match": { "group": group, "state": prexor_model::instances::live_filter() } },
        doc! { "$group": {
            "_id": { "specHash": "$specHash", "state": "$state" },
            "count": { "$sum": 1 },
        } },
    ];
    app.aggregate(INSTANCES, "counting the group's instances", pipeline)
        .await
}

impl DeploymentProgress {
    /// Of a deployment to `target` (a spec hash), from its group's [`live_counts`].
    fn of(counts: &[SpecCount], target: &str) -> DeploymentProgress {
        let running = |c: &&SpecCount| {
            c.of.spec_hash.as_deref() == Some(target)
                && c.of.state.as_deref().and_then(InstanceState::parse)
                    == Some(InstanceState::Running)
        };
        DeploymentProgress {
            updated: counts.iter().filter(running).map(|c| c.count).sum(),
            active: counts.iter().map(|c| c.count).sum(),
        }
    }
}

/// The record plus live progress from the instances (updated / active, by spec hash).
async fn view(app: &App, deployment: DeploymentRecord) -> ApiResult<DeploymentView> {
    let counts = live_counts(app, &deployment.group).await?;
    let live = DeploymentProgress::of(&counts, &deployment.target_spec_hash);
    Ok(DeploymentView::new(deployment, live))
}

/// Newest first.
#[utoipa::path(
    get, path = "/api/v1/groups/{name}/deployments", tag = "deployments", params(PageRequest),
    responses((status = 200, body = Page<DeploymentView>))
)]
async fn list(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    page: PageRequest,
) -> ApiResult<Json<Page<DeploymentView>>> {
    Ok(Json(list_deployments(&app, &who, &name, &page).await?))
}

/// A page of group `name`'s deployments, newest first, with live progress, for `who`
/// (`deployments:read`).
pub(crate) async fn list_deployments(
    app: &App,
    who: &Principal,
    name: &str,
    page: &PageRequest,
) -> ApiResult<Page<DeploymentView>> {
    who.require("deployments:read")?;
    let filter = doc! { "group": name };
    let (deployments, counts) = tokio::try_join!(
        app.page::<DeploymentRecord>("listing deployments", filter, page),
        live_counts(app, name),
    )?;
    Ok(deployments.map(|deployment| {
        let live = DeploymentProgress::of(&counts, &deployment.target_spec_hash);
        DeploymentView::new(deployment, live)
    }))
}

#[utoipa::path(
    get, path = "/api/v1/deployments/{id}", tag = "deployments",
    responses((status = 200, body = DeploymentView))
)]
async fn show(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<Json<DeploymentView>> {
    who.require("deployments:read")?;
    let deployment = app.find(&id).await?;
    Ok(Json(view(&app, deployment).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewDeployment {
    /// The spec to roll out; without it the current spec is rolled out again (every instance
    /// not running it is replaced).
    #[serde(default)]
    spec: Option<GroupSpec>,
    #[serde(default = "one")]
    batch_size: i64,
    #[serde(default = "one")]
    max_unavailable: i64,
    /// ROLLING (default) or CANARY: the canaries first, behind `canary`'s health gate.
    #[serde(default)]
    strategy: Strategy,
    /// CANARY: the gate (its defaults when left out).
    #[serde(default)]
    canary: Option<CanaryGate>,
}

fn one() -> i64 {
    1
}

#[utoipa::path(
    post, path = "/api/v1/groups/{name}/deployments", tag = "deployments",
    responses((status = 201, body = DeploymentView))
)]
async fn create(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    Json(new): Json<NewDeployment>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    who.require("deployments:write")?;
    who.require("groups:write")?;
    if !(1..=1000).contains(&new.batch_size) {
        return Err(ApiError::field("batchSize", "must be between 1 and 1000"));
    }
    if !(1..=1000).contains(&new.max_unavailable) {
        return Err(ApiError::field(
            "maxUnavailable",
            "must be between 1 and 1000",
        ));
    }
    if new.canary.is_some() && new.strategy != Strategy::Canary {
        return Err(ApiError::field(
            "canary",
            "applies to \"strategy\": \"CANARY\" only",
        ));
    }
    let store = app.store();
    let current: prexor_model::groups::GroupRecord = app.find(&name).await?;
    if current.deleting {
        return Err(ApiError::conflict(format!(
            "group {name:?} is being deleted"
        )));
    }
    if current.spec.scaling == ScalingMode::Manual {
        return Err(ApiError::conflict(format!(
            "group {name:?} is MANUAL: its instances are only started by hand, so there is nothing to roll; stop and start them instead"
        )));
    }
    if let Some(open) = open_deployment(&app, &name).await? {
        return Err(ApiError::conflict(format!(
            "deployment {} of group {name:?} is {}; wait for it, or roll it back",
            open.id, open.state
        )));
    }
    let mut new = new;
    if let Some(spec) = new.spec.as_mut() {
        crate::templates::resolve(&app, spec).await?;
        crate::modules::check_attached(&app, &spec.modules).await?;
    }
    let canary = match new.strategy {
        Strategy::Rolling => None,
        Strategy::Canary => {
            let gate = new.canary.unwrap_or_default();
            let wanted = new
                .spec
                .as_ref()
                .unwrap_or(&current.spec)
                .min_instances
                .max(1);
            if let Some((field, problem)) = gate.problems(wanted).into_iter().next() {
                return Err(ApiError::field(&format!("canary{field}"), problem));
            }
            Some(gate)
        }
    };
    let target = match &new.spec {
        Some(spec) => {
            let problems = spec.problems(&name);
            if !problems.is_empty() {
                return Err(ApiError::invalid("the spec", &problems));
            }
            if spec.scaling == ScalingMode::Manual {
                return Err(ApiError::field(
                    "spec.scaling",
                    "a deployment cannot make a group MANUAL; update the group instead",
                ));
            }
            match prexor_model::groups::update_group(store, &name, spec, Some(current.revision))
                .await
            {
                Ok(Some(record)) => record,
                Ok(None) => current.clone(),
                Err(prexor_model::groups::GroupWriteError::Store(err)) => return Err(err.into()),
                Err(err) => return Err(ApiError::conflict(err.to_string())),
            }
        }
        None => current.clone(),
    };
    let id = format!("{name}-r{}-{}", target.revision, now_ms() % 100_000);
    let record = DeploymentRecord {
        id: id.clone(),
        group: name.clone(),
        state: DeploymentState::Rolling,
        batch_size: new.batch_size,
        max_unavailable: new.max_unavailable,
        from_revision: current.revision,
        from_spec_hash: current.spec.hash(),
        from_spec: Some(current.spec),
        to_revision: target.revision,
        target_spec_hash: target.spec.hash(),
        rolled_back: false,
        created_by: who.user.clone(),
        created_at_ms: now_ms(),
        updated_at_ms: None,
        rolled_back_by: None,
        finished_at_ms: None,
        updated: None,
        total: None,
        traceparent: prexor_telemetry::trace::traceparent(&tracing::Span::current()),
        strategy: new.strategy,
        canary,
        gate_since_ms: None,
        canary_passed_at_ms: None,
        gate: None,
    };
    app.insert(DEPLOYMENTS, "recording the deployment", &record)
        .await?;
    app.audit_and_publish::<(), _>(
        &who,
        "deployment.create",
        &id,
        None,
        Some(&target.spec),
        "DEPLOYMENT_CREATED",
        serde_json::json!({ "group": &name, "revision": target.revision }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(view(&app, record).await?)))
}

/// Moves an open deployment from `from` to `to`; 409 naming its actual state otherwise.
pub(crate) async fn transition(
    app: App,
    who: Principal,
    id: String,
    from: DeploymentState,
    to: DeploymentState,
) -> ApiResult<Json<DeploymentView>> {
    who.require("deployments:write")?;
    let filter = doc! { "_id": &id, "state": from };
    let mut changes = doc! { "state": to, "updatedAtMs": now_ms() };
    prexor_telemetry::trace::inject_document(&mut changes);
    let set = doc! { "$set": changes };
    let changed = app
        .update_one(DEPLOYMENTS, "changing the deployment", filter, set, false)
        .await?;
    let deployment: DeploymentRecord = app.find(&id).await?;
    if changed.matched_count == 0 {
        return Err(ApiError::conflict(format!(
            "deployment {id} is {}, not {from}",
            deployment.state
        )));
    }
    app.audit_and_publish(
        &who,
        &format!("deployment.{}", to.as_str().to_lowercase()),
        &id,
        Some(&from),
        Some(&to),
        &format!("DEPLOYMENT_{to}"),
        serde_json::json!({ "group": &deployment.group }),
    )
    .await;
    Ok(Json(view(&app, deployment).await?))
}

crate::app::variants! {
    transition -> Json<DeploymentView>, "deployments", responses((status = 200, body = DeploymentView)) {
        pause = post "/api/v1/deployments/{id}/pause" (DeploymentState::Rolling, DeploymentState::Paused);
        resume = post "/api/v1/deployments/{id}/resume" (DeploymentState::Paused, DeploymentState::Rolling);
    }
}

/// Restores the spec the deployment started from and rolls every instance back to it (those
/// never updated are left alone: they already run it).
#[utoipa::path(
    post, path = "/api/v1/deployments/{id}/rollback", tag = "deployments",
    responses((status = 200, body = DeploymentView))
)]
async fn rollback(
    Caller(app, who): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    Ok(Json(roll_back(&app, &who, &id).await?))
}

/// [`rollback`] of deployment `id` by `who` (`deployments:write` and `groups:write`).
pub(crate) async fn roll_back(app: &App, who: &Principal, id: &str) -> ApiResult<DeploymentView> {
    who.require("deployments:write")?;
    who.require("groups:write")?;
    let deployment: DeploymentRecord = app.find(id).await?;
    if !deployment.is_open() {
        return Err(ApiError::conflict(format!(
            "deployment {id} is {}; only a ROLLING or PAUSED deployment can be rolled back (create a new deployment with the old spec instead)",
            deployment.state
        )));
    }
    if deployment.rolled_back {
        return Err(ApiError::conflict(format!(
            "deployment {id} is already rolling back"
        )));
    }
    let group = deployment.group;
    let from: GroupSpec = deployment.from_spec.ok_or_else(|| {
        ApiError::internal(format!(
            "deployment {id} does not record the spec it started from"
        ))
    })?;
    let store = app.store();
    match prexor_model::groups::update_group(store, &group, &from, None).await {
        Ok(_) => {}
        Err(prexor_model::groups::GroupWriteError::Store(err)) => return Err(err.into()),
        Err(err) => return Err(ApiError::conflict(err.to_string())),
    }
    let open = doc! { "_id": id, "state": DeploymentState::open_filter() };
    let mut changes = doc! {
        "state": DeploymentState::Rolling,
        "rolledBack": true,
        "targetSpecHash": from.hash(),
        "rolledBackBy": &who.user,
        "updatedAtMs": now_ms(),
    };
    prexor_telemetry::trace::inject_document(&mut changes);
    let roll_back = doc! { "$set": changes };
    app.update_one(
        DEPLOYMENTS,
        "rolling the deployment back",
        open,
        roll_back,
        false,
    )
    .await?;
    app.audit_and_publish::<(), _>(
        who,
        "deployment.rollback",
        id,
        None,
        Some(&from),
        "DEPLOYMENT_ROLLED_BACK",
        serde_json::json!({ "group": &group }),
    )
    .await;
    let deployment = app.find(id).await?;
    view(app, deployment).await
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn a_deployment_shows_as_its_stored_record_without_the_old_spec() {
        let spec = doc! {
            "platform": "fake", "version": "1", "command": ["true"], "memoryMb": 256_i64,
            "portRange": { "from": 30000, "to": 30099 },
            "minInstances": 1_i64, "maxInstances": 2_i64, "scaling": "STATIC",
        };
        let stored = doc! {
            "_id": "lobby-r2-1", "group": "lobby", "state": "ROLLING", "batchSize": 1_i64,
            "maxUnavailable": 2_i64, "fromRevision": 1_i64, "fromSpec": spec,
            "fromSpecHash": "a", "toRevision": 2_i64, "targetSpecHash": "b",
            "rolledBack": true, "createdBy": "admin", "createdAtMs": 5_i64,
            "rolledBackBy": "admin", "updatedAtMs": 6_i64, "updated": 1_i64, "total": 2_i64,
            "_fence": { "scope": "group:lobby", "token": 3_i64 },
        };
        let record: DeploymentRecord = mongodb::bson::from_document(stored).unwrap();
        assert!(record.from_spec.is_some());
        let shown = serde_json::to_value(DeploymentView::new(
            record,
            DeploymentProgress {
                updated: 1,
                active: 2,
            },
        ))
        .unwrap();
        let expected = serde_json::json!({
            "id": "lobby-r2-1", "group": "lobby", "state": "ROLLING", "batchSize": 1,
            "maxUnavailable": 2, "fromRevision": 1,
            "fromSpecHash": "a", "toRevision": 2, "targetSpecHash": "b",
            "rolledBack": true, "createdBy": "admin", "createdAtMs": 5,
            "rolledBackBy": "admin", "updatedAtMs": 6, "updated": 1, "total": 2,
            "live": { "updated": 1, "active": 2 }, "strategy": "ROLLING",
        });
        assert_eq!(shown, expected);
    }
}
