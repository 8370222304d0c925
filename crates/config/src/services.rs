use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use prexor_domain::{ServiceKind, validate_name};

use crate::common::{CommonConfig, HttpConfig, TelemetryConfig, read_shutdown_timeout};
use crate::daemon::ServerIsolation;
use crate::reader::Reader;

/// A process configuration that can be read (and validated) from a [`Reader`].
pub trait ServiceConfig: Sized {
    fn read(r: &mut Reader) -> Self;
    /// Where this process answers `/readyz`, as its `--probe` checks it.
    fn ready_endpoint(&self) -> ReadyEndpoint;
}

/// A process's own `/readyz`: its `http.listen` and whether that port speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyEndpoint {
    pub listen: SocketAddr,
    pub tls: bool,
}

impl ReadyEndpoint {
    fn plain(listen: SocketAddr) -> ReadyEndpoint {
        ReadyEndpoint { listen, tls: false }
    }
}

/// `grpc.listen`: the internal gRPC port (tonic-health, status, and the service's own API).
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    pub listen: SocketAddr,
}

impl GrpcConfig {
    fn read(r: &mut Reader, default_port: u16) -> Self {
        GrpcConfig {
            listen: r
                .parse("grpc.listen")
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port))),
        }
    }
}

/// `prexor-api`: REST on `http.listen` (default 8080), HTTPS unless `api.tls = "off"`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    pub tls: ApiTls,
    /// `api.tlsNames`: extra DNS names or addresses clients reach this replica by (a load
    /// balancer's name); `replica.advertiseHost`, `localhost` and `127.0.0.1` are always in a
    /// certificate from the cluster CA.
    pub tls_names: Vec<String>,
    /// `api.trustedProxies`: networks whose connections are proxies forwarding clients in
    /// `X-Forwarded-For` (login limits then count the forwarded client).
    pub trusted_proxies: Vec<IpNetwork>,
    pub uploads: UploadLimits,
    /// `api.callerCacheTtl` (default 2s; `0s`: off): how long a replica keeps a resolved caller
    /// (session or API token, user, permissions). Every change of a session, user, role or
    /// token clears it on every replica at once, so this only bounds how stale it may be when
    /// that notice is lost.
    pub caller_cache_ttl: Duration,
    /// `api.maxConcurrentLists` (default 64): list requests one replica reads at once; past
    /// it a list is answered 503 with `Retry-After` (load is shed, memory stays bounded).
    pub max_concurrent_lists: usize,
    /// `api.historyEvery` (default 1m): how often the replicas sample players and instances
    /// for the dashboard's overview charts (every replica writes the same interval's sample).
    pub history_every: Duration,
    /// `api.historyKeep` (default 24h): how long those samples are kept (and charted).
    pub history_keep: Duration,
}

/// `uploads.*`: what the API accepts as an uploaded archive. Uploads are streamed to a spool
/// file and checked there; none is ever held in memory whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// `uploads.layerMb` (default 256): a template or module upload, as sent (tar.gz).
    pub layer_bytes: u64,
    /// `uploads.layerUnpackedMb` (default 2048): the file content a layer unpacks to.
    pub layer_unpacked_bytes: u64,
    /// `uploads.backupMb` (default 1024): a backup archive upload, as sent.
    pub backup_bytes: u64,
    /// `uploads.backupUnpackedMb` (default 4096): the content a backup archive unpacks to.
    pub backup_unpacked_bytes: u64,
    /// `uploads.maxEntries` (default 100000): files, directories and links in one archive.
    pub max_entries: u64,
}

impl UploadLimits {
    fn read(r: &mut Reader) -> Self {
        UploadLimits {
            layer_bytes: megabytes(r, "uploads.layerMb", 256),
            layer_unpacked_bytes: megabytes(r, "uploads.layerUnpackedMb", 2048),
            backup_bytes: megabytes(r, "uploads.backupMb", 1024),
            backup_unpacked_bytes: megabytes(r, "uploads.backupUnpackedMb", 4096),
            max_entries: positive(r, "uploads.maxEntries", 100_000),
        }
    }
}

