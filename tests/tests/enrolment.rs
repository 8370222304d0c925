//! CA signer and node enrolment with the real binaries: a daemon enrols with a single-use join
//! token and from then on is admitted to the daemon port only with its own, unrevoked node
//! certificate; a CA replica without the key says so and signs once the bundle is copied.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use prexor_acceptance::{
    Cluster, Proc, binary, free_port, refused_call, run_ok, scenario_tests, service_certificate,
    stop_all, wait_unready_because,
};
use prexor_model::pki as records;
use prexor_pki::JoinToken;
use prexor_pki::tls::{connect, daemon_client, enrolment_client};
use prexor_pki::{CertInfo, CertificateAuthority, Identity, KeyAndCsr, ServiceNames, pem_to_der};
use prexor_proto::v1::ca_signer_client::CaSignerClient;
use prexor_proto::v1::node_enrolment_client::NodeEnrolmentClient;
use prexor_proto::v1::{EnrolRequest, EnrolResponse, GetCaCertificateRequest, RenewRequest};
use tonic::Code;
use tonic::transport::Channel;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

async fn token(cluster: &Cluster, node: &str, ttl: Duration) -> anyhow::Result<JoinToken> {
    let store = cluster.store().await?;
    let ca = records::published_ca(&store)
        .await?
        .context("no cluster CA")?;
    Ok(
        records::create_join_token(&store, node, &ca.certificate, ttl, "test")
            .await?
            .0,
    )
}

/// Runs `prexor-ca --config <replica's config> ARGS…` (the operator's admin commands); stdout.
fn ca_admin(cluster: &Cluster, replica: &str, args: &[&str]) -> anyhow::Result<String> {
    let stdout = run_ok(
        Command::new(binary("prexor-ca")?)
            .arg("--config")
            .arg(cluster.dir.join(format!("{replica}.toml")))
            .args(args),
        &format!("prexor-ca {args:?}"),
    )?;
    Ok(stdout.trim().to_string())
}

/// The cluster CA with its key, read from a CA replica's data dir (the test plays an attacker
/// or a second CA host).
async fn enrolment_channel(gateway: &Proc, fingerprint: &str) -> anyhow::Result<Channel> {
    let address = gateway.daemon_port.as_deref().context("not a gateway")?;
    Ok(connect(
        address,
        enrolment_client(fingerprint)?,
        Duration::from_secs(5),
    )
    .await?)
}

