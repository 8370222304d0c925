//! Real PrexorCloud processes for benchmarks, launched by `prexor-testkit` (as the acceptance
//! suite launches them): started next to the `prexor-bench` binary against the benchmark's
//! stores, their output discarded, killed when dropped (or when the benchmark dies).

use std::path::{Path, PathBuf};
use std::time::Duration;

use prexor_testkit::Launch;
pub use prexor_testkit::{Process as Proc, binary, metric};

use crate::Servers;

/// How long a process may take to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "prexor-bench-{what}-{}",
            prexor_testkit::unique_suffix()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        prexor_testkit::reap::kill_under(&self.0);
        // BENCH_KEEP_SCRATCH=1 keeps the processes' logs and data for a look afterwards.
        if std::env::var_os("BENCH_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A bootstrapped CA, two gateways and a daemon for one node enrolled through them, all ready.
pub struct NodeFleet {
    /// Kept running (and stopped) with the fleet.
    _ca: Proc,
    pub gateways: [Proc; 2],
    pub daemon: Proc,
    /// The fleet's directory: the daemon's shims and servers outlive it by design, so dropping
    /// the fleet ends every process working there.
    dir: PathBuf,
}

impl Drop for NodeFleet {
    fn drop(&mut self) {
        prexor_testkit::reap::kill_under(&self.dir);
    }
}

impl NodeFleet {
    /// Replicas `ca-bench`, `gateway-a` and `gateway-b` (with `gateway_env`), and the daemon of
    /// `node`.
    pub async fn start(
        servers: &Servers,
        dir: &Path,
        node: &str,
        gateway_env: &[(&str, &str)],
    ) -> anyhow::Result<NodeFleet> {
        let store = servers.store().await?;
        let ca_data = format!("[ca]\ndataDir = \"{}\"\n", dir.join("ca").display());
        let ca = ready(replica(servers, dir, "ca", "ca-bench", &ca_data)?.args(&["--bootstrap"]))
            .await?;
        let gateway = |id: &str| {
            replica(servers, dir, "gateway", id, "")?
                .env(gateway_env.iter().copied())
                .start()
        };
        let mut gateways = [gateway("gateway-a")?, gateway("gateway-b")?];
        for gateway in &mut gateways {
            gateway.wait_ready(READY_WITHIN).await?;
        }
        let published = prexor_model::pki::published_ca(&store)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no cluster CA"))?;
        let (token, _) = prexor_model::pki::create_join_token(
            &store,
            node,
            &published.certificate,
            Duration::from_secs(600),
            "prexor-bench",
        )
        .await?;
        let ports: Vec<String> = gateways
            .iter()
            .filter_map(|g| g.daemon_port.clone())
            .collect();
        let daemon = daemon(dir, node, &ports, &token.to_string()).await?;
        Ok(NodeFleet {
            _ca: ca,
            gateways,
            daemon,
            dir: dir.to_path_buf(),
        })
    }
}

/// What every replica of the benchmark shares: production profile, its stores, a 1 s
/// evaluation interval.
fn common_toml(servers: &Servers, id: &str) -> String {
    format!(
        "[runtime]\nprofile = \"production\"\n[replica]\nid = \"{id}\"\nadvertiseHost = \"127.0.0.1\"\n[mongo]\nuri = \"{}\"\ndatabase = \"{}\"\n[valkey]\nuri = \"{}\"\nnamespace = \"{}\"\n[scheduler]\nevaluationIntervalSeconds = 1\n",
        servers.mongo_uri, servers.database, servers.valkey_url, servers.namespace
    )
}

/// `prexor-<kind>` as replica `id` of the benchmark's cluster, `extra` appended to its
/// configuration (`.args(…)`, `.env(…)` to add to it).
pub fn replica(
    servers: &Servers,
    dir: &Path,
    kind: &str,
    id: &str,
    extra: &str,
) -> anyhow::Result<Launch> {
    Launch::replica(kind, id, dir, &common_toml(servers, id), extra)
}

/// Starts `launch` and waits until it is ready.
pub async fn ready(launch: Launch) -> anyhow::Result<Proc> {
    let mut proc = launch.start()?;
    proc.wait_ready(READY_WITHIN).await?;
    Ok(proc)
}

/// Starts a daemon for `node` (enrolling with `token`, dialing the daemon ports `gateways`) and
/// waits until it is ready.
pub async fn daemon(
    dir: &Path,
    node: &str,
    gateways: &[String],
    token: &str,
) -> anyhow::Result<Proc> {
    let http = prexor_testkit::free_port();
    let gateways: Vec<String> = gateways.iter().map(|g| format!("\"{g}\"")).collect();
    let toml = format!(
        "[node]\nid = \"{node}\"\n# Room for a thousand fake servers of 64 MiB (they use a few MiB each).\nmemoryMb = 131072\n[daemon]\ndataDir = \"{}\"\ngateways = [{}]\njoinToken = \"{token}\"\nreconnectMaxBackoff = \"1s\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
        dir.join(node).display(),
        gateways.join(", ")
    );
    ready(Launch::new("prexor-daemon", node, dir, &toml, http)?).await
}

/// Prints `proc`'s resident memory as metric `name`.
pub fn print_rss(proc: &Proc, name: &str, note: &str) -> anyhow::Result<()> {
    crate::report::Metric {
        name: name.to_owned(),
        value: proc.rss_mib()?,
        unit: "MiB",
        baseline: None,
        target: Some(note.to_owned()),
    }
    .print();
    Ok(())
}
