//! `POST /instances/{id}/save-to-template {"template", "paths"}`: chosen paths of an instance's
//! directory become a new version of a template. The api opens a capture (`captures`: which
//! node, which instance, the `uploads.*` limits of a layer), asks the instance's node to pack
//! the paths (`CaptureFiles`, through any gateway); the node streams the archive to its gateway,
//! which takes it only for that open capture, checks it as a layer and stores it, recording the
//! hash on the capture; the api then records the template version from what the gateway
//! stored (never from what the node says). docs/api.md, "Templates".

use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use mongodb::bson::doc;
use prexor_domain::now_ms;
use prexor_model::instances::InstanceRecord;
use prexor_model::workflows::CAPTURES;
use prexor_model::workflows::templates::CaptureRecord;
use prexor_proto::v1::CaptureFiles;
use prexor_proto::v1::command::Action;
use serde::Deserialize;

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, Json};
use crate::templates::{Layer, TemplateView, record_version};

/// How long the node may take to pack and store the archive (the gateways' longest wait).
const CAPTURE_WITHIN: Duration = Duration::from_secs(60);

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SaveToTemplate {
    /// The template to add a version to (created if it does not exist).
    template: String,
    /// Files and directories of the instance's directory, relative to it (1 to 64).
    paths: Vec<String>,
}

#[utoipa::path(
    post, path = "/api/v1/instances/{id}/save-to-template", tag = "instances",
    request_body = SaveToTemplate,
    responses(
        (status = 201, description = "a new version of the template, now current", body = TemplateView),
        (status = 200, description = "the same bytes as the template's current version: nothing changed", body = TemplateView),
        (status = 409, description = "the instance has ended, or its node refused (a path that does not exist, an archive past uploads.layerMb)", body = crate::error::ErrorBody),
        (status = 503, description = "no gateway or node can take the capture now", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn save(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    Json(input): Json<SaveToTemplate>,
) -> ApiResult<(StatusCode, Json<TemplateView>)> {
    let (status, view) = save_to_template(&app, &who, &id, &input.template, &input.paths).await?;
    Ok((status, Json(view)))
}

/// Saves `paths` of instance `id`'s directory as template `template`'s new version, for `who`
/// (`templates:write`, `instances:read`).
pub(crate) async fn save_to_template(
    app: &App,
    who: &Principal,
    id: &str,
    template: &str,
    paths: &[String],
) -> ApiResult<(StatusCode, TemplateView)> {
    who.require("templates:write")?;
    who.require("instances:read")?;
    crate::error::check_name("template", template)?;
    if let Some(problem) = prexor_domain::paths::capture_paths_problem(paths) {
        return Err(ApiError::field(&problem.field, problem.message));
    }
    let instance: InstanceRecord = app.find(id).await?;
    if instance.has_ended() || instance.node_id.is_empty() {
        return Err(ApiError::conflict(format!(
            "instance {id:?} is {}: only a live instance's directory can be saved",
            instance.state
        )));
    }
    let node = instance.node_id.as_str();
    let capture = CaptureRecord {
        id: format!("capture-{}", uuid::Uuid::new_v4().simple()),
        node_id: node.to_owned(),
        instance: id.to_owned(),
        max_bytes: app.uploads.layer_bytes as i64,
        max_entries: app.uploads.max_entries as i64,
        max_unpacked_bytes: app.uploads.layer_unpacked_bytes as i64,
        expires_at_ms: now_ms() + 2 * CAPTURE_WITHIN.as_millis() as i64,
        stored: None,
    };
    let store = app.store();
    store
        .bounded(
            "opening a capture",
            store
                .collection::<CaptureRecord>(CAPTURES)
                .insert_one(&capture),
        )
        .await?;
    let outcome = capture_on_node(app, &instance, &capture, paths).await;
    // The capture is closed whatever happened (an expired one takes nothing anyway).
    let closed = store
        .bounded(
            "closing a capture",
            store
                .documents(CAPTURES)
                .delete_one(doc! { "_id": &capture.id }),
        )
        .await;
    if let Err(err) = closed {
        tracing::warn!(capture = %capture.id, "cannot remove the capture record (it expires): {err}");
    }
    let layer = outcome?;
    let (status, view) = record_version(app, who, template, layer, Some(id)).await?;
    app.audit::<(), _>(
        who,
        "instance.save_to_template",
        id,
        None,
        Some(&serde_json::json!({ "template": template, "paths": paths })),
    )
    .await;
    Ok((status, view))
}

/// Asks the instance's node to pack and store `paths` for `capture`; the layer its gateway
/// stored.
async fn capture_on_node(
    app: &App,
    instance: &InstanceRecord,
    capture: &CaptureRecord,
    paths: &[String],
) -> ApiResult<Layer> {
    let node = instance.node_id.as_str();
    let capture_files = Action::Capture(CaptureFiles {
        instance_id: instance.id.clone(),
        paths: paths.to_vec(),
        capture_id: capture.id.clone(),
        max_bytes: capture.max_bytes as u64,
    });
    let ack = super::send_at_mark(
        app,
        instance,
        capture.id.clone(),
        capture_files,
        CAPTURE_WITHIN,
        "the capture",
    )
    .await?;
    let stored = app
        .record::<CaptureRecord>(CAPTURES, &capture.id)
        .await?
        .and_then(|c| c.stored)
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node} reported the capture done, but no gateway recorded its archive: {}",
                ack.message
            ))
        })?;
    Ok(Layer {
        hash: stored.hash,
        size: stored.size.max(0) as u64,
        files: stored.entries.max(0) as u64,
    })
}
