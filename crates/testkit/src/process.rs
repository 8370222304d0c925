//! The project's own binaries as processes, for the acceptance suite and the benchmarks: a
//! [`Launch`] writes a process's configuration and starts `<binary> --config <file>`; the
//! [`Process`] it gives waits on `/readyz`, reads `/status` and `/metrics`, signals, stops,
//! restarts, and is killed when dropped (or when the test process dies).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{free_port, metric, signal, spawn_tied};

/// The directory of the workspace's binaries (`target/<profile>/`): the running executable's
/// own, or its parent for a test executable in `target/<profile>/deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe
        .parent()
        .expect("an executable lives in a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// The path of a workspace binary, or an error telling how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins, with --release for benchmarks), or run compose/dev test",
            path.display()
        );
    }
    Ok(path)
}

/// One HTTP client for every probe of a process's own port.
fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            // No connection reuse: a process restarted on the same port must not be asked
            // through a connection to the one before it.
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client")
        })
        .clone()
}

/// How to start one process: `<binary> --config <dir>/<name>.toml [args]`, with `env`, its
/// output in a log file or discarded.
#[derive(Debug, Clone)]
pub struct Launch {
    name: String,
    binary: PathBuf,
    config: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: String,
    log: Option<PathBuf>,
    http_port: u16,
    grpc_port: Option<u16>,
    daemon_port: Option<u16>,
}

impl Launch {
    /// Writes `toml` to `<dir>/<name>.toml` for workspace binary `binary_name`, whose HTTP port
    /// (`/readyz`, `/status`, `/metrics`) is `http_port`. Output is discarded and `RUST_LOG` is
    /// `warn` unless set otherwise.
    pub fn new(
        binary_name: &str,
        name: &str,
        dir: &Path,
        toml: &str,
        http_port: u16,
    ) -> anyhow::Result<Launch> {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        Ok(Launch {
            name: name.to_owned(),
            binary: binary(binary_name)?,
            config,
            args: Vec::new(),
            env: Vec::new(),
            rust_log: "warn".to_owned(),
            log: None,
            http_port,
            grpc_port: None,
            daemon_port: None,
        })
    }

    /// Runs the program at `path` instead of the workspace binary (e.g. a copy of it, to
    /// replace it as an upgrade would).
    pub fn binary_path(mut self, path: &Path) -> Launch {
        self.binary = path.to_path_buf();
        self
    }

