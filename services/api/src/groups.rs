//! Groups: create, list, get, update (compare-and-set on the revision), delete (the holder
//! stops the instances, then removes the group), and manual instance starts.

use std::collections::HashMap;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use mongodb::bson::{self, doc};
use prexor_domain::{FieldProblem, GroupSpec, ScalingMode, now_ms};
use prexor_model::groups::{GroupRecord, GroupStateRecord, GroupWriteError};
use prexor_model::instances::InstanceRequest;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, Json};
use crate::paging::{Page, PageRequest};

use prexor_model::groups::GROUP_STATE;
pub use prexor_model::instances::INSTANCE_REQUESTS;
pub use prexor_model::instances::INSTANCES;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/groups", get(list).post(create))
        .route("/groups/{name}", get(show).put(update).delete(remove))
        .route("/groups/{name}/instances", post(start_instance))
}

#[derive(Serialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupStatus {
    /// The group's instances by scheduler state (SCHEDULED, STARTING, RUNNING, STOPPING, ...),
    /// without its warm pool.
    pub(crate) instances: HashMap<String, u32>,
    /// Its warm pool's instances by state (PREPARED, or RUNNING when started; others while
    /// they are placed or leave).
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub(crate) warm: HashMap<String, u32>,
    /// Set while a crash loop pauses new placements.
    pub(crate) paused_until_ms: Option<i64>,
    pub(crate) pause_reason: Option<String>,
    /// DYNAMIC groups: the signal the holder last read and what it decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scaling: Option<ScalingStatus>,
}

/// A DYNAMIC group's scaling as its holder last judged it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScalingStatus {
    /// The instance count it scales to.
    pub(crate) target: Option<i64>,
    /// `players`, `tps`, `mspt` or `memory` (%, of memoryMb).
    pub(crate) metric: String,
    pub(crate) value: f64,
    /// The signal in words.
    pub(crate) reading: String,
    /// What the holder decided from it, in words.
    pub(crate) decision: String,
    pub(crate) last_scale_at_ms: Option<i64>,
    /// Idle since then: scaled down once that lasted `scaleDownDelaySeconds`.
    pub(crate) low_since_ms: Option<i64>,
}

/// A group as the API shows it: the stored record with its instances' states.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GroupView {
    pub(crate) name: String,
    pub(crate) revision: i64,
    /// Being deleted: its instances are stopping, then the group disappears.
    pub(crate) deleting: bool,
    pub(crate) created_at_ms: i64,
    pub(crate) updated_at_ms: i64,
    pub(crate) spec: GroupSpec,
    pub(crate) status: GroupStatus,
}

fn view(record: GroupRecord, status: GroupStatus) -> GroupView {
    GroupView {
        name: record.name,
        revision: record.revision,
        deleting: record.deleting,
        created_at_ms: record.created_at_ms,
        updated_at_ms: record.updated_at_ms,
        spec: record.spec,
        status,
    }
}

/// [`statuses`] of the group `name`.
async fn status_of(app: &App, name: &str) -> ApiResult<GroupStatus> {
    let names = [name.to_owned()];
    Ok(statuses(app, &names)
        .await?
        .remove(name)
        .unwrap_or_default())
}

/// Indexes the instances by group and state, so that [`statuses`] (and a deployment's progress)
/// count them from the index alone. Run by every api replica at start; creating an index that
/// exists is a no-op.
pub async fn index_instances(store: &prexor_store::Store) -> Result<(), prexor_store::StoreError> {
    let index = mongodb::IndexModel::builder()
        .keys(doc! { "group": 1, "state": 1 })
        .build();
    let instances = store.documents(INSTANCES);
    store
        .bounded(
            "indexing instances by group and state",
            instances.create_index(index),
        )
        .await
        .map(|_| ())
}

/// How many instances of one group are in one state.
#[derive(Deserialize)]
struct StateCount {
    #[serde(rename = "_id")]
    of: GroupAndState,
    count: u32,
}

