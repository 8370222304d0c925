//! `/ui/nodes`: the nodes with their resources, reserved memory, state and owning gateway
//! ([`crate::nodes::list_nodes`], [`crate::nodes::show_node`]), reloaded as the cluster changes;
//! cordon / uncordon ([`crate::nodes::set_cordon`]), drain with its live progress
//! ([`crate::nodes::start_drain`]), undrain ([`crate::nodes::undrain_node`]), delete
//! ([`crate::nodes::delete_node`]) and join tokens ([`crate::nodes::create_join_token`], shown
//! once), each as its REST endpoint does it.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::groups::urlencode;
use super::session::{Guarded, Signed};
use super::widgets::{After, badge, events_source, live, may, outcome, refusal, when};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::instances::{Filter, list_instances};
use crate::nodes::{NodeView, list_nodes, show_node};
use crate::paging::PageRequest;

/// Nodes the list shows at once.
const PAGE: i64 = 100;
/// Instances of a node its page lists.
const INSTANCES_SHOWN: i64 = 50;

/// `GET /ui/nodes`.
pub async fn list(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after).await?;
    let url = after.rows_url("/ui/nodes/_rows");
    let content = html! {
        h1 { "Nodes" }
        (events_source(who, html! {
            section.panel { (live(who, "node-rows", &url, None, rows)) }
        }))
        @if may(who, "nodes:write") {
            section.panel #join-token-panel {
                h2 { "Join a node" }
                p.note { "A single-use token the node's daemon redeems once (its " code { "daemon.joinToken" } ") to get its certificate." }
                form.filters #join-token-form hx-post="/ui/nodes/_join-token" hx-target="#join-token-result" {
                    label { "Node id " input name="node" required placeholder="node-2"; }
                    label { "Valid for " input name="expiresIn" value="1h" size="6"; }
                    button type="submit" { "Create join token" }
                }
                div #join-token-result aria-live="polite" {}
            }
        }
    };
    Ok(html(layout::page(&signed, "/ui/nodes", "Nodes", content)))
}

