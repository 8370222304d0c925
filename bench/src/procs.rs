//! Real PrexorCloud processes for benchmarks: started next to the `prexor-bench` binary, against
//! the benchmark's stores, killed when dropped (or when the benchmark dies).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Servers;

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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Proc {
    child: std::process::Child,
    pub name: String,
    pub http: u16,
    pub grpc: u16,
    /// For a gateway: its daemon port.
    pub daemon_port: Option<u16>,
    config: PathBuf,
    binary: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// A bootstrapped CA, two gateways and a daemon for one node enrolled through them, all ready.
pub struct NodeFleet {
    /// Kept running (and stopped) with the fleet.
    _ca: Proc,
    pub gateways: [Proc; 2],
    pub daemon: Proc,
    /// The daemon's process journal: the servers it started outlive it, so dropping the fleet
    /// kills those still running.
    journal: PathBuf,
}

impl Drop for NodeFleet {
    fn drop(&mut self) {
        let Ok(text) = std::fs::read_to_string(&self.journal) else {
            return;
        };
        let mut live = std::collections::BTreeSet::new();
        for entry in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let Some(pid) = entry["pid"].as_u64() else {
                continue;
            };
            if entry["event"] == "launch" {
                live.insert(pid as u32);
            } else {
                live.remove(&(pid as u32));
            }
        }
        for pid in live {
            prexor_testkit::signal(pid, libc::SIGKILL);
        }
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
        let ca = Proc::service(
            servers,
            dir,
            "ca",
            "ca-bench",
            &format!("[ca]\ndataDir = \"{}\"\n", dir.join("ca").display()),
            &["--bootstrap"],
        )
        .await?;
        let mut gateways = [
            Proc::spawn_service_with_env(
                servers,
                dir,
                "gateway",
                "gateway-a",
                "",
                &[],
                gateway_env,
            )?,
            Proc::spawn_service_with_env(
                servers,
                dir,
                "gateway",
                "gateway-b",
                "",
                &[],
                gateway_env,
            )?,
        ];
        for gateway in &mut gateways {
            gateway.wait_ready().await?;
        }
        let published = prexor_pki::records::published_ca(&store)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no cluster CA"))?;
        let (token, _) = prexor_pki::records::create_join_token(
            &store,
            node,
            &published.certificate,
            Duration::from_secs(600),
            "prexor-bench",
        )
        .await?;
        let ports: Vec<u16> = gateways.iter().filter_map(|g| g.daemon_port).collect();
        let daemon = Proc::daemon(dir, node, &ports, &token.to_string()).await?;
        Ok(NodeFleet {
            _ca: ca,
            gateways,
            daemon,
            journal: dir.join(node).join("processes.log"),
        })
    }
}

/// The value of one series (`name{labels}`) on a `/metrics` page.
pub fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The path of a workspace binary next to this one.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build the binaries (cargo build --release --workspace --bins) first",
        path.display()
    );
    Ok(path)
}

fn common_toml(servers: &Servers, id: &str, http: u16, grpc: u16) -> String {
    format!(
        "[runtime]\nprofile = \"production\"\n[replica]\nid = \"{id}\"\nadvertiseHost = \"127.0.0.1\"\n[mongo]\nuri = \"{}\"\ndatabase = \"{}\"\n[valkey]\nuri = \"{}\"\nnamespace = \"{}\"\n[scheduler]\nevaluationIntervalSeconds = 1\n[http]\nlisten = \"127.0.0.1:{http}\"\n[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n",
        servers.mongo_uri, servers.database, servers.valkey_url, servers.namespace
    )
}

impl Proc {
    /// Resident memory of the process (VmRSS), in MiB.
    pub fn rss_mib(&self) -> anyhow::Result<f64> {
        self.memory_mib("VmRSS")
    }

