//! The one REST client of the PrexorCloud api (`/api/v1`, docs/api.md), shared by `prexorctl`,
//! the acceptance suite and `prexor-bench`.
//!
//! - [`Client`]: a controller URL (checked: `http://` or `https://`), an optional bearer token,
//!   which certificates an `https://` controller may present ([`Trust`], or [`Builder::probe`]),
//!   and timeouts.
//! - Typed calls: [`Client::get`] / [`post`](Client::post) / [`put`](Client::put) /
//!   [`patch`](Client::patch) / [`delete`](Client::delete) decode the answer into any
//!   `DeserializeOwned`; an error status becomes [`Error::Status`] with the api's error body
//!   (`{code, message, details}`) decoded. The common resources have methods of their own
//!   (`resources.rs`: groups, instances, nodes, deployments, tokens, users, roles, login, the
//!   audit log); lists come in pages, which [`Client::all`] and [`Client::first`] follow.
//! - Raw calls for callers that check statuses themselves (the acceptance suite):
//!   [`Client::call`] answers whatever the status; [`Client::status_of`] does not read the body.
//! - Server-sent events (the event stream, consoles): [`Client::events`]; followed across
//!   dropped connections, resuming without loss or duplicates: [`Client::follow`].
//!
//! reqwest is built without a TLS crypto provider: a binary installs one (ring) before it builds
//! a client.

mod error;
mod events;
mod follow;
mod resources;

use std::time::Duration;

pub use error::{ApiError, Error};
pub use events::{Event, EventStream};
pub use follow::{Followed, Follower, Resume, console_path, console_resume, id_key};
pub use reqwest::Method;
pub use resources::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The api's path prefix; every path a [`Client`] takes is below it.
pub const API_PREFIX: &str = "/api/v1";

/// How long an upload (a template layer, a backup archive) may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a download or an event stream may stay open: as long as the caller reads.
const STREAM_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// Which server certificates an `https://` controller may present.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// PEM of the CA(s) to trust (the cluster CA). No other root is trusted.
    pub ca_pem: Option<String>,
    /// Any certificate at all (the caller warns about it).
    pub insecure: bool,
}

/// How a [`Client`] is built: [`Client::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    controller: String,
    token: Option<String>,
    trust: Trust,
    probe: bool,
    timeout: Duration,
    connect_timeout: Duration,
    reuse_connections: bool,
}

impl Builder {
    /// The bearer token (a session or an API token); an empty one means none.
    pub fn token(mut self, token: impl Into<String>) -> Builder {
        let token = token.into();
        self.token = (!token.is_empty()).then_some(token);
        self
    }

    pub fn trust(mut self, trust: Trust) -> Builder {
        self.trust = trust;
        self
    }

    /// Accepts any certificate, for reading what is public (the cluster CA, to be confirmed by
    /// its fingerprint before anything is believed or sent).
    pub fn probe(mut self) -> Builder {
        self.probe = true;
        self
    }

    /// The overall time of one request (default 15 s; uploads, downloads and event streams have
    /// their own).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    /// The time to connect (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder {
        self.connect_timeout = timeout;
        self
    }

    /// A new connection for every request: a server that refuses a request early (413) closes
    /// the connection, and a pooled client would send the next request into it.
    pub fn fresh_connections(mut self) -> Builder {
        self.reuse_connections = false;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = base_url(&self.controller)?;
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout);
        if !self.reuse_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        if self.probe || (base.starts_with("https://") && self.trust.insecure) {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else if base.starts_with("https://") {
            let pem = self
                .trust
                .ca_pem
                .as_ref()
                .ok_or_else(|| Error::NoTrustedCa { base: base.clone() })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|source| {
                    Error::BadCa {
                        source: Some(source),
                    }
                })?;
            if certs.is_empty() {
                return Err(Error::BadCa { source: None });
            }
            builder = builder.tls_certs_only(certs);
        }
        Ok(Client {
            base,
            token: self.token,
            http: builder.build().map_err(Error::Build)?,
        })
    }
}

/// `controller` without a trailing `/`, if it is an `http://` or `https://` URL.
fn base_url(controller: &str) -> Result<String, Error> {
    let base = controller.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Error::BadUrl {
            url: controller.to_owned(),
        });
    }
    Ok(base.to_owned())
}

/// A REST client for one controller URL (any api replica, or a load balancer in front of them).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A request body for [`Client::call`] and [`Client::status_of`].
#[derive(Debug, Clone, Default)]
pub enum Body {
    #[default]
    Empty,
    Json(serde_json::Value),
    /// A tar.gz (a template layer, a module version, a backup archive).
    Gzip(Vec<u8>),
}

impl From<serde_json::Value> for Body {
    fn from(body: serde_json::Value) -> Body {
        Body::Json(body)
    }
}

impl From<Option<serde_json::Value>> for Body {
    fn from(body: Option<serde_json::Value>) -> Body {
        body.map_or(Body::Empty, Body::Json)
    }
}

