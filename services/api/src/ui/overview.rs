//! `/ui/`: the overview. Every replica of every service (the same answer as
//! `GET /api/v1/system/status`, [`crate::system::status_of`]), counts of groups, instances by
//! state, nodes and players online, and the live event feed (the event stream of
//! `GET /api/v1/events`, [`crate::events::follow`], as HTML fragments), and charts of players and
//! instances over time ([`crate::network::history`]). Each part shows only when its user holds
//! the permission its REST endpoint asks for.

use std::collections::BTreeMap;
use std::convert::Infallible;

use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use futures::Stream;
use maud::{Markup, html};
use mongodb::bson::doc;
use prexor_coord::StoredEvent;
use prexor_domain::now_ms;
use prexor_model::groups::GROUPS;
use prexor_model::instances::INSTANCES;
use prexor_model::nodes::NODES;

use super::charts::{Series, Span, line_chart};
use super::session::Signed;
use super::widgets::{clock, tone};
use super::{Settings, UiError, html, layout};
use crate::app::App;
use crate::auth::Principal;
use crate::error::ApiResult;
use crate::network::{by_state, history, players_online};
use crate::system::{Status, status_of};

/// How often the summary reloads itself.
const SUMMARY_EVERY: &str = "every 5s";

/// `GET /ui/`.
pub async fn page(signed: Signed) -> Result<axum::response::Html<String>, UiError> {
    let summary = summary_part(&signed).await;
    let feed = signed.who.require("events:read").is_ok();
    let content = html! {
        h1 { "Overview" }
        (summary)
        section.panel #events {
            h2 { "Live events" }
            @if feed {
                div hx-ext="sse" sse-connect="/ui/events" {
                    ol.feed #event-feed sse-swap="message" hx-swap="afterbegin" {
                        li.muted #feed-waiting { "Waiting for events; changes anywhere in the cluster appear here as they happen." }
                    }
                }
            } @else {
                p.note { "Your roles do not include events:read." }
            }
        }
    };
    Ok(html(layout::page(&signed, "/ui/", "Overview", content)))
}

/// `GET /ui/overview/summary`: the replicas and counts, as the page polls them.
pub async fn summary(signed: Signed) -> axum::response::Html<String> {
    html(summary_part(&signed).await)
}

async fn summary_part(signed: &Signed) -> Markup {
    let (app, who) = (&signed.app, &signed.who);
    let (status, counts, charts) = tokio::join!(
        status_of(app, who),
        counts(app, who),
        part(who, "instances:read", charts(app, signed.settings)),
    );
    html! {
        div #summary hx-get="/ui/overview/summary" hx-trigger=(SUMMARY_EVERY) hx-swap="outerHTML" {
            section.panel #counts {
                h2 { "Network" }
                (counts_part(&counts))
            }
            @if let Ok(charts) = charts {
                section.panel #history {
                    h2 { "Over time" }
                    (charts)
                }
            }
            section.panel #replicas {
                h2 { "Replicas" }
                (replicas_part(status))
            }
        }
    }
}

/// A count the user may not read (`Err` with the permission), or could not be read now.
type Part<T> = Result<T, String>;

struct Counts {
    groups: Part<u64>,
    instances: Part<BTreeMap<String, u64>>,
    nodes: Part<BTreeMap<String, u64>>,
    players: Part<u64>,
}

/// Players online and live / running instances over the kept history, as two charts.
async fn charts(app: &App, settings: Settings) -> ApiResult<Markup> {
    let kept = settings.history;
    let samples = history(app, kept.keep).await?;
    let to_ms = now_ms();
    let span = Span {
        from_ms: samples.first().map_or(to_ms, |s| s.at_ms),
        to_ms,
        every_ms: kept.every.as_millis() as i64,
    };
    let series = |name, class, value: fn(&prexor_model::instances::NetworkSample) -> i64| Series {
        name,
        class,
        points: samples.iter().map(|s| (s.at_ms, value(s))).collect(),
    };
    Ok(html! {
        @if samples.is_empty() {
            p.note #no-history { "No samples yet: the replicas take one every " (humantime::format_duration(kept.every)) "." }
        } @else {
            div.charts {
                (line_chart("players-chart", "Players online", span, &[series("Players", "players", |s| s.players)]))
                (line_chart("instances-chart", "Instances", span, &[
                    series("Live", "live", |s| s.instances),
                    series("Running", "running", |s| s.running),
                ]))
            }
        }
    })
}

/// `read()` when `who` holds `permission`; its refusal or failure as text otherwise.
async fn part<T>(
    who: &Principal,
    permission: &str,
    read: impl Future<Output = ApiResult<T>>,
) -> Part<T> {
    if who.require(permission).is_err() {
        return Err(format!("needs {permission}"));
    }
    read.await.map_err(|e| e.message().to_owned())
}