/// `GET /ui/nodes/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let page = after.page(PAGE);
    let nodes = list_nodes(app, who, &page).await?;
    Ok(html! {
        @if nodes.items.is_empty() {
            p.note #no-nodes { "No node has joined yet." }
        } @else {
            table #nodes {
                thead { tr {
                    th { "Node" } th { "State" } th { "Gateway" } th { "Memory reserved / allocatable" }
                    th { "Available" } th { "CPU cores" } th { "Load (1m)" } th { "Version" }
                } }
                tbody {
                    @for node in &nodes.items {
                        tr.node data-node=(node.id) data-state=(node.state.as_str())
                            data-cordoned=(node.cordoned) {
                            td { a href={ "/ui/nodes/" (node.id) } { (node.id) } }
                            td.state { (node_state(node)) }
                            td.mono { (node.gateway) }
                            td { (memory(node)) }
                            td { (node.resources.as_ref().map(|r| format!("{} MB", r.memory_available_mb)).unwrap_or_else(|| "–".into())) }
                            td { (node.resources.as_ref().map(|r| r.cpu_cores.to_string()).unwrap_or_else(|| "–".into())) }
                            td { (node.resources.as_ref().map(|r| format!("{:.2}", r.load_average_1m)).unwrap_or_else(|| "–".into())) }
                            td { (node.version) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &nodes.next_cursor {
            p { a href={ "/ui/nodes?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

/// The node's state with its cordon and drain.
fn node_state(node: &NodeView) -> Markup {
    html! {
        (badge(node.state.as_str()))
        @if node.cordoned { " " span.badge.warn.cordoned { "CORDONED" } }
        @if let Some(drain) = node.drain.as_ref().filter(|d| d.state.is_open()) {
            " " span.badge.warn.draining { "DRAIN " (drain.state.as_str()) }
        }
    }
}

fn memory(node: &NodeView) -> String {
    match &node.resources {
        Some(r) => format!("{} / {} MB", node.reserved_mb, r.memory_allocatable_mb),
        None => format!("{} MB / –", node.reserved_mb),
    }
}

/// `GET /ui/nodes/{id}`.
pub async fn detail(signed: Signed, Path(id): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let live_part = live_part(&signed.app, who, &id).await?;
    let write = may(who, "nodes:write");
    let path = format!("/ui/nodes/{}", urlencode(&id));
    let content = html! {
        div.title {
            h1 { "Node " span #node-id { (id) } }
        }
        @if write {
            div.actions #node-actions {
                button #cordon-node hx-post={ (path) "/cordon" } hx-target="#action-result" { "Cordon" }
                button #uncordon-node hx-post={ (path) "/uncordon" } hx-target="#action-result" { "Uncordon" }
                button #undrain-node hx-post={ (path) "/undrain" } hx-target="#action-result" { "Undrain" }
                button.danger #delete-node hx-post={ (path) "/delete" } hx-target="#action-result"
                    hx-confirm={ "Delete node " (id) "? Its certificates are revoked; it must join again." } { "Delete" }
            }
            form.filters #drain-form hx-post={ (path) "/drain" } hx-target="#action-result" {
                label { "Instances get " input name="timeout" value="10m" size="6"; " to stop" }
                label.check { input type="checkbox" name="shutdown" value="true"; " shut the daemon down once empty" }
                button.danger #drain-node type="submit" { "Drain" }
            }
        }
        div #action-result aria-live="polite" {}
        (events_source(who, live(who, "node-live", &format!("{path}/live"), None, live_part)))
    };
    Ok(html(layout::page(
        &signed,
        "/ui/nodes",
        &format!("Node {id}"),
        content,
    )))
}

/// `GET /ui/nodes/{id}/live`: the node page's live part, as the page reloads it.
pub async fn live_rows(signed: Signed, Path(id): Path<String>) -> Result<Html<String>, UiError> {
    Ok(html(live_part(&signed.app, &signed.who, &id).await?))
}

/// The node's state, resources and drain, and its instances (with `instances:read`).
async fn live_part(app: &App, who: &Principal, id: &str) -> Result<Markup, UiError> {
    let node = show_node(app, who, id).await?;
    let instances = if may(who, "instances:read") {
        let filter = Filter {
            node: Some(id.to_owned()),
            ..Filter::default()
        };
        let page = PageRequest {
            limit: INSTANCES_SHOWN,
            after: None,
        };
        Some(list_instances(app, who, filter, &page).await?)
    } else {
        None
    };
    Ok(html! {
        section.panel #node-about {
            h2 { "State" }
            dl.spec {
                dt { "State" } dd #node-state data-state=(node.state.as_str()) data-cordoned=(node.cordoned) { (node_state(&node)) }
                dt { "Gateway" } dd.mono { (node.gateway) " (ownership token " (node.ownership_token) ")" }
                dt { "Memory reserved / allocatable" } dd { (memory(&node)) }
                @if let Some(r) = &node.resources {
                    dt { "Memory total / available" } dd { (r.memory_total_mb) " / " (r.memory_available_mb) " MB" }
                    dt { "CPU cores" } dd { (r.cpu_cores) }
                    dt { "Load (1m)" } dd { (format!("{:.2}", r.load_average_1m)) }
                }
                @if let Some(i) = &node.isolation {
                    dt { "Servers run as" } dd { (i.run_as) }
                    dt { "Limits" } dd { (i.limits) }
                }
                dt { "Version" } dd { (node.version) }
                dt { "Host" } dd.mono { (node.host_id) }
                dt { "Labels" } dd {
                    @if node.labels.is_empty() { "–" }
                    @for (k, v) in &node.labels { code { (k) "=" (v) } " " }
                }
                dt { "Connected" } dd { (when(node.connected_at_ms)) }
                dt { "Last heartbeat" } dd { (when(node.last_heartbeat_ms)) }
                @if let Some(gone) = node.disconnected_at_ms.filter(|ms| *ms > 0) {
                    dt { "Disconnected" } dd { (when(gone)) }
                }
            }
        }
        section.panel #node-drain {
            h2 { "Drain" }
            @match &node.drain {
                None => p.note { "Never drained." },
                Some(d) => dl.spec {
                    dt { "State" } dd #drain-state data-state=(d.state.as_str()) { (badge(d.state.as_str())) }
                    dt { "Requested" } dd { (when(d.requested_at_ms)) " by " (d.requested_by) }
                    dt { "Timeout" } dd { (d.timeout_ms / 1000) " s" @if d.shutdown { ", then the daemon shuts down" } }
                    @if let Some(ms) = d.started_at_ms { dt { "Started" } dd { (when(ms)) } }
                    @if let Some(ms) = d.finished_at_ms { dt { "Finished" } dd { (when(ms)) } }
                    @if let Some(by) = &d.cancelled_by { dt { "Cancelled by" } dd { (by) } }
                    @if let Some(instances) = &instances {
                        dt { "Instances left" } dd #drain-left { (instances.items.iter().filter(|i| !prexor_model::instances::has_ended(&i.state)).count()) }
                    }
                },
            }
        }
        @if let Some(instances) = &instances {
            section.panel #node-instances {
                h2 { "Instances" }
                @if instances.items.is_empty() {
                    p.note { "None on this node." }
                } @else {
                    table {
                        thead { tr { th { "Instance" } th { "Group" } th { "State" } th { "Port" } th { "Memory" } } }
                        tbody {
                            @for i in &instances.items {
                                tr.instance data-instance=(i.id) data-state=(i.state) {
                                    td { a href={ "/ui/instances/" (i.id) } { (i.id) } }
                                    td { a href={ "/ui/groups/" (i.group) } { (i.group) } }
                                    td { (badge(&i.state)) }
                                    td { (i.port) }
                                    td { (i.memory_mb) " MB" }
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A node action's form: the drain's `timeout` and `shutdown`, the join token's node and
/// validity.
#[derive(Deserialize, Default)]
pub struct ActionForm {
    timeout: Option<String>,
    shutdown: Option<String>,
    node: Option<String>,
    #[serde(rename = "expiresIn")]
    expires_in: Option<String>,
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// `POST /ui/nodes/{id}/{action}`: cordon, uncordon, drain, undrain or delete node `id`.
pub async fn action(
    Path((id, action)): Path<(String, String)>,
    Guarded { signed, form }: Guarded<ActionForm>,
) -> Response {
    let (app, who) = (signed.app, signed.who);
    let done = match action.as_str() {
        "cordon" | "uncordon" => {
            let cordon = action == "cordon";
            crate::nodes::set_cordon(app, who, id.clone(), cordon)
                .await
                .map(|_| format!("node {id} {action}ed"))
        }
        "drain" => {
            let shutdown = given(&form.shutdown).is_some_and(|v| v == "true" || v == "on");
            crate::nodes::start_drain(&app, &who, &id, given(&form.timeout), shutdown)
                .await
                .map(|d| format!("drain of node {id} requested ({})", d.state.as_str()))
        }
        "undrain" => crate::nodes::undrain_node(app, who, id.clone())
            .await
            .map(|_| format!("drain of node {id} cancelled; the node is uncordoned")),
        "delete" => crate::nodes::delete_node(&app, &who, &id)
            .await
            .map(|()| format!("node {id} deleted; its certificates are revoked")),
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                &format!(
                    "a node has no action {other:?}: cordon, uncordon, drain, undrain or delete"
                ),
            );
        }
    };
    outcome(done)
}

/// `POST /ui/nodes/_join-token`: a join token for the form's node, shown this once.
pub async fn join_token(Guarded { signed, form }: Guarded<ActionForm>) -> Response {
    let Some(node) = given(&form.node) else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "node id: name the node the token is for",
        );
    };
    let reply =
        crate::nodes::create_join_token(&signed.app, &signed.who, node, given(&form.expires_in))
            .await;
    match reply {
        Err(err) => refusal(err.status(), err.message()),
        Ok(reply) => {
            let shown = html! {
                div.ok #join-token-shown role="status" {
                    p { "Join token for node " strong { (reply.node_id) } ", valid until " (when(reply.expires_at_ms)) ":" }
                    p { code.token #join-token { (reply.token) } }
                    p.warn { strong { "Copy it now:" } " it is shown only this once and cannot be read again (create a new one if it is lost)." }
                    p.note { "CA fingerprint " span.mono { (reply.ca_fingerprint) } }
                }
            };
            (StatusCode::CREATED, Html(shown.into_string())).into_response()
        }
    }
}