/// A count that must be at least 1.
fn positive(r: &mut Reader, key: &str, default: u64) -> u64 {
    match r.get::<u64>(key) {
        Some(0) => {
            r.problem(key, "must be at least 1");
            default
        }
        Some(value) => value,
        None => default,
    }
}

/// A size given in MiB (at least 1), in bytes.
fn megabytes(r: &mut Reader, key: &str, default_mb: u64) -> u64 {
    positive(r, key, default_mb).saturating_mul(1024 * 1024)
}

/// An IP network, `address/prefix` (a plain address is the network of that one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    pub address: std::net::IpAddr,
    pub prefix: u8,
}

/// A network that is not `address` or `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or address/prefix")]
    NotAnAddress(String),
    #[error("{text:?}: the prefix must be 0 to {max}")]
    BadPrefix { text: String, max: u8 },
}

impl std::str::FromStr for IpNetwork {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<IpNetwork, NetworkError> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: std::net::IpAddr = address
            .trim()
            .parse()
            .map_err(|_| NetworkError::NotAnAddress(text.to_owned()))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| NetworkError::BadPrefix {
                    text: text.to_owned(),
                    max,
                })?,
        };
        Ok(IpNetwork { address, prefix })
    }
}

/// `api.tls`: how the REST port is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    /// `"cluster-ca"` (the default): HTTPS with a certificate the cluster CA issues to this
    /// replica, renewed before expiry without a restart.
    ClusterCa,
    /// `"files"`: HTTPS with `api.tlsCertFile` (PEM chain) and `api.tlsKeyFile` (PEM key) — a
    /// public CA's certificate, say — re-read when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// `"off"`: plain HTTP (development, or TLS terminated by a load balancer in front).
    Off,
}

impl ServiceConfig for ApiConfig {
    fn ready_endpoint(&self) -> ReadyEndpoint {
        ReadyEndpoint {
            listen: self.common.http.listen,
            tls: self.tls != ApiTls::Off,
        }
    }

    fn read(r: &mut Reader) -> Self {
        let common = CommonConfig::read(r, ServiceKind::Api, 8080);
        let cert: Option<PathBuf> = r.get("api.tlsCertFile");
        let key: Option<PathBuf> = r.get("api.tlsKeyFile");
        let mode: String = r.get_or("api.tls", "cluster-ca".to_owned());
        let tls = match mode.as_str() {
            "cluster-ca" => ApiTls::ClusterCa,
            "off" => ApiTls::Off,
            "files" => match (cert.clone(), key.clone()) {
                (Some(cert), Some(key)) => ApiTls::Files { cert, key },
                _ => {
                    r.problem(
                        "api.tls",
                        "\"files\" needs api.tlsCertFile and api.tlsKeyFile (PEM certificate chain and key)",
                    );
                    ApiTls::Off
                }
            },
            other => {
                r.problem(
                    "api.tls",
                    format!("unknown mode {other:?}: use \"cluster-ca\", \"files\" or \"off\""),
                );
                ApiTls::Off
            }
        };
        if mode != "files" && (cert.is_some() || key.is_some()) {
            r.problem(
                "api.tlsCertFile",
                "certificate files are only used with api.tls = \"files\"",
            );
        }
        let history_every = r
            .duration("api.historyEvery")
            .unwrap_or(Duration::from_secs(60));
        let history_keep = r
            .duration("api.historyKeep")
            .unwrap_or(Duration::from_secs(86_400));
        if history_every < Duration::from_secs(1) {
            r.problem("api.historyEvery", "must be at least 1s");
        } else if history_keep < history_every {
            r.problem(
                "api.historyKeep",
                format!("must be at least api.historyEvery ({history_every:?})"),
            );
        }
        let mut trusted_proxies = Vec::new();
        for entry in r.get_or::<Vec<String>>("api.trustedProxies", Vec::new()) {
            match entry.parse::<IpNetwork>() {
                Ok(network) => trusted_proxies.push(network),
                Err(problem) => r.problem("api.trustedProxies", problem.to_string()),
            }
        }
        ApiConfig {
            common,
            tls,
            tls_names: r.get_or("api.tlsNames", Vec::new()),
            trusted_proxies,
            uploads: UploadLimits::read(r),
            caller_cache_ttl: r
                .duration("api.callerCacheTtl")
                .unwrap_or(Duration::from_secs(2)),
            max_concurrent_lists: positive(r, "api.maxConcurrentLists", 64) as usize,
            history_every,
            history_keep,
        }
    }
}

