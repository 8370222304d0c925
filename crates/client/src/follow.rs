//! Following a server-sent event stream across dropped connections ([`Client::follow`]): each
//! reconnection (after a growing pause) resumes where the last event left off, nothing is
//! passed on twice, and what could not be replayed is reported as a `gap` event.
//!
//! - The event stream (`/events`) resumes with `Last-Event-ID`; the server says `gap` itself
//!   when its buffer no longer reaches back that far.
//! - A console (`/instances/{id}/console`) resumes from its kept tail (the most lines the
//!   server sends): the lines already seen are skipped; when the last one seen is no longer in
//!   the tail, lines were lost and a `gap` event says so.

use std::time::Duration;

use crate::{Client, Error, Event, EventStream};

/// The first pause before reconnecting; it doubles up to [`MAX_BACKOFF`] while reconnecting
/// fails, and starts again once a connection is open.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The console lines asked for when resuming (the server keeps at most this many).
const CONSOLE_TAIL: usize = 2000;

/// How a followed stream resumes after a dropped connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// The server replays after `Last-Event-ID` (the event stream).
    LastEventId,
    /// The stream is opened again at this path, whose history holds what was missed if it is
    /// still kept (a console with `?lines=` its whole tail).
    Tail(String),
}

/// What [`Follower::next`] has to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// An event not passed on before (a `gap` event when some were missed).
    Event(Event),
    /// The connection dropped (or could not be opened again): the next try in `retry_in`.
    Dropped { reason: String, retry_in: Duration },
    /// Connected again, resuming after `after` (the last event id passed on).
    Resumed { after: Option<String> },
}

/// An event id `<ms>-<seq>` as numbers, to order ids (`None`: not such an id).
pub fn id_key(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A stream followed across reconnections ([`Client::follow`]).
pub struct Follower {
    client: Client,
    path: String,
    resume: Resume,
    stream: Option<EventStream>,
    /// The id of the last event passed on.
    last: Option<String>,
    backoff: Duration,
    /// Connected again with [`Resume::Tail`]: the first event tells whether lines were lost.
    checking_tail: bool,
    /// An event to pass on after the `gap` reported before it.
    pending: Option<Event>,
}

impl Client {
    /// Follows the SSE stream at `/api/v1{path}` until the caller stops reading, reconnecting
    /// (with a pause that grows while it fails) when the connection drops, resuming as `resume`
    /// says. `last_event_id`: start after this event. The first connection's failure, and a
    /// refusal (4xx) on reconnecting, are errors; anything else is retried.
    pub async fn follow(
        &self,
        path: &str,
        resume: Resume,
        last_event_id: Option<&str>,
    ) -> Result<Follower, Error> {
        let resume_header = match resume {
            Resume::LastEventId => last_event_id,
            Resume::Tail(_) => None,
        };
        let stream = self.events(path, resume_header).await?;
        Ok(Follower {
            client: self.clone(),
            path: path.to_owned(),
            resume,
            stream: Some(stream),
            last: last_event_id.map(str::to_owned),
            backoff: FIRST_BACKOFF,
            checking_tail: false,
            pending: None,
        })
    }
}

impl Follower {
    /// The id of the last event passed on.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last.as_deref()
    }

    /// Whether `event` was passed on already (its id not after the last one's).
    fn seen(&self, event: &Event) -> bool {
        match (self.last.as_deref().and_then(id_key), id_key(&event.id)) {
            (Some(last), Some(this)) => this <= last,
            _ => false,
        }
    }

    /// Remembers `event` as the last one passed on (if it has an event id).
    fn pass(&mut self, event: &Event) {
        if id_key(&event.id).is_some() {
            self.last = Some(event.id.clone());
        }
    }

    /// The next thing to report: an event, a dropped connection, or a resumption. It never
    /// ends by itself; an error is a refusal to reconnect (signed out, no permission, gone).
    pub async fn next(&mut self) -> Result<Followed, Error> {
        if let Some(event) = self.pending.take() {
            return Ok(Followed::Event(event));
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return self.reconnect().await;
            };
            let reason = match stream.next().await {
                Ok(Some(event)) => {
                    let control = event.event == "gap" || event.event == "error";
                    if std::mem::take(&mut self.checking_tail)
                        && !control
                        && self.last.is_some()
                        && !self.seen(&event)
                    {
                        // The last line seen is no longer in the kept tail: some were lost.
                        let gap = Event {
                            id: String::new(),
                            event: "gap".into(),
                            data: serde_json::json!({
                                "message": format!(
                                    "lines after {} are no longer kept; some were missed",
                                    self.last.as_deref().unwrap_or_default()
                                ),
                            })
                            .to_string(),
                        };
                        self.pass(&event);
                        self.pending = Some(event);
                        return Ok(Followed::Event(gap));
                    }
                    if !control && self.seen(&event) {
                        continue;
                    }
                    self.pass(&event);
                    return Ok(Followed::Event(event));
                }
                Ok(None) => "the server closed the stream".to_owned(),
                Err(err) => error_chain(&err),
            };
            self.stream = None;
            return Ok(Followed::Dropped {
                reason,
                retry_in: self.backoff,
            });
        }
    }

    /// Waits the current pause, then opens the stream again.
    async fn reconnect(&mut self) -> Result<Followed, Error> {
        tokio::time::sleep(self.backoff).await;
        let opened = match &self.resume {
            Resume::LastEventId => self.client.events(&self.path, self.last.as_deref()).await,
            Resume::Tail(path) => self.client.events(path, None).await,
        };
        match opened {
            Ok(stream) => {
                self.stream = Some(stream);
                self.backoff = FIRST_BACKOFF;
                self.checking_tail = matches!(self.resume, Resume::Tail(_));
                Ok(Followed::Resumed {
                    after: self.last.clone(),
                })
            }
            // Refused: retrying would be refused again.
            Err(err)
                if err
                    .status_code()
                    .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
            {
                Err(err)
            }
            Err(err) => {
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                Ok(Followed::Dropped {
                    reason: error_chain(&err),
                    retry_in: self.backoff,
                })
            }
        }
    }
}

/// The console path that resumes a console: its whole kept tail.
pub fn console_path(id: &str, lines: usize) -> String {
    format!("/instances/{}/console?lines={lines}", crate::segment(id))
}

/// The console's path for resuming ([`Resume::Tail`]).
pub fn console_resume(id: &str) -> Resume {
    Resume::Tail(console_path(id, CONSOLE_TAIL))
}

/// An error and its causes, `: `-separated.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
