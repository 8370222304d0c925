//! `/ui/groups`: the groups with their instances by state ([`crate::groups::list_groups`]), and
//! a group's page: its spec, its instances ([`crate::instances::list_instances`]), its
//! deployments with live progress ([`crate::deployments::list_deployments`]) and their pause /
//! resume / rollback ([`crate::deployments::transition`], [`crate::deployments::roll_back`]),
//! and start-instance for MANUAL groups ([`crate::groups::start_group_instance`]). Every part
//! and button needs what its REST endpoint needs; the server checks it again on every request.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, Response};
use maud::{Markup, html};
use prexor_domain::ScalingMode;
use prexor_model::workflows::DeploymentState;

use super::session::{Guarded, NoFields, Signed};
use super::widgets::{After, badge, events_source, live, may, outcome, refusal, when};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::deployments::{DeploymentView, list_deployments, roll_back, transition};
use crate::groups::{GroupView, list_groups, show_group, start_group_instance};
use crate::instances::{Filter, InstanceView, list_instances};
use crate::paging::{Page, PageRequest};

/// Rows a list page shows at once.
const PAGE: i64 = 100;
/// Deployments a group's page shows (newest first).
const DEPLOYMENTS_SHOWN: i64 = 10;

/// `GET /ui/groups`.
pub async fn list(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let url = after.rows_url("/ui/groups/_rows");
    let rows = rows_part(&signed.app, who, &after).await?;
    let content = html! {
        div.title {
            h1 { "Groups" }
            @if may(who, "groups:write") {
                a.button #new-group href="/ui/groups/_new" { "New group" }
            }
        }
        (events_source(who, html! {
            section.panel {
                (live(who, "group-rows", &url, None, rows))
            }
        }))
    };
    Ok(html(layout::page(&signed, "/ui/groups", "Groups", content)))
}

