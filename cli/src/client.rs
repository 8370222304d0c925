use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

/// HTTP client for one controller URL.
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(controller: &str, token: Option<String>) -> anyhow::Result<Client> {
        let base = controller.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--controller {controller:?} must be an http:// or https:// URL, e.g. https://controller-1:8080"
            );
        }
        // The one TLS crypto provider compiled in (ring); reqwest is built without a default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("creating the HTTP client")?;
        Ok(Client { base, token, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GETs `/api/v1{path}` and decodes the JSON answer; API errors are reported with their
    /// code and message.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Sends `body` to `/api/v1{path}` and decodes the JSON answer (`null` for no content).
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<T> {
        self.call(method, path, Some(body)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the controller at {}; check --controller or PREXOR_CONTROLLER",
                self.base
            )
        })?;
        let status = response.status();
        let body = response.text().await.context("reading the answer")?;
        if !status.is_success() {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "{}: {}",
                        v.get("code")?.as_str()?,
                        v.get("message")?.as_str()?
                    ))
                })
                .unwrap_or(body);
            if status == reqwest::StatusCode::UNAUTHORIZED {
                bail!("{method} {url} answered {status}: {detail}\nsign in with `prexorctl login`");
            }
            bail!("{method} {url} answered {status}: {detail}");
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