#[derive(Deserialize)]
struct GroupAndState {
    group: Option<String>,
    state: Option<String>,
    /// In the warm pool (absent on the group's own instances).
    warm: Option<bool>,
}

/// Instance counts (by state, counted by the store: no instance record is read) and pause state
/// of the groups `names`.
async fn statuses(app: &App, names: &[String]) -> ApiResult<HashMap<String, GroupStatus>> {
    let count = vec![
        doc! { "$match": { "group": { "$in": names } } },
        doc! { "$group": {
            "_id": { "group": "$group", "state": "$state", "warm": "$warm" },
            "count": { "$sum": 1 },
        } },
    ];
    let paused = doc! { "_id": { "$in": names }, "$or": [
        { "pausedUntilMs": { "$gt": now_ms() } },
        { "signal": { "$exists": true } },
    ] };
    let (counts, states) = tokio::try_join!(
        app.aggregate::<StateCount>(INSTANCES, "counting instances", count),
        app.records::<GroupStateRecord>(GROUP_STATE, "reading group states", paused, doc! {}, None),
    )?;
    let mut out: HashMap<String, GroupStatus> = HashMap::new();
    for StateCount { of, count } in counts {
        let (Some(group), Some(state)) = (of.group, of.state) else {
            continue;
        };
        if group.is_empty() || state.is_empty() {
            continue;
        }
        let status = out.entry(group).or_default();
        let counts = if of.warm == Some(true) {
            &mut status.warm
        } else {
            &mut status.instances
        };
        *counts.entry(state).or_default() += count;
    }
    let now = now_ms();
    for state in states {
        if let (Some(signal), Some(decision)) = (&state.signal, &state.decision) {
            out.entry(state.group.clone()).or_default().scaling = Some(ScalingStatus {
                target: state.scale_target,
                metric: signal.metric.clone(),
                value: signal.value,
                reading: signal.reading.clone(),
                decision: decision.clone(),
                last_scale_at_ms: state.last_scale_at_ms,
                low_since_ms: state.low_since_ms,
            });
        }
        if let Some((until, reason)) = state.paused_at(now) {
            let pause_reason = reason.map(str::to_owned);
            let entry = out.entry(state.group).or_default();
            entry.paused_until_ms = Some(until);
            entry.pause_reason = pause_reason;
        }
    }
    Ok(out)
}

/// A page of groups with their instances' states.
#[utoipa::path(
    get, path = "/api/v1/groups", tag = "groups", params(PageRequest),
    responses((status = 200, body = Page<GroupView>))
)]
async fn list(Caller(app, who): Caller, page: PageRequest) -> ApiResult<Json<Page<GroupView>>> {
    Ok(Json(list_groups(&app, &who, &page).await?))
}

/// A page of groups with their instances' states, for `who` (`groups:read`).
pub(crate) async fn list_groups(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<GroupView>> {
    who.require("groups:read")?;
    let groups: Page<GroupRecord> = app.page("listing groups", doc! {}, page).await?;
    let names: Vec<String> = groups.items.iter().map(|g| g.name.clone()).collect();
    let mut statuses = statuses(app, &names).await?;
    Ok(groups.map(|group| {
        let status = statuses.remove(&group.name).unwrap_or_default();
        view(group, status)
    }))
}

#[utoipa::path(
    get, path = "/api/v1/groups/{name}", tag = "groups",
    responses((status = 200, body = GroupView))
)]
async fn show(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<GroupView>> {
    Ok(Json(show_group(&app, &who, &name).await?))
}

/// The group `name` with its instances' states, for `who` (`groups:read`).
pub(crate) async fn show_group(app: &App, who: &Principal, name: &str) -> ApiResult<GroupView> {
    who.require("groups:read")?;
    let record = app.find::<GroupRecord>(name).await?;
    let status = status_of(app, name).await?;
    Ok(view(record, status))
}

fn write_error(err: GroupWriteError) -> ApiError {
    match err {
        GroupWriteError::Exists(_) | GroupWriteError::Changed { .. } => {
            ApiError::conflict(err.to_string())
        }
        GroupWriteError::Deleting(_) => ApiError::conflict(err.to_string()),
        GroupWriteError::Missing(_) => ApiError::not_found(err.to_string()),
        GroupWriteError::Store(err) => err.into(),
    }
}

pub(crate) fn validate(name: &str, spec: &GroupSpec) -> ApiResult<()> {
    let problems = spec.problems(name);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&format!("group {name:?}"), &problems))
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewGroup {
    name: String,
    spec: GroupSpec,
}

