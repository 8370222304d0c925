//! `GET /api/v1/events`: domain events as server-sent events, from whichever replica made the
//! change. `Last-Event-ID` (or `?after=`) replays what the client missed while it is still in
//! the bounded buffer; if some of it is gone, a `gap` event says so (re-read state, then follow).
//! The dashboard's live feed (`/ui/events`) is the same stream ([`follow`]), rendered as HTML.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::Query;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use prexor_coord::{EventLog, StoredEvent, id_key};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::app::App;
use crate::auth::{Caller, until_lapsed};
use crate::error::{ApiError, ApiResult};

const REPLAY_PAGE: usize = 500;

pub fn routes() -> Router<App> {
    Router::new().route("/events", get(events))
}

#[derive(Deserialize)]
struct EventQuery {
    /// Replay after this event id (like `Last-Event-ID`).
    after: Option<String>,
    /// Comma-separated event types to receive (default: all).
    types: Option<String>,
}

fn sse(stored: &StoredEvent) -> Event {
    let mut data = serde_json::to_value(&stored.event).unwrap_or_default();
    data["id"] = serde_json::Value::String(stored.id.clone());
    Event::default()
        .id(stored.id.clone())
        .event(stored.event.kind.clone())
        .data(data.to_string())
}

#[utoipa::path(
    get, path = "/api/v1/events", tag = "events",
    params(("after" = Option<String>, Query), ("types" = Option<String>, Query)),
    responses(
        (status = 200, description = "server-sent events", content_type = "text/event-stream", body = String),
    )
)]
async fn events(
    Caller(app, who): Caller,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after);
    if let Some(id) = &after
        && id_key(id) == (0, 0)
        && id != "0-0"
        && id != "0"
    {
        return Err(ApiError::bad_request(format!(
            "{id:?} is not an event id (<ms>-<seq>)"
        )));
    }
    let types: Option<HashSet<String>> = query.types.map(|t| {
        t.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    follow(app, who, after, types, sse)
}

/// How an event is sent to one kind of client: JSON for the REST API, an HTML fragment for the
/// dashboard.
pub(crate) type Render = fn(&StoredEvent) -> Event;

/// The event stream of `who` (403 without `events:read`, 429 past the stream caps): events after
/// `after` replayed, then live ones, those of `types` only (all without), each as `render` makes
/// it; it ends when the client goes, the replica stops, or `who` loses the permission.
pub(crate) fn follow(
    app: App,
    who: crate::auth::Principal,
    after: Option<String>,
    types: Option<HashSet<String>>,
    render: Render,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>> {
    who.require("events:read")?;
    let slot = crate::streams::open(&app, &who)?;
    let log = app.service.events.clone();
    // Subscribe before replaying, so nothing published in between is lost (duplicates are
    // skipped by id).
    let live = log.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(1024);
    let stop = app.service.shutdown.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let ended = tx.clone();
        tokio::select! {
            () = stop.cancelled() => {}
            () = pump(log, live, after, types, render, tx) => {}
            // The client went away: free its place at once, not at the next line or event.
            () = ended.closed() => {}
            // A caller logged out, disabled or stripped of the permission loses the stream.
            reason = until_lapsed(&app, &who, "events:read") => {
                let _ = ended.send(Ok(Event::default().event("error").data(format!("the stream ended: {reason}")))).await;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

async fn pump(
    log: EventLog,
    mut live: tokio::sync::broadcast::Receiver<Arc<StoredEvent>>,
    after: Option<String>,
    types: Option<HashSet<String>>,
    render: Render,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    // What replicas tell each other (ACCESS_CHANGED) is not for clients.
    let wanted = |e: &StoredEvent| {
        e.event.kind != crate::auth::ACCESS_CHANGED
            && types.as_ref().is_none_or(|t| t.contains(&e.event.kind))
    };
    let mut last = after;
    if let Some(from) = last.clone()
        && !replay(&log, &from, &mut last, &wanted, render, &tx).await
    {
        return;
    }
    loop {
        match live.recv().await {
            Ok(event) => {
                if last
                    .as_deref()
                    .is_some_and(|l| id_key(&event.id) <= id_key(l))
                {
                    continue;
                }
                last = Some(event.id.clone());
                if wanted(&event) && tx.send(Ok(render(&event))).await.is_err() {
                    return;
                }
            }
            Err(RecvError::Lagged(_)) => {
                // This client fell behind the fan-out: catch up from the stream itself.
                let Some(from) = last.clone() else {
                    continue;
                };
                if !replay(&log, &from, &mut last, &wanted, render, &tx).await {
                    return;
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Sends every event after `from`; `false` when the client is gone.
async fn replay(
    log: &EventLog,
    from: &str,
    last: &mut Option<String>,
    wanted: &impl Fn(&StoredEvent) -> bool,
    render: Render,
    tx: &mpsc::Sender<Result<Event, Infallible>>,
) -> bool {
    let mut cursor = from.to_owned();
    let mut first = true;
    loop {
        let page = match log.since(&cursor, REPLAY_PAGE).await {
            Ok(page) => page,
            Err(err) => {
                let _ = tx
                    .send(Ok(Event::default()
                        .event("error")
                        .data(format!("cannot replay events: {err}"))))
                    .await;
                return false;
            }
        };
        if first && page.gap {
            let note = serde_json::json!({
                "message": format!("events after {from} are no longer in the buffer; re-read the state you follow"),
            });
            if tx
                .send(Ok(Event::default().event("gap").data(note.to_string())))
                .await
                .is_err()
            {
                return false;
            }
        }
        first = false;
        let full = page.events.len() == REPLAY_PAGE;
        for event in page.events {
            cursor = event.id.clone();
            *last = Some(event.id.clone());
            if wanted(&event) && tx.send(Ok(render(&event))).await.is_err() {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}
