//! `prexor-bench`: one subcommand per measured area. Each prints one JSON object per result line:
//! `{"name", "value", "unit", "baseline": {"name", "value"} | null, "ratio", "target"}`.
//!
//! Servers: `--mongo-uri` / `--valkey-url` (or `MONGODB_URI` / `VALKEY_URL`); without them the
//! benchmark starts its own Valkey and MongoDB-wire server, as the tests do.

mod all;
mod api;
mod ca;
mod coord;
mod gateway;
mod placement;
mod procs;
mod reads;
mod report;
mod reports;
mod scheduler;
mod stack;
mod startup;
mod uploads;
mod warm;
mod wrk;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "prexor-bench",
    about = "Measure PrexorCloud against its physical floors"
)]
struct Cli {
    #[arg(long, global = true, env = "MONGODB_URI")]
    mongo_uri: Option<String>,
    #[arg(long, global = true, env = "VALKEY_URL")]
    valkey_url: Option<String>,
    /// Samples per measurement.
    #[arg(long, global = true, default_value_t = 500)]
    iterations: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every benchmark below, `--runs` times, against one pair of stores: medians with min and
    /// max into BENCHMARKS.md and a JSON file.
    All {
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: std::path::PathBuf,
        #[arg(long, default_value = "benchmarks.json")]
        json: std::path::PathBuf,
    },
    /// Failover timings: group takeover after SIGKILL and hand-over after SIGTERM of the
    /// scheduler holding it, daemon reconnect after its gateway is killed, and report delivery
    /// in the conflict scenario (see `reports`).
    Failover {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Report delivery in the conflict scenario: rolling deployments of a 4-instance group
    /// whose holder freezes (SIGSTOP) at each start; reports re-sent, retried and lost.
    Reports {
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// How long the holder stays frozen.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        freeze: std::time::Duration,
    },
    /// Raw floors: Valkey SET+GET and MongoDB-wire insert+find round trips.
    Stack,
    /// The REST API: cold start, cross-replica event latency, GET /groups under wrk.
    Api,
    /// API reads at 1,000 groups and 1,000 instances under wrk, next to the driver and
    /// `/healthz` floors; the api's RSS before and after.
    Reads,
    /// Leases and fencing: renew, acquire, fenced write, each next to its floor.
    Coord,
    /// Node CSR signing through a real prexor-ca over internal gRPC, next to the in-process
    /// signature and the MongoDB floor.
    Ca,
    /// Node commands through a non-owning gateway (vs the owner), and daemon reconnect time
    /// after the owning gateway is killed.
    Gateway {
        /// How many times the owning gateway is killed.
        #[arg(long, default_value_t = 10)]
        kills: usize,
    },
    /// Creation to RUNNING with real processes: one group of `--one-group` instances, then
    /// `--groups` groups of `--per-group`, on one daemon with two scheduler replicas.
    Startup {
        #[arg(long, default_value_t = 100)]
        one_group: usize,
        #[arg(long, default_value_t = 100)]
        groups: usize,
        #[arg(long, default_value_t = 10)]
        per_group: usize,
    },
    /// A large template layer up and down through the API: throughput and the api's peak
    /// memory growth (streamed, it stays far below the layer's size).
    Uploads {
        #[arg(long, default_value_t = 128)]
        megabytes: usize,
    },
    /// The placement decision alone (no stores) on 1,000 nodes: single choices and batches of ten.
    Placement,
    /// A DYNAMIC group's scale-up to RUNNING: cold, from a prepared and from a started warm
    /// instance, `--rounds` groups each, with a `--megabytes` template layer.
    WarmPool {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = 128)]
        megabytes: usize,
    },
    /// Scheduler tick duration in steady state with N groups held by one replica.
    Scheduler {
        /// Group counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000")]
        groups: Vec<usize>,
        /// Ticks sampled per size.
        #[arg(long, default_value_t = 20)]
        ticks: usize,
        /// Placement throughput: this many STATIC groups (0: skip)...
        #[arg(long, default_value_t = 100)]
        placement_groups: usize,
        /// ...of this many instances each.
        #[arg(long, default_value_t = 10)]
        placement_per_group: usize,
        /// Failover rounds (SIGKILL and SIGTERM each; 0: skip).
        #[arg(long, default_value_t = 3)]
        failovers: usize,
    },
}

/// Where the benchmark's stores are.
pub struct Servers {
    pub mongo_uri: String,
    pub valkey_url: String,
    pub database: String,
    pub namespace: String,
}

impl Servers {
    /// The same servers with a database and namespace of their own (a separate cluster), for a
    /// benchmark that must start from nothing; cleaned up with the main ones.
    pub fn fresh(&self, what: &str) -> Servers {
        Servers {
            mongo_uri: self.mongo_uri.clone(),
            valkey_url: self.valkey_url.clone(),
            database: format!("{}_{what}", self.database),
            namespace: format!("{}{what}:", self.namespace),
        }
    }

