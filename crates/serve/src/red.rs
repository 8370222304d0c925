//! RED metrics (rate, errors, duration) of the HTTP requests a process answers and of the gRPC
//! calls it serves and makes (docs/observability.md, "Metrics"). Every label stays bounded:
//!
//! - `prexor_http_requests_total{route,method,status}` and the histogram
//!   `prexor_http_request_duration_seconds{route,method}` ([`http_metrics`], an axum middleware):
//!   `route` is the route's template (`/api/v1/groups/{name}`), `unmatched` for a request no
//!   route matched; `method` is the HTTP method (`OTHER` for a non-standard one); the duration
//!   runs until the response's head (an event stream's lifetime is not a request's latency).
//! - `prexor_grpc_requests_total{side,method,code}` and the histogram
//!   `prexor_grpc_request_duration_seconds{side,method}` ([`GrpcMetricsLayer`], a tower layer
//!   on tonic servers and channels): `side` is `server` or `client`, `method` the gRPC path
//!   (`/prexor.v1.NodeCommands/Send`; a server counts a call it answers UNIMPLEMENTED, or that
//!   reached no service ([`Unrouted`]), as `unmatched`, so that no caller can add paths), `code`
//!   the status code's name (`OK`, `UNAVAILABLE`, …;
//!   `CANCELLED` when the call was dropped before its status). The duration runs until the
//!   status (the end of a stream).
//!
//! The same layer gives every call its span, carrying the trace context in the call's metadata
//! ([`crate::trace`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Code;

/// The `route` of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

/// Counts and times one HTTP request by its route template (`axum::middleware::from_fn`; layered
/// on every route of the ops port and on the service's own router).
pub async fn http_metrics(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
        .to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    metrics::histogram!(
        "prexor_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "prexor_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status.as_str().to_owned()
    )
    .increment(1);
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Marks a gRPC response (an extension) that no service produced, e.g. "still starting": its
/// call counts as `method="unmatched"` on the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unrouted;

/// The gRPC metrics of a tonic server ([`GrpcMetricsLayer::server`], on every port built by
/// [`crate::tls::serve_grpc`]) or of calls through a channel ([`metered`]).
#[derive(Debug, Clone, Copy)]
pub struct GrpcMetricsLayer {
    side: Side,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

impl GrpcMetricsLayer {
    pub fn server() -> GrpcMetricsLayer {
        GrpcMetricsLayer { side: Side::Server }
    }

    pub fn client() -> GrpcMetricsLayer {
        GrpcMetricsLayer { side: Side::Client }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            side: self.side,
        }
    }
}

/// A channel whose calls are counted and timed (`side="client"`).
pub type MeteredChannel = GrpcMetrics<tonic::transport::Channel>;

/// `channel`, its calls counted and timed: build every internal client on this.
pub fn metered(channel: tonic::transport::Channel) -> MeteredChannel {
    tower::Layer::layer(&GrpcMetricsLayer::client(), channel)
}

/// See [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    side: Side,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<axum::http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<axum::http::Request<ReqBody>, Response = axum::http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = axum::http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let span =
            crate::trace::grpc_span(self.side == Side::Server, &method, request.headers_mut());
        let mut call = Call {
            side: self.side,
            method,
            started: Instant::now(),
            head_code: None,
            unrouted: false,
            finished: false,
            span: span.clone(),
        };
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(tracing::Instrument::instrument(
            async move {
                match response.await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        // A call refused at once carries its status in the head ("trailers-only").
                        call.head_code = grpc_status(&parts.headers);
                        call.unrouted = parts.extensions.get::<Unrouted>().is_some();
                        Ok(axum::http::Response::from_parts(
                            parts,
                            MeteredBody { inner: body, call },
                        ))
                    }
                    Err(err) => {
                        // The channel could not make the call (no connection).
                        call.finish(Some(Code::Unavailable));
                        Err(err)
                    }
                }
            },
            span,
        ))
    }
}

/// One call being measured: recorded once, when its status is known or it is dropped.
struct Call {
    side: Side,
    method: String,
    started: Instant,
    head_code: Option<Code>,
    /// The response came from no service ([`Unrouted`]).
    unrouted: bool,
    finished: bool,
    /// The call's span (`crate::trace`), ended with the call.
    span: tracing::Span,
}

impl Call {
    /// Records the call with `code` (from the trailers), else the head's status, else UNKNOWN
    /// (a response without a status).
    fn finish(&mut self, code: Option<Code>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let code = code.or(self.head_code).unwrap_or(Code::Unknown);
        crate::trace::grpc_status(&self.span, code);
        let _ended = std::mem::replace(&mut self.span, tracing::Span::none());
        let method = if self.side == Side::Server && (self.unrouted || code == Code::Unimplemented)
        {
            UNMATCHED.to_owned()
        } else {
            std::mem::take(&mut self.method)
        };
        let side = self.side.label();
        metrics::histogram!(
            "prexor_grpc_request_duration_seconds",
            "side" => side,
            "method" => method.clone()
        )
        .record(self.started.elapsed().as_secs_f64());
        metrics::counter!(
            "prexor_grpc_requests_total",
            "side" => side,
            "method" => method,
            "code" => code_name(code)
        )
        .increment(1);
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Dropped before the status: cancelled (by the client, or the connection went away),
        // unless the head carried the status already.
        let code = self.head_code.unwrap_or(Code::Cancelled);
        self.finish(Some(code));
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers (the gRPC status) pass or the
    /// body ends or is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: HttpBody> HttpBody for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        // A streamed answer is produced while the body is polled: inside the call's span.
        let polled = {
            let _entered = this.call.span.enter();
            this.inner.poll_frame(cx)
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call.finish(grpc_status(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Some(Code::Unknown)),
            Poll::Ready(None) => this.call.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.trim().parse().ok()?))
}

/// The status code's name as gRPC spells it (`OK`, `DEADLINE_EXCEEDED`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests;
