//! `/ui/instances/{id}`: one instance: its state, its plan and its crashes (exit code, log tail)
//! ([`crate::instances::show_instance`], [`crate::instances::list_crashes`]), stop / kill
//! ([`crate::instances::halt`]), and its live console: the history and each new line from
//! [`crate::instances::follow_console`] (the stream of `GET /api/v1/instances/{id}/console`,
//! authenticated by the cookie), and a command input sending through
//! [`crate::instances::send_command`]. `console.js` draws the lines, keeps the ↑/↓ history and
//! the auto-scroll toggle.

use std::convert::Infallible;

use axum::extract::{Path, Query};
use axum::response::sse::{Event, Sse};
use axum::response::{Html, Response};
use futures::Stream;
use maud::{Markup, html};
use serde::Deserialize;

use super::assets::{CONSOLE, asset};
use super::session::{Guarded, NoFields, Signed};
use super::widgets::{badge, may, outcome, when};
use super::{UiError, html, layout};
use crate::instances::{InstanceView, follow_console, list_crashes, send_command, show_instance};
use crate::paging::PageRequest;

/// Crash records the page shows (newest first).
const CRASHES_SHOWN: i64 = 10;
/// Console lines the page loads first.
const HISTORY_LINES: usize = 200;

/// `GET /ui/instances/{id}`.
pub async fn page(signed: Signed, Path(id): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let crashes_page = PageRequest {
        limit: CRASHES_SHOWN,
        after: None,
    };
    let (instance, crashes) = tokio::try_join!(
        show_instance(&signed.app, who, &id),
        list_crashes(&signed.app, who, &id, &crashes_page),
    )?;
    let write = may(who, "instances:write");
    let ended = prexor_model::instances::has_ended(&instance.state);
    let content = html! {
        div.title {
            h1 { "Instance " span #instance-id { (instance.id) } }
            span #instance-state { (badge(&instance.state)) }
            @if write && !ended {
                button #stop-instance hx-post={ "/ui/instances/" (id) "/stop" } hx-target="#action-result" { "Stop" }
                button.danger #kill-instance hx-post={ "/ui/instances/" (id) "/kill" } hx-target="#action-result" { "Kill" }
            }
        }
        div #action-result aria-live="polite" {}
        section.panel #about { h2 { "State" } (about(&instance)) }
        section.panel #console-panel {
            h2 { "Console" }
            div #console data-stream={ "/ui/instances/" (id) "/console?lines=" (HISTORY_LINES) }
                data-command={ "/ui/instances/" (id) "/command" } {
                pre.console #console-lines aria-live="polite" {}
                p.note #console-status { "Connecting…" }
                label.check { input #console-follow type="checkbox" checked; " Auto-scroll" }
                @if write {
                    form #console-form {
                        input #console-input name="command" autocomplete="off" spellcheck="false"
                            placeholder="Type a command; ↑/↓ for earlier ones" aria-label="Console command";
                        button type="submit" { "Send" }
                    }
                    p #console-result aria-live="polite" {}
                }
            }
        }
        section.panel #plan {
            h2 { "Plan" }
            @match &instance.plan {
                Some(plan) => pre.mono { (serde_json::to_string_pretty(plan).unwrap_or_default()) },
                None => p.note { "No plan recorded for its current placement." },
            }
        }
        section.panel #crashes {
            h2 { "Crashes" }
            @if crashes.items.is_empty() {
                p.note { "None recorded." }
            }
            @for crash in &crashes.items {
                article.crash {
                    p {
                        strong { (when(crash.at_ms)) } " on " span.mono { (crash.node_id) }
                        " · exit code " span.exit-code { @match crash.exit_code { Some(code) => (code), None => "none (killed by a signal or lost)" } }
                    }
                    p { (crash.detail) }
                    @if let Some(tail) = &crash.log_tail {
                        pre.console.tail { (tail.join("\n")) }
                    }
                }
            }
        }
        script src=(asset(CONSOLE).url()) defer {}
    };
    Ok(html(layout::page(
        &signed,
        "/ui/instances",
        &format!("Instance {id}"),
        content,
    )))
}

fn about(instance: &InstanceView) -> Markup {
    html! {
        dl.spec {
            dt { "Group" } dd { a href={ "/ui/groups/" (instance.group) } { (instance.group) } }
            dt { "Node" } dd.mono { (instance.node_id) }
            dt { "Port" } dd { (instance.port) }
            dt { "Memory" } dd { (instance.memory_mb) " MB" }
            dt { "Attempt" } dd { (instance.attempt) }
            dt { "Revision" } dd { (instance.revision) }
            dt { "Scheduled" } dd { (when(instance.scheduled_at_ms)) }
            @if let Some(reported) = &instance.reported {
                dt { "Reported" } dd {
                    (badge(&reported.state))
                    @if let Some(pid) = reported.pid { " pid " (pid) }
                    @if let Some(code) = reported.exit_code { " exit code " (code) }
                    @if let Some(detail) = &reported.detail { " · " (detail) }
                }
            }
            @if let Some(reason) = &instance.reason { dt { "Ended" } dd { (reason) } }
            @if let Some(error) = &instance.last_dispatch_error { dt { "Dispatch" } dd { (error) } }
        }
    }
}

#[derive(Deserialize)]
pub struct ConsoleQuery {
    lines: Option<usize>,
}

/// `GET /ui/instances/{id}/console`: the console stream of the REST API for the signed-in user.
pub async fn console(
    signed: Signed,
    Path(id): Path<String>,
    Query(query): Query<ConsoleQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    Ok(follow_console(signed.app, signed.who, id, query.lines).await?)
}

#[derive(Deserialize)]
pub struct CommandForm {
    #[serde(default)]
    command: String,
}

/// `POST /ui/instances/{id}/command`: one console line.
pub async fn command(
    Path(id): Path<String>,
    Guarded { signed, form }: Guarded<CommandForm>,
) -> Response {
    outcome(
        send_command(&signed.app, &signed.who, &id, &form.command)
            .await
            .map(|()| format!("sent: {}", form.command.trim_end())),
    )
}

/// `POST /ui/instances/{id}/stop|kill`.
pub async fn halt(
    Path((id, action)): Path<(String, String)>,
    Guarded { signed, .. }: Guarded<NoFields>,
) -> Response {
    let action: &'static str = match action.as_str() {
        "stop" => "stop",
        "kill" => "kill",
        other => {
            return super::widgets::refusal(
                axum::http::StatusCode::NOT_FOUND,
                &format!("an instance has no action {other:?}: stop or kill"),
            );
        }
    };
    outcome(
        crate::instances::halt(signed.app, signed.who, id, action)
            .await
            .map(|(_, accepted)| accepted.0.message),
    )
}
