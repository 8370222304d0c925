//! Instances: list (by group, node, state), get, crash records, stop/kill (requests carried out
//! by the group's lease holder, fenced), console input (through any gateway to the node) and the
//! live console (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use futures::Stream;
use mongodb::bson::{Document, doc};
use prexor_coord::{ConsoleStreams, id_key};
use prexor_model::instances::{CrashRecord, InstanceRecord, PlanRecord};
use prexor_proto::v1::command::Action;
use prexor_proto::v1::{AckResult, Command, CommandAck, ConsoleInput};
use prexor_serve::SendError;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::App;
use crate::auth::{Caller, Principal, until_lapsed};
use crate::error::{ApiError, ApiResult, Json};
use crate::groups::{Accepted, request};
use crate::paging::{Page, PageRequest};

pub(crate) mod capture;
mod views;
pub(crate) use views::{CrashView, InstanceView};

/// How long a console command waits for the node's ack (then 504).
const CONSOLE_ACK_WITHIN: Duration = Duration::from_secs(5);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/instances", get(list))
        .route("/instances/{id}", get(show))
        .route("/instances/{id}/crashes", get(crashes))
        .route("/instances/{id}/stop", post(stop))
        .route("/instances/{id}/kill", post(kill))
        .route("/instances/{id}/command", post(command))
        .route("/instances/{id}/console", get(console))
        .route("/instances/{id}/save-to-template", post(capture::save))
}

/// Which instances a list shows (each given one must match).
#[derive(Deserialize, Default)]
pub(crate) struct Filter {
    pub(crate) group: Option<String>,
    pub(crate) node: Option<String>,
    pub(crate) state: Option<String>,
    /// `true`: only warm-pool instances; `false`: only the groups' own (what proxies route to).
    pub(crate) warm: Option<bool>,
}

#[utoipa::path(
    get, path = "/api/v1/instances", tag = "instances",
    params(("group" = Option<String>, Query), ("node" = Option<String>, Query), ("state" = Option<String>, Query), ("warm" = Option<bool>, Query), PageRequest),
    responses((status = 200, body = Page<InstanceView>))
)]
async fn list(
    Caller(app, who): Caller,
    Query(filter): Query<Filter>,
    page: PageRequest,
) -> ApiResult<Json<Page<InstanceView>>> {
    Ok(Json(list_instances(&app, &who, filter, &page).await?))
}

/// A page of the instances `filter` selects, for `who` (`instances:read`).
pub(crate) async fn list_instances(
    app: &App,
    who: &Principal,
    filter: Filter,
    page: &PageRequest,
) -> ApiResult<Page<InstanceView>> {
    who.require("instances:read")?;
    let mut query = Document::new();
    if let Some(group) = filter.group {
        query.insert("group", group);
    }
    if let Some(node) = filter.node {
        query.insert("nodeId", node);
    }
    if let Some(state) = filter.state {
        query.insert("state", state.to_ascii_uppercase());
    }
    match filter.warm {
        Some(true) => query.insert("warm", true),
        Some(false) => query.insert("warm", doc! { "$ne": true }),
        None => None,
    };
    Ok(app
        .views("listing instances", query, page, InstanceView::summary)
        .await?
        .0)
}

#[utoipa::path(
    get, path = "/api/v1/instances/{id}", tag = "instances",
    responses((status = 200, body = InstanceView))
)]
async fn show(Caller(app, who): Caller, Path(id): Path<String>) -> ApiResult<Json<InstanceView>> {
    Ok(Json(show_instance(&app, &who, &id).await?))
}

/// Instance `id` with the plan of its current placement, for `who` (`instances:read`).
pub(crate) async fn show_instance(app: &App, who: &Principal, id: &str) -> ApiResult<InstanceView> {
    who.require("instances:read")?;
    let mut record: InstanceRecord = app.find(id).await?;
    // The plan of the instance's current placement, kept apart from the record (records
    // written before that carry it themselves).
    let mut plan = record.plan.take();
    if let Some(planned) = app
        .record::<PlanRecord>(prexor_model::instances::INSTANCE_PLANS, id)
        .await?
        && planned.plan_hash == record.plan_hash
    {
        plan = Some(planned.plan);
    }
    Ok(InstanceView::detail(record, plan))
}

/// Newest first.
#[utoipa::path(
    get, path = "/api/v1/instances/{id}/crashes", tag = "instances", params(PageRequest),
    responses((status = 200, body = Page<CrashView>))
)]
async fn crashes(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    page: PageRequest,
) -> ApiResult<Json<Page<CrashView>>> {
    Ok(Json(list_crashes(&app, &who, &id, &page).await?))
}