    /// A control-plane replica (`kind`: api, gateway, scheduler or ca) named `name`: `base`
    /// (its stores, replica id, ...), then ephemeral listen addresses — HTTP; internal gRPC
    /// unless it is the api; a gateway's daemon port unless `extra` has a `[gateway]` table; plain
    /// HTTP for the api unless its TLS is configured — then `extra`.
    pub fn replica(
        kind: &str,
        name: &str,
        dir: &Path,
        base: &str,
        extra: &str,
    ) -> anyhow::Result<Launch> {
        let http = free_port();
        let grpc = (kind != "api").then(free_port);
        let mut toml = base.to_owned();
        toml.push_str(&format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"));
        if let Some(grpc) = grpc {
            toml.push_str(&format!("[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n"));
        }
        let mut daemon_port = None;
        if kind == "gateway" && !extra.contains("[gateway]") {
            let port = free_port();
            toml.push_str(&format!("[gateway]\ndaemonListen = \"127.0.0.1:{port}\"\n"));
            daemon_port = Some(port);
        }
        if kind == "api" && !toml.contains("[api]") && !extra.contains("[api]") {
            toml.push_str("[api]\ntls = \"off\"\n");
        }
        toml.push_str(extra);
        let mut launch = Launch::new(&format!("prexor-{kind}"), name, dir, &toml, http)?;
        launch.grpc_port = grpc;
        launch.daemon_port = daemon_port;
        Ok(launch)
    }

    /// Its internal gRPC port.
    pub fn grpc_port(mut self, port: Option<u16>) -> Launch {
        self.grpc_port = port;
        self
    }

    /// Arguments after `--config FILE` (e.g. `--bootstrap`).
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Environment variables (set after `RUST_LOG`, so they may override it).
    pub fn env<K: ToString, V: ToString>(
        mut self,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        self.env = env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self
    }

    /// Adds environment variables to those set so far (after them, so they win).
    pub fn extra_env<K: ToString, V: ToString>(
        mut self,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Launch {
        self.env
            .extend(env.into_iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    pub fn rust_log(mut self, filter: &str) -> Launch {
        self.rust_log = filter.to_owned();
        self
    }

    /// Sends stdout and stderr to `file` (truncated at every start).
    pub fn log_to(mut self, file: PathBuf) -> Launch {
        self.log = Some(file);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn log(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    fn spawn(&self) -> anyhow::Result<Child> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .env_remove("PREXOR_CONFIG")
            .env("RUST_LOG", &self.rust_log)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        match &self.log {
            Some(log) => {
                let out = std::fs::File::create(log)
                    .with_context(|| format!("creating {}", log.display()))?;
                cmd.stdout(out.try_clone()?).stderr(out);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        spawn_tied(cmd).with_context(|| format!("starting {}", self.binary.display()))
    }

    /// Starts the process (without waiting for it to be ready).
    pub fn start(self) -> anyhow::Result<Process> {
        let child = self.spawn()?;
        Ok(Process {
            name: self.name.clone(),
            http: format!("http://127.0.0.1:{}", self.http_port),
            grpc: self.grpc_port.map(|p| format!("127.0.0.1:{p}")),
            daemon_port: self.daemon_port.map(|p| format!("127.0.0.1:{p}")),
            child,
            exited: None,
            launch: self,
        })
    }
}

/// One running process of the system under test; killed when dropped.
pub struct Process {
    pub name: String,
    /// `http://127.0.0.1:<http port>` (`/healthz`, `/readyz`, `/metrics`, REST on the api).
    pub http: String,
    /// `127.0.0.1:<grpc port>` of a service with an internal gRPC port (mTLS).
    pub grpc: Option<String>,
    /// `127.0.0.1:<port>` of a gateway's daemon port (TLS).
    pub daemon_port: Option<String>,
    child: Child,
    exited: Option<ExitStatus>,
    launch: Launch,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration file it was started with.
    pub fn config(&self) -> &Path {
        self.launch.config()
    }

    pub fn signal(&self, sig: libc::c_int) {
        signal(self.child.id(), sig);
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Its output so far (empty when it is discarded).
    pub fn log_text(&self) -> String {
        self.launch
            .log()
            .and_then(|log| std::fs::read_to_string(log).ok())
            .unwrap_or_default()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited {
                return Ok(status);
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM, then requires a clean exit (code 0) within `within`; the log is in the error.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        self.sigterm();
        let status = self.wait_exit(within).await?;
        if !status.success() {
            bail!(
                "{} exited with {status} after SIGTERM:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
    }

    /// Kills the process and starts it again (same configuration, ports and environment), then
    /// waits until it is ready.
    pub async fn restart(&mut self, within: Duration) -> anyhow::Result<()> {
        self.kill();
        self.child = self.launch.spawn()?;
        self.exited = None;
        self.wait_ready(within).await
    }

    /// GET on the process's HTTP port; status and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let response = http().get(format!("{}{path}", self.http)).send().await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// Waits until `/readyz` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                bail!(
                    "{} exited ({status}) before becoming ready:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            match self.get("/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) => last = body,
                Err(err) => last = err.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {within:?}; last answer: {last}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The lease scopes this replica holds (`GET /status`).
    pub async fn leases_held(&self) -> anyhow::Result<Vec<String>> {
        let (status, body) = self.get("/status").await?;
        ensure!(
            status == 200,
            "{}: /status answered {status}: {body}",
            self.name
        );
        let body: serde_json::Value = serde_json::from_str(&body)?;
        Ok(body["leasesHeld"]
            .as_array()
            .context("/status without leasesHeld")?
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect())
    }

    /// The process's `/metrics` page.
    pub async fn metrics_page(&self) -> anyhow::Result<String> {
        let (status, page) = self.get("/metrics").await?;
        ensure!(status == 200, "{}: /metrics answered {status}", self.name);
        Ok(page)
    }

    /// The value of one series on the process's `/metrics` (e.g.
    /// `prexor_fenced_writes_total{result="stale"}`, see [`metric`]); 0 when it is not exported
    /// (yet).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        Ok(metric(&self.metrics_page().await?, series).unwrap_or(0.0))
    }

    /// Resident memory (VmRSS), in MiB.
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
            .with_context(|| format!("no {field} for {}", self.name))?;
        Ok(kib / 1024.0)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