/// `prexor-gateway`: internal gRPC on `grpc.listen` (default 9090), ops on 9091, and the daemon
/// port (TLS, cluster CA) on `gateway.daemonListen` (default 9443).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub common: CommonConfig,
    pub grpc: GrpcConfig,
    /// `gateway.daemonListen`: where daemons connect (enrolment and their session).
    pub daemon_listen: SocketAddr,
    /// `gateway.tlsNames`: extra DNS names or IP addresses daemons use to reach this gateway (a
    /// load balancer's name, say). `replica.advertiseHost`, `localhost` and `127.0.0.1` are
    /// always in its certificate.
    pub tls_names: Vec<String>,
    /// `gateway.maxBlobFetches` (default 16): template layers streamed to nodes at once; a
    /// fetch past it is refused with RESOURCE_EXHAUSTED, and the daemon tries again.
    pub max_blob_fetches: usize,
}

impl ServiceConfig for GatewayConfig {
    fn ready_endpoint(&self) -> ReadyEndpoint {
        ReadyEndpoint::plain(self.common.http.listen)
    }

    fn read(r: &mut Reader) -> Self {
        GatewayConfig {
            common: CommonConfig::read(r, ServiceKind::Gateway, 9091),
            grpc: GrpcConfig::read(r, 9090),
            daemon_listen: r
                .parse("gateway.daemonListen")
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9443))),
            tls_names: r.get_or("gateway.tlsNames", Vec::new()),
            max_blob_fetches: positive(r, "gateway.maxBlobFetches", 16) as usize,
        }
    }
}

/// `prexor-scheduler`: internal gRPC on `grpc.listen` (default 9190), ops on 9191.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub common: CommonConfig,
    pub grpc: GrpcConfig,
}

impl ServiceConfig for SchedulerConfig {
    fn ready_endpoint(&self) -> ReadyEndpoint {
        ReadyEndpoint::plain(self.common.http.listen)
    }

    fn read(r: &mut Reader) -> Self {
        SchedulerConfig {
            common: CommonConfig::read(r, ServiceKind::Scheduler, 9191),
            grpc: GrpcConfig::read(r, 9190),
        }
    }
}

/// `prexor-ca`: the signer, internal gRPC on `grpc.listen` (default 9290), ops on 9291.
#[derive(Debug, Clone)]
pub struct CaConfig {
    pub common: CommonConfig,
    pub grpc: GrpcConfig,
    /// `ca.dataDir`: the CA key lives at `<dataDir>/certs/ca/ca.key` (mode 0600), only on the
    /// host(s) allowed to sign.
    pub data_dir: PathBuf,
    /// `ca.nodeCertValidity`: lifetime of issued node (daemon) certificates; default 90 days.
    pub node_cert_validity: Duration,
    /// `ca.serviceCertValidity`: lifetime of issued service-replica certificates; default 30 days.
    pub service_cert_validity: Duration,
}

impl ServiceConfig for CaConfig {
    fn ready_endpoint(&self) -> ReadyEndpoint {
        ReadyEndpoint::plain(self.common.http.listen)
    }

    fn read(r: &mut Reader) -> Self {
        let validity = |r: &mut Reader, key: &str, days: u64| {
            let value = r
                .duration(key)
                .unwrap_or(Duration::from_secs(days * 24 * 3600));
            // Renewal happens at two thirds of the lifetime; below 30 s it would be a storm.
            if value < Duration::from_secs(30) {
                r.problem(
                    key,
                    "must be at least 30s (certificates are renewed at two thirds of their lifetime)",
                );
            }
            value
        };
        CaConfig {
            common: CommonConfig::read(r, ServiceKind::Ca, 9291),
            grpc: GrpcConfig::read(r, 9290),
            data_dir: r.get_or("ca.dataDir", PathBuf::from("/var/lib/prexorcloud/ca")),
            node_cert_validity: validity(r, "ca.nodeCertValidity", 90),
            service_cert_validity: validity(r, "ca.serviceCertValidity", 30),
        }
    }
}

