//! `prexor-gateway`: holds daemon gRPC sessions and node-ownership records.
//!
//! The daemon port (`gateway.daemonListen`) speaks TLS with a certificate the cluster CA issues
//! to this replica; nodes enrol there with a join token and from then on present their node
//! certificate.

mod commands;
mod content;
mod enrolment;
mod reports;
mod sessions;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use prexor_config::GatewayConfig;
use prexor_coord::{ConsoleStreams, LeaseKeeper};
use prexor_model::pki as records;
use prexor_pki::tls::CertSlot;
use prexor_proto::v1::node_commands_server::NodeCommandsServer;
use prexor_proto::v1::node_content_server::NodeContentServer;
use prexor_proto::v1::node_enrolment_server::NodeEnrolmentServer;
use prexor_proto::v1::node_session_server::NodeSessionServer;
use prexor_serve::{Parts, Service};

fn main() -> ExitCode {
    prexor_serve::launch(
        |config: &GatewayConfig| &config.common.telemetry,
        |config: GatewayConfig| {
            let common = config.common.clone();
            let grpc = config.grpc.listen;
            prexor_serve::run(common, Some(grpc), move |service| build(service, config))
        },
    )
}

async fn build(service: Service, config: GatewayConfig) -> Result<Parts, prexor_serve::BoxError> {
    // Daemons trust the cluster CA; without it there is nothing to serve them with.
    let ca = loop {
        if let Some(published) = records::published_ca(&service.store).await? {
            break published.certificate;
        }
        service.readiness.set_phase(Some(
            "waiting for the cluster CA certificate in MongoDB (is a prexor-ca bootstrapped?)"
                .into(),
        ));
        tokio::select! {
            _ = service.shutdown.cancelled() => return Ok(Parts::default()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    };
    service
        .readiness
        .set_phase(Some("starting the daemon port".into()));

    let signer = service.signer.clone();
    let slot = Arc::new(CertSlot::default());
    let state = prexor_serve::tls::cert_state(&service.readiness, "daemon-tls", "the daemon port");
    let names =
        prexor_serve::tls::certificate_names(&service.config.advertise_host, &config.tls_names);
    let cert_keeper = tokio::spawn(prexor_serve::tls::keep_certificate(
        Arc::new(signer.clone()),
        service.store.clone(),
        prexor_serve::tls::Wanted {
            kind: "gateway",
            replica_id: service.config.replica_id.clone(),
            names,
        },
        slot.clone(),
        state,
        "daemon-port",
        service.shutdown.clone(),
    ));

    let listener = prexor_serve::bind("gateway.daemonListen", config.daemon_listen).await?;
    let server_config = prexor_pki::tls::daemon_port_server(&ca.pem, slot)?;
    // Node ownership leases, renewed together; released on SIGTERM so daemons move at once.
    let (keeper, keeper_task) =
        LeaseKeeper::start(service.leases.clone(), "node", service.shutdown.clone());
    let console = match (&service.valkey, &service.config.valkey) {
        (Some(backend), Some(valkey)) => Some(ConsoleStreams::new(
            backend.clone(),
            valkey.namespace.clone(),
        )),
        _ => None,
    };
    let sessions = sessions::Sessions::new(&service, keeper.clone(), console);
    let revocations = tokio::spawn(sessions.clone().close_revoked());
    // grpc.health.v1 on the daemon port too: a probe there proves TLS both ways works.
    let (_health_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health)
        .add_service(NodeEnrolmentServer::new(enrolment::Enrolment {
            store: service.store.clone(),
            signer,
            ca,
        }))
        .add_service(NodeSessionServer::new(sessions.clone()))
        .add_service(NodeContentServer::new(content::Content {
            store: service.store.clone(),
            fetches: Arc::new(tokio::sync::Semaphore::new(config.max_blob_fetches)),
        }));
    let internal = tonic::service::Routes::new(NodeCommandsServer::new(commands::Commands::new(
        sessions,
        service.registry.clone(),
        service.internal.peers.clone(),
    )));
    let shutdown = service.shutdown.clone();
    let failing = service.clone();
    let daemon_port = tokio::spawn(async move {
        let serving = prexor_serve::tls::serve_grpc(
            listener,
            Arc::new(server_config),
            routes,
            shutdown,
            "daemon port",
        );
        if let Err(err) = serving.await {
            failing.fail(format!("the daemon port failed: {err}"));
        }
    });
    tracing::info!(daemon_port = %config.daemon_listen, "daemon port listening (TLS)");
    Ok(Parts {
        grpc: Some(internal),
        keepers: vec![keeper],
        tasks: vec![cert_keeper, keeper_task, daemon_port, revocations],
        ..Parts::default()
    })
}
