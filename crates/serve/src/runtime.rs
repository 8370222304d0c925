use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::signer::{ServiceSigner, SignerClient};
use axum::Router;
use prexor_config::CommonConfig;
use prexor_coord::{
    CoordError, DevClaim, Ephemeral, EventLog, LeaseBackend, LeaseKeeper, Leases, LocalBackend,
    Registry, ReplicaRecord, ValkeyBackend, ValkeyTls,
};
use prexor_domain::{Profile, now_ms, redact_uri};
use prexor_pki::internal::InternalTls;
use prexor_store::{Store, StoreError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::{self, Identity};

use crate::process::{BindError, bind, stop_on_signals};
use crate::readiness::Readiness;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a service process could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Coord(#[from] CoordError),
    #[error("{0}")]
    Service(BoxError),
    #[error("the {what} server failed: {reason}")]
    Server { what: &'static str, reason: String },
    #[error("stopping: {0}")]
    Fatal(String),
    /// The database belongs to another cluster (or none while one is configured).
    #[error(transparent)]
    Identity(#[from] crate::guard::IdentityError),
}

/// What a service's own code adds to the process.
#[derive(Default)]
pub struct Parts {
    /// Routes served on `http.listen` next to `/healthz`, `/readyz` and `/metrics` (the REST API
    /// on the api service).
    pub http: Option<Router>,
    /// gRPC services served on `grpc.listen` next to grpc.health.v1 and ReplicaStatus.
    pub grpc: Option<tonic::service::Routes>,
    /// Keepers whose leases this replica reports as held.
    pub keepers: Vec<LeaseKeeper>,
    /// Background tasks. They must end when [`Service::shutdown`] is cancelled (releasing what
    /// they hold); the process waits for them, up to `shutdown.timeout`.
    pub tasks: Vec<JoinHandle<()>>,
    /// Signs this replica's internal certificate in-process (a CA replica holding the key);
    /// otherwise a CA replica is asked over the network.
    pub local_signer: Option<Arc<dyn ServiceSigner>>,
}

/// A connected replica: configuration, stores, coordination, readiness and the shutdown signal.
/// Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub config: Arc<CommonConfig>,
    pub store: Store,
    pub leases: Leases,
    pub registry: Registry,
    /// Domain events (published by any replica, followed by api replicas).
    pub events: EventLog,
    /// Short-lived state shared by all replicas (lockouts, rate windows, revocations).
    pub ephemeral: Ephemeral,
    /// The Valkey connection (`None` in the development profile without Valkey).
    pub valkey: Option<ValkeyBackend>,
    /// Whether this replica's Valkey is the cluster's coordination store (mutations only then).
    pub guard: crate::guard::StoreGuard,
    /// The cluster's id (from MongoDB).
    pub cluster_id: String,
    pub readiness: Readiness,
    /// Cancelled on SIGTERM/SIGINT (or a fatal error): stop mutating, release leases, return.
    pub shutdown: CancellationToken,
    /// This replica's internal mTLS: its service certificate and the channels to peers'
    /// internal ports ([`prexor_pki::internal`]).
    pub internal: InternalTls,
    /// Reaches a CA replica that can sign (over internal mTLS).
    pub signer: SignerClient,
    info: Arc<ReplicaInfo>,
    fatal: Arc<Mutex<Option<String>>>,
}

/// What the replica reports about itself, available before the stores are connected.
pub(crate) struct ReplicaInfo {
    pub config: Arc<CommonConfig>,
    pub readiness: Readiness,
    pub started_at_ms: i64,
    keepers: crate::ops::Keepers,
    notes: Mutex<Vec<String>>,
}

impl ReplicaInfo {
    /// Every lease scope held right now (`group:lobby`, `node:node-1`, ...).
    pub fn leases_held(&self) -> Vec<String> {
        crate::ops::held(&self.keepers)
    }
}

impl Service {
    /// Node commands through the gateways, over this replica's internal mTLS.
    pub fn gateways(&self) -> crate::Gateways {
        crate::Gateways::new(self.registry.clone(), self.internal.peers.clone())
    }

    pub fn started_at_ms(&self) -> i64 {
        self.info.started_at_ms
    }

    /// Every lease scope this replica holds right now (`group:lobby`, `node:node-1`, ...).
    pub fn leases_held(&self) -> Vec<String> {
        self.info.leases_held()
    }

    /// Notes shown with this replica in the registry and `prexorctl status` (replaces the
    /// previous ones; published with the next heartbeat).
    pub fn set_notes(&self, notes: Vec<String>) {
        *self.info.notes.lock().expect("notes lock") = notes;
    }

    pub fn notes(&self) -> Vec<String> {
        self.info.notes.lock().expect("notes lock").clone()
    }

    /// Stops the process with an error (exit code 1) after a graceful shutdown.
    pub fn fail(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!("{reason}");
        self.fatal.lock().expect("fatal lock").get_or_insert(reason);
        self.shutdown.cancel();
    }
}

/// Retries `attempt` with backoff until it succeeds, reporting what it waits for as the reason
/// the replica is not ready. `None` when shutdown was requested meanwhile.
async fn wait_for<T, E, F, Fut>(
    what: &str,
    readiness: &Readiness,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(200);
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    tracing::info!("{what} is reachable now");
                }
                return Some(value);
            }
            Err(err) => {
                failures += 1;
                readiness.set_phase(Some(format!("waiting for {what}: {err}")));
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(attempt = failures, "waiting for {what}: {err}");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// `ping`'s outcome, exported as whether `store` is reachable (`prexor_store_up{store}`).
async fn pinged<E>(
    store: &'static str,
    ping: impl Future<Output = Result<(), E>>,
) -> Result<(), E> {
    let outcome = ping.await;
    crate::guard::store_up(store, outcome.is_ok());
    outcome
}

/// Runs one replica of a service until SIGTERM/SIGINT; see the crate documentation for the
/// sequence. `grpc_listen` is the internal gRPC port for services that have one.
pub async fn run<F, Fut>(
    config: CommonConfig,
    grpc_listen: Option<SocketAddr>,
    build: F,
) -> Result<(), ServeError>
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = Result<Parts, BoxError>>,
{
    run_tls(config, grpc_listen, None, build).await
}

/// [`run`], with `http.listen` served over TLS with `http_tls` (HTTPS: the api's REST port).
pub async fn run_tls<F, Fut>(
    config: CommonConfig,
    grpc_listen: Option<SocketAddr>,
    http_tls: Option<Arc<rustls::ServerConfig>>,
    build: F,
) -> Result<(), ServeError>
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = Result<Parts, BoxError>>,
{
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    let readiness = Readiness::new();
    let app: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let grpc_app: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let config = Arc::new(config);
    let info = Arc::new(ReplicaInfo {
        config: config.clone(),
        readiness: readiness.clone(),
        started_at_ms: now_ms(),
        keepers: crate::ops::Keepers::default(),
        notes: Mutex::new(Vec::new()),
    });
    let identity = Arc::new(Identity {
        kind: config.kind.to_string(),
        replica_id: config.replica_id.clone(),
        version: prexor_domain::VERSION,
        keepers: info.keepers.clone(),
    });

    // Both ports answer from the first moment (health, readiness, status); the service's own
    // routes are attached once built. Servers stop only after the service's work has wound down,
    // so `/readyz` keeps answering "shutting down" while leases are released.
    let servers_stop = CancellationToken::new();
    let http_listener = bind("http.listen", config.http.listen).await?;
    let http_addr = http_listener.local_addr().map_err(|source| BindError {
        key: "http.listen",
        addr: config.http.listen,
        source,
    })?;
    let grpc_listener = match grpc_listen {
        Some(addr) => Some(bind("grpc.listen", addr).await?),
        None => None,
    };
    let grpc_addr = grpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    let internal = InternalTls::new().map_err(|e| ServeError::Server {
        what: "internal gRPC",
        reason: e.to_string(),
    })?;
    let grpc_tls = internal.server_config().map_err(|e| ServeError::Server {
        what: "internal gRPC",
        reason: e.to_string(),
    })?;
    let http_server = tokio::spawn(ops::serve_ops(
        http_listener,
        identity,
        readiness.clone(),
        app.clone(),
        http_tls,
        servers_stop.clone(),
    ));
    tokio::spawn(crate::notify_systemd(readiness.clone(), shutdown.clone()));
    let grpc_server = grpc_listener.map(|listener| {
        tokio::spawn(crate::grpc::serve(
            listener,
            Arc::new(grpc_tls),
            info.clone(),
            grpc_app.clone(),
            servers_stop.clone(),
        ))
    });
    tracing::info!(
        kind = %config.kind,
        replica = %config.replica_id,
        version = prexor_domain::VERSION,
        profile = %config.profile,
        http = %http_addr,
        grpc = ?grpc_addr,
        "starting"
    );

    let outcome = connect_and_serve(
        info, shutdown, app, grpc_app, http_addr, grpc_addr, internal, build,
    )
    .await;

    readiness.set_draining();
    servers_stop.cancel();
    match http_server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "the HTTP server ended with an error"),
        Err(err) => tracing::warn!(error = %err, "the HTTP server task failed"),
    }
    if let Some(server) = grpc_server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the gRPC server ended with an error"),
            Err(err) => tracing::warn!(error = %err, "the gRPC server task failed"),
        }
    }
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn connect_and_serve<F, Fut>(
    info: Arc<ReplicaInfo>,
    shutdown: CancellationToken,
    app: Arc<OnceLock<Router>>,
    grpc_app: Arc<OnceLock<Router>>,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    internal: InternalTls,
    build: F,
) -> Result<(), ServeError>
where
    F: FnOnce(Service) -> Fut,
    Fut: Future<Output = Result<Parts, BoxError>>,
{
    let config = info.config.clone();
    let readiness = info.readiness.clone();
    let mongo_uri = redact_uri(&config.mongo.uri);
    let store = Store::connect_pooled(
        &config.mongo.uri,
        &config.mongo.database,
        config.kind.binary(),
        config.mongo.timeout,
        config.mongo.max_pool_size,
    )
    .await?;
    let store = if config.fence_log {
        store.with_fence_log()
    } else {
        store
    };
    let what = format!("MongoDB at {mongo_uri}");
    if wait_for(&what, &readiness, &shutdown, || {
        pinged("mongo", store.ping())
    })
    .await
    .is_none()
    {
        return Ok(());
    }

    let timing = config.leases;
    let (backend, registry, valkey): (Arc<dyn LeaseBackend>, Registry, Option<ValkeyBackend>) =
        match &config.valkey {
            Some(valkey) => {
                let tls = ValkeyTls::from_files(
                    valkey.tls_ca_file.as_deref(),
                    valkey
                        .tls_client
                        .as_ref()
                        .map(|(cert, key)| (cert.as_path(), key.as_path())),
                )
                .map_err(|e| ServeError::Service(format!("valkey TLS files: {e}").into()))?;
                let backend = ValkeyBackend::connect_tls(&valkey.uri, &tls, valkey.timeout)?;
                let what = format!("Valkey at {}", redact_uri(&valkey.uri));
                if wait_for(&what, &readiness, &shutdown, || {
                    pinged("valkey", backend.ping())
                })
                .await
                .is_none()
                {
                    return Ok(());
                }
                let registry = Registry::Valkey {
                    backend: backend.clone(),
                    namespace: valkey.namespace.clone(),
                    ttl: timing.ttl,
                };
                (Arc::new(backend.clone()), registry, Some(backend))
            }
            None => (
                Arc::new(LocalBackend::new()),
                Registry::Mongo {
                    store: store.clone(),
                    ttl: timing.ttl,
                },
                None,
            ),
        };
    let cluster_id = crate::guard::cluster_identity(&store, &config)
        .await
        .map_err(ServeError::Identity)?;
    let enrolment_secret = prexor_model::pki::service_enrolment_secret(&store).await?;
    let signer = SignerClient::new(registry.clone(), internal.peers.clone(), &enrolment_secret)
        .map_err(|e| ServeError::Service(e.into()))?;
    let namespace_for_guard = config
        .valkey
        .as_ref()
        .map_or(prexor_config::DEFAULT_NAMESPACE.to_owned(), |v| {
            v.namespace.clone()
        });
    let guard = crate::guard::StoreGuard::new(
        store.clone(),
        valkey.clone(),
        &namespace_for_guard,
        &config.replica_id,
        timing.ttl * 3,
    );
    guard.check().await;
    {
        let guard = guard.clone();
        readiness.add("coordination-store", move || {
            let state = guard.state();
            async move {
                if state.store == "mismatched" {
                    Err(state.detail.unwrap_or(state.store))
                } else {
                    Ok(())
                }
            }
        });
    }
    let dev_claim = match config.profile {
        Profile::Development => {
            Some(DevClaim::claim(&store, config.kind, &config.replica_id, timing.ttl).await?)
        }
        Profile::Production => None,
    };

    {
        let store = store.clone();
        readiness.add("mongo", move || {
            let store = store.clone();
            async move {
                pinged("mongo", store.ping())
                    .await
                    .map_err(|e| e.to_string())
            }
        });
        let backend = backend.clone();
        // Valkey's reachability is exported; the development profile's in-process store is not
        // a store to watch.
        let valkey = config.valkey.is_some();
        readiness.add("coordination", move || {
            let backend = backend.clone();
            async move {
                let outcome = backend.ping().await;
                if valkey {
                    crate::guard::store_up("valkey", outcome.is_ok());
                }
                outcome.map_err(|e| e.to_string())
            }
        });
    }

    let namespace = config
        .valkey
        .as_ref()
        .map_or(prexor_config::DEFAULT_NAMESPACE.to_owned(), |v| {
            v.namespace.clone()
        });
    let (events, ephemeral) = match &valkey {
        Some(valkey) => (
            EventLog::valkey(valkey.clone(), &namespace, &config.replica_id),
            Ephemeral::valkey(valkey.clone(), &namespace),
        ),
        None => (EventLog::local(&config.replica_id), Ephemeral::local()),
    };
    let service = Service {
        leases: Leases::new(
            backend,
            store.clone(),
            config.replica_id.clone(),
            namespace,
            timing,
        ),
        events,
        ephemeral,
        valkey,
        guard,
        cluster_id,
        config: config.clone(),
        store,
        registry,
        readiness: readiness.clone(),
        shutdown: shutdown.clone(),
        internal: internal.clone(),
        signer: signer.clone(),
        info: info.clone(),
        fatal: Arc::new(Mutex::new(None)),
    };

    readiness.set_phase(Some("starting the service".into()));
    let parts = match build(service.clone()).await {
        Ok(parts) => parts,
        Err(err) => {
            shutdown.cancel();
            if let Some(claim) = &dev_claim {
                let _ = claim.release().await;
            }
            return Err(ServeError::Service(err));
        }
    };
    let keepers = parts.keepers;
    let _ = info.keepers.set(Box::new(move || {
        keepers
            .iter()
            .flat_map(LeaseKeeper::held)
            .map(|lease| lease.scope().to_string())
            .collect()
    }));
    if let Some(router) = parts.http {
        // Every request to the service's routes is counted by its route template, and answered
        // inside its span with its request id.
        let _ = app.set(
            router
                .layer(axum::middleware::from_fn(crate::red::http_metrics))
                .layer(axum::middleware::from_fn(crate::trace::http_trace)),
        );
    }
    // Peers reach this replica's own gRPC routes only once it has its certificate; until then
    // the replica is not ready. A replica without routes of its own (scheduler) needs the
    // certificate only for its calls to peers, which say why they fail without one.
    let cert_state = crate::tls::new_cert_state();
    if let Some(routes) = parts.grpc {
        crate::tls::require_certificate(
            &readiness,
            "internal-tls",
            "the internal gRPC port",
            &cert_state,
        );
        let _ = grpc_app.set(routes.into_axum_router());
    }
    let mut tasks = parts.tasks;
    let signer: Arc<dyn ServiceSigner> = match parts.local_signer {
        Some(local) => local,
        None => Arc::new(signer.clone()),
    };
    tasks.push(tokio::spawn(crate::internal::keep_internal_certificate(
        service.clone(),
        signer,
        cert_state,
    )));
    tasks.push(tokio::spawn(crate::internal::keep_revocations(
        service.clone(),
    )));

    let record = ReplicaRecord {
        kind: config.kind,
        id: config.replica_id.clone(),
        version: prexor_domain::VERSION.to_owned(),
        profile: config.profile.to_string(),
        http_address: format!("{}:{}", config.advertise_host, http_addr.port()),
        grpc_address: grpc_addr.map(|a| format!("{}:{}", config.advertise_host, a.port())),
        started_at_ms: info.started_at_ms,
        ready: false,
        leases_held: 0,
        heartbeat_age_ms: 0,
        clock_skew_ms: None,
        coordination: None,
        notes: Vec::new(),
    };
    let heartbeat = tokio::spawn(heartbeat(service.clone(), record, dev_claim.clone()));
    readiness.set_phase(None);
    tracing::info!("ready");

    shutdown.cancelled().await;
    readiness.set_draining();
    tracing::info!("shutting down: stopping the service's work and releasing its leases");
    let deadline = config.shutdown_timeout;
    let stopped = tokio::time::timeout(deadline, async {
        for task in tasks {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "a service task failed while stopping");
            }
        }
        let _ = heartbeat.await;
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(
            "the service's work did not stop within shutdown.timeout ({deadline:?}); exiting anyway, its leases expire after their TTL"
        );
    }
    if let Err(err) = service
        .registry
        .deregister(config.kind, &config.replica_id)
        .await
    {
        tracing::warn!(error = %err, "could not deregister; the entry ages out after the lease TTL");
    }
    if let Some(claim) = &dev_claim
        && let Err(err) = claim.release().await
    {
        tracing::warn!(error = %err, "could not release the development single-writer slot; it ages out after the lease TTL");
    }
    match service.fatal.lock().expect("fatal lock").take() {
        Some(reason) => Err(ServeError::Fatal(reason)),
        None => Ok(()),
    }
}

