//! Server-sent events: the cluster's event stream (`/events`) and instance consoles, parsed by
//! `eventsource-stream` (the WHATWG event-stream format: comments, multi-line data, `id:`
//! kept across events, CR/LF/CRLF line ends).

use std::pin::Pin;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::Error;

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// Its `id:` (the last one the stream set; empty when it never set one).
    pub id: String,
    /// The event type (`GROUP_CREATED`, ...; `gap` when the server could not replay everything
    /// missed, `error` on a stream that failed; `message` when the server named none, as a
    /// console line).
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

type Parsed = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

/// A server-sent event stream being read ([`Client::events`](crate::Client::events)).
pub struct EventStream {
    events: Parsed,
}

impl EventStream {
    pub(crate) fn new(response: reqwest::Response) -> EventStream {
        EventStream::from_bytes(response.bytes_stream())
    }

    fn from_bytes(
        bytes: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
    ) -> EventStream {
        EventStream {
            events: Box::pin(bytes.eventsource()),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    ///
    /// Cancel-safe: what arrived is kept for the next call, so it can be raced against a timeout.
    pub async fn next(&mut self) -> Result<Option<Event>, Error> {
        match self.events.next().await {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some(Event {
                id: event.id,
                event: event.event,
                data: event.data,
            })),
            Some(Err(EventStreamError::Transport(err))) => Err(Error::Stream(err)),
            Some(Err(err)) => Err(Error::StreamFormat(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_become_events() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> = [
            ": keep-alive\n\nid: 7-0\nevent: GROUP_CREATED\ndata: {\"a\":\n",
            "data:  1}\n\nevent: gap\ndata: {}\n\ndata: a console line\r\n\r\npartial",
        ]
        .into_iter()
        .map(|c| Ok(bytes::Bytes::from(c)))
        .collect();
        let mut stream = EventStream::from_bytes(futures::stream::iter(chunks));
        assert_eq!(
            stream.next().await.expect("an event"),
            Some(Event {
                id: "7-0".into(),
                event: "GROUP_CREATED".into(),
                data: "{\"a\":\n 1}".into(),
            })
        );
        let gap = stream.next().await.expect("an event").expect("the gap");
        assert_eq!((gap.event.as_str(), gap.data.as_str()), ("gap", "{}"));
        let line = stream.next().await.expect("an event").expect("a line");
        assert_eq!(
            (line.event.as_str(), line.data.as_str()),
            ("message", "a console line")
        );
        // An unfinished event at the end of the stream is not dispatched.
        assert_eq!(stream.next().await.expect("the end"), None);
    }
}
