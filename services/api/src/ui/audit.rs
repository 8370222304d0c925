//! `/ui/audit`: the audit log, newest first ([`crate::audit::read_audit`], the REST log's own
//! read with its permission check and its hiding of archive hashes), filtered by actor, action
//! and target, a chosen number of entries a page, and "Older entries" through the log's cursor.
//! Each entry shows its time, actor, how it was signed in, action, target, the replica that
//! recorded it and, folded, the changed thing before and after as JSON.

use axum::Router;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;

use super::groups::urlencode;
use super::session::Signed;
use super::widgets::when;
use super::{UiError, html, layout};
use crate::app::App;
use crate::audit::{AuditEntryView, AuditQuery, read_audit};
use crate::paging::{MAX_LIMIT, PageRequest};

/// Entries a page shows unless the form says otherwise, and the sizes it offers.
const PAGE: i64 = 50;
const SIZES: &[i64] = &[10, 25, 50, 100, 200];

pub fn routes() -> Router<App> {
    Router::new().route("/ui/audit", get(page))
}

/// The page's query: the filters (blank: any), the page size and where the page starts.
#[derive(Deserialize, Default)]
pub struct Filters {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl Filters {
    fn query(&self) -> AuditQuery {
        AuditQuery {
            cursor: None,
            actor: given(&self.actor),
            action: given(&self.action),
            target: given(&self.target),
        }
    }

    /// Entries a page: the form's choice, 1 to 1000 (400 naming `limit` otherwise).
    fn limit(&self) -> Result<i64, UiError> {
        let Some(text) = given(&self.limit) else {
            return Ok(PAGE);
        };
        text.parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                UiError::refused(
                    StatusCode::BAD_REQUEST,
                    format!("limit: {text:?} is not a page size: give 1 to {MAX_LIMIT}"),
                )
            })
    }

    /// This page's URL with the same filters and size, starting after `cursor` (none: the
    /// newest entries).
    fn url(&self, limit: i64, cursor: Option<&str>) -> String {
        let query = self.query();
        let mut pairs: Vec<(&str, String)> = [
            ("actor", query.actor),
            ("action", query.action),
            ("target", query.target),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect();
        if limit != PAGE {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            pairs.push(("after", cursor.to_owned()));
        }
        let text: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", urlencode(value)))
            .collect();
        if text.is_empty() {
            "/ui/audit".to_owned()
        } else {
            format!("/ui/audit?{}", text.join("&"))
        }
    }
}

/// `GET /ui/audit`.
pub async fn page(signed: Signed, Query(filters): Query<Filters>) -> Result<Html<String>, UiError> {
    let limit = filters.limit()?;
    let request = PageRequest {
        limit,
        after: given(&filters.after),
    };
    let log = read_audit(&signed.app, &signed.who, &filters.query(), &request).await?;
    let query = filters.query();
    let filtered = query.actor.is_some() || query.action.is_some() || query.target.is_some();
    let content = html! {
        h1 { "Audit log" }
        section.panel {
            form.filters #audit-filters method="get" action="/ui/audit" {
                label { "Actor " input name="actor" value=[query.actor.as_deref()] placeholder="admin" size="12"; }
                label { "Action " input name="action" value=[query.action.as_deref()] placeholder="group.create" size="16" list="audit-actions"; }
                label { "Target " input name="target" value=[query.target.as_deref()] placeholder="lobby" size="16"; }
                label { "Per page "
                    select name="limit" {
                        @for size in sizes(limit) {
                            option value=(size) selected[size == limit] { (size) }
                        }
                    }
                }
                button #audit-filter type="submit" { "Filter" }
                @if filtered { a #audit-clear href="/ui/audit" { "Clear" } }
                datalist #audit-actions {
                    @for action in actions(&log.entries) { option value=(action) {} }
                }
            }
            p.note { "Newest first; a filter matches the whole actor, action or target (e.g. " code { "group.create" } ")." }
            (entries(&log.entries))
            p.pager {
                @if request.after.is_some() {
                    a #audit-newest href=(filters.url(limit, None)) { "Newest entries" }
                }
                @if let Some(next) = &log.next_cursor {
                    " " a #audit-older href=(filters.url(limit, Some(next))) { "Older entries" }
                }
            }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/audit",
        "Audit log",
        content,
    )))
}

/// The page sizes the form offers: the usual ones and `limit`.
fn sizes(limit: i64) -> std::collections::BTreeSet<i64> {
    SIZES.iter().copied().chain([limit]).collect()
}

/// The distinct actions of `entries`, for the action filter's suggestions.
fn actions(entries: &[AuditEntryView]) -> std::collections::BTreeSet<&str> {
    entries.iter().map(|e| e.action.as_str()).collect()
}

fn entries(entries: &[AuditEntryView]) -> Markup {
    html! {
        @if entries.is_empty() {
            p.note #no-entries { "No entries." }
        } @else {
            table #audit {
                thead { tr {
                    th { "Time" } th { "Actor" } th { "Via" } th { "Action" } th { "Target" }
                    th { "Replica" } th { "Change" }
                } }
                tbody {
                    @for e in entries {
                        tr.entry data-id=(e.id) data-action=(e.action) data-actor=(e.actor) data-target=(e.target) {
                            td { (when(e.at_ms)) }
                            td { (e.actor) }
                            td.mono { (e.via) }
                            td { code { (e.action) } }
                            td.mono { (e.target) }
                            td.mono { (e.replica.as_deref().unwrap_or("–")) }
                            td { (change(e)) }
                        }
                    }
                }
            }
        }
    }
}

/// The entry's before and after, folded (nothing when it recorded neither).
fn change(entry: &AuditEntryView) -> Markup {
    let shown = |value: &serde_json::Value| {
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    };
    html! {
        @if entry.before.is_null() && entry.after.is_null() {
            "–"
        } @else {
            details.change {
                summary {
                    @match (entry.before.is_null(), entry.after.is_null()) {
                        (true, _) => "after",
                        (_, true) => "before",
                        _ => "before / after",
                    }
                }
                @if !entry.before.is_null() {
                    p.muted { "Before" }
                    pre.mono.json.before { (shown(&entry.before)) }
                }
                @if !entry.after.is_null() {
                    p.muted { "After" }
                    pre.mono.json.after { (shown(&entry.after)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_links_keep_the_filters_and_size() {
        let filters = Filters {
            action: Some("group.create".into()),
            actor: Some("  ".into()),
            target: Some("a b".into()),
            ..Filters::default()
        };
        assert_eq!(
            filters.url(10, Some("abc")),
            "/ui/audit?action=group.create&target=a+b&limit=10&after=abc"
        );
        assert_eq!(Filters::default().url(PAGE, None), "/ui/audit");
        assert_eq!(filters.limit().unwrap(), PAGE);
        let bad = Filters {
            limit: Some("0".into()),
            ..Filters::default()
        };
        assert!(bad.limit().is_err());
    }
}
