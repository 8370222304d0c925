//! `/ui/instances`: the instances, filtered by group, state and node
//! ([`crate::instances::list_instances`]), their rows reloaded as the cluster changes (the
//! selection kept), and bulk stop / kill of the selected ones: each through
//! [`crate::instances::halt`], as `POST /api/v1/instances/{id}/stop|kill` does, with a result
//! per instance.

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};
use prexor_domain::InstanceState;

use super::groups::urlencode;
use super::session::{Guarded, Signed};
use super::widgets::{badge, events_source, live, may, refusal};
use super::{UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::instances::{Filter, list_instances};
use crate::paging::PageRequest;

/// Rows the list shows at once.
const PAGE: i64 = 200;
/// Instances one bulk action takes.
const BULK_MAX: usize = 200;

/// The list's query: its filters, the selected rows (`id`, repeated) and the page.
struct ListQuery {
    filter: Filter,
    selected: Vec<String>,
    after: Option<String>,
}

/// The query string's pairs (a key may repeat).
fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, UiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| UiError::refused(StatusCode::BAD_REQUEST, format!("the query string: {e}")))
}

fn list_query(raw: Option<&str>) -> Result<ListQuery, UiError> {
    let mut query = ListQuery {
        filter: Filter::default(),
        selected: Vec::new(),
        after: None,
    };
    let given = |value: String| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
    for (key, value) in pairs(raw)? {
        match key.as_str() {
            "group" => query.filter.group = given(value),
            "node" => query.filter.node = given(value),
            "state" => {
                if let Some(state) = given(value) {
                    let upper = state.to_ascii_uppercase();
                    if InstanceState::parse(&upper).is_none() {
                        let states: Vec<&str> =
                            InstanceState::ALL.iter().map(|s| s.as_str()).collect();
                        return Err(UiError::refused(
                            StatusCode::BAD_REQUEST,
                            format!(
                                "state {state:?} is not an instance state; one of {}",
                                states.join(", ")
                            ),
                        ));
                    }
                    query.filter.state = Some(upper);
                }
            }
            "id" => query.selected.push(value),
            "after" => query.after = given(value),
            _ => {}
        }
    }
    Ok(query)
}

fn filter_string(filter: &Filter) -> String {
    let mut parts = Vec::new();
    for (key, value) in [
        ("group", &filter.group),
        ("state", &filter.state),
        ("node", &filter.node),
    ] {
        if let Some(value) = value {
            parts.push(format!("{key}={}", urlencode(value)));
        }
    }
    parts.join("&")
}

/// `GET /ui/instances`.
pub async fn list(signed: Signed, RawQuery(raw): RawQuery) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let query = list_query(raw.as_deref())?;
    let rows = rows_part(&signed.app, who, &query).await?;
    let filters = filter_string(&query.filter);
    let rows_url = format!("/ui/instances/_rows?{filters}");
    let state = query.filter.state.as_deref().unwrap_or("");
    let write = may(who, "instances:write");
    let content = html! {
        h1 { "Instances" }
        form.filters #filters method="get" action="/ui/instances" {
            label { "Group " input name="group" value=[query.filter.group.as_deref()]; }
            label { "State "
                select name="state" {
                    option value="" selected[state.is_empty()] { "any" }
                    @for s in InstanceState::ALL {
                        option value=(s.as_str()) selected[state == s.as_str()] { (s.as_str()) }
                    }
                }
            }
            label { "Node " input name="node" value=[query.filter.node.as_deref()]; }
            button type="submit" { "Filter" }
        }
        (events_source(who, html! {
            form #bulk hx-post="/ui/instances/_bulk" hx-target="#bulk-result" {
                @if write {
                    div.bulk {
                        button #bulk-stop name="action" value="stop" type="submit" { "Stop selected" }
                        button.danger #bulk-kill name="action" value="kill" type="submit" { "Kill selected" }
                    }
                }
                div #bulk-result aria-live="polite" {}
                section.panel {
                    (live(who, "instance-rows", &rows_url, Some("#bulk"), rows))
                }
            }
        }))
    };
    Ok(html(layout::page(
        &signed,
        "/ui/instances",
        "Instances",
        content,
    )))
}

