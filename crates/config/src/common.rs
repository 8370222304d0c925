use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use prexor_domain::{LeaseTiming, Profile, ServiceKind, redact_uri, validate_name};

use crate::reader::Reader;

/// The Valkey key namespace every PrexorCloud key lives under (operator page: `prexor:v1:`).
pub const DEFAULT_NAMESPACE: &str = "prexor:v1:";

/// What every control-plane replica (api, gateway, scheduler, ca) is configured with.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub kind: ServiceKind,
    /// `runtime.profile`.
    pub profile: Profile,
    /// `cluster.id`: when set, the replica refuses to run against a database of another cluster.
    pub cluster_id: Option<String>,
    /// `cluster.bootstrap`: create the cluster identity with `cluster.id` in an empty database
    /// (without it, a configured id and an empty database are refused: usually the wrong one).
    pub cluster_bootstrap: bool,
    /// `replica.id`: unique per running replica; defaults to `<kind>-<hostname>-<random>`.
    pub replica_id: String,
    /// `replica.advertiseHost`: the host name or address peers and operators use to reach this
    /// replica; defaults to the machine's host name.
    pub advertise_host: String,
    pub mongo: MongoConfig,
    /// `valkey.*`; absent only in the development profile.
    pub valkey: Option<ValkeyConfig>,
    /// `scheduler.evaluationIntervalSeconds`.
    pub evaluation_interval: Duration,
    /// `coordination.*`, derived from the evaluation interval unless set.
    pub leases: LeaseTiming,
    /// `coordination.fenceLog`: record every fenced write's scope and token in `fence_log`
    /// (same transaction) — an audit trail of who wrote under which token; one more document per
    /// write, so off by default.
    pub fence_log: bool,
    pub telemetry: TelemetryConfig,
    pub http: HttpConfig,
    /// `shutdown.timeout`: how long a graceful stop may take before the process exits anyway.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct MongoConfig {
    /// `mongo.uri`, e.g. `mongodb://db1,db2,db3/?replicaSet=rs0`.
    pub uri: String,
    /// `mongo.database`.
    pub database: String,
    /// `mongo.timeout`: bound on connecting and on every single operation.
    pub timeout: Duration,
    /// `mongo.maxPoolSize`: the most connections the replica keeps open to each MongoDB server
    /// (none: the URI's `maxPoolSize`, else the driver's default, 10).
    pub max_pool_size: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct ValkeyConfig {
    /// `valkey.uri`, e.g. `redis://valkey:6379` or `rediss://...`.
    pub uri: String,
    /// `valkey.namespace`: key prefix, `prexor:v1:` unless several clusters share one Valkey.
    pub namespace: String,
    /// `valkey.timeout`: bound on connecting and on every command.
    pub timeout: Duration,
    /// `valkey.tlsCaFile`: PEM CA that signed the Valkey server's certificate, for a
    /// `rediss://` URI (without it, the system's trusted roots).
    pub tls_ca_file: Option<PathBuf>,
    /// `valkey.tlsCertFile` and `valkey.tlsKeyFile`: a client certificate and key, for a Valkey
    /// that requires one (`tls-auth-clients yes`).
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Name reported in logs and traces (`service.name`), e.g. `prexor-scheduler`.
    pub service_name: String,
    /// The `service` label on every metric: `api`, `gateway`, `scheduler`, `ca` or `daemon`.
    pub service: String,
    /// The `replica` label on every metric: `replica.id` (a daemon's `node.id`).
    pub replica: String,
    /// `telemetry.logFormat`: `human` or `json`.
    pub log_format: LogFormat,
    /// `telemetry.logLevel`: a tracing filter such as `info` or `info,prexor_coord=debug`.
    /// `RUST_LOG`, when set, wins.
    pub log_level: String,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `http.listen`: where `/healthz`, `/readyz` and `/metrics` are served (and, on the api, the
    /// REST API).
    pub listen: SocketAddr,
}

impl CommonConfig {
    pub(crate) fn read(r: &mut Reader, kind: ServiceKind, default_http_port: u16) -> Self {
        let profile = r.parse::<Profile>("runtime.profile").unwrap_or_default();

        let cluster_id: Option<String> = r.get("cluster.id");
        if cluster_id.as_deref().is_some_and(|id| id.trim().is_empty()) {
            r.problem("cluster.id", "must not be empty when set");
        }

        let cluster_bootstrap = r.get_or("cluster.bootstrap", false);

        let replica_id = match r.get::<String>("replica.id") {
            Some(id) => {
                if let Err(err) = validate_name(&id) {
                    r.problem("replica.id", format!("{id:?} {err}"));
                }
                id
            }
            None => default_replica_id(kind),
        };
        let advertise_host = r
            .get::<String>("replica.advertiseHost")
            .unwrap_or_else(local_hostname);

        let mongo_uri: String = r
            .required(
                "mongo.uri",
                "every replica needs the shared MongoDB (e.g. mongodb://127.0.0.1:27017/?replicaSet=rs0)",
            )
            .unwrap_or_default();
        if !mongo_uri.is_empty()
            && !mongo_uri.starts_with("mongodb://")
            && !mongo_uri.starts_with("mongodb+srv://")
        {
            r.problem(
                "mongo.uri",
                format!("{mongo_uri:?} must start with mongodb:// or mongodb+srv://"),
            );
        }
        let mongo = MongoConfig {
            uri: mongo_uri,
            database: r.get_or("mongo.database", "prexorcloud".to_owned()),
            timeout: r
                .duration("mongo.timeout")
                .unwrap_or(Duration::from_secs(5)),
            max_pool_size: match r.get::<u32>("mongo.maxPoolSize") {
                Some(0) => {
                    r.problem("mongo.maxPoolSize", "must be at least 1");
                    None
                }
                size => size,
            },
        };

        let valkey_uri: Option<String> = r.get("valkey.uri");
        let namespace = r.get_or("valkey.namespace", DEFAULT_NAMESPACE.to_owned());
        if !namespace.ends_with(':') {
            r.problem(
                "valkey.namespace",
                format!("{namespace:?} must end with ':' (e.g. \"prexor:v1:\")"),
            );
        }
        let valkey_timeout = r
            .duration("valkey.timeout")
            .unwrap_or(Duration::from_secs(2));
        let valkey = match valkey_uri {
            Some(uri) => {
                const SCHEMES: [&str; 5] = [
                    "redis://",
                    "rediss://",
                    "valkey://",
                    "valkeys://",
                    "unix://",
                ];
                if !SCHEMES.iter().any(|s| uri.starts_with(s)) {
                    r.problem(
                        "valkey.uri",
                        format!("{uri:?} must start with redis://, rediss://, valkey://, valkeys:// or unix://"),
                    );
                }
                let tls = uri.starts_with("rediss://") || uri.starts_with("valkeys://");
                let file = |r: &mut Reader, key: &str| {
                    let path: PathBuf = r.get(key)?;
                    if !tls {
                        r.problem(
                            key,
                            format!("is set, but valkey.uri {:?} is not a TLS URI (rediss:// or valkeys://)", redact_uri(&uri)),
                        );
                    } else if !path.is_file() {
                        r.problem(key, format!("{} is not a readable file", path.display()));
                    }
                    Some(path)
                };
                let tls_ca_file = file(r, "valkey.tlsCaFile");
                let tls_client = match (file(r, "valkey.tlsCertFile"), file(r, "valkey.tlsKeyFile"))
                {
                    (Some(cert), Some(key)) => Some((cert, key)),
                    (None, None) => None,
                    (Some(_), None) | (None, Some(_)) => {
                        r.problem(
                            "valkey.tlsCertFile",
                            "valkey.tlsCertFile and valkey.tlsKeyFile go together: set both or neither",
                        );
                        None
                    }
                };
                Some(ValkeyConfig {
                    uri,
                    namespace,
                    timeout: valkey_timeout,
                    tls_ca_file,
                    tls_client,
                })
            }
            None => {
                if profile == Profile::Production {
                    r.problem(
                        "valkey.uri",
                        "is required when runtime.profile = \"production\": production replicas coordinate through the shared Valkey",
                    );
                }
                None
            }
        };

        let seconds: i64 = r.get_or("scheduler.evaluationIntervalSeconds", 15);
        if seconds < 1 {
            r.problem(
                "scheduler.evaluationIntervalSeconds",
                format!("is {seconds}; it must be at least 1"),
            );
        }
        let evaluation_interval = Duration::from_secs(seconds.max(1) as u64);
        let derived = LeaseTiming::from_evaluation_interval(evaluation_interval);
        let ttl = r.duration("coordination.leaseTtl").unwrap_or(derived.ttl);
        let scaled = LeaseTiming::from_evaluation_interval(ttl / 2);
        let leases = LeaseTiming {
            ttl,
            renew_interval: r
                .duration("coordination.renewInterval")
                .unwrap_or(scaled.renew_interval),
            self_fence_after: r
                .duration("coordination.selfFenceAfter")
                .unwrap_or(scaled.self_fence_after),
        };
        for (key, message) in leases.problems() {
            r.problem(&format!("coordination.{key}"), message);
        }

        let fence_log = r.get_or("coordination.fenceLog", false);
        let telemetry = TelemetryConfig::read(r, kind.as_str(), &replica_id);
        let http = HttpConfig::read(r, default_http_port);
        let shutdown_timeout = read_shutdown_timeout(r);

        CommonConfig {
            kind,
            profile,
            cluster_id,
            cluster_bootstrap,
            replica_id,
            advertise_host,
            mongo,
            valkey,
            evaluation_interval,
            leases,
            fence_log,
            telemetry,
            http,
            shutdown_timeout,
        }
    }
}

impl TelemetryConfig {
    /// `service`: the process's kind (`scheduler`, `daemon`, ...); `replica`: its id.
    pub(crate) fn read(r: &mut Reader, service: &str, replica: &str) -> Self {
        let log_format = match r.get::<String>("telemetry.logFormat").as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                r.problem(
                    "telemetry.logFormat",
                    format!("{other:?} is not a log format; use \"human\" or \"json\""),
                );
                LogFormat::Human
            }
        };
        TelemetryConfig {
            service_name: format!("prexor-{service}"),
            service: service.to_owned(),
            replica: replica.to_owned(),
            log_format,
            log_level: r.get_or("telemetry.logLevel", "info".to_owned()),
        }
    }
}

impl HttpConfig {
    pub(crate) fn read(r: &mut Reader, default_port: u16) -> Self {
        HttpConfig {
            listen: r
                .parse("http.listen")
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], default_port))),
        }
    }
}

pub(crate) fn read_shutdown_timeout(r: &mut Reader) -> Duration {
    r.duration("shutdown.timeout")
        .unwrap_or(Duration::from_secs(20))
}

pub(crate) fn local_hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

fn default_replica_id(kind: ServiceKind) -> String {
    let host: String = local_hostname()
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{kind}-{host}-{suffix}")
}