#[utoipa::path(
    post, path = "/api/v1/groups", tag = "groups",
    responses((status = 201, body = GroupView))
)]
async fn create(
    Caller(app, who): Caller,
    Json(new): Json<NewGroup>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let created = create_group(&app, &who, new.name, new.spec).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Creates group `name` with `spec` for `who` (`groups:write`): 400 listing every invalid field
/// (`details.fields`), 409 when it exists.
pub(crate) async fn create_group(
    app: &App,
    who: &Principal,
    name: String,
    spec: GroupSpec,
) -> ApiResult<GroupView> {
    let mut new = NewGroup { name, spec };
    who.require("groups:write")?;
    crate::templates::resolve(app, &mut new.spec).await?;
    crate::modules::check_attached(app, &new.spec.modules).await?;
    if let Err(err) = prexor_domain::validate_name(&new.name) {
        let mut problems = vec![FieldProblem {
            field: "name".into(),
            message: err.to_string(),
        }];
        problems.extend(
            new.spec
                .problems("x")
                .into_iter()
                .filter(|p| p.field != "name"),
        );
        return Err(ApiError::invalid("the group", &problems));
    }
    validate(&new.name, &new.spec)?;
    let record = prexor_model::groups::create_group(app.store(), &new.name, &new.spec)
        .await
        .map_err(write_error)?;
    app.audit_and_publish::<(), _>(
        who,
        "group.create",
        &new.name,
        None,
        Some(&record.spec),
        "GROUP_CREATED",
        serde_json::json!({ "revision": record.revision }),
    )
    .await;
    Ok(view(record, GroupStatus::default()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GroupUpdate {
    spec: GroupSpec,
    /// The revision this change was made against; a different current revision is a 409.
    /// Also accepted as an `If-Match` header.
    #[serde(default)]
    revision: Option<i64>,
}

#[utoipa::path(
    put, path = "/api/v1/groups/{name}", tag = "groups",
    responses((status = 200, body = GroupView))
)]
async fn update(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    Json(change): Json<GroupUpdate>,
) -> ApiResult<Json<GroupView>> {
    let if_match = match headers.get("if-match") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_matches('"'))
                .and_then(|v| v.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("If-Match must be the group's revision number")
                })?,
        ),
        None => None,
    };
    let expected = change.revision.or(if_match);
    Ok(Json(
        update_group(&app, &who, &name, change.spec, expected).await?,
    ))
}

/// Changes group `name`'s spec for `who` (`groups:write`), compare-and-set on `expected` (the
/// revision the change was made against; another current revision is a 409).
pub(crate) async fn update_group(
    app: &App,
    who: &Principal,
    name: &str,
    mut spec: GroupSpec,
    expected: Option<i64>,
) -> ApiResult<GroupView> {
    who.require("groups:write")?;
    crate::templates::resolve(app, &mut spec).await?;
    crate::modules::check_attached(app, &spec.modules).await?;
    validate(name, &spec)?;
    let before = app.find::<GroupRecord>(name).await?;
    if let Some(open) = crate::deployments::open_deployment(app, name).await? {
        return Err(ApiError::conflict(format!(
            "deployment {} of group {name:?} is {}; change the spec with a new deployment once it is done, or roll it back",
            open.id, open.state
        )));
    }
    let updated = prexor_model::groups::update_group(app.store(), name, &spec, expected)
        .await
        .map_err(write_error)?;
    let record = match updated {
        Some(record) => {
            app.audit_and_publish(
                who,
                "group.update",
                name,
                Some(&before.spec),
                Some(&record.spec),
                "GROUP_UPDATED",
                serde_json::json!({ "revision": record.revision }),
            )
            .await;
            record
        }
        None => before,
    };
    let status = status_of(app, name).await?;
    Ok(view(record, status))
}

