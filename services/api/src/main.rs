//! `prexor-api`: the stateless REST API. Any replica answers any request; everything it uses
//! lives in MongoDB or Valkey.

mod access;
mod app;
mod audit;
mod auth;
mod backups;
mod deployments;
mod error;
mod events;
mod explain;
mod groups;
mod instances;
mod json;
mod login;
mod modules;
mod network;
mod nodes;
mod openapi;
mod paging;
mod permissions;
mod streams;
mod system;
mod templates;
mod ui;
mod uploads;
mod users;
mod workload;

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use clap::Parser;
use prexor_config::{ApiConfig, ApiTls};
use prexor_serve::{Parts, Service, ServiceArgs};

use crate::app::AppState;

/// Request bodies above this are refused with 413.
const BODY_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Parser)]
#[command(name = "prexor-api", version = prexor_domain::VERSION)]
struct ApiArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create the cluster's first admin user (once per cluster; refused afterwards) and print
    /// its password once, or write it to a file readable only by its owner.
    BootstrapAdmin {
        #[arg(long, default_value = "admin")]
        username: String,
        /// Write the password to this file (mode 0600) instead of printing it.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let args = ApiArgs::parse();
    if let Some(Command::BootstrapAdmin {
        username,
        password_file,
    }) = args.command
    {
        return prexor_serve::launch_with(
            args.service,
            |config: &ApiConfig| &config.common.telemetry,
            move |config: ApiConfig| bootstrap_admin(config, username, password_file),
        );
    }
    prexor_serve::launch_with(
        args.service,
        |config: &ApiConfig| &config.common.telemetry,
        |config: ApiConfig| async move {
            // The certificate slot exists before the port opens; it is filled once the service
            // reached its stores (and the CA): until then handshakes are refused, and the
            // replica is unready.
            let slot = Arc::new(prexor_pki::tls::CertSlot::default());
            let https = match config.tls {
                ApiTls::Off => {
                    tracing::warn!(
                        "api.tls = \"off\": the REST API is served over plain HTTP (development, or TLS terminated in front of it)"
                    );
                    None
                }
                _ => Some(Arc::new(prexor_serve::tls::https_server(slot.clone())?)),
            };
            let common = config.common.clone();
            prexor_serve::run_tls(common, None, https, move |service| {
                build(service, config, slot)
            })
            .await
            .map_err(anyhow::Error::from)
        },
    )
}

/// Keeps the REST port's certificate: from the cluster CA, or from the operator's files.
fn certificate_task(
    service: &Service,
    config: &ApiConfig,
    signer: &prexor_serve::signer::SignerClient,
    slot: Arc<prexor_pki::tls::CertSlot>,
) -> Option<tokio::task::JoinHandle<()>> {
    use prexor_serve::tls;
    let state = || tls::cert_state(&service.readiness, "https", "the REST port");
    match &config.tls {
        ApiTls::Off => None,
        ApiTls::ClusterCa => Some(tokio::spawn(tls::keep_certificate(
            Arc::new(signer.clone()),
            service.store.clone(),
            tls::Wanted {
                kind: "api",
                replica_id: service.config.replica_id.clone(),
                names: tls::certificate_names(&service.config.advertise_host, &config.tls_names),
            },
            slot,
            state(),
            "api",
            service.shutdown.clone(),
        ))),
        ApiTls::Files { cert, key } => Some(tokio::spawn(tls::watch_files(
            cert.clone(),
            key.clone(),
            slot,
            state(),
            "api",
            service.shutdown.clone(),
        ))),
    }
}