/// `prexor-daemon`: one per host; talks to one gateway at a time, out of `daemon.gateways`.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// `node.id`: the node's name, equal to the CN of its certificate.
    pub node_id: String,
    /// `node.labels`: free-form `key = "value"` pairs used by group affinity rules.
    pub labels: BTreeMap<String, String>,
    /// `node.memoryMb`: memory the daemon may hand to servers; the host's total when unset.
    pub memory_mb: Option<u64>,
    /// `daemon.dataDir`: the daemon's private state (certificates, fencing marks, template cache,
    /// shims' run directories), mode 0700; servers work in `daemon.serversDir`.
    pub data_dir: PathBuf,
    /// `daemon.gateways`: `host:port` of every gateway replica; the daemon uses one at a time.
    pub gateways: Vec<String>,
    /// `daemon.reconnectMaxBackoff`: upper bound of the jittered reconnect backoff.
    pub reconnect_max_backoff: Duration,
    /// `daemon.joinToken`: the single-use token (`prexorctl nodes join-token`) exchanged for the
    /// node certificate on first start; unused once `<dataDir>/certs/node.crt` exists.
    pub join_token: Option<String>,
    /// `daemon.instanceDiskMb` (default 20480): the most one instance's template layers may
    /// unpack to; a plan past it fails to start, naming the layer.
    pub instance_disk_bytes: u64,
    /// `daemon.minFreeDiskMb` (default 1024): free space the daemon keeps on `dataDir`'s file
    /// system; fetching or unpacking a layer that would go below it fails the start.
    pub min_free_disk_bytes: u64,
    /// Users, directories, limits and logs of the servers (`daemon.runAs`, …).
    pub isolation: ServerIsolation,
    pub telemetry: TelemetryConfig,
    pub http: HttpConfig,
    pub shutdown_timeout: Duration,
}

impl ServiceConfig for DaemonConfig {
    fn ready_endpoint(&self) -> ReadyEndpoint {
        ReadyEndpoint::plain(self.http.listen)
    }

    fn read(r: &mut Reader) -> Self {
        let node_id: String = r
            .required("node.id", "every daemon needs its node id (e.g. node-1)")
            .unwrap_or_default();
        if !node_id.is_empty()
            && let Err(err) = validate_name(&node_id)
        {
            r.problem("node.id", format!("{node_id:?} {err}"));
        }
        let gateways: Vec<String> = r
            .required(
                "daemon.gateways",
                "list every gateway's daemon port as \"host:port\" (e.g. [\"gw1:9443\", \"gw2:9443\"])",
            )
            .unwrap_or_default();
        for gw in &gateways {
            if !looks_like_host_port(gw) {
                r.problem("daemon.gateways", format!("{gw:?} is not \"host:port\""));
            }
        }
        if gateways.is_empty() && r.get::<Vec<String>>("daemon.gateways").is_some() {
            r.problem("daemon.gateways", "must list at least one gateway");
        }
        let labels = r.get_or("node.labels", BTreeMap::new());
        let data_dir = r.get_or(
            "daemon.dataDir",
            PathBuf::from("/var/lib/prexorcloud/daemon"),
        );
        let telemetry = TelemetryConfig::read(r, "daemon", &node_id);
        DaemonConfig {
            node_id,
            labels,
            memory_mb: r.get("node.memoryMb"),
            isolation: ServerIsolation::read(r, &data_dir),
            data_dir,
            gateways,
            reconnect_max_backoff: r
                .duration("daemon.reconnectMaxBackoff")
                .unwrap_or(Duration::from_secs(10)),
            join_token: r
                .get::<String>("daemon.joinToken")
                .filter(|t| !t.trim().is_empty()),
            instance_disk_bytes: megabytes(r, "daemon.instanceDiskMb", 20 * 1024),
            min_free_disk_bytes: r
                .get::<u64>("daemon.minFreeDiskMb")
                .unwrap_or(1024)
                .saturating_mul(1024 * 1024),
            telemetry,
            http: HttpConfig::read(r, 9391),
            shutdown_timeout: read_shutdown_timeout(r),
        }
    }
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

#[cfg(test)]
// figment::Jail fixes the closure's error type (figment::Error, which is large).
#[allow(clippy::result_large_err)]
mod tests {
    use prexor_domain::Profile;

