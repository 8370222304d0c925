//! What can go wrong talking to the api, and the api's own error body.

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// The api's error body (`services/api/src/error.rs`): `{code, message, details}`. `error` is
/// taken for `message` from anything in front of the api that answers the other common way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    /// `NOT_FOUND`, `VALIDATION_FAILED`, `CONFLICT`, ...
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default, alias = "error")]
    pub message: Option<String>,
    /// E.g. `{"fields": [{"field", "message"}]}` of a validation failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} must be an http:// or https:// URL, e.g. https://controller-1:8080")]
    BadUrl { url: String },
    #[error(
        "no CA to check {base} against: trust the cluster CA (its PEM), or accept any certificate"
    )]
    NoTrustedCa { base: String },
    #[error("the trusted CA is not PEM certificates")]
    BadCa {
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error("creating the HTTP client")]
    Build(#[source] reqwest::Error),
    /// No answer: nothing listens, TLS failed (an untrusted certificate), or it took too long.
    #[error("cannot reach the controller at {base}")]
    Unreachable {
        base: String,
        #[source]
        source: reqwest::Error,
    },
    /// The api answered with an error status.
    #[error("{method} {url} answered {status}: {}", detail(.body.as_deref(), .text))]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        /// The api's error body, when it sent one.
        body: Option<Box<ApiError>>,
        /// The body as it came.
        text: String,
    },
    #[error("reading the answer of {method} {url}")]
    Read {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} answered with unexpected JSON")]
    Decode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the event stream failed")]
    Stream(#[source] reqwest::Error),
    #[error("the event stream is not in the event-stream format: {0}")]
    StreamFormat(String),
}

/// `CODE: message` of an api error body, the message alone without a code, else the body as
/// it came.
fn detail(body: Option<&ApiError>, text: &str) -> String {
    match body {
        Some(ApiError {
            code: Some(code),
            message: Some(message),
            ..
        }) => format!("{code}: {message}"),
        Some(ApiError {
            message: Some(message),
            ..
        }) => message.clone(),
        _ => text.to_owned(),
    }
}

impl Error {
    pub(crate) fn status(method: &Method, url: String, status: StatusCode, text: String) -> Error {
        let body = serde_json::from_str::<ApiError>(&text)
            .ok()
            .filter(|b| b.code.is_some() || b.message.is_some())
            .map(Box::new);
        Error::Status {
            method: method.clone(),
            url,
            status,
            body,
            text,
        }
    }

    /// The HTTP status, if the api answered with an error status.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Error::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    /// The api's error body, if it answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Error::Status { body, .. } => body.as_deref(),
            _ => None,
        }
    }
}
