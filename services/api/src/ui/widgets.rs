//! Pieces several pages share: state badges, live regions (reloaded on every event of the
//! cluster's event stream, or polled without `events:read`), action results and times.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{Markup, html};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::paging::PageRequest;

/// A list page's query: where its page starts (`after`, the cursor of the page before).
#[derive(serde::Deserialize)]
pub struct After {
    after: Option<String>,
}

impl After {
    /// The page of at most `limit` rows it asks for.
    pub fn page(&self, limit: i64) -> PageRequest {
        PageRequest {
            limit,
            after: self.cursor().map(str::to_owned),
        }
    }

    fn cursor(&self) -> Option<&str> {
        self.after.as_deref().filter(|a| !a.is_empty())
    }

    /// `rows` (the URL of the list's rows) for the same page.
    pub fn rows_url(&self, rows: &str) -> String {
        match self.cursor() {
            Some(after) => format!("{rows}?after={}", super::groups::urlencode(after)),
            None => rows.to_owned(),
        }
    }
}

/// The badge colour of a state.
pub fn tone(state: &str) -> &'static str {
    match state {
        "RUNNING" | "ONLINE" | "available" | "DONE" => "good",
        "CRASHED" | "UNREACHABLE" | "unavailable" | "mismatched" | "FAILED" => "bad",
        "STOPPED" | "OFFLINE" => "",
        _ => "warn",
    }
}

/// `state` as a coloured badge.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge " (tone(state)) } { (state) } }
}

/// `who` holds `permission`: the page shows the controls that need it.
pub fn may(who: &Principal, permission: &str) -> bool {
    who.require(permission).is_ok()
}

/// When a live region reloads: a moment after each event of the cluster's event stream (with a
/// slow poll as a safety net), or every few seconds for a user without `events:read`.
fn live_trigger(who: &Principal) -> &'static str {
    if may(who, "events:read") {
        "sse:message delay:100ms, every 30s"
    } else {
        "every 3s"
    }
}

/// `content` wrapped so that the cluster's event stream (`/ui/events`) reaches the live regions
/// inside it ([`live`]).
pub fn events_source(who: &Principal, content: Markup) -> Markup {
    html! {
        @if may(who, "events:read") {
            div hx-ext="sse" sse-connect="/ui/events" { (content) }
        } @else {
            (content)
        }
    }
}

/// A region `id` whose content `url` renders again whenever the cluster changes; `include`
/// names a form whose fields go along (the selected rows of a list). It is its own target, so a
/// form around it (the bulk actions) does not send its reloads elsewhere.
pub fn live(
    who: &Principal,
    tag_id: &str,
    url: &str,
    include: Option<&str>,
    content: Markup,
) -> Markup {
    html! {
        div.live id=(tag_id) hx-get=(url) hx-trigger=(live_trigger(who)) hx-target="this" hx-swap="innerHTML"
            hx-include=[include] hx-sync="this:replace" {
            (content)
        }
    }
}

/// What an htmx action answers: `done` (200) or the refusal with its status, as a line the page
/// shows in the action's result area.
pub fn outcome(result: Result<String, ApiError>) -> Response {
    match result {
        Ok(done) => Html(html! { p.ok role="status" { (done) } }.into_string()).into_response(),
        Err(err) => refusal(err.status(), err.message()),
    }
}

/// A refusal as an action's result line, with its status.
pub fn refusal(status: StatusCode, message: &str) -> Response {
    let line = html! { p.error role="alert" { (message) } };
    (status, Html(line.into_string())).into_response()
}

/// `ms` (Unix milliseconds) as a UTC time of day.
pub fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `ms` (Unix milliseconds) as a UTC date and time.
pub fn when(ms: i64) -> String {
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {} UTC", clock(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(1_764_590_400_000), "2025-12-01 12:00:00 UTC");
        assert_eq!(clock(3_723_000), "01:02:03");
    }
}
