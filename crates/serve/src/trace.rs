//! Spans of the requests a process answers and the calls it makes (docs/observability.md,
//! "Traces"):
//!
//! - [`http_trace`] (an axum middleware on a service's own routes): a span `http.request` per
//!   request, a child of the caller's `traceparent` when it sends one, with the method, the route
//!   template, the status and the replica; and its request id (`X-Request-Id`: the caller's when
//!   valid, else a fresh one) in the span, so in every log line of the request, and in the
//!   response.
//! - gRPC (`grpc_span`, used by [`crate::red::GrpcMetricsLayer`]): a span `grpc.server` per
//!   call served, a child of the caller's context from the call's metadata, and a span
//!   `grpc.client` per call made, whose context goes out in the call's metadata.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;

use crate::red::UNMATCHED;

/// The request id header of requests and responses.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
const REQUEST_ID_MAX: usize = 128;

/// The request id of the request being answered (an extension, for handlers that name it).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A caller's request id is kept when it is 1 to 128 characters of letters, digits, `-`, `_`,
/// `.`, `:` (what a log line or a header can carry unchanged); otherwise a fresh one is made.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= REQUEST_ID_MAX
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// Answers one HTTP request inside its span `http.request` (see the module documentation).
pub async fn http_trace(mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let id = request_id(request.headers());
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
        replica = prexor_telemetry::replica(),
        request_id = %id,
    );
    prexor_telemetry::trace::adopt(
        &span,
        prexor_telemetry::trace::extract_headers(request.headers()),
    );
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

/// The span of one gRPC call on `side` (`server` or `client`) of `path`
/// (`/prexor.v1.NodeCommands/Send`). A server's span continues the caller's trace from
/// `headers`; a client's context is written into `headers`.
pub(crate) fn grpc_span(server: bool, path: &str, headers: &mut HeaderMap) -> tracing::Span {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    // One field list for both sides; a span's name must be a literal.
    macro_rules! span {
        ($name:literal, $kind:literal $(, $field:ident = $value:expr)*) => {
            tracing::info_span!(
                $name,
                otel.name = %path,
                otel.kind = $kind,
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                $($field = $value,)*
            )
        };
    }
    let span = if server {
        span!(
            "grpc.server",
            "server",
            replica = prexor_telemetry::replica()
        )
    } else {
        span!("grpc.client", "client")
    };
    if server {
        prexor_telemetry::trace::adopt(&span, prexor_telemetry::trace::extract_headers(headers));
    } else {
        prexor_telemetry::trace::inject_headers(&span, headers);
    }
    span
}

/// Records a call's status code on its span; any code but OK marks the span as failed.
pub(crate) fn grpc_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_request_id_is_kept_and_anything_else_replaced() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(&REQUEST_ID, HeaderValue::from_str(value).unwrap());
            request_id(&headers)
        };
        assert_eq!(with("req-42_a.b:c"), "req-42_a.b:c");
        for bad in ["", "a b", "x\"y", &"a".repeat(129)] {
            let id = with(bad);
            assert!(id.len() == 32 && id != bad, "{bad:?} → {id}");
        }
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
    }
}
