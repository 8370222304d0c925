//! `--watch` on list and get commands: shown once, then again whenever the event stream reports
//! a change that concerns it (and only when what is shown changed). On a terminal each showing
//! replaces the last; in a pipe they follow each other, separated by a blank line.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::bail;
use prexor_client::{Client, Followed, Resume};
use serde_json::Value;

use crate::commands::{events_path, report};

/// What a watch reacts to: events of `types`, about `subject` if given (the event's subject, or
/// the group in its data).
pub struct Watch<'a> {
    pub types: &'a str,
    pub subject: Option<&'a str>,
}

impl Watch<'_> {
    fn concerns(&self, event: &prexor_client::Event) -> bool {
        let Some(subject) = self.subject else {
            return true;
        };
        let parsed: Value = event.json().unwrap_or(Value::Null);
        parsed["subject"] == subject || parsed["data"]["group"] == subject
    }
}

/// Shows what `show` renders, then again after every event that concerns it, until
/// interrupted.
pub async fn watch(
    client: &Client,
    on: Watch<'_>,
    mut show: impl AsyncFnMut() -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    // Following first: no change between the first showing and the stream is missed.
    let mut events = client
        .follow(&events_path(Some(on.types)), Resume::LastEventId, None)
        .await?;
    let terminal = std::io::stdout().is_terminal();
    let mut shown: Option<String> = None;
    let mut stale = true;
    loop {
        if stale {
            let text = show().await?;
            if shown.as_deref() != Some(text.as_str()) {
                let mut out = std::io::stdout().lock();
                if terminal {
                    // Clear the screen, cursor home.
                    write!(out, "\x1b[H\x1b[2J")?;
                } else if shown.is_some() {
                    writeln!(out)?;
                }
                writeln!(out, "{text}")?;
                out.flush()?;
                shown = Some(text);
            }
        }
        match events.next().await? {
            Followed::Event(event) if event.event == "error" => bail!("{}", event.data),
            // Missed events: whatever they changed is read again.
            Followed::Event(event) if event.event == "gap" => stale = true,
            Followed::Event(event) => stale = on.concerns(&event),
            other => {
                report(&other);
                stale = matches!(other, Followed::Resumed { .. });
            }
        }
    }
}