#[utoipa::path(
    delete, path = "/api/v1/groups/{name}", tag = "groups",
    responses((status = 202, body = GroupView))
)]
async fn remove(
    Caller(app, who): Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    who.require("groups:write")?;
    let before = app.find::<GroupRecord>(&name).await?;
    if before.deleting {
        return Ok((
            StatusCode::ACCEPTED,
            Json(view(before, GroupStatus::default())),
        ));
    }
    let record = prexor_model::groups::mark_group_deleting(app.store(), &name)
        .await
        .map_err(write_error)?;
    app.audit_and_publish(
        &who,
        "group.delete",
        &name,
        Some(&before.spec),
        None::<&()>,
        "GROUP_DELETING",
        serde_json::json!({}),
    )
    .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(view(record, GroupStatus::default())),
    ))
}

/// An operator request recorded for the group's lease holder.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// The request's id (`<action>:<instance>`, `start:<group>:<nonce>`).
    pub request: String,
    pub message: String,
}

/// Records an operator request for the group's lease holder (it carries it out on its next tick
/// and deletes it); the request id says what was asked.
pub async fn request(
    app: &App,
    who: &Principal,
    group: &str,
    action: &str,
    instance: Option<&str>,
) -> ApiResult<String> {
    let id = match instance {
        Some(instance) => format!("{action}:{instance}"),
        None => format!("{action}:{group}:{}", uuid::Uuid::new_v4().simple()),
    };
    let record = InstanceRequest {
        id: id.clone(),
        group: group.to_owned(),
        action: action.to_owned(),
        by: who.user.clone(),
        at_ms: now_ms(),
        instance: instance.map(str::to_owned),
        traceparent: prexor_telemetry::trace::traceparent(&tracing::Span::current()),
    };
    let record = bson::to_document(&record)
        .map_err(|e| ApiError::internal(format!("encoding the request: {e}")))?;
    let (filter, set) = (doc! { "_id": &id }, doc! { "$set": record });
    app.update_one(
        INSTANCE_REQUESTS,
        "recording an operator request",
        filter,
        set,
        true,
    )
    .await?;
    Ok(id)
}

#[utoipa::path(
    post, path = "/api/v1/groups/{name}/instances", tag = "instances",
    responses((status = 202, body = Accepted))
)]
async fn start_instance(
    Caller(app, who): Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(start_group_instance(&app, &who, &name).await?),
    ))
}

/// Asks the holder of MANUAL group `name` to place one more instance, for `who`
/// (`instances:write`).
pub(crate) async fn start_group_instance(
    app: &App,
    who: &Principal,
    name: &str,
) -> ApiResult<Accepted> {
    who.require("instances:write")?;
    let record = app.find::<GroupRecord>(name).await?;
    if record.spec.scaling != ScalingMode::Manual {
        return Err(ApiError::conflict(format!(
            "group {name:?} scales {:?}; instances are started by hand only in MANUAL groups (change minInstances instead)",
            record.spec.scaling
        )));
    }
    if record.deleting {
        return Err(ApiError::conflict(format!(
            "group {name:?} is being deleted"
        )));
    }
    let active = status_of(app, name)
        .await?
        .instances
        .iter()
        .filter(|(state, _)| !prexor_model::instances::has_ended(state))
        .map(|(_, n)| *n)
        .sum::<u32>();
    if active >= record.spec.max_instances {
        return Err(ApiError::conflict(format!(
            "group {name:?} already runs {active} of at most {} instances",
            record.spec.max_instances
        )));
    }
    let id = request(app, who, name, "start", None).await?;
    app.audit::<(), _>(who, "instance.start", name, None, Some(&id))
        .await;
    Ok(Accepted {
        request: id,
        message: format!("the holder of group {name:?} places a new instance on its next tick"),
    })
}