async fn build(
    service: Service,
    config: ApiConfig,
    slot: Arc<prexor_pki::tls::CertSlot>,
) -> Result<Parts, prexor_serve::BoxError> {
    let sessions = auth::SessionKeys::load(&service.store).await?;
    access::bind_credentials(&service.store).await?;
    if let Err(err) = groups::index_instances(&service.store).await {
        tracing::warn!(error = %err, "instances are not indexed by group; group listings count them by a scan");
    }
    let signer = service.signer.clone();
    let certificate = certificate_task(&service, &config, &signer, slot);
    let history = network::HistorySettings {
        every: config.history_every,
        keep: config.history_keep,
    };
    let dashboard = ui::Settings {
        tls: !matches!(config.tls, ApiTls::Off),
        history,
    };
    let app = Arc::new(AppState {
        signer,
        gateways: service.gateways(),
        sessions,
        service: service.clone(),
        verifications: login::Verifications::default(),
        trusted_proxies: login::TrustedProxies::new(&config.trusted_proxies),
        streams: streams::StreamCounts::default(),
        console_hub: match (&service.valkey, &service.config.valkey) {
            (Some(backend), Some(valkey)) => Some(prexor_coord::ConsoleHub::start(
                prexor_coord::ConsoleStreams::new(backend.clone(), valkey.namespace.clone()),
                service.shutdown.clone(),
            )),
            _ => None,
        },
        uploads: config.uploads,
        callers: auth::CallerCache::new(config.caller_cache_ttl),
        list_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_lists)),
    });
    let follow = {
        let events = service.events.clone();
        let stop = service.shutdown.clone();
        tokio::spawn(async move { events.follow(stop).await })
    };
    let forget_callers = {
        let (app, live) = (app.clone(), service.events.subscribe());
        let stop = service.shutdown.clone();
        tokio::spawn(async move { app.callers.follow(live, stop).await })
    };
    let sample = tokio::spawn(network::record_history(
        app.clone(),
        history,
        service.shutdown.clone(),
    ));
    let api = Router::new()
        .merge(system::routes())
        .merge(auth::routes())
        .merge(login::routes())
        .merge(users::routes())
        .merge(audit::routes())
        .merge(groups::routes())
        .merge(explain::routes())
        .merge(deployments::routes())
        .merge(instances::routes())
        .merge(nodes::routes())
        .merge(templates::routes())
        .merge(modules::routes())
        .merge(events::routes())
        .merge(workload::routes())
        .merge(backups::routes())
        .merge(openapi::routes())
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_mutations_when_split,
        ))
        .with_state(app.clone());
    let dashboard = ui::secured(
        ui::routes().layer(axum::middleware::from_fn_with_state(
            app.clone(),
            refuse_mutations_when_split,
        )),
        dashboard,
    )
    .with_state(app);
    Ok(Parts {
        http: Some(
            Router::new()
                .nest("/api/v1", api)
                .merge(dashboard)
                .fallback(error::not_found),
        ),
        tasks: [follow, forget_callers, sample]
            .into_iter()
            .chain(certificate)
            .collect(),
        ..Parts::default()
    })
}

/// A replica whose Valkey is not the cluster's coordination store answers reads only: every
/// mutation is refused with 503 and the reason (signing in and out still work).
async fn refuse_mutations_when_split(
    axum::extract::State(app): axum::extract::State<app::App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let reading = method == axum::http::Method::GET || method == axum::http::Method::HEAD;
    // The REST API's (nested under /api/v1) and the dashboard's.
    let session = ["/auth/login", "/auth/logout", "/ui/login", "/ui/logout"]
        .iter()
        .any(|p| path.ends_with(p));
    if !reading
        && !session
        && let Err(reason) = app.service.guard.allow_mutations()
    {
        return error::ApiError::unavailable(format!("this api replica refuses changes: {reason}"))
            .into_response();
    }
    // While a restore replaces the configuration, no other change may slip in (or be lost).
    if !reading
        && !session
        && let Ok(Some(left)) = app.service.ephemeral.remaining(backups::RESTORE_FLAG).await
    {
        return error::ApiError::unavailable(
            "a restore is in progress; changes are refused until it finishes",
        )
        .retry_after(left.as_secs().clamp(1, 30))
        .into_response();
    }
    next.run(request).await
}

/// `prexor-api bootstrap-admin`.
async fn bootstrap_admin(
    config: ApiConfig,
    username: String,
    password_file: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mongo = &config.common.mongo;
    let store = prexor_store::Store::connect_pooled(
        &mongo.uri,
        &mongo.database,
        "prexor-api",
        mongo.timeout,
        mongo.max_pool_size,
    )
    .await?;
    // The cluster identity first (created here for a new cluster when `cluster.bootstrap` is
    // set, as `prexorctl setup` does), so an admin is never made in the wrong database.
    let cluster = prexor_serve::guard::cluster_identity(&store, &config.common).await?;
    let password = auth::bootstrap_admin(&store, &username).await?;
    tracing::info!(cluster = %cluster, user = %username, "bootstrap admin created");
    match password_file {
        Some(path) => {
            prexor_pki::write_private(&path, password.as_bytes())?;
            println!(
                "admin user {username:?} created; its password is in {} (mode 0600)",
                path.display()
            );
        }
        None => {
            println!("admin user {username:?} created; password (shown once): {password}");
        }
    }
    Ok(())
}
