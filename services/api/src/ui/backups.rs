//! `/ui/backups`: the backups, newest first ([`crate::backups::list_backups`]); taking one
//! ([`crate::backups::create_backup`]), verifying one against its manifest
//! ([`crate::backups::verify_backup`]), downloading its archive with the dashboard's session
//! ([`crate::backups::download_backup`], what `GET /api/v1/backups/{id}/archive` streams) and
//! deleting one ([`crate::backups::delete_backup`]). A backup's page shows its manifest and
//! restores it ([`crate::backups::restore_backup`]) in two steps: the dry run first, showing
//! what would change, and only then the button that restores.

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use prexor_model::backup::{MERGED, REPLACED};
use serde::Deserialize;

use super::groups::urlencode;
use super::session::{Guarded, NoFields, Signed};
use super::widgets::{After, may, outcome, refusal, when};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::backups::{
    BackupView, RestorePlan, RestoreRequest, RestoreResult, create_backup, delete_backup,
    download_backup, list_backups, restore_backup, show_backup, verify_backup,
};
use crate::error::ApiError;

/// Backups the list shows at once.
const PAGE: i64 = 100;
/// The event an answer names (`HX-Trigger`) when the list changed: its rows reload.
const CHANGED: &str = "backups-changed";
/// Record ids of one collection a restore's plan lists before it only counts the rest.
const IDS_SHOWN: usize = 20;

pub fn routes() -> Router<App> {
    // Fixed paths start with `_`, which no backup id does.
    Router::new()
        .route("/ui/backups", get(list))
        .route("/ui/backups/_rows", get(rows))
        .route("/ui/backups/_create", post(create))
        .route("/ui/backups/{id}", get(detail))
        .route("/ui/backups/{id}/archive", get(archive))
        .route("/ui/backups/{id}/verify", post(verify))
        .route("/ui/backups/{id}/delete", post(delete))
        .route("/ui/backups/{id}/restore", post(restore))
}

/// `GET /ui/backups`.
pub async fn list(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after).await?;
    let url = after.rows_url("/ui/backups/_rows");
    let content = html! {
        div.title {
            h1 { "Backups" }
            @if may(who, "backups:write") {
                button #create-backup hx-post="/ui/backups/_create" hx-target="#action-result"
                    hx-disabled-elt="this" { "Create a backup" }
            }
        }
        p.note {
            "A consistent snapshot of the cluster's configuration, users and records, with every template and module version, kept in the cluster (any replica serves it). "
            "The CA's private key and the session key are never in it. Download one for a copy that survives the loss of MongoDB; open one to restore it."
        }
        div #action-result aria-live="polite" {}
        section.panel {
            div #backup-rows hx-get=(url) hx-trigger={ (CHANGED) " from:body" } hx-target="this"
                hx-swap="innerHTML" { (rows) }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/backups",
        "Backups",
        content,
    )))
}