/// A page of instance `id`'s crash records, newest first, for `who` (`instances:read`).
pub(crate) async fn list_crashes(
    app: &App,
    who: &Principal,
    id: &str,
    page: &PageRequest,
) -> ApiResult<Page<CrashView>> {
    who.require("instances:read")?;
    let filter = doc! { "instanceId": id };
    Ok(app
        .views::<CrashRecord, _>("reading crash records", filter, page, CrashView::from)
        .await?
        .0)
}

/// Asks the holder of instance `id`'s group to `action` (`stop` or `kill`) it, for `who`
/// (`instances:write`); 409 when it has already ended.
pub(crate) async fn halt(
    app: App,
    who: Principal,
    id: String,
    action: &'static str,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    who.require("instances:write")?;
    let instance: InstanceRecord = app.find(&id).await?;
    if instance.has_ended() {
        return Err(ApiError::conflict(format!(
            "instance {id:?} is already {}",
            instance.state
        )));
    }
    let group = instance.group;
    let request_id = request(&app, &who, &group, action, Some(&id)).await?;
    app.audit::<(), _>(&who, &format!("instance.{action}"), &id, None, None::<&()>)
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            request: request_id,
            message: format!(
                "the holder of group {group:?} will {action} {id} on its next tick (a STATIC or DYNAMIC group then starts it again)"
            ),
        }),
    ))
}

crate::app::variants! {
    halt -> (StatusCode, Json<Accepted>), "instances", responses((status = 202, body = Accepted)) {
        stop = post "/api/v1/instances/{id}/stop" ("stop");
        kill = post "/api/v1/instances/{id}/kill" ("kill");
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ConsoleCommand {
    command: String,
}

#[utoipa::path(
    post, path = "/api/v1/instances/{id}/command", tag = "instances",
    responses(
        (status = 204),
        (status = 503, description = "no gateway or node can take the command", body = crate::error::ErrorBody),
        (status = 504, description = "the node did not acknowledge within 5 s", body = crate::error::ErrorBody),
    )
)]
async fn command(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    Json(input): Json<ConsoleCommand>,
) -> ApiResult<StatusCode> {
    send_command(&app, &who, &id, &input.command).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends `command` (one line) to instance `id`'s console through a gateway to its node and
/// waits for the node's ack, for `who` (`instances:write`).
pub(crate) async fn send_command(
    app: &App,
    who: &Principal,
    id: &str,
    command: &str,
) -> ApiResult<()> {
    who.require("instances:write")?;
    let line = command.trim_end_matches(['\r', '\n']);
    if line.is_empty() || line.contains('\n') || line.len() > 4096 {
        return Err(ApiError::field(
            "command",
            "must be one line of 1 to 4096 bytes",
        ));
    }
    // A carriage return inside the line is a second command to most server consoles.
    if let Some(bad) = line.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(ApiError::field(
            "command",
            format!("must not contain control characters ({bad:?}); only tab is allowed"),
        ));
    }
    let instance: InstanceRecord = app.find(id).await?;
    if instance.has_ended() {
        return Err(ApiError::conflict(format!(
            "instance {id:?} is {}",
            instance.state
        )));
    }
    send_at_mark(
        app,
        &instance,
        format!("console:{}", uuid::Uuid::new_v4().simple()),
        Action::Console(ConsoleInput {
            instance_id: id.to_owned(),
            line: line.to_owned(),
        }),
        CONSOLE_ACK_WITHIN,
        "the command",
    )
    .await?;
    app.audit::<(), _>(who, "instance.command", id, None, Some(&line))
        .await;
    Ok(())
}

/// Sends `action` (`what`, in words) about `instance` to its node and waits `within` for the
/// node to take it (503/504 when it cannot be reached, 409 when it refuses, naming why). It
/// changes no lifecycle state, so the api needs no lease for it: it goes under the group's
/// scope at the scope's current mark, which the daemon admits (no holder's token is higher)
/// without moving the fence.
pub(crate) async fn send_at_mark(
    app: &App,
    instance: &InstanceRecord,
    command_id: String,
    action: Action,
    within: Duration,
    what: &str,
) -> ApiResult<CommandAck> {
    let node = instance.node_id.as_str();
    let scope = prexor_domain::Scope::group(instance.group.clone()).to_string();
    let mark = app.store().fence_mark(&scope).await?;
    let command = Command {
        command_id,
        scope,
        fence_token: mark,
        action: Some(action),
    };
    let ack = app
        .gateways
        .send_within(node, command, within)
        .await
        .map_err(|err| undelivered(node, err))?;
    taken(node, &ack, what)?;
    Ok(ack)
}

