//! `/ui/modules`: the platform modules with their state ([`crate::modules::list_modules`],
//! [`crate::modules::show_module`]) and the mutation in flight
//! ([`crate::modules::mutation_in_flight`]), reloaded as the cluster changes; install, upgrade
//! and uninstall ([`crate::modules::mutate`]), each as its REST endpoint requests it.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::groups::urlencode;
use super::session::{Guarded, Signed};
use super::widgets::{After, badge, events_source, live, may, outcome, refusal, when};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::modules::{
    ModuleView, Mutation, MutationView, list_modules, mutate, mutation_in_flight, show_module,
};

/// Modules the list shows at once.
const PAGE: i64 = 100;

/// `GET /ui/modules`.
pub async fn list(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after).await?;
    let url = after.rows_url("/ui/modules/_rows");
    let content = html! {
        h1 { "Modules" }
        p.note { "Upload a module's versions with " code { "prexorctl" } " or " code { "PUT /api/v1/modules/{name}/versions/{version}" } "; install, upgrade and uninstall them here." }
        (events_source(who, html! {
            section.panel { (live(who, "module-rows", &url, None, rows)) }
        }))
    };
    Ok(html(layout::page(
        &signed,
        "/ui/modules",
        "Modules",
        content,
    )))
}

/// `GET /ui/modules/_rows`: the list's table and the mutation in flight, as the page reloads
/// them.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let page = after.page(PAGE);
    let (modules, in_flight) =
        tokio::try_join!(list_modules(app, who, &page), mutation_in_flight(app, who),)?;
    Ok(html! {
        (in_flight_note(in_flight.as_ref()))
        @if modules.items.is_empty() {
            p.note #no-modules { "No modules yet." }
        } @else {
            table #modules {
                thead { tr { th { "Module" } th { "State" } th { "Active version" } th { "Versions" } th { "Last change" } } }
                tbody {
                    @for m in &modules.items {
                        tr.module data-module=(m.id) data-state=(m.state.as_str()) {
                            td { a href={ "/ui/modules/" (urlencode(&m.id)) } { (m.id) } }
                            td { (badge(m.state.as_str())) }
                            td { (active_version(m).unwrap_or("–")) }
                            td { (m.versions.len()) }
                            td { @if let Some(last) = &m.last_mutation {
                                (last.action) " " (last.version.as_deref().unwrap_or("")) ": " (last.result)
                            } @else { "–" } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &modules.next_cursor {
            p { a href={ "/ui/modules?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

fn active_version(module: &ModuleView) -> Option<&str> {
    module
        .active
        .as_ref()
        .and_then(|a| a.as_ref())
        .map(|a| a.version.as_str())
}

/// The cluster's one module mutation in flight, if any.
fn in_flight_note(mutation: Option<&MutationView>) -> Markup {
    html! {
        @if let Some(m) = mutation {
            p.warn #mutation-in-flight data-module=(m.module) {
                "In flight: " (m.action) " of " (m.module)
                @if let Some(v) = &m.version { " " (v) }
                ", " (badge(m.step.as_str())) ", requested by " (m.requested_by) " at " (when(m.requested_at_ms))
                " (one module change at a time, cluster-wide)"
            }
        }
    }
}

/// `GET /ui/modules/{name}`.
pub async fn detail(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let part = module_part(&signed.app, who, &name).await?;
    let url = format!("/ui/modules/{}/live", urlencode(&name));
    let content = html! {
        h1 { "Module " span #module-name { (name) } }
        div #action-result aria-live="polite" {}
        (events_source(who, live(who, "module-live", &url, None, part)))
    };
    Ok(html(layout::page(
        &signed,
        "/ui/modules",
        &format!("Module {name}"),
        content,
    )))
}

/// `GET /ui/modules/{name}/live`: the module page's state and versions, as the page reloads
/// them.
pub async fn live_part(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    Ok(html(module_part(&signed.app, &signed.who, &name).await?))
}

async fn module_part(app: &App, who: &Principal, name: &str) -> Result<Markup, UiError> {
    let (module, in_flight) =
        tokio::try_join!(show_module(app, who, name), mutation_in_flight(app, who))?;
    let write = may(who, "modules:write");
    let active = active_version(&module);
    let installed = module.state.as_str() == "ACTIVE";
    let path = format!("/ui/modules/{}", urlencode(name));
    Ok(html! {
        (in_flight_note(in_flight.as_ref()))
        section.panel #module-about {
            h2 { "State" }
            dl.spec {
                dt { "State" } dd #module-state data-state=(module.state.as_str()) { (badge(module.state.as_str())) }
                dt { "Active version" } dd #module-active { (active.unwrap_or("–")) }
                @if let Some(Some(a)) = &module.active {
                    dt { "Since" } dd { (when(a.since_ms)) }
                }
                dt { "Created" } dd { (when(module.created_at_ms)) }
            }
            @if write && installed {
                button.danger #uninstall-module hx-post={ (path) "/uninstall" } hx-target="#action-result"
                    hx-confirm={ "Uninstall module " (name) "?" } { "Uninstall" }
            }
        }
        section.panel #module-versions {
            h2 { "Versions" }
            table #versions {
                thead { tr {
                    th { "Version" } th { "Size" } th { "Files" } th { "Uploaded" }
                    @if write { th { span.sr { "Actions" } } }
                } }
                tbody {
                    @for v in module.versions.iter().rev() {
                        @let running = active == Some(v.version.as_str());
                        tr.version data-version=(v.version) {
                            td { (v.version) @if running { " " span.badge.good { "ACTIVE" } } }
                            td { (v.size) " B" }
                            td { (v.files) }
                            td { (when(v.uploaded_at_ms)) " by " (v.uploaded_by) }
                            @if write {
                                td.actions {
                                    @let vals = format!(r#"{{"version":{}}}"#, serde_json::Value::from(v.version.as_str()));
                                    @if !installed {
                                        button data-action="install" hx-post={ (path) "/install" } hx-vals=(vals)
                                            hx-target="#action-result" { "Install " (v.version) }
                                    } @else if !running {
                                        button data-action="upgrade" hx-post={ (path) "/upgrade" } hx-vals=(vals)
                                            hx-target="#action-result" { "Upgrade to " (v.version) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if !module.history.is_empty() {
            section.panel #module-history {
                h2 { "Changes" }
                table {
                    thead { tr { th { "When" } th { "Change" } th { "By" } th { "Result" } } }
                    tbody {
                        @for h in module.history.iter().rev() {
                            tr.change data-action=(h.action) {
                                td { (when(h.at_ms)) }
                                td { (h.action) " " (h.version.as_deref().unwrap_or("")) }
                                td { (h.by) }
                                td { (h.result) }
                            }
                        }
                    }
                }
            }
        }
    })
}

#[derive(Deserialize)]
pub struct VersionForm {
    version: Option<String>,
}

/// `POST /ui/modules/{name}/{action}`: install, upgrade (to the form's `version`) or uninstall.
pub async fn action(
    Path((name, action)): Path<(String, String)>,
    Guarded { signed, form }: Guarded<VersionForm>,
) -> Response {
    let version = form
        .version
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    let mutation = match action.as_str() {
        "install" | "upgrade" if version.is_empty() => {
            return refusal(StatusCode::BAD_REQUEST, "version: name the version");
        }
        "install" => Mutation::Install(version),
        "upgrade" => Mutation::Upgrade(version),
        "uninstall" => Mutation::Uninstall,
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                &format!("a module has no action {other:?}: install, upgrade or uninstall"),
            );
        }
    };
    let requested = mutate(signed.app, signed.who, name.clone(), mutation).await;
    outcome(requested.map(|(_, m)| {
        let version = m.0.version.map(|v| format!(" {v}")).unwrap_or_default();
        format!(
            "{}{version} of module {name} requested; the platform-module holder applies it",
            m.0.action
        )
    }))
}