/// `GET /ui/backups/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let backups = list_backups(app, who, &after.page(PAGE)).await?;
    let ours = &app.service.cluster_id;
    Ok(html! {
        @if backups.items.is_empty() {
            p.note #no-backups { "No backups yet." }
        } @else {
            table #backups {
                thead { tr {
                    th { "Backup" } th { "Created" } th { "By" } th { "Size" } th { "Holds" }
                    th { "Cluster" } th { "Version" } th { span.sr { "Actions" } }
                } }
                tbody {
                    @for b in &backups.items {
                        tr.backup data-backup=(b.id) {
                            td { a href={ "/ui/backups/" (urlencode(&b.id)) } { (b.id) } }
                            td { (when(b.created_at_ms)) }
                            td { (b.created_by) }
                            td { (size(b.size)) }
                            td { (holds(b)) }
                            td { (cluster(b.cluster_id.as_deref(), ours)) }
                            td { (b.version.as_deref().unwrap_or("–")) }
                            td.actions { (actions(who, &b.id, false)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &backups.next_cursor {
            p { a href={ "/ui/backups?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

/// A backup's buttons: verify and download (`backups:read`), delete (`backups:write`) and, in
/// the list, a link to its page to restore it (`backups:write`).
fn actions(who: &Principal, id: &str, on_its_page: bool) -> Markup {
    let path = format!("/ui/backups/{}", urlencode(id));
    let write = may(who, "backups:write");
    html! {
        button data-action="verify" hx-post={ (path) "/verify" } hx-target="#action-result"
            hx-disabled-elt="this" { "Verify" }
        " " a.button data-action="download" href={ (path) "/archive" } download={ (id) ".tar.gz" } { "Download" }
        @if write && !on_its_page {
            " " a.button data-action="restore" href=(path) { "Restore…" }
        }
        @if write {
            " " button.danger data-action="delete" hx-post={ (path) "/delete" } hx-target="#action-result"
                hx-confirm={ "Delete backup " (id) "? Its archive is removed from the cluster." } { "Delete" }
        }
    }
}

/// What a backup holds: its groups, users and versions in a line.
fn holds(b: &BackupView) -> String {
    let count = |name: &str| b.collections.get(name).copied().unwrap_or(0);
    format!(
        "{} groups, {} templates, {} users, {} blobs",
        count("groups"),
        count("templates"),
        count("users"),
        b.blobs
    )
}

/// The cluster a backup was made by: this one, or another (named).
fn cluster(theirs: Option<&str>, ours: &str) -> Markup {
    html! {
        @match theirs {
            Some(id) if id == ours => span.badge.good title=(id) { "this cluster" },
            Some(id) => span.badge.warn title=(id) { "other: " (id) },
            None => "–",
        }
    }
}

fn size(bytes: i64) -> String {
    let kib = bytes as f64 / 1024.0;
    if kib >= 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.1} KiB")
    }
}

/// An action's result line; when it changed the list, it says so (`HX-Trigger`), so the rows
/// reload.
fn changed(result: Result<String, ApiError>) -> Response {
    let done = result.is_ok();
    let mut response = outcome(result);
    if done {
        response
            .headers_mut()
            .insert("hx-trigger", HeaderValue::from_static(CHANGED));
    }
    response
}

/// `POST /ui/backups/_create`: a backup taken now.
pub async fn create(Guarded { signed, .. }: Guarded<NoFields>) -> Response {
    let made = create_backup(&signed.app, &signed.who).await;
    changed(made.map(|b| format!("backup {} created: {}, {}", b.id, size(b.size), holds(&b))))
}

/// `POST /ui/backups/{id}/verify`: the archive read back and checked against its manifest.
pub async fn verify(Path(id): Path<String>, Guarded { signed, .. }: Guarded<NoFields>) -> Response {
    match verify_backup(&signed.app, &signed.who, id).await {
        Ok(v) => {
            let documents: usize = v.collections.values().sum();
            let line = html! {
                p.ok #verified role="status" data-backup=(v.id) {
                    "backup " (v.id) " verified: every count and hash matches its manifest ("
                    (v.collections.len()) " collections, " (documents) " documents, " (v.blobs) " blobs)"
                }
            };
            Html(line.into_string()).into_response()
        }
        Err(err) => refusal(err.status(), err.message()),
    }
}

/// `GET /ui/backups/{id}/archive`: the archive as a `.tar.gz` download, as the REST download
/// streams it.
pub async fn archive(signed: Signed, Path(id): Path<String>) -> Result<Response, UiError> {
    Ok(download_backup(&signed.app, &signed.who, &id).await?)
}

/// `POST /ui/backups/{id}/delete`.
pub async fn delete(Path(id): Path<String>, Guarded { signed, .. }: Guarded<NoFields>) -> Response {
    let deleted = delete_backup(&signed.app, &signed.who, &id).await;
    changed(deleted.map(|()| format!("backup {id} deleted")))
}

/// `GET /ui/backups/{id}`: the backup, its manifest, its buttons and its restore.
pub async fn detail(signed: Signed, Path(id): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let backup = show_backup(&signed.app, who, &id).await?;
    let (view, manifest) = (&backup.view, &backup.manifest);
    let ours = &signed.app.service.cluster_id;
    let foreign = view.cluster_id.as_deref() != Some(ours.as_str());
    let content = html! {
        h1 { "Backup " span #backup-id { (id) } }
        div.actions #backup-actions { (actions(who, &id, true)) }
        div #action-result aria-live="polite" {}
        section.panel #backup-about {
            h2 { "Manifest" }
            dl.spec {
                dt { "Created" } dd { (when(view.created_at_ms)) " by " (view.created_by) }
                dt { "Cluster" } dd { (cluster(view.cluster_id.as_deref(), ours)) }
                dt { "PrexorCloud version" } dd { (view.version.as_deref().unwrap_or("–")) }
                dt { "Format" } dd { (manifest.format.map(|f| f.to_string()).unwrap_or_else(|| "–".into())) }
                dt { "CA fingerprint" } dd.mono { (manifest.ca_fingerprint.as_deref().unwrap_or("–")) }
                dt { "Archive" } dd { (size(view.size)) ", SHA-256 " span.mono { (view.hash) } }
                dt { "Blobs" } dd { (manifest.blobs.len()) " template and module versions" }
            }
            table #backup-collections {
                thead { tr { th { "Collection" } th { "Documents" } th { "A restore" } } }
                tbody {
                    @for (name, c) in &manifest.collections {
                        tr data-collection=(name) {
                            td.mono { (name) }
                            td { (c.count) }
                            td {
                                @if REPLACED.contains(&name.as_str()) { "replaces it" }
                                @else if MERGED.contains(&name.as_str()) { "adds what is missing" }
                                @else { "keeps it as it is" }
                            }
                        }
                    }
                }
            }
        }
        @if may(who, "backups:write") {
            section.panel #restore-panel {
                h2 { "Restore" }
                p.note {
                    "A restore replaces the groups, deployments, templates, modules, users, roles and API tokens with the backup's, adds the certificates and join tokens the cluster lacks, and keeps what runs: the schedulers then reconcile the running servers with the restored groups. "
                    "Every replica refuses changes while it runs. First see what it would change (a dry run changes nothing); then restore."
                }
                form.filters #restore-form hx-post={ "/ui/backups/" (urlencode(&id)) "/restore" } hx-target="#restore-result"
                    hx-disabled-elt="find button" {
                    input type="hidden" name="step" value="preview";
                    label { "Leases within " input name="timeout" value="30s" size="5"; }
                    @if foreign {
                        label.check { input type="checkbox" name="force" value="true"; " restore this other cluster's backup anyway" }
                    }
                    button #restore-preview type="submit" { "Show what a restore would change" }
                }
                div #restore-result aria-live="polite" {}
            }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/backups",
        &format!("Backup {id}"),
        content,
    )))
}

/// The restore form: `step` is `preview` (the dry run) or `restore`.
#[derive(Deserialize)]
pub struct RestoreForm {
    step: Option<String>,
    force: Option<String>,
    timeout: Option<String>,
}

/// `POST /ui/backups/{id}/restore`: the dry run (`step=preview`), answered with what would
/// change and the button that restores; or the restore itself (`step=restore`).
pub async fn restore(
    Path(id): Path<String>,
    Guarded { signed, form }: Guarded<RestoreForm>,
) -> Response {
    let dry_run = match form.step.as_deref() {
        Some("preview") => true,
        Some("restore") => false,
        other => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("step: {other:?} is neither \"preview\" nor \"restore\""),
            );
        }
    };
    let force = form
        .force
        .as_deref()
        .is_some_and(|f| f == "true" || f == "on");
    let timeout = form
        .timeout
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let request = RestoreRequest {
        dry_run,
        force,
        timeout: timeout.clone(),
    };
    match restore_backup(&signed.app, &signed.who, id.clone(), &request).await {
        Err(err) => refusal(err.status(), err.message()),
        Ok(result) if result.dry_run => {
            let confirm = html! {
                form #restore-confirm hx-post={ "/ui/backups/" (urlencode(&id)) "/restore" } hx-target="#restore-result"
                    hx-confirm={ "Restore backup " (id) " now? What the dry run lists is changed on the whole cluster." }
                    hx-disabled-elt="find button" {
                    input type="hidden" name="step" value="restore";
                    @if let Some(timeout) = &timeout { input type="hidden" name="timeout" value=(timeout); }
                    @if force { input type="hidden" name="force" value="true"; }
                    button.danger #restore-now type="submit" { "Restore backup " (id) " now" }
                }
            };
            let shown = html! {
                div #restore-dry-run {
                    p.ok role="status" { "Dry run of backup " (id) ": nothing was changed. A restore would do this:" }
                    (plan_part(&result))
                    (confirm)
                }
            };
            Html(shown.into_string()).into_response()
        }
        Ok(result) => {
            let leases = result.leases_taken.unwrap_or(0);
            let shown = html! {
                div #restore-done data-leases=(leases) {
                    p.ok role="status" {
                        "backup " (id) " restored under " (leases) " leases; the schedulers now reconcile what runs with it."
                    }
                    (plan_part(&result))
                }
            };
            Html(shown.into_string()).into_response()
        }
    }
}

/// What a restore changes (or changed), per collection.
fn plan_part(result: &RestoreResult) -> Markup {
    let plan: &RestorePlan = &result.plan;
    let listed = |ids: &[String]| -> String {
        let mut text = ids
            .iter()
            .take(IDS_SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if ids.len() > IDS_SHOWN {
            text.push_str(&format!(" and {} more", ids.len() - IDS_SHOWN));
        }
        text
    };
    html! {
        table.restore-plan data-dry-run=(result.dry_run) {
            thead { tr { th { "Collection" } th { "Kept" } th { "Added" } th { "Removed" } } }
            tbody {
                @for (name, r) in &plan.replace {
                    tr data-collection=(name) data-add=(r.add.len()) data-remove=(r.remove.len()) {
                        td.mono { (name) }
                        td { (r.keep) }
                        td { (r.add.len()) @if !r.add.is_empty() { ": " span.mono { (listed(&r.add)) } } }
                        td { (r.remove.len()) @if !r.remove.is_empty() { ": " span.mono { (listed(&r.remove)) } } }
                    }
                }
                @for (name, missing) in &plan.add_missing {
                    tr data-collection=(name) data-add=(missing) data-remove="0" {
                        td.mono { (name) }
                        td { "all" }
                        td { (missing) " missing ones" }
                        td { "none (merged)" }
                    }
                }
            }
        }
        p.note #restore-identity { "Users, roles, tokens, certificates and join tokens: " (plan.identity) "." }
        @if plan.replace.get("groups").is_some_and(|g| !g.remove.is_empty()) {
            p.warn { "Groups the backup lacks are marked for deletion: their instances are stopped." }
        }
    }
}
