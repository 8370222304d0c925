//! `/ui/templates`: the templates and their versions ([`crate::templates::list_templates`],
//! [`crate::templates::show_template`]), reloaded as the cluster changes; uploading a version
//! (a tar.gz streamed through [`crate::templates::upload_template`], the REST upload's own path
//! with its limits and checks; `upload.js` sends the file as the request body) and rolling back
//! to an earlier one ([`crate::templates::rollback_template`]).

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::assets::{UPLOAD, asset};
use super::groups::urlencode;
use super::session::{Guarded, GuardedUpload, Signed};
use super::widgets::{After, events_source, live, may, refusal, when};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::templates::{
    TemplateView, list_templates, rollback_template, show_template, upload_template,
};

/// Templates the list shows at once.
const PAGE: i64 = 100;

/// The upload form: a template `name` (fixed on a template's page) and its .tar.gz.
fn upload_form(app: &App, name: Option<&str>) -> Markup {
    let limit_mib = app.uploads.layer_bytes / 1024 / 1024;
    html! {
        section.panel #upload-panel {
            h2 { "Upload a version" }
            p.note { "A .tar.gz of the server's files, at most " (limit_mib) " MiB; it becomes the current version (the next group update or deployment picks it up)." }
            form.filters #upload-form {
                @match name {
                    Some(name) => input type="hidden" name="name" value=(name);,
                    None => label { "Template " input name="name" required placeholder="lobby-base"; },
                }
                label { "Archive " input #upload-file type="file" name="file" accept=".tar.gz,.tgz,application/gzip" required; }
                button #upload-submit type="submit" { "Upload" }
            }
            div #upload-result aria-live="polite" {}
            script src=(asset(UPLOAD).url()) defer {}
        }
    }
}

/// `GET /ui/templates`.
pub async fn list(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after).await?;
    let url = after.rows_url("/ui/templates/_rows");
    let content = html! {
        h1 { "Templates" }
        (events_source(who, html! {
            section.panel { (live(who, "template-rows", &url, None, rows)) }
        }))
        @if may(who, "templates:write") { (upload_form(&signed.app, None)) }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/templates",
        "Templates",
        content,
    )))
}

/// `GET /ui/templates/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let page = after.page(PAGE);
    let templates = list_templates(app, who, &page).await?;
    Ok(html! {
        @if templates.items.is_empty() {
            p.note #no-templates { "No templates yet." }
        } @else {
            table #templates {
                thead { tr { th { "Template" } th { "Current version" } th { "Versions" } th { "Size" } th { "Layer (SHA-256)" } } }
                tbody {
                    @for t in &templates.items {
                        tr.template data-template=(t.name) data-current=[t.current] {
                            td { a href={ "/ui/templates/" (urlencode(&t.name)) } { (t.name) } }
                            td { (t.current.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                            td { (t.versions) }
                            td { (t.size.map(bytes).unwrap_or_else(|| "–".into())) }
                            td.mono { (t.hash.as_deref().map(short).unwrap_or("–")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &templates.next_cursor {
            p { a href={ "/ui/templates?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

/// `GET /ui/templates/{name}`.
pub async fn detail(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let template = show_template(&signed.app, who, &name).await?;
    let url = format!("/ui/templates/{}/versions", urlencode(&name));
    let versions = versions_part(who, &template, None);
    let content = html! {
        h1 { "Template " span #template-name { (name) } }
        (events_source(who, html! {
            section.panel { h2 { "Versions" } (live(who, "template-versions", &url, None, versions)) }
        }))
        @if may(who, "templates:write") { (upload_form(&signed.app, Some(&name))) }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/templates",
        &format!("Template {name}"),
        content,
    )))
}

/// `GET /ui/templates/{name}/versions`: the template page's versions, as the page reloads them.
pub async fn versions(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let template = show_template(&signed.app, &signed.who, &name).await?;
    Ok(html(versions_part(&signed.who, &template, None)))
}

/// The versions, newest first, with a roll-back button for each but the current one (with
/// `templates:write`), and `said`: the result of the action that rendered them.
fn versions_part(who: &Principal, template: &TemplateView, said: Option<Markup>) -> Markup {
    let write = may(who, "templates:write");
    let name = urlencode(&template.id);
    html! {
        @if let Some(said) = said { (said) }
        table #versions data-current=[template.current] {
            thead { tr {
                th { "Version" } th { "Size" } th { "Files" } th { "Uploaded" } th { "Layer (SHA-256)" }
                @if write { th { span.sr { "Actions" } } }
            } }
            tbody {
                @for v in template.versions.iter().rev() {
                    @let current = template.current == Some(v.version);
                    tr.version data-version=(v.version) data-current=(current) {
                        td { (v.version) @if current { " " span.badge.good { "CURRENT" } } }
                        td { (bytes(v.size)) }
                        td { (v.files) }
                        td { (when(v.uploaded_at_ms)) " by " (v.uploaded_by) }
                        td.mono title=(v.hash) { (short(&v.hash)) }
                        @if write {
                            td.actions {
                                @if !current {
                                    button data-action="rollback" hx-post={ "/ui/templates/" (name) "/rollback" }
                                        hx-vals={ r#"{"version":""# (v.version) r#""}"# }
                                        hx-target="#template-versions" {
                                        @if template.current.is_some_and(|c| v.version < c) { "Roll back to " (v.version) }
                                        @else { "Make " (v.version) " current" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct RollbackForm {
    version: Option<String>,
}

/// `POST /ui/templates/{name}/rollback`: `version` current again; answers with the versions
/// and the result.
pub async fn rollback(
    Path(name): Path<String>,
    Guarded { signed, form }: Guarded<RollbackForm>,
) -> Response {
    let text = form.version.unwrap_or_default();
    let Ok(version) = text.trim().parse::<i64>() else {
        return refusal(
            StatusCode::BAD_REQUEST,
            &format!("version: {text:?} is not a version number"),
        );
    };
    let (app, who) = (&signed.app, &signed.who);
    match rollback_template(app, who, &name, version).await {
        Ok(template) => {
            let said = html! { p.ok role="status" { "template " (name) " is back at version " (version) } };
            Html(versions_part(who, &template, Some(said)).into_string()).into_response()
        }
        Err(err) => {
            let said = html! { p.error role="alert" { (err.message()) } };
            match show_template(app, who, &name).await {
                Ok(template) => (
                    err.status(),
                    Html(versions_part(who, &template, Some(said)).into_string()),
                )
                    .into_response(),
                Err(_) => refusal(err.status(), err.message()),
            }
        }
    }
}

/// `PUT /ui/templates/{name}/upload` with the .tar.gz as the body: a new version, streamed
/// through the REST upload's path.
pub async fn upload(
    Path(name): Path<String>,
    GuardedUpload {
        signed,
        headers,
        body,
    }: GuardedUpload,
) -> Response {
    match upload_template(&signed.app, &signed.who, &name, &headers, body).await {
        Ok((status, template)) => {
            let current = template.current.unwrap_or_default();
            let said = if status == StatusCode::CREATED {
                format!("version {current} of template {name} uploaded; it is the current version")
            } else {
                format!(
                    "the same bytes as the current version {current} of template {name}: nothing changed"
                )
            };
            let line = html! { p.ok role="status" #upload-done data-version=(current) { (said) } };
            (status, Html(line.into_string())).into_response()
        }
        Err(err) => refusal(err.status(), err.message()),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn bytes(n: i64) -> String {
    match n {
        n if n >= 1024 * 1024 => format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0),
        n if n >= 1024 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