    use crate::{ConfigError, load};

    use super::*;

    /// Loads `toml` as a file, with no `PREXOR_*` variable set. Runs inside a figment `Jail`:
    /// jails serialize, so no other test's environment leaks in.
    fn load_str<C: ServiceConfig>(toml: &str) -> Result<C, ConfigError> {
        let mut outcome = None;
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("config.toml", toml)?;
            outcome = Some(load::<C>(Some(std::path::Path::new("config.toml"))));
            Ok(())
        });
        outcome.expect("the jail ran")
    }

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load_str::<SchedulerConfig>(
            r#"
            [runtime]
            profile = "staging"
            [scheduler]
            evaluationIntervalSeconds = 0
            "#,
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            [
                "runtime.profile",
                "mongo.uri",
                "scheduler.evaluationIntervalSeconds"
            ],
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid configuration (3 problems):"),
            "{text}"
        );
        assert!(text.contains("unknown profile \"staging\""), "{text}");
        assert!(text.contains("it must be at least 1"), "{text}");
    }

    #[test]
    fn valkey_tls_files_need_a_tls_uri_exist_and_come_in_pairs() {
        let err = load_str::<SchedulerConfig>(
            r#"
            mongo.uri = "mongodb://127.0.0.1:27017/?replicaSet=secantus"
            valkey.uri = "redis://127.0.0.1:6379"
            valkey.tlsCaFile = "config.toml"
            "#,
        )
        .unwrap_err();
        assert_eq!(keys(&err), ["valkey.tlsCaFile"], "{err}");
        assert!(err.to_string().contains("not a TLS URI"), "{err}");

        let err = load_str::<SchedulerConfig>(
            r#"
            mongo.uri = "mongodb://127.0.0.1:27017/?replicaSet=secantus"
            valkey.uri = "rediss://127.0.0.1:6379"
            valkey.tlsCaFile = "/nonexistent/ca.pem"
            valkey.tlsCertFile = "config.toml"
            "#,
        )
        .unwrap_err();
        assert_eq!(
            keys(&err),
            ["valkey.tlsCaFile", "valkey.tlsCertFile"],
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("/nonexistent/ca.pem is not a readable file"),
            "{err}"
        );
        assert!(err.to_string().contains("go together"), "{err}");

        let cfg = load_str::<SchedulerConfig>(
            r#"
            mongo.uri = "mongodb://127.0.0.1:27017/?replicaSet=secantus"
            valkey.uri = "rediss://127.0.0.1:6379"
            valkey.tlsCaFile = "config.toml"
            valkey.tlsCertFile = "config.toml"
            valkey.tlsKeyFile = "config.toml"
            "#,
        )
        .unwrap();
        let valkey = cfg.common.valkey.expect("valkey");
        assert!(valkey.tls_ca_file.is_some() && valkey.tls_client.is_some());
    }

    #[test]
    fn production_requires_valkey() {
        let err = load_str::<ApiConfig>(
            r#"
            runtime.profile = "production"
            mongo.uri = "mongodb://127.0.0.1:27017/?replicaSet=secantus"
            "#,
        )
        .unwrap_err();
        assert_eq!(keys(&err), ["valkey.uri"]);
        assert!(err.to_string().contains("production"), "{err}");
    }

    #[test]
    fn development_runs_without_valkey_and_defaults_are_derived() {
        let cfg = load_str::<SchedulerConfig>(
            r#"
            mongo.uri = "mongodb://127.0.0.1:27017/?replicaSet=secantus"
            scheduler.evaluationIntervalSeconds = 5
            "#,
        )
        .unwrap();
        assert_eq!(cfg.common.profile, Profile::Development);
        assert!(cfg.common.valkey.is_none());
        assert_eq!(cfg.common.leases.ttl, Duration::from_secs(10));
        assert_eq!(
            cfg.common.leases.renew_interval,
            Duration::from_millis(2500)
        );
        assert_eq!(cfg.grpc.listen.port(), 9190);
        assert!(cfg.common.replica_id.starts_with("scheduler-"));
    }

    #[test]
    fn unknown_keys_and_bad_types_are_named() {
        let err = load_str::<GatewayConfig>(
            r#"
            mongo.uri = "mongodb://x/"
            mongo.timeout = "soon"
            scheduler.evaluationIntervalSecond = 3
            http.listen = "nowhere"
            "#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            keys(&err),
            [
                "mongo.timeout",
                "http.listen",
                "scheduler.evaluationIntervalSecond"
            ],
            "{text}"
        );
        assert!(text.contains("\"soon\" is not a duration"), "{text}");
        assert!(text.contains("unknown key"), "{text}");
    }

    #[test]
    fn unsafe_lease_timing_is_refused() {
        let err = load_str::<SchedulerConfig>(
            r#"
            mongo.uri = "mongodb://x/"
            coordination.leaseTtl = "10s"
            coordination.selfFenceAfter = "12s"
            "#,
        )
        .unwrap_err();
        assert_eq!(keys(&err), ["coordination.selfFenceAfter"], "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "mongo.uri = \"mongodb://file/\"\nscheduler.evaluationIntervalSeconds = 15\n",
            )?;
            jail.set_env("PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS", "3");
            jail.set_env("PREXOR_VALKEY__URI", "redis://127.0.0.1:6379");
            jail.set_env("PREXOR_RUNTIME__PROFILE", "production");
            // prexorctl's variables in the same shell are not configuration.
            jail.set_env("PREXOR_TOKEN", "pxt_x_y");
            jail.set_env("PREXOR_CONTROLLER", "https://controller-1:8080");
            let cfg = load::<SchedulerConfig>(Some(std::path::Path::new("s.toml")))
                .map_err(|e| e.to_string())?;
            assert_eq!(cfg.common.evaluation_interval, Duration::from_secs(3));
            assert_eq!(cfg.common.profile, Profile::Production);
            assert_eq!(cfg.common.mongo.uri, "mongodb://file/");
            jail.set_env("PREXOR_RUNTIME__PROFILE", "prod");
            let err = load::<SchedulerConfig>(Some(std::path::Path::new("s.toml"))).unwrap_err();
            assert!(
                err.to_string().contains("set by PREXOR_RUNTIME__PROFILE"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn daemon_needs_node_id_and_gateways() {
        let err = load_str::<DaemonConfig>("daemon.gateways = [\"gw1\"]\n").unwrap_err();
        assert_eq!(keys(&err), ["node.id", "daemon.gateways"], "{err}");
        let cfg = load_str::<DaemonConfig>(
            "node.id = \"node-1\"\ndaemon.gateways = [\"127.0.0.1:9090\"]\n[node.labels]\nzone = \"eu\"\n",
        )
        .unwrap();
        assert_eq!(cfg.labels.get("zone").map(String::as_str), Some("eu"));
    }

    #[test]
    fn api_tls_modes() {
        let base = "mongo.uri = \"mongodb://x/\"\n";
        let cfg = load_str::<ApiConfig>(base).unwrap();
        assert_eq!(cfg.tls, ApiTls::ClusterCa, "HTTPS unless turned off");
        let cfg = load_str::<ApiConfig>(&format!("{base}api.tls = \"off\"\n")).unwrap();
        assert_eq!(cfg.tls, ApiTls::Off);
        let err = load_str::<ApiConfig>(&format!("{base}api.tls = \"files\"\n")).unwrap_err();
        assert!(err.to_string().contains("api.tlsCertFile"), "{err}");
        let err = load_str::<ApiConfig>(&format!("{base}api.tls = \"plain\"\n")).unwrap_err();
        assert!(err.to_string().contains("unknown mode \"plain\""), "{err}");
        let cfg = load_str::<ApiConfig>(&format!(
            "{base}[api]\ntls = \"files\"\ntlsCertFile = \"/etc/c.pem\"\ntlsKeyFile = \"/etc/k.pem\"\n"
        ))
        .unwrap();
        assert!(matches!(cfg.tls, ApiTls::Files { .. }));
    }

    #[test]
    fn mongo_pool_size_and_caller_cache() {
        let base = "mongo.uri = \"mongodb://x/\"\n";
        let api = load_str::<ApiConfig>(base).unwrap();
        assert_eq!(api.common.mongo.max_pool_size, None);
        assert_eq!(api.caller_cache_ttl, Duration::from_secs(2));
        let api = load_str::<ApiConfig>(&format!(
            "{base}mongo.maxPoolSize = 64\napi.callerCacheTtl = \"0s\"\n"
        ))
        .unwrap();
        assert_eq!(api.common.mongo.max_pool_size, Some(64));
        assert_eq!(api.caller_cache_ttl, Duration::ZERO);
        let err = load_str::<GatewayConfig>(&format!("{base}mongo.maxPoolSize = 0\n")).unwrap_err();
        assert_eq!(keys(&err), ["mongo.maxPoolSize"], "{err}");
    }

    #[test]
    fn api_history_intervals() {
        let base = "mongo.uri = \"mongodb://x/\"\n";
        let api = load_str::<ApiConfig>(base).unwrap();
        assert_eq!(
            (api.history_every, api.history_keep),
            (Duration::from_secs(60), Duration::from_secs(86_400))
        );
        let api = load_str::<ApiConfig>(&format!(
            "{base}api.historyEvery = \"2s\"\napi.historyKeep = \"1h\"\n"
        ))
        .unwrap();
        assert_eq!(api.history_every, Duration::from_secs(2));
        let err =
            load_str::<ApiConfig>(&format!("{base}api.historyEvery = \"10ms\"\n")).unwrap_err();
        assert_eq!(keys(&err), ["api.historyEvery"], "{err}");
        let err = load_str::<ApiConfig>(&format!(
            "{base}api.historyEvery = \"1h\"\napi.historyKeep = \"1m\"\n"
        ))
        .unwrap_err();
        assert_eq!(keys(&err), ["api.historyKeep"], "{err}");
    }

    #[test]
    fn upload_and_disk_limits_are_sizes_in_mib() {
        let api = load_str::<ApiConfig>(
            "mongo.uri = \"mongodb://127.0.0.1:27017/?replicaSet=s\"\n[uploads]\nlayerMb = 8\nmaxEntries = 10\n",
        )
        .unwrap();
        assert_eq!(api.uploads.layer_bytes, 8 << 20);
        assert_eq!(api.uploads.max_entries, 10);
        assert_eq!(api.uploads.backup_bytes, 1024 << 20);
        let err = load_str::<ApiConfig>("[uploads]\nlayerMb = 0\n").unwrap_err();
        assert!(keys(&err).contains(&"uploads.layerMb"), "{err}");
        let err = load_str::<GatewayConfig>("[gateway]\nmaxBlobFetches = 0\n").unwrap_err();
        assert!(keys(&err).contains(&"gateway.maxBlobFetches"), "{err}");
        let err = load_str::<DaemonConfig>(
            "[node]\nid = \"n1\"\n[daemon]\ngateways = [\"g:1\"]\ninstanceDiskMb = -1\n",
        )
        .unwrap_err();
        assert!(keys(&err).contains(&"daemon.instanceDiskMb"), "{err}");
    }

    #[test]
    fn missing_file_is_named() {
        let err =
            load::<ApiConfig>(Some(std::path::Path::new("/nonexistent/api.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/api.toml"), "{err}");
    }
}
