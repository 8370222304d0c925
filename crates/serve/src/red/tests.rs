use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use prexor_proto::v1::replica_status_client::ReplicaStatusClient;
use prexor_proto::v1::{GetStatusRequest, SignNodeCsrRequest};
use tower::ServiceExt;

use super::*;

/// Every counter named `name`, by its labels (`key=value,…`).
fn counters(snapshotter: &Snapshotter, name: &str) -> BTreeMap<String, u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect::<Vec<_>>()
                    .join(","),
                n,
            )),
            _ => None,
        })
        .collect()
}

/// Runs `body` on a current-thread runtime with `recorder` as this thread's recorder (every
/// task of the runtime runs on this thread).
fn recorded<F: Future<Output = ()>>(recorder: &DebuggingRecorder, body: F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || runtime.block_on(body));
}

#[test]
fn http_requests_are_counted_by_route_template() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let api = Router::new()
        .route("/groups/{name}", get(|| async { "ok" }))
        .fallback(|| async { StatusCode::NOT_FOUND });
    let app = Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::from_fn(http_metrics));
    recorded(&recorder, async {
        for (method, path) in [
            ("GET", "/api/v1/groups/lobby"),
            ("GET", "/api/v1/groups/survival"),
            ("DELETE", "/api/v1/groups/lobby"),
            ("GET", "/api/v1/no-such-thing/123"),
            ("GET", "/elsewhere/abc"),
            ("BREW", "/api/v1/groups/lobby"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
    });
    let counted = counters(&snapshotter, "prexor_http_requests_total");
    let expected: BTreeMap<String, u64> = [
        ("route=/api/v1/groups/{name},method=GET,status=200", 2),
        ("route=/api/v1/groups/{name},method=DELETE,status=405", 1),
        ("route=/api/v1/groups/{name},method=OTHER,status=405", 1),
        ("route=unmatched,method=GET,status=404", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(counted, expected);
}

#[test]
fn grpc_calls_are_counted_on_both_sides_by_method_and_code() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorded(&recorder, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        // As on an internal port (crate::grpc): ReplicaStatus is "still starting", any other
        // service unknown.
        let routes = tonic::service::Routes::new(health)
            .into_axum_router()
            .fallback(|request: axum::extract::Request| async move {
                if request
                    .uri()
                    .path()
                    .starts_with("/prexor.v1.ReplicaStatus/")
                {
                    let mut response = tonic::Status::unavailable("starting").into_http::<Body>();
                    response.extensions_mut().insert(Unrouted);
                    response
                } else {
                    tonic::Status::unimplemented("no such service").into_http::<Body>()
                }
            });
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(GrpcMetricsLayer::server())
                .add_routes(tonic::service::Routes::from(routes))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health_client =
            tonic_health::pb::health_client::HealthClient::new(metered(channel.clone()));
        let overall = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        health_client.check(overall).await.unwrap();
        let unknown = tonic_health::pb::HealthCheckRequest {
            service: "nope".into(),
        };
        let refused = health_client.check(unknown).await.unwrap_err();
        assert_eq!(refused.code(), Code::NotFound);
        // A service the server does not have (yet): never a label of its own there.
        let mut status_client = ReplicaStatusClient::new(metered(channel.clone()));
        let status = status_client.get_status(GetStatusRequest {}).await;
        assert_eq!(status.unwrap_err().code(), Code::Unavailable);
        let mut signer = CaSignerClient::new(metered(channel));
        let signed = signer.sign_node_csr(SignNodeCsrRequest::default()).await;
        assert_eq!(signed.unwrap_err().code(), Code::Unimplemented);
        stop.cancel();
        server.await.unwrap().unwrap();
    });
    let check = "/grpc.health.v1.Health/Check";
    let status = "/prexor.v1.ReplicaStatus/GetStatus";
    let sign = "/prexor.v1.CaSigner/SignNodeCsr";
    let expected: BTreeMap<String, u64> = [
        format!("side=client,method={check},code=OK"),
        format!("side=client,method={check},code=NOT_FOUND"),
        format!("side=client,method={status},code=UNAVAILABLE"),
        format!("side=client,method={sign},code=UNIMPLEMENTED"),
        format!("side=server,method={check},code=OK"),
        format!("side=server,method={check},code=NOT_FOUND"),
        "side=server,method=unmatched,code=UNAVAILABLE".to_owned(),
        "side=server,method=unmatched,code=UNIMPLEMENTED".to_owned(),
    ]
    .into_iter()
    .map(|k| (k, 1))
    .collect();
    assert_eq!(
        counters(&snapshotter, "prexor_grpc_requests_total"),
        expected
    );
}

#[test]
fn every_code_has_its_grpc_name() {
    assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    assert_eq!(code_name(Code::from_i32(14)), "UNAVAILABLE");
    let mut headers = HeaderMap::new();
    headers.insert("grpc-status", "5".parse().unwrap());
    assert_eq!(grpc_status(&headers), Some(Code::NotFound));
}
