//! Traces across processes (docs/observability.md, "Traces"): a real OTLP/gRPC trace receiver
//! runs inside the test (`opentelemetry.proto.collector.trace.v1.TraceService/Export`), every
//! process exports to it, and one operator action — `POST /api/v1/instances/{id}/stop` with the
//! test's own `traceparent` — must come back as one trace with spans from the api, the
//! scheduler, a gateway and the daemon. The answer carries an `X-Request-Id`, and a valid one the
//! caller sends is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prexor_acceptance::{Cluster, create_group, running, scenario_tests, spec_of, system};

/// The batch exporters flush this often (milliseconds) in the test.
const FLUSH_EVERY_MS: &str = "200";
const SPANS_WITHIN: Duration = Duration::from_secs(60);
const GROUP: &str = "traced";

/// The gRPC call from the scheduler to a gateway (a client span there, a server span here).
const SEND: &str = "/prexor.v1.NodeCommands/Send";

/// The test's own span: the stop request's parent.
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

/// One exported span, as the receiver keeps it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: SpanKind,
}

/// An OTLP trace receiver keeping every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.spans.lock().expect("spans lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                let kind = span.kind();
                kept.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    kind,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    /// Serves the receiver on a free loopback port; its endpoint (`http://127.0.0.1:<port>`).
    async fn start(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
            if let Err(err) = served {
                eprintln!("the OTLP receiver stopped: {err}");
            }
        });
        Ok(endpoint)
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        self.spans
            .lock()
            .expect("spans lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The spans of `trace_id` once every one of `names` (`service.name` → span name) was
    /// received, waiting at most [`SPANS_WITHIN`].
    async fn wait_for(
        &self,
        trace_id: &str,
        names: &[(&str, &str)],
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + SPANS_WITHIN;
        loop {
            let spans = self.of_trace(trace_id);
            let missing: Vec<&(&str, &str)> = names
                .iter()
                .filter(|(service, name)| {
                    !spans
                        .iter()
                        .any(|s| s.service == *service && s.name == *name)
                })
                .collect();
            if missing.is_empty() {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                let mut by_service: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
                for span in &spans {
                    by_service
                        .entry(&span.service)
                        .or_default()
                        .insert(&span.name);
                }
                let total = self.spans.lock().expect("spans lock").len();
                bail!(
                    "trace {trace_id} lacks {missing:?}; it has {by_service:?} ({total} spans received in all)"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn one_stop_is_one_trace(cluster: &Cluster) -> anyhow::Result<()> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    cluster.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    cluster.set_env("OTEL_BSP_SCHEDULE_DELAY", FLUSH_EVERY_MS);

    let system = system(cluster, &["node-1"], 1).await?;
    create_group(&system.rest, GROUP, spec_of(GROUP, 1, &[])?).await?;
    let instance = format!("{GROUP}-1");
    running(cluster, &[&instance]).await?;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = |path: &str| format!("{}/api/v1{path}", system.api.http);
    let token = system.rest.token().to_owned();

    // A caller's valid request id is kept; the answer names it.
    let shown = http
        .get(url(&format!("/instances/{instance}")))
        .bearer_auth(&token)
        .header("x-request-id", "tracing-test-1")
        .send()
        .await?;
    ensure!(
        shown.status() == 200,
        "GET the instance: {}",
        shown.status()
    );
    ensure!(
        shown
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            == Some("tracing-test-1"),
        "the caller's request id is not echoed: {:?}",
        shown.headers()
    );

    // The operator action, in the test's own trace.
    let stopped = http
        .post(url(&format!("/instances/{instance}/stop")))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN}-01"))
        .json(&serde_json::json!({}))
        .send()
        .await?;
    let status = stopped.status();
    let request_id = stopped
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .context("the stop answer has no X-Request-Id")?;
    ensure!(
        status == 202,
        "POST stop: {status} {}",
        stopped.text().await?
    );
    ensure!(
        request_id.len() == 32 && request_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a fresh request id: {request_id:?}"
    );

    let spans = receiver
        .wait_for(
            TRACE_ID,
            &[
                ("prexor-api", "POST /api/v1/instances/{id}/stop"),
                ("prexor-scheduler", "scheduler.request"),
                ("prexor-scheduler", "store.fenced_write"),
                ("prexor-scheduler", "node.command"),
                ("prexor-scheduler", SEND),
                ("prexor-gateway", SEND),
                ("prexor-gateway", "gateway.deliver"),
                ("prexor-daemon", "daemon.stop"),
                ("prexor-gateway", "gateway.report"),
            ],
        )
        .await?;
    let request = spans
        .iter()
        .find(|s| s.service == "prexor-api")
        .expect("waited for");
    ensure!(request.kind == SpanKind::Server, "{request:?}");
    for (service, kind) in [
        ("prexor-scheduler", SpanKind::Client),
        ("prexor-gateway", SpanKind::Server),
    ] {
        ensure!(
            spans
                .iter()
                .any(|s| s.service == service && s.name == SEND && s.kind == kind),
            "no {kind:?} span {SEND} of {service}: {spans:#?}"
        );
    }
    ensure!(
        request.parent == PARENT_SPAN,
        "the api's span is not the caller's child: {request:?}"
    );
    // Every span's parent is the caller's span or a span of the trace: nothing in it starts
    // a trace of its own (parents end, and are exported, after their children: eventually).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = receiver.of_trace(TRACE_ID);
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let orphans: Vec<&Received> = spans
            .iter()
            .filter(|s| s.parent != PARENT_SPAN && !ids.contains(s.parent.as_str()))
            .collect();
        if orphans.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "spans whose parent is not in the trace: {orphans:#?}\nthe trace: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    system.finish(cluster, 0).await
}

scenario_tests! {
    a_stop_request_is_one_trace_across_api_scheduler_gateway_and_daemon: one_stop_is_one_trace,
}
