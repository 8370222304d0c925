//! REST on an api replica as tests use it: every call answers its status and body, so a test
//! asserts what the api said; event streams with a bound on each wait. Built on the project's
//! REST client (`prexor-client`), the one `prexorctl` and `prexor-bench` use.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use prexor_client::{Body, Client, Event, EventStream, Method};
use serde_json::Value;

/// JSON over HTTP to one api replica with a bearer token.
#[derive(Clone)]
pub struct Rest {
    client: Client,
}

impl Rest {
    /// REST on the api at `http` (`http://127.0.0.1:<port>`) as `token` (`""`: anonymous).
    pub fn new(http: &str, token: &str) -> Rest {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::builder(http)
            .token(token)
            .timeout(Duration::from_secs(10))
            // A server that refuses a request early (413) closes the connection; a pooled client
            // would send the next request into it.
            .fresh_connections()
            .build()
            .expect("a REST client for a replica on loopback");
        Rest { client }
    }

    /// The same replica as another caller (`""`: anonymous).
    pub fn with_token(&self, token: &str) -> Rest {
        Rest {
            client: self.client.with_token(Some(token.to_owned())),
        }
    }

    /// The typed client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bearer token (`""` when anonymous).
    pub fn token(&self) -> &str {
        self.client.token().unwrap_or_default()
    }

    /// The status of a request, without reading its body (which may be a stream that never
    /// ends).
    pub async fn status_of(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<u16> {
        Ok(self.client.status_of(method, path, body).await?)
    }

    /// Any request; its status and body (`null` when empty, a JSON string when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let answer = self.client.call(method, path, body).await?;
        Ok((answer.status, answer.json()))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        self.call(Method::DELETE, path, None).await
    }

    /// PUTs raw bytes (e.g. a template layer).
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let answer = self
            .client
            .call(Method::PUT, path, Body::Gzip(bytes))
            .await?;
        Ok((answer.status, answer.json()))
    }

    /// GETs raw bytes.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let answer = self.client.call(Method::GET, path, Body::Empty).await?;
        Ok((answer.status, answer.body))
    }

    /// POSTs `body` to `path` and requires 201 Created; what was created.
    pub async fn post_created(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, created) = self.post(path, body).await?;
        ensure!(status == 201, "POST {path}: {status} {created}");
        Ok(created)
    }

    /// Waits (at most `within`) until `GET path` answers 404: what was deleted is gone.
    pub async fn wait_gone(&self, path: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(path).await?;
            if status == 404 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{path} still there after {within:?}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Opens an SSE stream (`GET` with `Accept: text/event-stream`), resuming after
    /// `last_event_id` when given; an error status is an error.
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>) -> anyhow::Result<Sse> {
        Ok(Sse {
            events: self.client.events(path, last_event_id).await?,
        })
    }
}

/// The string `field` of every entry of the JSON list `list` (entries without one skipped); an
/// error if `list` is not a list.
pub fn fields_of<'a>(list: &'a Value, field: &str) -> anyhow::Result<Vec<&'a str>> {
    let Some(entries) = list.as_array() else {
        bail!("expected a list of entries with a {field:?}: {list}");
    };
    Ok(entries.iter().filter_map(|e| e[field].as_str()).collect())
}

/// One server-sent event.
pub type SseEvent = Event;

/// A server-sent event stream being read.
pub struct Sse {
    events: EventStream,
}

impl Sse {
    /// The next event (comments and keep-alives skipped), waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<SseEvent> {
        match tokio::time::timeout(within, self.events.next()).await {
            Ok(Ok(Some(event))) => Ok(event),
            Ok(Ok(None)) => bail!("the event stream ended"),
            Ok(Err(err)) => bail!("the event stream failed: {:#}", anyhow::Error::from(err)),
            Err(_) => bail!("no event within {within:?}"),
        }
    }

    /// Skips events until one of type `kind` about `subject` arrives.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        subject: &str,
        within: Duration,
    ) -> anyhow::Result<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await?;
            if event.event == kind {
                let data: Value = serde_json::from_str(&event.data)?;
                if data["subject"] == subject {
                    return Ok(event);
                }
            }
        }
    }
}