/// `GET /ui/groups/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let groups: Page<GroupView> = list_groups(app, who, &after.page(PAGE)).await?;
    Ok(html! {
        @if groups.items.is_empty() {
            p.note #no-groups { "No groups yet." }
        } @else {
            table #groups {
                thead { tr {
                    th { "Group" } th { "Scaling" } th { "Min / max" } th { "Instances" }
                    th { "Revision" } th { "Status" }
                } }
                tbody {
                    @for group in &groups.items {
                        tr.group data-group=(group.name) {
                            td { a href={ "/ui/groups/" (group.name) } { (group.name) } }
                            td { (scaling(group.spec.scaling)) }
                            td { (group.spec.min_instances) " / " (group.spec.max_instances) }
                            td.counts { (instance_counts(group)) }
                            td { (group.revision) }
                            td { (group_status(group)) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &groups.next_cursor {
            p { a href={ "/ui/groups?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

fn scaling(mode: ScalingMode) -> &'static str {
    match mode {
        ScalingMode::Static => "STATIC",
        ScalingMode::Dynamic => "DYNAMIC",
        ScalingMode::Manual => "MANUAL",
    }
}

fn instance_counts(group: &GroupView) -> Markup {
    let mut counts: Vec<(&String, &u32)> = group.status.instances.iter().collect();
    counts.sort();
    let mut warm: Vec<(&String, &u32)> = group.status.warm.iter().collect();
    warm.sort();
    html! {
        @if counts.is_empty() { span.muted { "none" } }
        @for (state, count) in counts {
            span class={ "badge " (super::widgets::tone(state)) } data-state=(state) { (state) ": " (count) } " "
        }
        @for (state, count) in warm {
            span.badge.muted data-warm=(state) title="in the warm pool" { "warm " (state) ": " (count) } " "
        }
    }
}

fn group_status(group: &GroupView) -> Markup {
    let usual =
        !group.deleting && !group.spec.maintenance && group.status.paused_until_ms.is_none();
    html! {
        @if usual { span.muted { "placing as its spec says" } }
        @if group.deleting { span.badge.warn { "deleting" } " " }
        @if group.spec.maintenance { span.badge.warn { "maintenance" } " " }
        @if let Some(until) = group.status.paused_until_ms {
            span.badge.bad title=[group.status.pause_reason.as_deref()] { "paused until " (when(until)) }
        }
    }
}

/// `GET /ui/groups/{name}`.
pub async fn detail(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let group = show_group(&signed.app, who, &name).await?;
    let live_part = live_part(&signed.app, who, &name).await?;
    let manual = group.spec.scaling == ScalingMode::Manual;
    let content = html! {
        div.title {
            h1 { "Group " span #group-name { (group.name) } }
            @if may(who, "groups:write") {
                a.button #edit-group href={ "/ui/groups/" (group.name) "/edit" } { "Edit" }
            }
            @if manual && may(who, "instances:write") {
                button #start-instance hx-post={ "/ui/groups/" (group.name) "/start" }
                    hx-target="#action-result" { "Start an instance" }
            }
        }
        div #action-result aria-live="polite" {}
        (events_source(who, live(who, "group-live", &format!("/ui/groups/{name}/live"), None, live_part)))
    };
    Ok(html(layout::page(
        &signed,
        "/ui/groups",
        &format!("Group {name}"),
        content,
    )))
}

/// `GET /ui/groups/{name}/live`: the group's instances and deployments, as the page reloads them.
pub async fn live_rows(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    Ok(html(live_part(&signed.app, &signed.who, &name).await?))
}

async fn live_part(app: &App, who: &Principal, name: &str) -> Result<Markup, UiError> {
    let filter = Filter {
        group: Some(name.to_owned()),
        ..Filter::default()
    };
    let instances = list_instances(
        app,
        who,
        filter,
        &PageRequest {
            limit: PAGE,
            after: None,
        },
    );
    let deployments = async {
        if !may(who, "deployments:read") {
            return Ok(None);
        }
        let page = PageRequest {
            limit: DEPLOYMENTS_SHOWN,
            after: None,
        };
        list_deployments(app, who, name, &page).await.map(Some)
    };
    let (group, instances, deployments) =
        tokio::try_join!(show_group(app, who, name), instances, deployments)?;
    Ok(html! {
        section.panel #spec {
            h2 { "Spec (revision " (group.revision) ")" }
            dl.spec {
                dt { "Platform" } dd { (group.spec.platform) " " (group.spec.version) }
                dt { "Command" } dd.mono { (group.spec.command.join(" ")) }
                dt { "Memory" } dd { (group.spec.memory_mb) " MB" }
                dt { "Ports" } dd { (group.spec.port_range.from) "–" (group.spec.port_range.to) }
                dt { "Scaling" } dd { (scaling(group.spec.scaling)) ", " (group.spec.min_instances) " to " (group.spec.max_instances) " instances" }
                dt { "Status" } dd { (group_status(&group)) }
            }
        }
        section.panel #group-instances {
            h2 { "Instances" }
            (instance_table(&instances.items))
        }
        @if let Some(deployments) = deployments {
            section.panel #deployments {
                h2 { "Deployments" }
                (deployment_table(who, &deployments.items))
            }
        }
    })
}

/// A table of instances (the group's page; the instances page has its own with selection).
fn instance_table(instances: &[InstanceView]) -> Markup {
    html! {
        @if instances.is_empty() {
            p.note { "No instances." }
        } @else {
            table.instances {
                thead { tr { th { "Instance" } th { "Node" } th { "State" } th { "Port" } th { "Attempt" } } }
                tbody {
                    @for instance in instances {
                        tr.instance data-instance=(instance.id) data-state=(instance.state) {
                            td { a href={ "/ui/instances/" (instance.id) } { (instance.id) } }
                            td.mono { (instance.node_id) }
                            td { (badge(&instance.state)) }
                            td { (instance.port) }
                            td { (instance.attempt) }
                        }
                    }
                }
            }
        }
    }
}

fn deployment_table(who: &Principal, deployments: &[DeploymentView]) -> Markup {
    let write = may(who, "deployments:write");
    let rollback = write && may(who, "groups:write");
    html! {
        @if deployments.is_empty() {
            p.note { "No deployments." }
        } @else {
            table {
                thead { tr {
                    th { "Deployment" } th { "State" } th { "Revision" } th { "Progress" }
                    th { "By" } th { "Started" } th {}
                } }
                tbody {
                    @for d in deployments {
                        @let open = matches!(d.state, DeploymentState::Rolling | DeploymentState::Paused);
                        tr.deployment data-deployment=(d.id) data-state=(d.state.as_str()) {
                            td.mono { (d.id) }
                            td { (badge(d.state.as_str())) @if d.rolled_back { " " span.badge.warn { "rolling back" } } }
                            td { (d.from_revision) " → " (d.to_revision) }
                            td {
                                progress max=(d.live.active.max(1)) value=(d.live.updated) {}
                                " " (d.live.updated) " of " (d.live.active) " updated"
                            }
                            td { (d.created_by) }
                            td { (when(d.created_at_ms)) }
                            td.actions {
                                @if open && write {
                                    @if d.state == DeploymentState::Rolling {
                                        (deployment_button(&d.id, "pause", "Pause"))
                                    } @else {
                                        (deployment_button(&d.id, "resume", "Resume"))
                                    }
                                }
                                @if open && rollback && !d.rolled_back {
                                    (deployment_button(&d.id, "rollback", "Roll back"))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn deployment_button(id: &str, action: &str, label: &str) -> Markup {
    html! {
        button.small data-action=(action) hx-post={ "/ui/deployments/" (id) "/" (action) }
            hx-target="#action-result" { (label) }
    }
}

/// `POST /ui/groups/{name}/start`: start an instance of a MANUAL group.
pub async fn start(
    Path(name): Path<String>,
    Guarded { signed, .. }: Guarded<NoFields>,
) -> Response {
    outcome(
        start_group_instance(&signed.app, &signed.who, &name)
            .await
            .map(|accepted| accepted.message),
    )
}

/// `POST /ui/deployments/{id}/{action}`: pause, resume or roll back a deployment.
pub async fn deployment_action(
    Path((id, action)): Path<(String, String)>,
    Guarded { signed, .. }: Guarded<NoFields>,
) -> Response {
    let Signed { app, who, .. } = signed;
    let moves = match action.as_str() {
        "pause" => Some((DeploymentState::Rolling, DeploymentState::Paused)),
        "resume" => Some((DeploymentState::Paused, DeploymentState::Rolling)),
        _ => None,
    };
    let done = match (moves, action.as_str()) {
        (Some((from, to)), _) => transition(app, who, id, from, to)
            .await
            .map(|d| format!("deployment {} is {}", d.0.id, d.0.state)),
        (None, "rollback") => roll_back(&app, &who, &id).await.map(|d| {
            format!(
                "deployment {} rolls back to revision {}",
                d.id, d.from_revision
            )
        }),
        (None, other) => {
            return refusal(
                StatusCode::NOT_FOUND,
                &format!("a deployment has no action {other:?}: pause, resume or rollback"),
            );
        }
    };
    outcome(done)
}

/// `text` for a query string.
pub fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|s| s.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}