    /// The most resident memory the process has had so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> anyhow::Result<f64> {
        self.memory_mib("VmHWM")
    }

    fn memory_mib(&self, field: &str) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {field} for {}", self.name))?;
        Ok(kib / 1024.0)
    }

    /// Prints this process's resident memory as metric `name`.
    pub fn print_rss(&self, name: &str, note: &str) -> anyhow::Result<()> {
        crate::report::Metric {
            name: name.to_owned(),
            value: self.rss_mib()?,
            unit: "MiB",
            baseline: None,
            target: Some(note.to_owned()),
        }
        .print();
        Ok(())
    }

    /// Starts `prexor-<kind>` as replica `id`, `extra` appended to its configuration, and waits
    /// until it is ready.
    pub async fn service(
        servers: &Servers,
        dir: &Path,
        kind: &str,
        id: &str,
        extra: &str,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        let mut proc = Proc::spawn_service(servers, dir, kind, id, extra, args)?;
        proc.wait_ready().await?;
        Ok(proc)
    }

    /// [`Proc::service`] without waiting for readiness.
    pub fn spawn_service(
        servers: &Servers,
        dir: &Path,
        kind: &str,
        id: &str,
        extra: &str,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        Proc::spawn_service_with_env(servers, dir, kind, id, extra, args, &[])
    }

    /// [`Proc::spawn_service`] with extra environment variables (e.g. failpoints).
    pub fn spawn_service_with_env(
        servers: &Servers,
        dir: &Path,
        kind: &str,
        id: &str,
        extra: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let (http, grpc) = (prexor_testkit::free_port(), prexor_testkit::free_port());
        let mut toml = common_toml(servers, id, http, grpc);
        if kind == "api" {
            // The api has no internal gRPC port; plain HTTP on loopback.
            toml = toml.replace(&format!("[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n"), "");
            toml.push_str("[api]\ntls = \"off\"\n");
        }
        let mut daemon_port = None;
        if kind == "gateway" {
            let port = prexor_testkit::free_port();
            toml.push_str(&format!("[gateway]\ndaemonListen = \"127.0.0.1:{port}\"\n"));
            daemon_port = Some(port);
        }
        toml.push_str(extra);
        let config = dir.join(format!("{id}.toml"));
        std::fs::write(&config, toml)?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Proc {
            child: spawn(&binary(&format!("prexor-{kind}"))?, &config, args, &env)?,
            name: id.to_string(),
            http,
            grpc,
            daemon_port,
            config,
            binary: binary(&format!("prexor-{kind}"))?,
            args: args.iter().map(|a| a.to_string()).collect(),
            env,
        })
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Starts a daemon for `node` (enrolling with `token`) and waits until it is ready.
    pub async fn daemon(
        dir: &Path,
        node: &str,
        gateways: &[u16],
        token: &str,
    ) -> anyhow::Result<Proc> {
        let http = prexor_testkit::free_port();
        let gateways: Vec<String> = gateways
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let config = dir.join(format!("{node}.toml"));
        std::fs::write(
            &config,
            format!(
                "[node]\nid = \"{node}\"\n[daemon]\ndataDir = \"{}\"\ngateways = [{}]\njoinToken = \"{token}\"\nreconnectMaxBackoff = \"1s\"\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
                dir.join(node).display(),
                gateways.join(", ")
            ),
        )?;
        let binary = binary("prexor-daemon")?;
        let mut proc = Proc {
            child: spawn(&binary, &config, &[], &[])?,
            name: node.to_string(),
            http,
            grpc: 0,
            daemon_port: None,
            config,
            binary,
            args: Vec::new(),
            env: Vec::new(),
        };
        proc.wait_ready().await?;
        Ok(proc)
    }

    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/readyz", self.http);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("{} exited ({status}) before it was ready", self.name);
            }
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not become ready",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The lease scopes the replica holds (`GET /status`).
    pub async fn leases_held(&self) -> anyhow::Result<Vec<String>> {
        let url = format!("http://127.0.0.1:{}/status", self.http);
        let status: serde_json::Value = reqwest::get(&url).await?.json().await?;
        Ok(status["leasesHeld"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{url} without leasesHeld"))?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: libc::c_int) {
        prexor_testkit::signal(self.child.id(), signal);
    }

    /// The process's `/metrics` page.
    pub async fn metrics_page(&self) -> anyhow::Result<String> {
        Ok(
            reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http))
                .await?
                .text()
                .await?,
        )
    }

    /// The value of one series on the process's `/metrics`; 0 when it is not exported (yet).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(metric(&self.metrics_page().await?, series).unwrap_or(0.0))
    }

    /// SIGTERM, then waits for the exit (a graceful stop).
    pub fn terminate(&mut self) {
        prexor_testkit::signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same process again (same configuration and ports) and waits until ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = spawn(&self.binary, &self.config, &args, &self.env)?;
        self.wait_ready().await
    }
}

fn spawn(
    binary: &Path,
    config: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> anyhow::Result<std::process::Child> {
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(prexor_testkit::spawn_tied(cmd)?)
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
