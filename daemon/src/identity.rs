//! The node's certificate: enrolment with a join token on first start, loading it afterwards,
//! and renewal before expiry over mTLS. Files (all mode 0600) under `<dataDir>/certs/`:
//! `node.key` (generated here, never sent anywhere), `node.crt`, `ca.crt`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prexor_domain::now_secs;
use prexor_pki::JoinToken;
use prexor_pki::tls::{connect, daemon_client, enrolment_client};
use prexor_pki::{CertInfo, Identity, KeyAndCsr, ServiceNames, pem_to_der, write_private};
use prexor_proto::v1::node_enrolment_client::NodeEnrolmentClient;
use prexor_proto::v1::{EnrolRequest, EnrolResponse, RenewRequest};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// An enrolment or renewal, answered by the gateway once a CA signer signed (which may take it
/// through several signers, each with its own deadline).
const ENROLMENT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Files {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
}

impl Files {
    pub fn new(data_dir: &Path) -> Files {
        let dir = data_dir.join("certs");
        Files {
            key: dir.join("node.key"),
            cert: dir.join("node.crt"),
            ca: dir.join("ca.crt"),
        }
    }

    fn exist(&self) -> bool {
        self.key.exists() && self.cert.exists() && self.ca.exists()
    }
}

/// The node's current certificate material; swapped on renewal.
#[derive(Clone)]
pub struct NodeIdentity {
    inner: Arc<RwLock<Material>>,
}

#[derive(Clone)]
struct Material {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    info: CertInfo,
}

impl NodeIdentity {
    /// The TLS client configuration for gateways (trust the cluster CA, present the node
    /// certificate).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let m = self.inner.read().expect("identity lock");
        daemon_client(&m.ca_pem, &m.cert_pem, &m.key_pem).map_err(|e| e.to_string())
    }

    pub fn info(&self) -> CertInfo {
        self.inner.read().expect("identity lock").info.clone()
    }
}

fn load(files: &Files) -> Result<Material, String> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (key_pem, cert_pem, ca_pem) = (read(&files.key)?, read(&files.cert)?, read(&files.ca)?);
    let der = pem_to_der(&cert_pem, "CERTIFICATE")
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let info = CertInfo::parse(&der).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(Material {
        key_pem,
        cert_pem,
        ca_pem,
        info,
    })
}

fn store(files: &Files, key_pem: &str, response: &EnrolResponse) -> Result<Material, String> {
    // The key first: a certificate on disk always has its key next to it.
    for (path, contents) in [
        (&files.key, key_pem),
        (&files.ca, response.ca_pem.as_str()),
        (&files.cert, response.certificate_pem.as_str()),
    ] {
        write_private(path, contents.as_bytes()).map_err(|e| e.to_string())?;
    }
    load(files)
}

/// Loads the node certificate, or enrols with `join_token` when there is none. Waits (with
/// `phase` reporting why) while no gateway or no CA signer is reachable; fails on a refused
/// token. `None` if stopped meanwhile.
pub async fn obtain(
    node_id: &str,
    data_dir: &Path,
    join_token: Option<&str>,
    gateways: &[String],
    phase: impl Fn(String),
    stop: &CancellationToken,
) -> anyhow::Result<Option<NodeIdentity>> {
    let files = Files::new(data_dir);
    if files.exist() {
        let material = load(&files).map_err(anyhow::Error::msg)?;
        if material.info.identity != Some(Identity::Node(node_id.to_string())) {
            anyhow::bail!(
                "{} is not a certificate for node {node_id} (it is for {:?}); node.id changed? Remove {} to enrol again",
                files.cert.display(),
                material.info.identity,
                files.cert.display()
            );
        }
        return Ok(Some(NodeIdentity {
            inner: Arc::new(RwLock::new(material)),
        }));
    }
    let Some(raw) = join_token else {
        anyhow::bail!(
            "this node has no certificate ({} is missing) and daemon.joinToken is not set: create a join token for node {node_id} and put it in daemon.joinToken",
            files.cert.display()
        );
    };
    let token = JoinToken::parse(raw).map_err(|e| anyhow::anyhow!("daemon.joinToken: {e}"))?;
    if token.node_id != node_id {
        anyhow::bail!(
            "daemon.joinToken was created for node {}, but node.id is {node_id}",
            token.node_id
        );
    }
    let request = KeyAndCsr::new(&Identity::Node(node_id.into()), &ServiceNames::default())?;
    let tls = enrolment_client(&token.ca_fingerprint)?;
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut reasons = Vec::new();
        for gateway in gateways {
            match enrol_at(gateway, tls.clone(), node_id, raw, &request.csr_pem).await {
                Ok(response) => {
                    let material =
                        store(&files, &request.key_pem, &response).map_err(anyhow::Error::msg)?;
                    tracing::info!(
                        gateway = %gateway,
                        serial = %material.info.serial,
                        not_after = material.info.not_after,
                        "enrolled: node certificate stored in {}",
                        files.cert.display()
                    );
                    return Ok(Some(NodeIdentity {
                        inner: Arc::new(RwLock::new(material)),
                    }));
                }
                Err(Refusal::Final(reason)) => {
                    anyhow::bail!("enrolment refused by {gateway}: {reason}")
                }
                Err(Refusal::Retry(reason)) => reasons.push(format!("{gateway}: {reason}")),
            }
        }
        let why = format!("enrolling: {}", reasons.join("; "));
        tracing::warn!("{why}");
        phase(why);
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

enum Refusal {
    /// The token or CSR was refused: trying again cannot help.
    Final(String),
    /// The gateway or the CA signer is not reachable right now.
    Retry(String),
}

/// An enrolment call with its deadline: the gateway asks a CA signer, which has its own.
fn deadline<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ENROLMENT_CALL_TIMEOUT);
    request
}

