//! `prexor-ca`: the isolated signer, the only process that holds the cluster CA private key.
//!
//! `--bootstrap` creates the cluster CA (refused if the cluster has one), `--bootstrap=false`
//! only uses the cluster's CA, and without the flag the first CA of an empty cluster is created.
//! The key is at `<ca.dataDir>/certs/ca/ca.key`; see docs/ca.md.

mod authority;
mod signer;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use prexor_config::CaConfig;
use prexor_proto::v1::ca_signer_server::CaSignerServer;
use prexor_serve::{Parts, Service, ServiceArgs};

use crate::authority::{Bootstrap, Paths};

#[derive(Debug, Parser)]
#[command(name = "prexor-ca", version = prexor_domain::VERSION)]
struct CaArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Create the cluster CA (`--bootstrap` or `--bootstrap=true`; refused if the cluster has
    /// one) or never create it (`--bootstrap=false`). Without the flag: create it only for an
    /// empty cluster.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
    bootstrap: Option<bool>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create the cluster CA (key at `<ca.dataDir>/certs/ca/ca.key`, mode 0600; certificate
    /// published in MongoDB), print its fingerprint and exit. Refused if the cluster has a CA.
    /// `prexorctl setup --bootstrap=true` runs this.
    Init,
    /// Create a single-use join token for a node (on a controller host, with the CA's config),
    /// print it and exit. Put it in the node's `daemon.joinToken`.
    JoinToken {
        /// The node id the token is bound to (its `node.id`).
        node_id: String,
        /// How long the token may be redeemed.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Revoke an issued certificate by serial (hex, as logged at issue); gateways refuse it from
    /// the next call on.
    Revoke {
        serial: String,
        #[arg(long, default_value = "revoked by an operator")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let args = CaArgs::parse();
    match args.command {
        Some(Command::JoinToken { node_id, ttl }) => {
            return prexor_serve::launch_with(
                args.service,
                |config: &CaConfig| &config.common.telemetry,
                move |config: CaConfig| join_token(config, node_id, ttl),
            );
        }
        Some(Command::Init) => {
            return prexor_serve::launch_with(
                args.service,
                |config: &CaConfig| &config.common.telemetry,
                init,
            );
        }
        Some(Command::Revoke { serial, reason }) => {
            return prexor_serve::launch_with(
                args.service,
                |config: &CaConfig| &config.common.telemetry,
                move |config: CaConfig| revoke(config, serial, reason),
            );
        }
        None => {}
    }
    let bootstrap = Bootstrap::from_flag(args.bootstrap);
    prexor_serve::launch_with(
        args.service,
        |config: &CaConfig| &config.common.telemetry,
        move |config: CaConfig| {
            let grpc = config.grpc.listen;
            let common = config.common.clone();
            prexor_serve::run(common, Some(grpc), move |service| {
                build(service, config, bootstrap)
            })
        },
    )
}

async fn build(
    service: Service,
    config: CaConfig,
    bootstrap: Bootstrap,
) -> Result<Parts, prexor_serve::BoxError> {
    let paths = Paths::new(&config.data_dir);
    let readiness = service.readiness.clone();
    let resolved = authority::resolve(
        &service.store,
        &paths,
        bootstrap,
        &service.config.replica_id,
        |phase| readiness.set_phase(phase),
        &service.shutdown,
    )
    .await?;
    let Some(authority) = resolved else {
        return Ok(Parts::default());
    };
    match &authority.signer {
        Ok(_) => tracing::info!(
            fingerprint = %authority.certificate.fingerprint,
            key = %paths.key.display(),
            "signing with the cluster CA"
        ),
        Err(reason) => {
            tracing::warn!(fingerprint = %authority.certificate.fingerprint, "{reason}");
            service.set_notes(vec![reason.clone()]);
        }
    }
    metrics::gauge!("prexor_ca_can_sign").set(if authority.signer.is_ok() { 1.0 } else { 0.0 });
    metrics::gauge!("prexor_ca_certificate_expiry_timestamp_seconds")
        .set(authority.certificate.not_after as f64);
    let can_sign = authority.signer.is_ok();
    let enrolment_secret = prexor_model::pki::service_enrolment_secret(&service.store).await?;
    let signer = Arc::new(signer::Signer {
        authority: Arc::new(authority),
        registry: service.registry.clone(),
        enrolment_secret,
        store: service.store.clone(),
        replica_id: service.config.replica_id.clone(),
        node_validity: config.node_cert_validity,
        service_validity: config.service_cert_validity,
    });
    let routes = tonic::service::Routes::new(CaSignerServer::from_arc(signer.clone()));
    let local_signer: Option<Arc<dyn prexor_serve::signer::ServiceSigner>> =
        can_sign.then_some(signer as Arc<dyn prexor_serve::signer::ServiceSigner>);
    Ok(Parts {
        grpc: Some(routes),
        local_signer,
        ..Parts::default()
    })
}

/// `prexor-ca join-token NODE`: prints a join token for NODE.
async fn join_token(
    config: CaConfig,
    node_id: String,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    prexor_domain::validate_name(&node_id)
        .map_err(|e| anyhow::anyhow!("node id {node_id:?}: {e}"))?;
    let store = admin_store(&config).await?;
    let Some(ca) = prexor_model::pki::published_ca(&store).await? else {
        anyhow::bail!(
            "the cluster has no CA yet (database {}): start prexor-ca with --bootstrap first",
            config.common.mongo.database
        );
    };
    let (token, expires_at_ms) = prexor_model::pki::create_join_token(
        &store,
        &node_id,
        &ca.certificate,
        ttl,
        &format!("prexor-ca join-token on {}", config.common.replica_id),
    )
    .await?;
    tracing::info!(node = %node_id, expires_at_ms, "join token created");
    println!("{token}");
    Ok(())
}

async fn admin_store(config: &CaConfig) -> anyhow::Result<prexor_store::Store> {
    let mongo = &config.common.mongo;
    Ok(
        prexor_store::Store::connect(&mongo.uri, &mongo.database, "prexor-ca", mongo.timeout)
            .await?,
    )
}

/// `prexor-ca init`.
async fn init(config: CaConfig) -> anyhow::Result<()> {
    let store = admin_store(&config).await?;
    let paths = Paths::new(&config.data_dir);
    let authority = authority::resolve(
        &store,
        &paths,
        Bootstrap::Yes,
        &config.common.replica_id,
        |_| {},
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("the CA was not created"))?;
    println!(
        "cluster CA created: fingerprint {}; key {} (mode 0600), certificate {}",
        authority.certificate.fingerprint,
        paths.key.display(),
        paths.cert.display()
    );
    Ok(())
}

/// `prexor-ca revoke SERIAL`.
async fn revoke(config: CaConfig, serial: String, reason: String) -> anyhow::Result<()> {
    let serial = serial.replace(':', "").to_ascii_lowercase();
    let store = admin_store(&config).await?;
    if !prexor_model::pki::revoke(&store, &serial, &reason).await? {
        anyhow::bail!("no certificate with serial {serial} was issued by this cluster");
    }
    println!("revoked {serial}");
    Ok(())
}
