//! Endpoints for the plugin inside each game server, authenticated with the instance's own token
//! (`PREXOR_INSTANCE_TOKEN` in its environment, `pxw.<instance>.<secret>`; only a hash is kept in
//! the instance record): readiness, players joining and leaving, and server metrics. What they
//! report is kept in `instance_load`, where the group's scheduler reads it for DYNAMIC scaling.
//! Any replica validates any instance's token from the shared store.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::post;
use mongodb::bson::{Document, doc};
use prexor_domain::{now_ms, sha256_hex};
use prexor_model::instances::{InstanceLoad, InstanceRecord};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::{ApiError, ApiResult, Json};
use crate::groups::INSTANCES;

pub use prexor_model::instances::INSTANCE_LOAD;
const MAX_PLAYER_NAME: usize = 64;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/workload/ready", post(ready))
        .route("/workload/players", post(player).put(players))
        .route("/workload/metrics", post(metrics))
}

/// A game server calling about itself.
pub struct Workload {
    pub instance: String,
    pub group: String,
    /// In its group's warm pool when the call came.
    pub warm: bool,
}

impl FromRequestParts<App> for Workload {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let invalid = || {
            ApiError::unauthorized(
                "send the instance's own token: `Authorization: Bearer $PREXOR_INSTANCE_TOKEN`",
            )
        };
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(invalid)?
            .trim();
        let mut pieces = token.splitn(3, '.');
        let (Some("pxw"), Some(instance), Some(_)) = (pieces.next(), pieces.next(), pieces.next())
        else {
            return Err(invalid());
        };
        let record = app
            .record::<InstanceRecord>(INSTANCES, instance)
            .await?
            .ok_or_else(invalid)?;
        if record.workload_token_hash.as_deref() != Some(sha256_hex(token.as_bytes()).as_str()) {
            return Err(ApiError::unauthorized(format!(
                "the token is not the current one of instance {instance} (it was placed again since)"
            )));
        }
        if record.has_ended() {
            return Err(ApiError::conflict(format!("instance {instance} has ended")));
        }
        Ok(Workload {
            instance: record.id,
            group: record.group,
            warm: record.warm,
        })
    }
}

async fn update(app: &App, who: &Workload, update: Document) -> ApiResult<()> {
    let filter = doc! { "_id": &who.instance };
    app.update_one(
        INSTANCE_LOAD,
        "recording the instance's load",
        filter,
        update,
        true,
    )
    .await?;
    Ok(())
}

#[utoipa::path(
    post, path = "/api/v1/workload/ready", tag = "workload",
    responses((status = 204))
)]
async fn ready(State(app): State<App>, who: Workload) -> ApiResult<StatusCode> {
    update(
        &app,
        &who,
        doc! { "$set": { "group": &who.group, "ready": true, "readyAtMs": now_ms() } },
    )
    .await?;
    // A warm instance is not announced to players until a scale-up takes it: its group's
    // scheduler announces it then, reading the readiness recorded above after it took it. Read
    // again after that write, so that one of the two always announces it.
    if who.warm
        && app
            .record::<InstanceRecord>(INSTANCES, &who.instance)
            .await?
            .is_some_and(|r| r.warm)
    {
        return Ok(StatusCode::NO_CONTENT);
    }
    app.service
        .events
        .publish(
            "INSTANCE_READY",
            &who.instance,
            serde_json::json!({ "group": &who.group }),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
enum PlayerEvent {
    Join,
    Leave,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlayerChange {
    event: PlayerEvent,
    player: String,
}

/// Players online on the instance, after the change.
#[derive(Serialize, utoipa::ToSchema)]
struct PlayerCount {
    players: usize,
}

fn check_player(name: &str) -> ApiResult<()> {
    if name.is_empty() || name.len() > MAX_PLAYER_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::field(
            "player",
            format!("must be 1 to {MAX_PLAYER_NAME} printable characters"),
        ));
    }
    Ok(())
}

async fn count(app: &App, who: &Workload) -> ApiResult<usize> {
    let load = app
        .record::<InstanceLoad>(INSTANCE_LOAD, &who.instance)
        .await?;
    Ok(load.map_or(0, |l| l.player_names.len()))
}

/// `{"event": "join" | "leave", "player": NAME}`: idempotent (a repeated join counts once).
#[utoipa::path(
    post, path = "/api/v1/workload/players", tag = "workload",
    responses((status = 200, body = PlayerCount))
)]
async fn player(
    State(app): State<App>,
    who: Workload,
    Json(change): Json<PlayerChange>,
) -> ApiResult<Json<PlayerCount>> {
    check_player(&change.player)?;
    let operation = match change.event {
        PlayerEvent::Join => doc! { "$addToSet": { "playerNames": &change.player } },
        PlayerEvent::Leave => doc! { "$pull": { "playerNames": &change.player } },
    };
    let mut update_doc = operation;
    update_doc.insert(
        "$set",
        doc! { "group": &who.group, "playersAtMs": now_ms() },
    );
    update(&app, &who, update_doc).await?;
    Ok(Json(PlayerCount {
        players: count(&app, &who).await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlayerList {
    /// Everyone online now (replaces what was reported).
    players: Vec<String>,
}

/// The full list of online players (e.g. every 30 s, or after a plugin restart).
#[utoipa::path(
    put, path = "/api/v1/workload/players", tag = "workload",
    responses((status = 200, body = PlayerCount))
)]
async fn players(
    State(app): State<App>,
    who: Workload,
    Json(list): Json<PlayerList>,
) -> ApiResult<Json<PlayerCount>> {
    if list.players.len() > 10_000 {
        return Err(ApiError::field("players", "at most 10000 players"));
    }
    for name in &list.players {
        check_player(name)?;
    }
    let mut names = list.players;
    names.sort();
    names.dedup();
    let players = names.len();
    update(
        &app,
        &who,
        doc! { "$set": { "group": &who.group, "playerNames": names, "playersAtMs": now_ms() } },
    )
    .await?;
    Ok(Json(PlayerCount { players }))
}

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metrics {
    tps: Option<f64>,
    mspt: Option<f64>,
    memory_used_mb: Option<u64>,
}

#[utoipa::path(
    post, path = "/api/v1/workload/metrics", tag = "workload",
    responses((status = 204))
)]
async fn metrics(
    State(app): State<App>,
    who: Workload,
    Json(metrics): Json<Metrics>,
) -> ApiResult<StatusCode> {
    let finite = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && v >= 0.0);
    if !finite(metrics.tps) || !finite(metrics.mspt) {
        return Err(ApiError::bad_request(
            "tps and mspt must be non-negative numbers",
        ));
    }
    let value = mongodb::bson::to_document(&metrics)
        .map_err(|e| ApiError::bad_request(format!("metrics: {e}")))?;
    update(
        &app,
        &who,
        doc! { "$set": { "group": &who.group, "metrics": value, "metricsAtMs": now_ms() } },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
