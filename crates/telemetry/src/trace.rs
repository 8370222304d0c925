//! W3C trace context (`traceparent`, `tracestate`) where work moves between processes
//! (docs/observability.md, "Traces"): into and out of HTTP headers (REST, and gRPC metadata,
//! which travels as HTTP/2 headers), a `traceparent` string (a field of a protobuf message) and a
//! MongoDB document's `traceparent` field (an operator's intent, picked up later by a scheduler).
//!
//! Injection writes the context of a `tracing` span; extraction gives an OpenTelemetry
//! [`Context`] that [`adopt`] makes a new span's parent. Without an exporter
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` unset) spans have no context: nothing is injected, and
//! adopting changes nothing.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and document field, and message field) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Writes `span`'s context into HTTP headers (or gRPC metadata).
pub fn inject_headers(span: &Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    if !has_span(&context) {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The trace context in HTTP headers (or gRPC metadata); empty when there is none.
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// `span`'s context as a `traceparent` value; `None` when it has none (no exporter, or the span
/// is filtered out).
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    if !has_span(&context) {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier.remove(TRACEPARENT)
}

/// [`traceparent`] of the current span, or an empty string (the value of an unset protobuf
/// string field).
pub fn current_traceparent() -> String {
    traceparent(&Span::current()).unwrap_or_default()
}

/// The trace context a `traceparent` value names (empty when it is empty or malformed).
pub fn from_traceparent(value: &str) -> Context {
    if value.is_empty() {
        return Context::new();
    }
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&carrier))
}

/// Makes `context` the parent of `span` (created just before, not entered yet) when it names a
/// span, so that `span` continues that trace; otherwise `span` keeps its parent. A span that
/// replaces its local parent this way keeps a link to it, so the local trace (a scheduler's tick)
/// still leads to it.
pub fn adopt(span: &Span, context: Context) {
    if !has_span(&context) {
        return;
    }
    let local = span_context_of_current();
    let _ = span.set_parent(context);
    if let Some(local) = local {
        span.add_link(local);
    }
}

/// Adds a link from `span` to the span `context` names (work that follows from it without being
/// part of its trace: a scheduler's step for a group after an operator changed it).
pub fn link(span: &Span, context: &Context) {
    if has_span(context) {
        span.add_link(context.span().span_context().clone());
    }
}

/// The `traceparent` field of a stored document (an operator's request, deployment or group).
#[cfg(feature = "bson")]
pub fn from_document(document: &bson::Document) -> Context {
    from_traceparent(document.get_str(TRACEPARENT).unwrap_or_default())
}

/// Sets the `traceparent` field of a document about to be written to the current span's
/// context (nothing without one).
#[cfg(feature = "bson")]
pub fn inject_document(document: &mut bson::Document) {
    if let Some(value) = traceparent(&Span::current()) {
        document.insert(TRACEPARENT, value);
    }
}

fn has_span(context: &Context) -> bool {
    context.span().span_context().is_valid()
}

fn span_context_of_current() -> Option<opentelemetry::trace::SpanContext> {
    let context = Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `f` with a subscriber that gives spans OpenTelemetry contexts (no exporter).
    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_span_adopting_a_traceparent_continues_its_trace() {
        with_tracing(|| {
            let span = tracing::info_span!("child");
            adopt(&span, from_traceparent(PARENT));
            let value = traceparent(&span).expect("a context");
            assert!(
                value.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && value.ends_with("-01"),
                "{value}"
            );
            assert_ne!(value, PARENT, "a span of its own");

            let mut headers = http::HeaderMap::new();
            inject_headers(&span, &mut headers);
            assert_eq!(headers[TRACEPARENT], value.as_str());
            let back = extract_headers(&headers);
            assert_eq!(
                back.span().span_context().trace_id().to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
        });
    }

    #[test]
    fn nothing_malformed_or_absent_becomes_a_parent() {
        with_tracing(|| {
            let outer = tracing::info_span!("outer");
            let _entered = outer.enter();
            let span = tracing::info_span!("inner");
            adopt(&span, from_traceparent("not-a-traceparent"));
            adopt(&span, extract_headers(&http::HeaderMap::new()));
            let (inner, outer) = (traceparent(&span).unwrap(), traceparent(&outer).unwrap());
            assert_eq!(
                inner[3..35],
                outer[3..35],
                "still in the outer span's trace"
            );
        });
    }

    #[test]
    fn without_opentelemetry_nothing_is_injected() {
        let span = tracing::info_span!("plain");
        let mut headers = http::HeaderMap::new();
        inject_headers(&span, &mut headers);
        assert!(headers.is_empty() && traceparent(&span).is_none());
    }
}