    /// Internal mTLS for the benchmark as a client of internal ports: a service certificate
    /// (api replica `bench-client`) obtained like a replica's first one, from a running CA.
    pub async fn internal(&self) -> anyhow::Result<prexor_pki::internal::InternalTls> {
        let store = self.store().await?;
        let registry = prexor_coord::Registry::Valkey {
            backend: prexor_coord::ValkeyBackend::connect(
                &self.valkey_url,
                std::time::Duration::from_secs(5),
            )?,
            namespace: self.namespace.clone(),
            ttl: std::time::Duration::from_secs(15),
        };
        prexor_testkit::enrol_internal_tls(&store, registry, "api", "bench-client")
            .await
            .map_err(anyhow::Error::msg)
    }

    /// The project's store on the benchmark's database.
    pub async fn store(&self) -> anyhow::Result<prexor_store::Store> {
        Ok(prexor_store::Store::connect(
            &self.mongo_uri,
            &self.database,
            "prexor-bench",
            std::time::Duration::from_secs(10),
        )
        .await?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Servers started here live until the process exits.
    let stores = prexor_testkit::TestStores::new("bench");
    let (mongo_uri, valkey_url) = match (cli.mongo_uri, cli.valkey_url) {
        (Some(m), Some(v)) => (m, v),
        (m, v) => {
            let stores = stores.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            (
                m.unwrap_or_else(|| stores.mongo_uri.clone()),
                v.unwrap_or_else(|| stores.valkey_url.clone()),
            )
        }
    };
    let suffix = prexor_testkit::unique_suffix();
    let servers = Servers {
        mongo_uri,
        valkey_url,
        database: format!("bench_{suffix}"),
        namespace: format!("prexorbench:{suffix}:"),
    };
    let n = cli.iterations.max(20);
    let server_name = match (&stores, std::env::var("MONGODB_URI")) {
        (_, Ok(uri)) if !uri.is_empty() => "external (MONGODB_URI)".to_owned(),
        (Ok(_), _) => prexor_testkit::mongo_server_binary()
            .map(|(name, _)| name.to_owned())
            .unwrap_or_else(|_| "unknown".into()),
        (Err(_), _) => "unknown".into(),
    };
    let result = match cli.command {
        Command::All { runs, out, json } => {
            all::run(&servers, runs.max(1), &out, &json, &server_name).await
        }
        Command::Failover { rounds } => {
            let mut outcome = scheduler::failover(&servers, rounds.max(1)).await;
            if outcome.is_ok() {
                outcome = gateway::run(&servers, 20, rounds.max(1)).await;
            }
            if outcome.is_ok() {
                outcome = reports::conflict(&servers, 2, std::time::Duration::from_secs(30)).await;
            }
            outcome
        }
        Command::Reports { rounds, freeze } => {
            reports::conflict(&servers, rounds.max(1), freeze).await
        }
        Command::Stack => stack::run(&servers, n).await.map(|_| ()),
        Command::Coord => coord::run(&servers, n).await,
        Command::Placement => placement::run(n),
        Command::WarmPool { rounds, megabytes } => {
            warm::run(&servers, rounds.max(1), megabytes.max(1)).await
        }
        Command::Api => api::run(&servers, n).await,
        Command::Reads => reads::run(&servers).await,
        Command::Uploads { megabytes } => uploads::run(&servers, megabytes.max(1)).await,
        Command::Ca => ca::run(&servers, n).await,
        Command::Gateway { kills } => gateway::run(&servers, n, kills.max(1)).await,
        Command::Startup {
            one_group,
            groups,
            per_group,
        } => {
            let mut outcome = Ok(());
            if one_group > 0 {
                outcome = startup::startup(&servers, 1, one_group).await;
            }
            if outcome.is_ok() && groups > 0 && per_group > 0 {
                outcome = startup::startup(&servers, groups, per_group).await;
            }
            outcome
        }
        Command::Scheduler {
            groups,
            ticks,
            placement_groups,
            placement_per_group,
            failovers,
        } => {
            let mut outcome = scheduler::run(&servers, &groups, ticks.max(3)).await;
            if outcome.is_ok() && placement_groups > 0 {
                outcome =
                    scheduler::placements(&servers, placement_groups, placement_per_group.max(1))
                        .await;
            }
            if outcome.is_ok() && failovers > 0 {
                outcome = scheduler::failover(&servers, failovers).await;
            }
            outcome
        }
    };
    cleanup(&servers).await;
    result
}

/// Drops the benchmark's database and keys.
async fn cleanup(servers: &Servers) {
    if let Ok(client) = mongodb::Client::with_uri_str(&servers.mongo_uri).await {
        // Its own database and those of `Servers::fresh` (named after it).
        let names = client.list_database_names().await.unwrap_or_default();
        for name in names
            .iter()
            .filter(|n| n.starts_with(servers.database.as_str()))
        {
            let _ = client.database(name).drop().await;
        }
    }
    if let Ok(client) = redis::Client::open(servers.valkey_url.as_str())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", servers.namespace))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> =
                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}