async fn counts(app: &App, who: &Principal) -> Counts {
    let store = app.store();
    let groups = async {
        let groups = store.documents(GROUPS);
        Ok(store
            .bounded("counting groups", groups.count_documents(doc! {}))
            .await?)
    };
    let (groups, instances, nodes, players) = tokio::join!(
        part(who, "groups:read", groups),
        part(
            who,
            "instances:read",
            by_state(app, INSTANCES, "counting instances")
        ),
        part(who, "nodes:read", by_state(app, NODES, "counting nodes")),
        part(who, "instances:read", players_online(app)),
    );
    Counts {
        groups,
        instances,
        nodes,
        players,
    }
}

fn counts_part(counts: &Counts) -> Markup {
    fn total(part: &Part<BTreeMap<String, u64>>) -> Result<u64, &String> {
        part.as_ref().map(|m| m.values().sum())
    }
    html! {
        div.stats {
            (stat("groups", "Groups", counts.groups.as_ref().copied()))
            (stat("instances", "Instances", total(&counts.instances)))
            (stat("nodes", "Nodes", total(&counts.nodes)))
            (stat("players", "Players online", counts.players.as_ref().copied()))
        }
        @for (label, part) in [("Instances", &counts.instances), ("Nodes", &counts.nodes)] {
            @if let Ok(states) = part {
                @if !states.is_empty() {
                    ul.states aria-label={ (label) " by state" } {
                        @for (state, count) in states {
                            li { span class={ "badge " (tone(state)) } { (state) ": " (count) } }
                        }
                    }
                }
            }
        }
    }
}

fn stat(id: &str, label: &str, value: Result<u64, &String>) -> Markup {
    html! {
        div.stat id={ "count-" (id) } {
            @match value {
                Ok(value) => span.value { (value) },
                Err(why) => span.value.muted title=(why) { "–" },
            }
            span.label { (label) }
        }
    }
}

fn replicas_part(status: ApiResult<Status>) -> Markup {
    let status = match status {
        Ok(status) => status,
        Err(err) => return html! { p.note { (err.message()) } },
    };
    let coordination = &status.coordination;
    html! {
        p.note {
            "Coordination store (" (coordination.backend) "): "
            span class={ "badge " (tone(&coordination.store)) } { (coordination.store) }
            @if let Some(error) = &coordination.error { " " (error) }
            " · answered by " span.mono #answered-by { (status.answered_by) }
        }
        table {
            thead { tr {
                th { "Service" } th { "Replica" } th { "Ready" } th { "Leases" }
                th { "Clock" } th { "Store" } th { "Heartbeat" } th { "Version" }
            } }
            tbody {
                @for replica in &status.replicas {
                    @let record = &replica.record;
                    tr.replica data-kind=(record.kind.as_str()) data-replica=(record.id) {
                        td { (record.kind.as_str()) }
                        td.mono { (record.id) }
                        td { @if record.ready { span.badge.good { "ready" } } @else { span.badge.bad { "not ready" } } }
                        td { (record.leases_held) }
                        td {
                            @match (replica.clock.synchronized, replica.clock.skew_ms) {
                                (true, Some(skew)) => span.badge.good { "in sync (" (skew) " ms)" },
                                (false, Some(skew)) => span.badge.bad { "off by " (skew) " ms" },
                                (_, None) => span.badge.warn { "not measured" },
                            }
                        }
                        td {
                            @let store = record.coordination.as_deref().unwrap_or("unknown");
                            span class={ "badge " (tone(store)) } { (store) }
                        }
                        td { (record.heartbeat_age_ms) " ms ago" }
                        td.mono { (record.version) }
                    }
                    @for note in &record.notes {
                        tr { td {} td.note colspan="7" { (note) } }
                    }
                }
            }
        }
    }
}

/// `GET /ui/events`: the event stream of `GET /api/v1/events` for the signed-in user, each
/// event an HTML line of the feed; a reconnecting browser is replayed what it missed
/// (`Last-Event-ID`).
pub async fn events(
    signed: Signed,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| prexor_coord::id_key(id) != (0, 0))
        .map(str::to_owned);
    Ok(crate::events::follow(
        signed.app, signed.who, after, None, feed_line,
    )?)
}

/// One event as a line of the feed (an unnamed SSE event, which the page swaps in).
fn feed_line(stored: &StoredEvent) -> Event {
    let event = &stored.event;
    let clock = clock(event.at_ms);
    let line = html! {
        li.event data-type=(event.kind) {
            time title="UTC" { (clock) }
            span.kind { (event.kind) }
            span.subject { (event.subject) }
            @if !event.by.is_empty() { span.muted { " by " (event.by) } }
        }
    };
    Event::default()
        .id(stored.id.clone())
        .data(line.into_string())
}