async fn node_channel(
    gateway: &Proc,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Channel> {
    let address = gateway.daemon_port.as_deref().context("not a gateway")?;
    let tls = daemon_client(ca_pem, cert_pem, key_pem)?;
    Ok(connect(address, tls, Duration::from_secs(5)).await?)
}

fn node_csr(node: &str) -> anyhow::Result<KeyAndCsr> {
    Ok(KeyAndCsr::new(
        &Identity::Node(node.into()),
        &ServiceNames::default(),
    )?)
}

fn enrol_request(node: &str, token: &str, csr_for: &str) -> anyhow::Result<EnrolRequest> {
    Ok(EnrolRequest {
        node_id: node.into(),
        join_token: token.into(),
        csr_pem: node_csr(csr_for)?.csr_pem,
    })
}

/// Asks to enrol `node` with `token` and a CSR for `csr_for`; the answer.
async fn enrol_as(
    enrol: &mut NodeEnrolmentClient<Channel>,
    node: &str,
    token: &str,
    csr_for: &str,
) -> anyhow::Result<Result<tonic::Response<EnrolResponse>, tonic::Status>> {
    Ok(enrol.enrol(enrol_request(node, token, csr_for)?).await)
}

fn renew_request(node: &str) -> anyhow::Result<RenewRequest> {
    Ok(RenewRequest {
        node_id: node.into(),
        csr_pem: node_csr(node)?.csr_pem,
    })
}

fn mode_of(path: &std::path::Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

async fn enrolment(cluster: &Cluster) -> anyhow::Result<()> {
    let mut ca = cluster.service("ca", "ca-1", &cluster.ca_extra("ca-1"))?;
    let mut gw1 = cluster.service("gateway", "gateway-1", "")?;
    let mut gw2 = cluster.service("gateway", "gateway-2", "")?;
    for proc in [&mut ca, &mut gw1, &mut gw2] {
        proc.wait_ready(READY_WITHIN).await?;
    }
    let key_path = cluster.dir.join("ca-1/certs/ca/ca.key");
    ensure!(mode_of(&key_path)? == 0o600, "the CA key must be 0600");
    let ca_pem = std::fs::read_to_string(cluster.dir.join("ca-1/certs/ca/ca.crt"))?;
    let store = cluster.store().await?;
    let published = records::published_ca(&store).await?.context("published")?;
    ensure!(
        published.certificate.pem == ca_pem,
        "MongoDB holds the CA certificate"
    );
    let fingerprint = published.certificate.fingerprint.clone();

    // End to end: the daemon enrols (first gateway in its list is dead) and becomes ready.
    let dead = format!("127.0.0.1:{}", free_port());
    let gw1_port = gw1.daemon_port.clone().context("daemon port")?;
    let gw2_port = gw2.daemon_port.clone().context("daemon port")?;
    let node1_token = token(cluster, "node-1", HOUR).await?.to_string();
    let mut daemon = cluster.daemon(
        "daemon-1",
        "node-1",
        "node-1",
        &[&dead, &gw1_port],
        Some(&node1_token),
        &[],
    )?;
    daemon.wait_ready(READY_WITHIN).await?;
    let certs = cluster.dir.join("node-1/certs");
    for file in ["node.key", "node.crt", "ca.crt"] {
        ensure!(mode_of(&certs.join(file))? == 0o600, "{file} must be 0600");
    }
    let cert_pem = std::fs::read_to_string(certs.join("node.crt"))?;
    let key_pem = std::fs::read_to_string(certs.join("node.key"))?;
    let info = CertInfo::parse(&pem_to_der(&cert_pem, "CERTIFICATE")?)?;
    ensure!(
        info.identity == Some(Identity::Node("node-1".into())),
        "{info:?}"
    );
    ensure!(info.common_name.as_deref() == Some("node-1"));
    let days = (info.not_after - info.not_before) / 86400;
    ensure!(days == 90, "node certificates last 90 days, got {days}");

    // The token is spent: a second daemon presenting it is refused for good.
    let mut reuse = cluster.daemon(
        "daemon-reuse",
        "node-1",
        "node-1-again",
        &[&gw2_port],
        Some(&node1_token),
        &[],
    )?;
    reuse.wait_failure(EXIT_WITHIN, &["already used"]).await?;

    let mut enrol = NodeEnrolmentClient::new(enrolment_channel(&gw2, &fingerprint).await?);

    // An expired token.
    let expired = token(cluster, "node-2", Duration::from_millis(1)).await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let call = enrol_as(&mut enrol, "node-2", &expired.to_string(), "node-2").await?;
    refused_call(call, Code::PermissionDenied, "expired")?;

    // A token for node A used for node B, and a token for A with a CSR for B.
    let for_a = token(cluster, "node-a", HOUR).await?.to_string();
    let call = enrol_as(&mut enrol, "node-b", &for_a, "node-b").await?;
    refused_call(call, Code::PermissionDenied, "issued for node node-a")?;
    let call = enrol_as(&mut enrol, "node-a", &for_a, "node-b").await?;
    refused_call(call, Code::InvalidArgument, "\"node-b\"")?;
    // Nothing was issued, so the token still works with the right CSR.
    let node_a = node_csr("node-a")?;
    let issued = enrol
        .enrol(EnrolRequest {
            node_id: "node-a".into(),
            join_token: for_a.clone(),
            csr_pem: node_a.csr_pem.clone(),
        })
        .await?
        .into_inner();
    ensure!(issued.ca_pem == ca_pem);

    // A token of another cluster.
    let (other_ca, _) = CertificateAuthority::generate("other")?;
    let foreign = format!(
        "pxj1.node-1.{}.{}",
        "ab".repeat(32),
        other_ca.certificate().fingerprint
    );
    let call = enrol_as(&mut enrol, "node-1", &foreign, "node-1").await?;
    refused_call(call, Code::PermissionDenied, "made for the cluster CA")?;
    // Garbage.
    refused_call(
        enrol
            .enrol(EnrolRequest {
                node_id: "node-1".into(),
                join_token: "hello".into(),
                csr_pem: "not a csr".into(),
            })
            .await,
        Code::InvalidArgument,
        "malformed",
    )?;

    // Renewal over mTLS with the node's own certificate works...
    let mut as_node1 =
        NodeEnrolmentClient::new(node_channel(&gw2, &ca_pem, &cert_pem, &key_pem).await?);
    let renewed = as_node1.renew(renew_request("node-1")?).await?.into_inner();
    ensure!(
        renewed.serial != info.serial,
        "renewal issues a new certificate"
    );
    // ...but node-1's certificate cannot speak for node-2 (CN differs from the claimed node).
    refused_call(
        as_node1.renew(renew_request("node-2")?).await,
        Code::PermissionDenied,
        "is for node node-1",
    )?;
    // A renewal without a client certificate is refused.
    refused_call(
        enrol.renew(renew_request("node-1")?).await,
        Code::Unauthenticated,
        "no client certificate",
    )?;

    // A revoked serial is refused.
    let revoked = ca_admin(
        cluster,
        "ca-1",
        &["revoke", &info.serial, "--reason", "test"],
    )?;
    ensure!(revoked.contains(&info.serial), "{revoked}");
    refused_call(
        as_node1.renew(renew_request("node-1")?).await,
        Code::PermissionDenied,
        "was revoked",
    )?;

    // A service certificate of the cluster is not a node certificate.
    let authority = cluster.ca_from_disk("ca-1")?;
    let (service_cert, service_key) = service_certificate(&authority, "scheduler", "s1")?;
    let mut as_service =
        NodeEnrolmentClient::new(node_channel(&gw2, &ca_pem, &service_cert, &service_key).await?);
    refused_call(
        as_service.renew(renew_request("s1")?).await,
        Code::PermissionDenied,
        "accepts only node certificates",
    )?;

    // A node certificate from another CA does not get through TLS.
    let impostor = node_csr("node-1")?;
    let impostor_cert = other_ca.sign_node("node-1", &impostor.csr_pem, HOUR)?;
    let outcome = async {
        let channel = node_channel(&gw2, &ca_pem, &impostor_cert.pem, &impostor.key_pem).await?;
        NodeEnrolmentClient::new(channel)
            .renew(RenewRequest {
                node_id: "node-1".into(),
                csr_pem: node_csr("node-1")?.csr_pem,
            })
            .await?;
        anyhow::Ok(())
    }
    .await;
    ensure!(
        outcome.is_err(),
        "a certificate of another CA must be refused"
    );

    // The daemon, its certificate revoked, is no longer admitted to a session.
    daemon.stop(EXIT_WITHIN).await?;
    let mut revoked_daemon = cluster.daemon(
        "daemon-revoked",
        "node-1",
        "node-1",
        &[&gw1_port],
        None,
        &[],
    )?;
    wait_unready_because(&revoked_daemon, "was revoked").await?;
    revoked_daemon.stop(EXIT_WITHIN).await?;
    // Without any reachable gateway a daemon says so.
    let lonely = cluster.daemon("daemon-lonely", "node-a", "node-a", &[&dead], None, &[])?;
    // node-a has no files yet: without a token it cannot start.
    let mut lonely = lonely;
    lonely
        .wait_failure(EXIT_WITHIN, &["daemon.joinToken is not set"])
        .await?;
    let node_a_dir = cluster.dir.join("node-a/certs");
    std::fs::create_dir_all(&node_a_dir)?;
    for (file, contents) in [
        ("node.key", node_a.key_pem.as_str()),
        ("node.crt", issued.certificate_pem.as_str()),
        ("ca.crt", issued.ca_pem.as_str()),
    ] {
        prexor_pki::write_private(&node_a_dir.join(file), contents.as_bytes())?;
    }
    let mut offline = cluster.daemon("daemon-offline", "node-a", "node-a", &[&dead], None, &[])?;
    wait_unready_because(&offline, &format!("not connected to any gateway: {dead}: ")).await?;
    offline.stop(EXIT_WITHIN).await?;
    let mut online =
        cluster.daemon("daemon-online", "node-a", "node-a", &[&gw1_port], None, &[])?;
    online.wait_ready(READY_WITHIN).await?;
    online.stop(EXIT_WITHIN).await?;

    stop_all([&mut gw1, &mut gw2, &mut ca], EXIT_WITHIN).await
}

async fn can_sign(cluster: &Cluster, ca: &Proc) -> anyhow::Result<(bool, String)> {
    let info = CaSignerClient::new(cluster.internal_channel(ca).await?)
        .get_ca_certificate(GetCaCertificateRequest {})
        .await?
        .into_inner();
    Ok((info.can_sign, info.signing_detail))
}

async fn keyless_replica(cluster: &Cluster) -> anyhow::Result<()> {
    let mut ca1 = cluster.service("ca", "ca-1", &cluster.ca_extra("ca-1"))?;
    ca1.wait_ready(READY_WITHIN).await?;

    // A second bootstrap against the same cluster is refused, naming the existing CA.
    let mut second = cluster.service_with_args(
        "ca",
        "ca-bootstrap",
        &cluster.common_toml("ca-bootstrap"),
        &cluster.ca_extra("ca-bootstrap"),
        &["--bootstrap"],
    )?;
    second
        .wait_failure(EXIT_WITHIN, &["refusing to bootstrap a second one"])
        .await?;
    ensure!(!cluster.dir.join("ca-bootstrap/certs/ca/ca.key").exists());

    // Controller-2: --bootstrap=false, no key copied.
    let start_ca2 = || {
        cluster.service_with_args(
            "ca",
            "ca-2",
            &cluster.common_toml("ca-2"),
            &cluster.ca_extra("ca-2"),
            &["--bootstrap=false"],
        )
    };
    let mut ca2 = start_ca2()?;
    ca2.wait_ready(READY_WITHIN).await?;
    let (signs, detail) = can_sign(cluster, &ca2).await?;
    ensure!(!signs && detail.contains("no signing key"), "{detail}");
    let password = cluster.bootstrap_admin("admin")?;
    let mut api = cluster.service("api", "api-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);
    let mut noted = false;
    for _ in 0..100 {
        let (_, body) = rest.get("/system/status").await?;
        if body.to_string().contains("no signing key") {
            noted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(noted, "system/status shows ca-2 as \"no signing key\"");

    // Only ca-2 left: a gateway cannot get its certificate and says why.
    // While ca-1 (with the key) runs, the API issues a node certificate for a CSR made on the
    // node, and join tokens.
    let csr = |node: &str| -> anyhow::Result<String> {
        Ok(prexor_pki::KeyAndCsr::new(
            &prexor_pki::Identity::Node(node.to_owned()),
            &prexor_pki::ServiceNames::default(),
        )?
        .csr_pem)
    };
    let (status, issued) = rest
        .post(
            "/nodes/node-7/cert-issue",
            serde_json::json!({ "csrPem": csr("node-7")? }),
        )
        .await?;
    ensure!(status == 201, "cert-issue answered {status}: {issued}");
    ensure!(
        issued["chainPem"]
            .as_str()
            .is_some_and(|c| c.matches("BEGIN CERTIFICATE").count() == 2),
        "{issued}"
    );
    let (status, refused) = rest
        .post(
            "/nodes/node-7/cert-issue",
            serde_json::json!({ "csrPem": csr("node-8")? }),
        )
        .await?;
    ensure!(
        status == 400 && refused["code"] == "VALIDATION_FAILED",
        "a CSR for another node: {status} {refused}"
    );
    let (status, token) = rest
        .post(
            "/nodes/node-9/join-token",
            serde_json::json!({ "expiresIn": "10m" }),
        )
        .await?;
    ensure!(status == 201, "join-token answered {status}: {token}");
    let api_join = token["token"].as_str().context("token")?.to_owned();
    ensure!(api_join.starts_with("pxj1.node-9."), "{api_join}");

    ca1.stop(EXIT_WITHIN).await?;
    // Only ca-2 (no key) is left: the API answers 503 with the operator page's message.
    let mut answered = (0, serde_json::Value::Null);
    for _ in 0..100 {
        answered = rest
            .post(
                "/nodes/node-7/cert-issue",
                serde_json::json!({ "csrPem": csr("node-7")? }),
            )
            .await?;
        if answered.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        answered.0 == 503
            && answered.1["code"] == "NO_CA_KEY"
            && answered.1["message"].as_str().is_some_and(
                |m| m.contains("CA private key is not present on any reachable signer")
            ),
        "cert-issue without a signer: {answered:?}"
    );
    let mut gateway = cluster.service("gateway", "gateway-1", "")?;
    wait_unready_because(
        &gateway,
        "CA private key is not present on any reachable signer",
    )
    .await?;

    // The operator page's procedure, with our paths: tar the CA dir on host 1, unpack on host 2,
    // chmod 600, restart.
    let bundle = cluster.dir.join("ca-bundle.tgz");
    let tar = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("tar").args(args).status()?;
        ensure!(status.success(), "tar {args:?} failed");
        Ok(())
    };
    tar(&[
        "-czf",
        bundle.to_str().context("path")?,
        "-C",
        cluster.dir.join("ca-1/certs").to_str().context("path")?,
        "ca/",
    ])?;
    let ca2_certs = cluster.dir.join("ca-2/certs");
    std::fs::create_dir_all(&ca2_certs)?;
    tar(&[
        "-xzf",
        bundle.to_str().context("path")?,
        "-C",
        ca2_certs.to_str().context("path")?,
    ])?;
    std::fs::set_permissions(
        ca2_certs.join("ca/ca.key"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    ca2.stop(EXIT_WITHIN).await?;
    let mut ca2 = start_ca2()?;
    ca2.wait_ready(READY_WITHIN).await?;
    ensure!(
        can_sign(cluster, &ca2).await?.0,
        "ca-2 signs after the bundle was copied"
    );

    // The gateway gets its certificate from ca-2 and a node enrols through it.
    gateway.wait_ready(READY_WITHIN).await?;
    let port = gateway.daemon_port.clone().context("daemon port")?;
    // The token made through the API enrols the node.
    let mut daemon = cluster.daemon(
        "daemon-9",
        "node-9",
        "node-9",
        &[&port],
        Some(&api_join),
        &[],
    )?;
    daemon.wait_ready(READY_WITHIN).await?;
    stop_all([&mut daemon, &mut gateway, &mut api, &mut ca2], EXIT_WITHIN).await
}

scenario_tests! {
    a_daemon_enrols_once_and_is_admitted_only_with_its_own_certificate: enrolment,
    a_ca_replica_without_the_key_signs_once_the_bundle_is_copied: keyless_replica,
}