/// Whether node `node` took `what` (a command), by its `ack`: 503 when it could not now, 409
/// when it refused, each with the node's reason.
fn taken(node: &str, ack: &CommandAck, what: &str) -> ApiResult<()> {
    match ack.result() {
        AckResult::Done | AckResult::Already => Ok(()),
        AckResult::Transient => Err(ApiError::unavailable(format!(
            "node {node} could not take {what} now: {}",
            ack.message
        ))),
        _ => Err(ApiError::conflict(format!(
            "node {node} refused {what}: {}",
            ack.message
        ))),
    }
}

/// The answer to a command that did not reach node `node` (or whose ack did not come back).
fn undelivered(node: &str, err: SendError) -> ApiError {
    match err {
        SendError::Timeout(reason) => ApiError::timeout(format!(
            "node {node} did not acknowledge the command in time (it may still arrive): {reason}"
        )),
        SendError::NoGateway | SendError::Unavailable(_) => ApiError::unavailable(format!(
            "cannot reach node {node} through any gateway: {err}"
        )),
        SendError::Refused(status) => ApiError::unavailable(format!(
            "cannot deliver the command to node {node}: {}",
            status.message()
        )),
    }
}

#[derive(Deserialize)]
struct ConsoleQuery {
    /// Lines of history sent first (default 100, at most 2000).
    lines: Option<usize>,
}

#[utoipa::path(
    get, path = "/api/v1/instances/{id}/console", tag = "instances",
    params(("id" = String, Path), ("lines" = Option<usize>, Query)),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream", body = String),
        (status = 429, description = "too many streams open (per caller or on this replica)", body = crate::error::ErrorBody),
    )
)]
async fn console(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    follow_console(app, who, id, query.lines).await
}

/// Instance `id`'s console for `who` (`instances:read`): the last `lines` lines (default 100),
/// then each new one as it is written, each an SSE event with the line's id and text; ends
/// when `who` signs out or loses the permission.
pub(crate) async fn follow_console(
    app: App,
    who: Principal,
    id: String,
    lines: Option<usize>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    who.require("instances:read")?;
    app.find::<InstanceRecord>(&id).await?;
    let (Some(hub), Some(backend), Some(valkey)) = (
        &app.console_hub,
        &app.service.valkey,
        &app.service.config.valkey,
    ) else {
        return Err(ApiError::unavailable(
            "console output is kept in Valkey, which this replica does not use (development profile without Valkey)",
        ));
    };
    let slot = crate::streams::open(&app, &who)?;
    // Watch first, then read the history: together they hold every line (the overlap is
    // skipped by id).
    let mut watch = hub.watch(&id).await?;
    let streams = ConsoleStreams::new(backend.clone(), valkey.namespace.clone());
    let history = streams
        .tail(
            &id,
            lines.unwrap_or(100).min(prexor_coord::CONSOLE_LINES_KEPT),
        )
        .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(256);
    let stop = app.service.shutdown.clone();
    let ended = tx.clone();
    let follow = async move {
        let mut after = history.last().map_or((0, 0), |l| id_key(&l.id));
        for line in history {
            if tx
                .send(Ok(Event::default().id(line.id).data(line.line)))
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            let line = tokio::select! {
                _ = stop.cancelled() => return,
                line = watch.lines.recv() => line,
            };
            let Some(line) = line else {
                let _ = tx
                    .send(Ok(Event::default().event("error").data(
                        "the console stream fell behind and was closed; open it again",
                    )))
                    .await;
                return;
            };
            if id_key(&line.id) <= after {
                continue;
            }
            after = id_key(&line.id);
            if tx
                .send(Ok(Event::default().id(line.id).data(line.line)))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::spawn(async move {
        let _slot = slot;
        tokio::select! {
            () = follow => {}
            // The client went away: free its place at once, not at the next line or event.
            () = ended.closed() => {}
            // A caller logged out, disabled or stripped of the permission loses the stream.
            reason = until_lapsed(&app, &who, "instances:read") => {
                let _ = ended.send(Ok(Event::default().event("error").data(format!("the stream ended: {reason}")))).await;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}