/// An answer whatever its status: for callers that check statuses themselves.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON: `null` when empty, a JSON string holding the text when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        if self.body.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| serde_json::Value::String(self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    /// A client for `controller` (`http://…` or `https://…`, e.g. `https://controller-1:8080`)
    /// with the defaults: no token, 15 s per request, 5 s to connect, connections reused, an
    /// `https://` controller checked against a CA that must be given ([`Builder::trust`]).
    pub fn builder(controller: &str) -> Builder {
        Builder {
            controller: controller.to_owned(),
            token: None,
            trust: Trust::default(),
            probe: false,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            reuse_connections: true,
        }
    }

    /// A client with `token` whose `https://` controller must present a certificate `trust`
    /// accepts.
    pub fn new(controller: &str, token: Option<String>, trust: &Trust) -> Result<Client, Error> {
        Client::builder(controller)
            .token(token.unwrap_or_default())
            .trust(trust.clone())
            .build()
    }

    /// A client that accepts any certificate ([`Builder::probe`]), without a token.
    pub fn probe(controller: &str) -> Result<Client, Error> {
        Client::builder(controller).probe().build()
    }

    /// The same controller and connections with another bearer token (`None`: anonymous).
    pub fn with_token(&self, token: Option<String>) -> Client {
        Client {
            base: self.base.clone(),
            token: token.filter(|t| !t.is_empty()),
            http: self.http.clone(),
        }
    }

    /// Another controller (an api replica next to this one) with the same token, settings and
    /// connection pool: nothing is set up again.
    pub fn with_controller(&self, controller: &str) -> Result<Client, Error> {
        Ok(Client {
            base: base_url(controller)?,
            token: self.token.clone(),
            http: self.http.clone(),
        })
    }

    /// The controller URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn with_body(request: reqwest::RequestBuilder, body: Body) -> reqwest::RequestBuilder {
        match body {
            Body::Empty => request,
            Body::Json(value) => request.json(&value),
            Body::Gzip(bytes) => request
                .header("content-type", "application/gzip")
                .timeout(UPLOAD_TIMEOUT)
                .body(bytes),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        request.send().await.map_err(|source| Error::Unreachable {
            base: self.base.clone(),
            source,
        })
    }

    /// `response` if its status is a success, else [`Error::Status`] with its body decoded.
    async fn success(
        &self,
        method: &Method,
        path: &str,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, Error> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(Error::status(method, self.url(path), status, text))
    }

    async fn read(
        &self,
        method: &Method,
        path: &str,
        response: reqwest::Response,
    ) -> Result<Vec<u8>, Error> {
        Ok(response
            .bytes()
            .await
            .map_err(|source| Error::Read {
                method: method.clone(),
                url: self.url(path),
                source,
            })?
            .to_vec())
    }

    /// Sends a request to `/api/v1{path}` and decodes a successful JSON answer (no content
    /// decodes as `null`: `()` or `Option<T>` take it).
    async fn execute<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let request = build(self.request(method.clone(), path));
        let response = self.send(request).await?;
        let response = self.success(&method, path, response).await?;
        let body = self.read(&method, path, response).await?;
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|source| Error::Decode {
            method,
            url: self.url(path),
            source,
        })
    }

    /// GETs `/api/v1{path}` and decodes the JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.execute(Method::GET, path, |r| r).await
    }

    /// POSTs `body` as JSON to `/api/v1{path}` and decodes the JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        self.execute(Method::POST, path, |r| r.json(body)).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        self.execute(Method::PUT, path, |r| r.json(body)).await
    }

    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, Error> {
        self.execute(Method::PATCH, path, |r| r.json(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.execute(Method::DELETE, path, |r| r).await
    }

    /// PUTs a tar.gz (a template layer, a module version, a backup archive).
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<T, Error> {
        self.execute(Method::PUT, path, |r| {
            Client::with_body(r, Body::Gzip(bytes))
        })
        .await
    }

    /// GETs raw bytes (a backup archive, a template layer), as long as they take to arrive.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        let method = Method::GET;
        let request = self
            .request(method.clone(), path)
            .header("accept", "application/gzip")
            .timeout(STREAM_TIMEOUT);
        let response = self.send(request).await?;
        let response = self.success(&method, path, response).await?;
        self.read(&method, path, response).await
    }

    /// Opens a server-sent event stream at `/api/v1{path}`, resuming after `last_event_id`
    /// when given; it stays open as long as the caller reads.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<EventStream, Error> {
        let method = Method::GET;
        let mut request = self
            .request(method.clone(), path)
            .header("accept", "text/event-stream")
            .timeout(STREAM_TIMEOUT);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = self.send(request).await?;
        let response = self.success(&method, path, response).await?;
        Ok(EventStream::new(response))
    }

    /// Sends a request and returns the answer whatever its status.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Body>,
    ) -> Result<Answer, Error> {
        let request = Client::with_body(self.request(method.clone(), path), body.into());
        let response = self.send(request).await?;
        let status = response.status().as_u16();
        let body = self.read(&method, path, response).await?;
        Ok(Answer { status, body })
    }

    /// The status of a request, without reading its body (which may be a stream that never
    /// ends).
    pub async fn status_of(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Body>,
    ) -> Result<u16, Error> {
        let request = Client::with_body(self.request(method.clone(), path), body.into());
        let response = self.send(request).await?;
        Ok(response.status().as_u16())
    }
}

/// Escapes one path segment (a name, an id) or query value: every byte but the unreserved
/// characters percent-encoded.
pub fn segment(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

#[cfg(test)]
mod follow_tests;
#[cfg(test)]
mod tests;
