use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

/// HTTP client for one controller URL.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn base_url(controller: &str) -> anyhow::Result<String> {
    let base = controller.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        bail!(
            "--controller {controller:?} must be an http:// or https:// URL, e.g. https://controller-1:8080"
        );
    }
    Ok(base)
}

fn http_builder() -> reqwest::ClientBuilder {
    // reqwest is built without a crypto provider: main() installs ring as the default.
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
}

/// Which server certificates an https:// controller may present.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// PEM of the CA(s) to trust (the cluster CA kept in the context, or `--ca-file`). No
    /// other root is trusted.
    pub ca_pem: Option<String>,
    /// `--insecure-skip-verify`: any certificate (warned about on every use).
    pub insecure: bool,
}

impl Client {
    /// A client that accepts any certificate, for reading what is public (the cluster CA, to be
    /// confirmed by its fingerprint before anything is believed or sent).
    pub fn probe(controller: &str) -> anyhow::Result<Client> {
        let base = base_url(controller)?;
        let http = http_builder()
            .tls_danger_accept_invalid_certs(true)
            .build()
            .context("creating the HTTP client")?;
        Ok(Client {
            base,
            token: None,
            http,
        })
    }

    pub fn new(controller: &str, token: Option<String>, trust: &Trust) -> anyhow::Result<Client> {
        let base = base_url(controller)?;
        let mut builder = http_builder();
        if base.starts_with("https://") {
            if trust.insecure {
                eprintln!(
                    "warning: --insecure-skip-verify: the controller's certificate is not checked; anyone on the path can read and change this session"
                );
                builder = builder.tls_danger_accept_invalid_certs(true);
            } else if let Some(pem) = &trust.ca_pem {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .context("the trusted CA is not PEM certificates")?;
                builder = builder.tls_certs_only(certs);
            } else {
                bail!(
                    "no CA to check {base} against: sign in with `prexorctl login --controller {base}` (it shows the cluster CA's fingerprint and keeps the CA), or pass --ca-file"
                );
            }
        }
        let http = builder.build().context("creating the HTTP client")?;
        Ok(Client { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `/api/v1{path}` and decodes the JSON answer; API errors are reported with their
    /// code and message.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.execute(reqwest::Method::GET, path, |r| r).await
    }

    /// Sends `body` to `/api/v1{path}` and decodes the JSON answer (`null` for no content).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.execute(method, path, |r| r.json(&body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.execute(reqwest::Method::DELETE, path, |r| r).await
    }

    /// PUTs a file's bytes (a template layer).
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<T> {
        self.execute(reqwest::Method::PUT, path, |r| {
            r.header("content-type", "application/gzip")
                .timeout(Duration::from_secs(600))
                .body(bytes)
        })
        .await
    }

    /// Opens a server-sent event stream at `/api/v1{path}`.
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.open(path, "text/event-stream").await
    }

    /// GETs `/api/v1{path}` as raw bytes (a backup archive).
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self.open(path, "application/gzip").await?;
        Ok(response
            .bytes()
            .await
            .context("reading the download")?
            .to_vec())
    }

    /// A GET whose body is read by the caller (no overall timeout).
    async fn open(&self, path: &str, accept: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self
            .http
            .get(&url)
            .header("accept", accept)
            .timeout(Duration::from_secs(365 * 24 * 3600));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| self.unreachable())?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Refused {
                status: status.as_u16(),
                message: format!("GET {url} answered {status}: {}", detail(&body)),
            }
            .into());
        }
        Ok(response)
    }

    fn unreachable(&self) -> String {
        format!(
            "cannot reach the controller at {}; check --controller or PREXOR_CONTROLLER",
            self.base
        )
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = build(request)
            .send()
            .await
            .with_context(|| self.unreachable())?;
        let status = response.status();
        let body = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            return Err(Refused {
                status: status.as_u16(),
                message: format!("{method} {url} answered {status}: {}", detail(&body)),
            }
            .into());
        }
        let body = if body.is_empty() {
            "null".to_owned()
        } else {
            body
        };
        serde_json::from_str(&body)
            .with_context(|| format!("{method} {url} answered with unexpected JSON"))
    }
}

/// The API answered with an error status.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if self.status == 401 {
            f.write_str("\nsign in with `prexorctl login`")?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}

/// The status of an API refusal behind `err`, if that is what it is.
pub fn refused_with(err: &anyhow::Error) -> Option<u16> {
    err.downcast_ref::<Refused>().map(|r| r.status)
}

/// `CODE: message` of an API error body (the body itself if it is not one).
fn detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            Some(format!(
                "{}: {}",
                v.get("code")?.as_str()?,
                v.get("message")?.as_str()?
            ))
        })
        .unwrap_or_else(|| body.to_owned())
}

/// Reads server-sent events from `response`, calling `each(event, data)` until it returns
/// `false` or the stream ends.
pub async fn read_events(
    mut response: reqwest::Response,
    mut each: impl FnMut(&str, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), Vec::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if data.is_empty() && event.is_empty() {
                continue;
            }
            if !each(&event, &data.join("\n"))? {
                return Ok(());
            }
        }
    }
    Ok(())
}