/// `GET /ui/instances/_rows`: the list's table, as the page reloads it (with the selection it
/// sends along still selected).
pub async fn rows(signed: Signed, RawQuery(raw): RawQuery) -> Result<Html<String>, UiError> {
    let query = list_query(raw.as_deref())?;
    Ok(html(rows_part(&signed.app, &signed.who, &query).await?))
}

async fn rows_part(app: &App, who: &Principal, query: &ListQuery) -> Result<Markup, UiError> {
    let filter = Filter {
        group: query.filter.group.clone(),
        node: query.filter.node.clone(),
        state: query.filter.state.clone(),
        warm: query.filter.warm,
    };
    let page = PageRequest {
        limit: PAGE,
        after: query.after.clone(),
    };
    let instances = list_instances(app, who, filter, &page).await?;
    let write = may(who, "instances:write");
    let filters = filter_string(&query.filter);
    Ok(html! {
        @if instances.items.is_empty() {
            p.note #no-instances { "No instances match." }
        } @else {
            table #instances {
                thead { tr {
                    @if write { th { span.sr { "Select" } } }
                    th { "Instance" } th { "Group" } th { "Node" } th { "State" } th { "Port" }
                    th { "Memory" } th { "Attempt" }
                } }
                tbody {
                    @for i in &instances.items {
                        tr.instance data-instance=(i.id) data-state=(i.state) data-attempt=(i.attempt) {
                            @if write {
                                td { input type="checkbox" name="id" value=(i.id)
                                    aria-label={ "Select " (i.id) }
                                    checked[query.selected.contains(&i.id)]; }
                            }
                            td { a href={ "/ui/instances/" (i.id) } { (i.id) } }
                            td { a href={ "/ui/groups/" (i.group) } { (i.group) } }
                            td.mono { (i.node_id) }
                            td.state { (badge(&i.state)) }
                            td { (i.port) }
                            td { (i.memory_mb) " MB" }
                            td { (i.attempt) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &instances.next_cursor {
            p { a href={ "/ui/instances?" (filters) "&after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

/// `POST /ui/instances/_bulk`: `action` (`stop` or `kill`) for every selected `id`, each as its
/// REST endpoint does it; one result line per instance. The status is the refusal's when every
/// one was refused alike (403 without `instances:write`), else 200.
pub async fn bulk(Guarded { signed, form }: Guarded<Vec<(String, String)>>) -> Response {
    let action = form
        .iter()
        .find(|(k, _)| k == "action")
        .map(|(_, v)| v.as_str());
    let action: &'static str = match action {
        Some("stop") => "stop",
        Some("kill") => "kill",
        other => {
            return refusal(
                StatusCode::BAD_REQUEST,
                &format!("the action must be stop or kill, not {other:?}"),
            );
        }
    };
    let ids: Vec<String> = form
        .into_iter()
        .filter(|(k, v)| k == "id" && !v.is_empty())
        .map(|(_, v)| v)
        .collect();
    if ids.is_empty() {
        return refusal(
            StatusCode::BAD_REQUEST,
            &format!("select the instances to {action} first"),
        );
    }
    if ids.len() > BULK_MAX {
        return refusal(
            StatusCode::BAD_REQUEST,
            &format!(
                "{} instances selected; {action} at most {BULK_MAX} at once",
                ids.len()
            ),
        );
    }
    let mut results: Vec<(String, Result<String, ApiError>)> = Vec::new();
    for id in ids {
        let done =
            crate::instances::halt(signed.app.clone(), signed.who.clone(), id.clone(), action)
                .await
                .map(|(_, accepted)| accepted.0.message);
        results.push((id, done));
    }
    let statuses: Vec<StatusCode> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(ApiError::status))
        .collect();
    let status = match statuses.first() {
        Some(first) if statuses.len() == results.len() && statuses.iter().all(|s| s == first) => {
            *first
        }
        _ => StatusCode::OK,
    };
    let lines = html! {
        ul.results #bulk-results {
            @for (id, result) in &results {
                @match result {
                    Ok(message) => li.ok data-instance=(id) { span.mono { (id) } ": " (message) },
                    Err(err) => li.error data-instance=(id) { span.mono { (id) } ": " (err.message()) },
                }
            }
        }
    };
    (status, Html(lines.into_string())).into_response()
}
