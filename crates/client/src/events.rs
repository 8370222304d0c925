//! Server-sent events: the cluster's event stream (`/events`) and instance consoles.

use serde::de::DeserializeOwned;

use crate::Error;

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// The event type (`GROUP_CREATED`, ...; `error` on a console that failed).
    pub event: String,
    /// Its `data:` lines, joined by `\n`.
    pub data: String,
}

impl Event {
    /// The data as JSON (domain events carry `{subject, data, ...}`).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.data)
    }
}

/// A server-sent event stream being read ([`Client::events`](crate::Client::events)).
pub struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> EventStream {
        EventStream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    ///
    /// Cancel-safe: what arrived is kept for the next call, so it can be raced against a timeout.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        loop {
            while let Some(block) = next_block(&mut self.buffer) {
                if let Some(event) = parse_block(&block) {
                    return Ok(Some(event));
                }
            }
            match self.response.chunk().await.map_err(Error::Stream)? {
                Some(chunk) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                None => return Ok(None),
            }
        }
    }
}

/// Takes the first complete block (up to a blank line) off `buffer`.
fn next_block(buffer: &mut String) -> Option<String> {
    let end = buffer.find("\n\n")?;
    Some(buffer.drain(..end + 2).collect())
}

/// The event in one block; `None` for a block with neither a type nor data (a comment, a
/// keep-alive).
fn parse_block(block: &str) -> Option<Event> {
    let mut event = Event::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("id:") {
            event.id = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("event:") {
            event.event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    event.data = data.join("\n");
    (!event.data.is_empty() || !event.event.is_empty()).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_events() {
        let mut buffer =
            ": keep-alive\n\nid: 7-0\nevent: GROUP_CREATED\ndata: {\"a\":\ndata:  1}\n\npartial"
                .to_owned();
        let first = next_block(&mut buffer).expect("a block");
        assert_eq!(parse_block(&first), None);
        let second = next_block(&mut buffer).expect("a block");
        assert_eq!(
            parse_block(&second),
            Some(Event {
                id: "7-0".into(),
                event: "GROUP_CREATED".into(),
                data: "{\"a\":\n 1}".into(),
            })
        );
        assert_eq!(next_block(&mut buffer), None);
        assert_eq!(buffer, "partial");
    }
}
