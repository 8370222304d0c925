//! `prexorctl events`: follow the cluster's events, across dropped connections (resumed with
//! `Last-Event-ID`: nothing twice, nothing missed, or a `gap` line saying what was).

use std::process::ExitCode;

use anyhow::bail;
use prexor_client::{Followed, Resume};
use serde_json::{Value, json};

use super::{Client, segment};
use crate::Output;

/// The events path for `types` (comma-separated; all without).
pub(crate) fn events_path(types: Option<&str>) -> String {
    match types {
        Some(types) => format!("/events?types={}", segment(types)),
        None => "/events".to_owned(),
    }
}

/// Says on stderr what happened to the connection (nothing for an event).
pub(crate) fn report(followed: &Followed) {
    match followed {
        Followed::Dropped { reason, retry_in } => eprintln!(
            "connection lost ({reason}); reconnecting in {}",
            humantime::format_duration(*retry_in)
        ),
        Followed::Resumed { after: Some(id) } => {
            eprintln!("reconnected; resuming after event {id}");
        }
        Followed::Resumed { after: None } => eprintln!("reconnected"),
        Followed::Event(_) => {}
    }
}

/// Follows domain events (optionally of some types, optionally after event `after`) until
/// interrupted: one line per event (`-o json`: one JSON object per line).
pub async fn events(
    client: &Client,
    types: Option<String>,
    after: Option<String>,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let path = events_path(types.as_deref());
    let mut events = client
        .follow(&path, Resume::LastEventId, after.as_deref())
        .await?;
    loop {
        let event = match events.next().await? {
            Followed::Event(event) => event,
            other => {
                report(&other);
                continue;
            }
        };
        let parsed: Value = event.json().unwrap_or(Value::Null);
        match event.event.as_str() {
            "error" => bail!("{}", event.data),
            "gap" => eprintln!(
                "warning: some events were missed (the server no longer has them): re-read the state you follow"
            ),
            _ => {}
        }
        match out {
            Output::Json | Output::Yaml => {
                let line = if event.event == "gap" {
                    json!({ "type": "gap", "message": parsed["message"] })
                } else {
                    parsed
                };
                println!("{}", serde_json::to_string(&line)?);
            }
            _ => println!(
                "{:<16} {:<24} {:<24} {}",
                if event.id.is_empty() { "-" } else { &event.id },
                event.event,
                parsed["subject"].as_str().unwrap_or("-"),
                if event.event == "gap" {
                    &parsed["message"]
                } else {
                    &parsed["data"]
                }
            ),
        }
    }
}
