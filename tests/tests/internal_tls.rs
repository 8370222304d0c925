//! Internal mTLS with the real binaries: internal gRPC ports complete handshakes only with
//! service certificates of the cluster (a node certificate or another CA's certificate is
//! refused), calls that act on the cluster require one, and the CA issues a service certificate
//! only against the service enrolment secret or to the replica renewing its own.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, Proc, control, grpc_health, refused_call, scenario_tests, service_certificate,
    stop_all,
};
use prexor_pki::internal::ENROLMENT_HEADER;
use prexor_pki::tls::{connect, daemon_client};
use prexor_pki::{CertificateAuthority, Identity, KeyAndCsr, ServiceNames, pem_certificates};
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use prexor_proto::v1::command::Action;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{
    Command, GetCaCertificateRequest, NodeCommandRequest, SignNodeCsrRequest,
    SignServiceCsrRequest, StopInstance,
};
use tonic::Code;
use tonic::transport::Channel;

const EXIT_WITHIN: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);
const CONNECT: Duration = Duration::from_secs(5);

fn address(proc: &Proc) -> anyhow::Result<&str> {
    proc.grpc.as_deref().context("no internal port")
}

/// A client presenting `cert_pem`/`key_pem` and trusting the cluster CA.
async fn presenting(
    proc: &Proc,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Channel> {
    let tls = daemon_client(ca_pem, cert_pem, key_pem)?;
    Ok(connect(address(proc)?, tls, CONNECT).await?)
}

/// A client trusting the cluster CA and presenting no certificate.
async fn anonymous(proc: &Proc, ca_pem: &str) -> anyhow::Result<Channel> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem_certificates(ca_pem)? {
        roots.add(cert)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(prexor_pki::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(connect(address(proc)?, tls, CONNECT).await?)
}

fn csr(identity: Identity) -> anyhow::Result<KeyAndCsr> {
    Ok(KeyAndCsr::new(&identity, &ServiceNames::default())?)
}

fn service(kind: &str, replica: &str) -> Identity {
    Identity::Service {
        kind: kind.into(),
        replica: replica.into(),
    }
}

fn sign_service_request(kind: &str, replica: &str) -> anyhow::Result<SignServiceCsrRequest> {
    Ok(SignServiceCsrRequest {
        service: kind.into(),
        replica_id: replica.into(),
        csr_pem: csr(service(kind, replica))?.csr_pem,
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    })
}

/// `message` presenting `secret` as the service enrolment secret.
fn with_secret<T>(message: T, secret: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(ENROLMENT_HEADER, secret.parse()?);
    Ok(request)
}

/// Whether a call over a connection presenting `cert_pem` gets through `proc`'s internal port;
/// with TLS 1.3 a refused client certificate surfaces on the first call, not on connect.
async fn gets_through(
    proc: &Proc,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<bool> {
    let Ok(channel) = presenting(proc, ca_pem, cert_pem, key_pem).await else {
        return Ok(false);
    };
    Ok(grpc_health(channel).await.is_ok())
}

async fn internal_ports(cluster: &Cluster) -> anyhow::Result<()> {
    let mut fleet = control(cluster).await?;
    let store = cluster.store().await?;
    let ca_pem = prexor_model::pki::published_ca(&store)
        .await?
        .context("CA")?
        .certificate
        .pem;
    let authority = cluster.ca_from_disk("ca-1")?;
    let gateway = &fleet.gateways[0];

    // A node certificate of this very cluster does not get through the handshake of an
    // internal port (gateway or CA), and the refusal is logged with the reason.
    let node = csr(Identity::Node("node-1".into()))?;
    let node_cert = authority.sign_node("node-1", &node.csr_pem, HOUR)?;
    for proc in [gateway, &fleet.ca] {
        ensure!(
            !gets_through(proc, &ca_pem, &node_cert.pem, &node.key_pem).await?,
            "{} answered a caller presenting a node certificate",
            proc.name
        );
        // The port logs the refusal on its own task, possibly after the client saw it.
        let mut logged = false;
        for _ in 0..50 {
            logged = proc
                .log_text()
                .contains("internal gRPC ports accept only service certificates");
            if logged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            logged,
            "{} logged no reason for the refused handshake:\n{}",
            proc.name,
            proc.log_text()
        );
    }
    // Nor does a service certificate of another CA.
    let (other_ca, _) = CertificateAuthority::generate("other")?;
    let (impostor_cert, impostor_key) = service_certificate(&other_ca, "scheduler", "impostor")?;
    ensure!(
        !gets_through(gateway, &ca_pem, &impostor_cert, &impostor_key).await?,
        "a certificate of another CA got through"
    );
    // A service certificate of the cluster does.
    let (scheduler_cert, scheduler_key) = service_certificate(&authority, "scheduler", "s1")?;
    ensure!(gets_through(gateway, &ca_pem, &scheduler_cert, &scheduler_key).await?);

    // Without a certificate: health is readable, nothing that acts on the cluster is.
    let plain_gateway = anonymous(gateway, &ca_pem).await?;
    ensure!(grpc_health(plain_gateway.clone()).await? == "SERVING");
    let command = Command {
        command_id: "anonymous".into(),
        scope: "group:lobby".into(),
        fence_token: 1,
        action: Some(Action::Stop(StopInstance {
            instance_id: "lobby-1".into(),
            ..Default::default()
        })),
    };
    refused_call(
        NodeCommandsClient::new(plain_gateway)
            .send(NodeCommandRequest {
                node_id: "node-1".into(),
                command: Some(command),
                timeout_ms: 1000,
                forwarded: false,
            })
            .await,
        Code::Unauthenticated,
        "requires a service certificate",
    )?;
    let mut plain_ca = CaSignerClient::new(anonymous(&fleet.ca, &ca_pem).await?);
    ensure!(
        plain_ca
            .get_ca_certificate(GetCaCertificateRequest {})
            .await?
            .into_inner()
            .can_sign
    );
    refused_call(
        plain_ca
            .sign_node_csr(SignNodeCsrRequest {
                node_id: "node-1".into(),
                csr_pem: node.csr_pem.clone(),
            })
            .await,
        Code::Unauthenticated,
        "requires a service certificate",
    )?;
    // Without the service enrolment secret, or with a wrong one.
    let rogue = || sign_service_request("gateway", "rogue");
    let call = plain_ca.sign_service_csr(rogue()?).await;
    refused_call(call, Code::PermissionDenied, "service enrolment secret")?;
    let call = plain_ca
        .sign_service_csr(with_secret(rogue()?, &"0".repeat(64))?)
        .await;
    refused_call(call, Code::PermissionDenied, "service enrolment secret")?;
    // With the secret from MongoDB: how every replica gets its first certificate.
    let secret = prexor_model::pki::service_enrolment_secret(&store).await?;
    let right = with_secret(sign_service_request("gateway", "gateway-9")?, &secret)?;
    let issued = plain_ca.sign_service_csr(right).await?.into_inner();
    ensure!(issued.chain_pem.contains("BEGIN CERTIFICATE"));

    // A replica's certificate renews itself, and only itself.
    let mut as_scheduler =
        CaSignerClient::new(presenting(&fleet.ca, &ca_pem, &scheduler_cert, &scheduler_key).await?);
    let another = sign_service_request("gateway", "gateway-9")?;
    let call = as_scheduler.sign_service_csr(another).await;
    refused_call(
        call,
        Code::PermissionDenied,
        "may renew only its own certificate",
    )?;
    let own = sign_service_request("scheduler", "s1")?;
    as_scheduler.sign_service_csr(own).await?;

    let mut all: Vec<&mut Proc> = fleet.gateways.iter_mut().collect();
    all.push(&mut fleet.ca);
    stop_all(all, EXIT_WITHIN).await
}

scenario_tests! {
    internal_ports_accept_only_service_certificates_of_the_cluster: internal_ports,
}