/// Registers the replica every renew interval (and keeps the development claim), until shutdown.
async fn heartbeat(service: Service, mut record: ReplicaRecord, dev_claim: Option<DevClaim>) {
    let interval = service.leases.timing().renew_interval;
    let mut failing = false;
    loop {
        record.ready = service.readiness.report().await.ready;
        record.leases_held = service.leases_held().len() as u64;
        service.guard.check().await;
        let store_state = service.guard.state();
        record.notes = service.notes();
        if let Some(detail) = &store_state.detail {
            record.notes.push(detail.clone());
        }
        record.coordination = Some(store_state.store.clone());
        let sent_at = prexor_domain::now_ms();
        let outcome = service.registry.heartbeat(&record).await;
        let mut first_measure = false;
        if let Ok(Some(store_now)) = outcome {
            // Our clock at the midpoint of the round trip against the store's.
            let midpoint = sent_at + (prexor_domain::now_ms() - sent_at) / 2;
            first_measure = record.clock_skew_ms.is_none();
            record.clock_skew_ms = Some(midpoint - store_now);
            metrics::gauge!("prexor_clock_skew_seconds")
                .set((midpoint - store_now) as f64 / 1000.0);
        }
        match outcome {
            Ok(_) if failing => {
                tracing::info!("heartbeats are recorded again");
                failing = false;
            }
            Ok(_) => {}
            Err(err) if !failing => {
                tracing::warn!(error = %err, "could not record this replica's heartbeat");
                failing = true;
            }
            Err(_) => {}
        }
        if let Some(claim) = &dev_claim {
            match claim.refresh().await {
                Ok(()) => {}
                Err(CoordError::Refused(reason)) => {
                    service.fail(reason);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not refresh the development single-writer slot")
                }
            }
        }
        if first_measure {
            // Publish the first skew measurement at once rather than a renew interval later.
            continue;
        }
        tokio::select! {
            _ = service.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