async fn enrol_at(
    gateway: &str,
    tls: rustls::ClientConfig,
    node_id: &str,
    token: &str,
    csr_pem: &str,
) -> Result<EnrolResponse, Refusal> {
    let channel = connect(gateway, tls, CALL_TIMEOUT)
        .await
        .map_err(|e| Refusal::Retry(e.to_string()))?;
    NodeEnrolmentClient::new(prexor_serve::metered(channel))
        .enrol(deadline(EnrolRequest {
            node_id: node_id.into(),
            join_token: token.into(),
            csr_pem: csr_pem.into(),
        }))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| match status.code() {
            Code::InvalidArgument | Code::PermissionDenied => {
                Refusal::Final(status.message().to_string())
            }
            _ => Refusal::Retry(status.message().to_string()),
        })
}

/// Renews the certificate at two thirds of its lifetime over mTLS with the current one,
/// generating a fresh key each time.
pub async fn keep_renewed(
    identity: NodeIdentity,
    node_id: String,
    data_dir: PathBuf,
    gateways: Vec<String>,
    stop: CancellationToken,
) {
    let files = Files::new(&data_dir);
    loop {
        let info = identity.info();
        let now = now_secs();
        let due = prexor_pki::renewal_due(&info);
        let wait = Duration::from_secs((due - now).max(0) as u64);
        prexor_serve::tls::certificate_expiry("node", info.not_after);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew(&identity, &node_id, &gateways).await {
            Ok((key_pem, response)) => match store(&files, &key_pem, &response) {
                Ok(material) => {
                    tracing::info!(serial = %material.info.serial, not_after = material.info.not_after, "node certificate renewed");
                    *identity.inner.write().expect("identity lock") = material;
                }
                Err(e) => tracing::error!("renewed, but could not store the certificate: {e}"),
            },
            Err(reason) => {
                tracing::warn!("certificate renewal failed, retrying in 30s: {reason}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
            }
        }
    }
}

async fn renew(
    identity: &NodeIdentity,
    node_id: &str,
    gateways: &[String],
) -> Result<(String, EnrolResponse), String> {
    let request = KeyAndCsr::new(&Identity::Node(node_id.into()), &ServiceNames::default())
        .map_err(|e| e.to_string())?;
    let tls = identity.client_config()?;
    let mut reasons = Vec::new();
    for gateway in gateways {
        let channel = match connect(gateway, tls.clone(), CALL_TIMEOUT).await {
            Ok(channel) => channel,
            Err(e) => {
                reasons.push(e.to_string());
                continue;
            }
        };
        match NodeEnrolmentClient::new(prexor_serve::metered(channel))
            .renew(deadline(RenewRequest {
                node_id: node_id.into(),
                csr_pem: request.csr_pem.clone(),
            }))
            .await
        {
            Ok(response) => return Ok((request.key_pem, response.into_inner())),
            Err(status) => reasons.push(format!("{gateway}: {}", status.message())),
        }
    }
    Err(reasons.join("; "))
}
