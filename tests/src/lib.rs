//! Harness for the multi-process acceptance suite: starts the real PrexorCloud binaries against
//! real backing servers, waits on their readiness endpoints, signals them, and prints every
//! process's log when a test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
pub use prexor_testkit::{TestStores, free_port};

pub mod fault;

/// `target/<profile>/`, where `cargo build --workspace --bins` put the binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps")
        .to_path_buf()
}

/// The path of a workspace binary, or an error telling how to build it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build the binaries first (cargo build --workspace --bins), or run compose/dev test",
            path.display()
        );
    }
    Ok(path)
}

/// One running process of the system under test.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    /// `http://127.0.0.1:<http port>` (`/healthz`, `/readyz`, `/metrics`, REST on the api).
    pub http: String,
    /// `127.0.0.1:<grpc port>` for services with an internal gRPC port (mTLS; reach it with
    /// [`Cluster::internal_channel`]).
    pub grpc: Option<String>,
    /// `127.0.0.1:<port>` of a gateway's daemon port (TLS).
    pub daemon_port: Option<String>,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        prexor_testkit::signal(self.child.id(), sig);
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
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

    /// The lease scopes this replica holds (`GET /status` on its HTTP port).
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

    /// The value of one series on the process's `/metrics` (e.g.
    /// `prexor_fenced_writes_total{result="stale"}`); 0 when it is not exported (yet).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (status, page) = self.get("/metrics").await?;
        ensure!(status == 200, "{}: /metrics answered {status}", self.name);
        Ok(page
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// An authenticated REST client for this api replica.
    pub fn rest(&self, token: &str) -> Rest {
        Rest {
            base: format!("{}/api/v1", self.http),
            token: token.to_owned(),
        }
    }

    /// Signs in on this api replica; the session token.
    pub async fn login(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let (status, body) = Rest {
            base: format!("{}/api/v1", self.http),
            token: String::new(),
        }
        .call(
            reqwest::Method::POST,
            "/auth/login",
            Some(serde_json::json!({ "username": user, "password": password })),
        )
        .await?;
        ensure!(status == 200, "login as {user} answered {status}: {body}");
        Ok(body["token"].as_str().context("no token")?.to_owned())
    }

    /// GET on the process's HTTP port; returns status and body.
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() && self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn http() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            // No connection reuse: a server that refuses a request early (413) closes the
            // connection, and a pooled client would send the next request into it.
            reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client")
        })
        .clone()
}

/// Which of `procs` holds the lease `scope` now (from their gRPC status).
pub async fn holder_of(procs: &[Proc], scope: &str) -> anyhow::Result<Option<usize>> {
    for (i, proc) in procs.iter().enumerate() {
        if proc.leases_held().await?.iter().any(|s| s == scope) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// JSON over HTTP to one api replica with a bearer token.
#[derive(Clone)]
pub struct Rest {
    pub base: String,
    pub token: String,
}

impl Rest {
    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> reqwest::RequestBuilder {
        let mut request = http().request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
    }

    /// The status of a request, without reading its body (which may be a stream that never
    /// ends).
    pub async fn status_of(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<u16> {
        let response = self.request(method, path, body).send().await?;
        Ok(response.status().as_u16())
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self.request(method, path, body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Ok((status, value))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// PUTs raw bytes (e.g. a template layer).
    pub async fn put_bytes(
        &self,
        path: &str,
        bytes: Vec<u8>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = http()
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/gzip")
            .body(bytes)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        ))
    }

    /// GETs raw bytes.
    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let response = http()
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        Ok((response.status().as_u16(), response.bytes().await?.to_vec()))
    }

    /// Opens an SSE stream (`GET` with `Accept: text/event-stream`).
    pub async fn sse(&self, path: &str, last_event_id: Option<&str>) -> anyhow::Result<Sse> {
        let mut request = http()
            .get(format!("{}{path}", self.base))
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(600));
        if !self.token.is_empty() {
            request = request.bearer_auth(&self.token);
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        ensure!(
            response.status().is_success(),
            "SSE {path} answered {}",
            response.status()
        );
        Ok(Sse {
            response,
            buffer: String::new(),
        })
    }
}

/// A server-sent event stream being read.
pub struct Sse {
    response: reqwest::Response,
    buffer: String,
}

/// One server-sent event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl Sse {
    /// The next event (comments and keep-alives skipped), waiting at most `within`.
    pub async fn next(&mut self, within: Duration) -> anyhow::Result<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = v.trim_start().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if event.data.is_empty() && event.event.is_empty() {
                    continue;
                }
                return Ok(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(!left.is_zero(), "no event within {within:?}");
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(Ok(None)) => bail!("the event stream ended"),
                Ok(Err(err)) => bail!("the event stream failed: {err}"),
                Err(_) => bail!("no event within {within:?}"),
            }
        }
    }

    /// Skips events until one of type `kind` about `subject` arrives.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        subject: &str,
        within: Duration,
    ) -> anyhow::Result<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.next(left).await?;
            if event.event == kind {
                let data: serde_json::Value = serde_json::from_str(&event.data)?;
                if data["subject"] == subject {
                    return Ok(event);
                }
            }
        }
    }
}

/// The processes of one test, sharing its stores. Prints every log if the test panics.
pub struct Cluster {
    pub stores: TestStores,
    pub dir: PathBuf,
    procs: Mutex<Vec<(String, PathBuf)>>,
    internal: tokio::sync::OnceCell<prexor_pki::internal::InternalTls>,
}

impl Cluster {
    pub fn new(test: &str) -> anyhow::Result<Cluster> {
        let stores = TestStores::new(test)?;
        let dir = prexor_testkit::workspace_root()
            .join(".svc/acceptance")
            .join(&stores.database);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Cluster {
            stores,
            dir,
            procs: Mutex::new(Vec::new()),
            internal: tokio::sync::OnceCell::new(),
        })
    }

    /// Internal mTLS for the test itself: a service certificate (api replica
    /// `acceptance-client`) obtained the way a replica gets its first one — the cluster's service
    /// enrolment secret, presented to a running CA replica. Waits up to a minute for one.
    pub async fn internal(&self) -> anyhow::Result<&prexor_pki::internal::InternalTls> {
        self.internal
            .get_or_try_init(|| async {
                let store = self.store().await?;
                let backend = prexor_coord::ValkeyBackend::connect(
                    &self.stores.valkey_url,
                    Duration::from_secs(2),
                )?;
                let registry = prexor_coord::Registry::Valkey {
                    backend,
                    namespace: self.stores.namespace.clone(),
                    ttl: Duration::from_secs(15),
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match prexor_pki::internal::InternalTls::enrol(
                        &store,
                        registry.clone(),
                        "api",
                        "acceptance-client",
                    )
                    .await
                    {
                        Ok(internal) => return Ok(internal),
                        Err(err) if Instant::now() > deadline => {
                            bail!("no internal certificate for the test: {err}")
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
            .await
    }

    /// A channel to `proc`'s internal gRPC port, presenting the test's service certificate.
    pub async fn internal_channel(&self, proc: &Proc) -> anyhow::Result<tonic::transport::Channel> {
        let address = proc.grpc.as_deref().context("no internal gRPC port")?;
        self.internal()
            .await?
            .peers
            .get(address)
            .map_err(anyhow::Error::msg)
    }

    /// The configuration every control-plane replica of this test shares (production profile,
    /// this test's database and namespace, a 1 s evaluation interval).
    pub fn common_toml(&self, replica_id: &str) -> String {
        format!(
            r#"
[runtime]
profile = "production"
[replica]
id = "{replica_id}"
advertiseHost = "127.0.0.1"
[mongo]
uri = "{mongo}"
database = "{db}"
[valkey]
uri = "{valkey}"
namespace = "{ns}"
[scheduler]
evaluationIntervalSeconds = 1
[coordination]
fenceLog = true
[shutdown]
timeout = "10s"
"#,
            mongo = self.stores.mongo_uri,
            db = self.stores.database,
            valkey = self.stores.valkey_url,
            ns = self.stores.namespace,
        )
    }

    /// Starts a control-plane replica (`kind`: api, gateway, scheduler or ca) with ephemeral
    /// ports; `extra` is appended to its configuration.
    pub fn service(&self, kind: &str, replica_id: &str, extra: &str) -> anyhow::Result<Proc> {
        self.service_from(kind, replica_id, &self.common_toml(replica_id), extra)
    }

    /// Like [`Cluster::service`], from another base configuration than [`Cluster::common_toml`].
    pub fn service_from(
        &self,
        kind: &str,
        replica_id: &str,
        base: &str,
        extra: &str,
    ) -> anyhow::Result<Proc> {
        self.service_with_args(kind, replica_id, base, extra, &[])
    }

    /// Like [`Cluster::service_from`], with extra command-line arguments (e.g. `--bootstrap`).
    /// A gateway gets a free daemon port unless `extra` has a `[gateway]` table.
    pub fn service_with_args(
        &self,
        kind: &str,
        replica_id: &str,
        base: &str,
        extra: &str,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        self.start_service(kind, replica_id, base, extra, args, &BTreeMap::new())
    }

    /// Like [`Cluster::service`], with extra environment variables (e.g. `PREXORCLOUD_FAILPOINTS`).
    pub fn service_with_env(
        &self,
        kind: &str,
        replica_id: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        self.service_with_extra_and_env(kind, replica_id, "", env)
    }

    /// Like [`Cluster::service`] (with `extra` configuration), with extra environment variables.
    pub fn service_with_extra_and_env(
        &self,
        kind: &str,
        replica_id: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let base = self.common_toml(replica_id);
        self.start_service(kind, replica_id, &base, extra, &[], &env)
    }

    fn start_service(
        &self,
        kind: &str,
        replica_id: &str,
        base: &str,
        extra: &str,
        args: &[&str],
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<Proc> {
        let http = free_port();
        let grpc = (kind != "api").then(free_port);
        let mut toml = base.to_owned();
        toml.push_str(&format!("[http]\nlisten = \"127.0.0.1:{http}\"\n"));
        if let Some(grpc) = grpc {
            toml.push_str(&format!("[grpc]\nlisten = \"127.0.0.1:{grpc}\"\n"));
        }
        let mut daemon_port = None;
        if kind == "gateway" && !extra.contains("[gateway]") {
            let port = format!("127.0.0.1:{}", free_port());
            toml.push_str(&format!("[gateway]\ndaemonListen = \"{port}\"\n"));
            daemon_port = Some(port);
        }
        // Plain HTTP for the api unless the test configures its TLS (tests/tests/tls.rs).
        if kind == "api" && !toml.contains("[api]") && !extra.contains("[api]") {
            toml.push_str("[api]\ntls = \"off\"\n");
        }
        toml.push_str(extra);
        let mut proc = self.spawn(
            &format!("prexor-{kind}"),
            replica_id,
            &toml,
            http,
            grpc,
            env,
            args,
        )?;
        proc.daemon_port = daemon_port;
        Ok(proc)
    }

    /// Starts any binary with the given TOML configuration and extra command-line arguments
    /// after `--config FILE`.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        &self,
        binary_name: &str,
        name: &str,
        toml: &str,
        http_port: u16,
        grpc_port: Option<u16>,
        env: &BTreeMap<String, String>,
        args: &[&str],
    ) -> anyhow::Result<Proc> {
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml)?;
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(binary(binary_name)?)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("PREXOR_CONFIG")
            .envs(env)
            .env("RUST_LOG", "info,prexor_coord=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {binary_name}"))?;
        self.procs
            .lock()
            .expect("procs lock")
            .push((name.to_owned(), log.clone()));
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            http: format!("http://127.0.0.1:{http_port}"),
            grpc: grpc_port.map(|p| format!("127.0.0.1:{p}")),
            daemon_port: None,
            exited: None,
        })
    }
}

impl Cluster {
    /// Creates the cluster's first admin (`prexor-api bootstrap-admin`); its password.
    pub fn bootstrap_admin(&self, user: &str) -> anyhow::Result<String> {
        let config = self.dir.join("bootstrap-admin.toml");
        std::fs::write(&config, self.common_toml("bootstrap"))?;
        let file = self.dir.join(format!("{user}.password"));
        let output = Command::new(binary("prexor-api")?)
            .arg("--config")
            .arg(&config)
            .args(["bootstrap-admin", "--username", user, "--password-file"])
            .arg(&file)
            .env_remove("PREXOR_CONFIG")
            .output()?;
        ensure!(
            output.status.success(),
            "bootstrap-admin failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(std::fs::read_to_string(&file)?)
    }

    /// `[ca] dataDir` for a CA replica whose data lives in `<test dir>/<name>`.
    pub fn ca_extra(&self, name: &str) -> String {
        format!("[ca]\ndataDir = \"{}\"\n", self.dir.join(name).display())
    }

    /// The cluster CA (certificate and key) from the data directory `<test dir>/<data>` of the
    /// CA replica that created it: for tests that sign certificates of their own.
    pub fn ca_from_disk(&self, data: &str) -> anyhow::Result<prexor_pki::CertificateAuthority> {
        let dir = self.dir.join(data).join("certs/ca");
        Ok(prexor_pki::CertificateAuthority::from_pem(
            &std::fs::read_to_string(dir.join("ca.crt"))?,
            &std::fs::read_to_string(dir.join("ca.key"))?,
        )?)
    }

    /// Starts a daemon for `node_id` with its data in `<test dir>/<data>`, talking to the
    /// listed daemon ports, enrolling with `join_token` if it has no certificate yet; `env`
    /// adds environment variables (`PREXOR_DAEMON__…` settings).
    pub fn daemon(
        &self,
        name: &str,
        node_id: &str,
        data: &str,
        gateways: &[&str],
        join_token: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let http = free_port();
        let gateways: Vec<String> = gateways.iter().map(|g| format!("\"{g}\"")).collect();
        let token = join_token
            .map(|t| format!("joinToken = \"{t}\"\n"))
            .unwrap_or_default();
        let toml = format!(
            "[node]\nid = \"{node_id}\"\n[node.labels]\nzone = \"test\"\n[daemon]\ndataDir = \"{}\"\ngateways = [{}]\n{token}[http]\nlisten = \"127.0.0.1:{http}\"\n",
            self.dir.join(data).display(),
            gateways.join(", "),
        );
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn("prexor-daemon", name, &toml, http, None, &env, &[])
    }

    /// A connection to this test's database.
    pub async fn store(&self) -> anyhow::Result<prexor_store::Store> {
        self.stores.store("prexor-acceptance").await
    }
}

/// Stops every process in order (SIGTERM, clean exit required).
pub async fn stop_all<'a>(
    procs: impl IntoIterator<Item = &'a mut Proc>,
    within: Duration,
) -> anyhow::Result<()> {
    for proc in procs {
        proc.stop(within).await?;
    }
    Ok(())
}

/// Waits until `/readyz` answers 503 with a body containing `needle`.
pub async fn wait_unready_because(proc: &Proc, needle: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..400 {
        match proc.get("/readyz").await {
            Ok((503, body)) if body.contains(needle) => return Ok(()),
            Ok((_, body)) => last = body,
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} never reported unready because of {needle:?}; last: {last}",
        proc.name
    )
}

/// Polls until `check` holds for the document `_id` in `collection` (90 s at most: a bound for
/// a broken test, not a timing assertion).
pub async fn wait_doc(
    cluster: &Cluster,
    collection: &str,
    id: &str,
    what: &str,
    check: impl Fn(&Document) -> bool,
) -> anyhow::Result<Document> {
    let db = cluster.stores.mongo().await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        last = db
            .collection::<Document>(collection)
            .find_one(doc! { "_id": id })
            .await?;
        if let Some(doc) = &last
            && check(doc)
        {
            return Ok(doc.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{collection}/{id} never became {what}; last: {last:?}")
}

/// The composition plan of `instance`'s current placement (`instance_plans`, same plan hash).
pub async fn plan_of(cluster: &Cluster, instance: &Document) -> anyhow::Result<Document> {
    let id = instance.get_str("_id")?;
    let db = cluster.stores.mongo().await?;
    let planned = db
        .collection::<Document>("instance_plans")
        .find_one(doc! { "_id": id, "planHash": instance.get_str("planHash")? })
        .await?
        .with_context(|| format!("no plan persisted for {id}'s current placement"))?;
    Ok(planned.get_document("plan")?.clone())
}

/// Waits until instance `id` and the plan of its current placement satisfy `check`.
pub async fn wait_plan(
    cluster: &Cluster,
    id: &str,
    what: &str,
    check: impl Fn(&Document, &Document) -> bool,
) -> anyhow::Result<(Document, Document)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = None;
    while Instant::now() < deadline {
        let instance = wait_doc(cluster, "instances", id, "present", |_| true).await?;
        if let Ok(plan) = plan_of(cluster, &instance).await {
            if check(&instance, &plan) {
                return Ok((instance, plan));
            }
            last = Some((instance, plan));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("instance {id} and its plan never became {what}; last: {last:?}")
}

/// The state a daemon reported for an instance record.
pub fn reported_state(doc: &Document) -> &str {
    doc.get_document("reported")
        .and_then(|r| r.get_str("state"))
        .unwrap_or("")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in self.procs.lock().expect("procs lock").iter() {
                eprintln!(
                    "----- log of {name} ({}) -----\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Requires a gRPC `call` to fail with `code` and a message containing `needle`.
pub fn refused_call<T: std::fmt::Debug>(
    call: Result<tonic::Response<T>, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> anyhow::Result<()> {
    match call {
        Ok(response) => bail!("expected {code:?} ({needle}), got {response:?}"),
        Err(status) => {
            ensure!(
                status.code() == code && status.message().contains(needle),
                "expected {code:?} containing {needle:?}, got {status:?}"
            );
            Ok(())
        }
    }
}

/// Asks an internal gRPC port for its grpc.health.v1 status of the whole server ("").
pub async fn grpc_health(channel: tonic::transport::Channel) -> anyhow::Result<String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(5));
    let response = HealthClient::new(channel).check(request).await?;
    Ok(response.into_inner().status().as_str_name().to_owned())
}

const FLEET_READY_WITHIN: Duration = Duration::from_secs(60);
const FLEET_EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Waits until instances `ids` are RUNNING (scheduler state and report); returns their docs.
pub async fn running(cluster: &Cluster, ids: &[&str]) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    for id in ids {
        docs.push(
            wait_doc(cluster, "instances", id, "RUNNING", |d| {
                d.get_str("state") == Ok("RUNNING") && reported_state(d) == "RUNNING"
            })
            .await?,
        );
    }
    Ok(docs)
}

/// A CA, two gateways and enrolled daemons.
pub struct Fleet {
    pub ca: Proc,
    pub gateways: Vec<Proc>,
    pub daemons: Vec<Proc>,
}

impl Fleet {
    /// Stops `scheduler`, then the daemons, gateways and CA.
    pub async fn stop_with(&mut self, scheduler: &mut Proc) -> anyhow::Result<()> {
        stop_all(
            [scheduler]
                .into_iter()
                .chain(self.daemons.iter_mut())
                .chain(&mut self.gateways)
                .chain([&mut self.ca]),
            FLEET_EXIT_WITHIN,
        )
        .await
    }
}

/// A CA, two gateways and enrolled daemons for `nodes`.
pub async fn nodes(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<Fleet> {
    nodes_with(cluster, nodes, "").await
}

/// [`nodes`] with `ca_keys` added to the CA's `[ca]` table (e.g. short certificate lifetimes).
pub async fn nodes_with(cluster: &Cluster, nodes: &[&str], ca_keys: &str) -> anyhow::Result<Fleet> {
    let mut fleet = control_with(cluster, ca_keys, &[]).await?;
    let ports = fleet.daemon_ports();
    let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
    for node in nodes {
        fleet
            .daemons
            .push(enrolled_daemon(cluster, node, &ports).await?);
    }
    Ok(fleet)
}

/// The operators' side of a test cluster: one api replica with the bootstrap admin signed in,
/// and scheduler replicas, all ready.
pub struct Operators {
    pub api: Proc,
    pub schedulers: Vec<Proc>,
    /// REST on the api as the admin.
    pub rest: Rest,
}

/// Bootstraps the admin and starts an api replica and `schedulers` scheduler replicas.
pub async fn operators(cluster: &Cluster, schedulers: usize) -> anyhow::Result<Operators> {
    operators_with(cluster, schedulers, "").await
}

/// [`operators`] with `api_extra` added to the api replica's configuration.
pub async fn operators_with(
    cluster: &Cluster,
    schedulers: usize,
    api_extra: &str,
) -> anyhow::Result<Operators> {
    let password = cluster.bootstrap_admin("admin")?;
    let mut api = cluster.service("api", "api-1", api_extra)?;
    let mut started = Vec::new();
    for i in 1..=schedulers {
        started.push(cluster.service("scheduler", &format!("scheduler-{i}"), "")?);
    }
    api.wait_ready(FLEET_READY_WITHIN).await?;
    for scheduler in &mut started {
        scheduler.wait_ready(FLEET_READY_WITHIN).await?;
    }
    let rest = api.rest(&api.login("admin", &password).await?);
    Ok(Operators {
        api,
        schedulers: started,
        rest,
    })
}

/// A CA and two gateways, ready; no daemons yet.
pub async fn control(cluster: &Cluster) -> anyhow::Result<Fleet> {
    control_with_env(cluster, &[]).await
}

/// [`control`] with extra environment variables for the gateways (e.g. failpoints).
pub async fn control_with_env(cluster: &Cluster, env: &[(&str, &str)]) -> anyhow::Result<Fleet> {
    control_with(cluster, "", env).await
}

/// A CA (with `ca_keys` added to its `[ca]` table) and two gateways (with `env`), ready.
pub async fn control_with(
    cluster: &Cluster,
    ca_keys: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<Fleet> {
    let ca_extra = format!("{}{ca_keys}", cluster.ca_extra("ca-1"));
    let mut ca = cluster.service("ca", "ca-1", &ca_extra)?;
    ca.wait_ready(FLEET_READY_WITHIN).await?;
    let mut gateways = vec![
        cluster.service_with_env("gateway", "gateway-1", env)?,
        cluster.service_with_env("gateway", "gateway-2", env)?,
    ];
    for gateway in &mut gateways {
        gateway.wait_ready(FLEET_READY_WITHIN).await?;
    }
    Ok(Fleet {
        ca,
        gateways,
        daemons: Vec::new(),
    })
}

impl Fleet {
    /// The gateways' daemon ports (`127.0.0.1:<port>`).
    pub fn daemon_ports(&self) -> Vec<String> {
        self.gateways
            .iter()
            .filter_map(|g| g.daemon_port.clone())
            .collect()
    }
}

/// A daemon for `node` (data in `<test dir>/<node>`) enrolled with a fresh join token, dialing
/// `gateways`; ready.
pub async fn enrolled_daemon(
    cluster: &Cluster,
    node: &str,
    gateways: &[&str],
) -> anyhow::Result<Proc> {
    enrolled_daemon_with_env(cluster, node, gateways, &[]).await
}

/// [`enrolled_daemon`] with extra environment variables for the daemon.
pub async fn enrolled_daemon_with_env(
    cluster: &Cluster,
    node: &str,
    gateways: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let store = cluster.store().await?;
    let ca_cert = prexor_pki::records::published_ca(&store)
        .await?
        .context("CA")?
        .certificate;
    let (token, _) = prexor_pki::records::create_join_token(
        &store,
        node,
        &ca_cert,
        Duration::from_secs(600),
        "test",
    )
    .await?;
    let mut daemon = cluster.daemon(
        &format!("daemon-{node}"),
        node,
        node,
        gateways,
        Some(&token.to_string()),
        env,
    )?;
    daemon.wait_ready(FLEET_READY_WITHIN).await?;
    Ok(daemon)
}

/// A group document for the fake server (`extra` arguments after `--port {port}`).
pub fn group_doc(name: &str, min: i64, extra: &[&str]) -> anyhow::Result<Document> {
    let mut command = vec![
        binary("prexor-fakeserver")?.display().to_string(),
        "--port".to_string(),
        "{port}".to_string(),
    ];
    command.extend(extra.iter().map(|s| s.to_string()));
    // Ten ports from a free one, below the ephemeral range (free_port stays under 32000).
    let base_port = free_port();
    Ok(doc! {
        "_id": name,
        "revision": 1_i64,
        "spec": {
            "platform": "fake", "version": "1",
            "command": command,
            "memoryMb": 256_i64,
            "portRange": { "from": i32::from(base_port), "to": i32::from(base_port) + 9 },
            "minInstances": min, "maxInstances": 5_i64,
            "scaling": "STATIC",
        },
    })
}

/// `spec` (JSON, as the API takes it) with `env.VERSION` set: a new revision to roll out.
pub fn with_version(spec: &serde_json::Value, version: &str) -> serde_json::Value {
    let mut spec = spec.clone();
    spec["env"] = serde_json::json!({ "VERSION": version });
    spec
}

/// Starts a rolling deployment of `group` (`POST /groups/{group}/deployments`); the deployment.
pub async fn deploy(
    rest: &Rest,
    group: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (status, deployment) = rest
        .post(&format!("/groups/{group}/deployments"), body)
        .await?;
    ensure!(status == 201, "{status} {deployment}");
    Ok(deployment)
}

/// A group's spec as the API takes it (`group_doc`'s, as JSON).
pub fn group_spec(min: i64) -> anyhow::Result<serde_json::Value> {
    let doc = group_doc("g", min, &[])?;
    Ok(serde_json::to_value(doc.get_document("spec")?)?)
}

/// The fence mark of `scope` (the highest token that acquired or wrote it; 0 if none did).
pub async fn fence_mark(cluster: &Cluster, scope: &str) -> anyhow::Result<i64> {
    Ok(cluster
        .stores
        .mongo()
        .await?
        .collection::<Document>("fences")
        .find_one(doc! { "_id": scope })
        .await?
        .and_then(|d| d.get_i64("mark").ok())
        .unwrap_or(0))
}

/// `len` random bytes (content no compressor can shrink).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A tar.gz with the given (path, content) files.
pub fn tar_gz(files: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(p, c)| (*p, c.as_bytes())).collect();
    tar_gz_with(&files, &[])
}

/// A tar.gz with the given (path, content) files and symbolic links (path, target).
pub fn tar_gz_with(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> anyhow::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *content)?;
    }
    for (path, target) in links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        builder.append_link(&mut header, path, target)?;
    }
    Ok(builder.into_inner()?.finish()?)
}

/// One line of a daemon's process journal (`<daemon.dataDir>/processes.log`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessEntry {
    /// `launch` or `exit`.
    pub event: String,
    pub at_ms: i64,
    pub instance: String,
    pub plan_hash: String,
    pub pid: i64,
    #[serde(default)]
    pub port: u32,
    /// The node whose journal this came from.
    #[serde(skip)]
    pub node: String,
}

/// Every process launch and exit the daemons of `nodes` journaled (their data dirs are
/// `<test dir>/<node>`, as [`nodes`] makes them), oldest first.
pub fn process_journal(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<Vec<ProcessEntry>> {
    let mut entries = Vec::new();
    for node in nodes {
        let path = cluster.dir.join(node).join("processes.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut entry: ProcessEntry = serde_json::from_str(line)
                .with_context(|| format!("{}: {line}", path.display()))?;
            entry.node = node.to_string();
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| e.at_ms);
    Ok(entries)
}

/// The invariants of the journals: an instance never has two live processes (on any nodes),
/// and no two live processes share a node and port.
pub fn no_double_runs(entries: &[ProcessEntry]) -> anyhow::Result<()> {
    let mut live: BTreeMap<(String, i64), &ProcessEntry> = BTreeMap::new();
    for entry in entries {
        match entry.event.as_str() {
            "launch" => {
                if let Some(other) = live.values().find(|l| l.instance == entry.instance) {
                    bail!(
                        "{} launched on {} (pid {}) while it still ran on {} (pid {})",
                        entry.instance,
                        entry.node,
                        entry.pid,
                        other.node,
                        other.pid
                    );
                }
                if let Some(other) = live
                    .values()
                    .find(|l| l.node == entry.node && l.port == entry.port && entry.port != 0)
                {
                    bail!(
                        "{} and {} both ran on {}:{}",
                        entry.instance,
                        other.instance,
                        entry.node,
                        entry.port
                    );
                }
                live.insert((entry.node.clone(), entry.pid), entry);
            }
            _ => {
                live.remove(&(entry.node.clone(), entry.pid));
            }
        }
    }
    Ok(())
}

/// What every scenario ends with: every durable intent finished and nothing is stuck on its way
/// up ([`settled`]), no document carries a fencing token its scope never reached
/// ([`fences_hold`]), and no instance ever ran twice ([`no_double_runs`] over `nodes`' journals).
pub async fn invariants(cluster: &Cluster, nodes: &[&str]) -> anyhow::Result<()> {
    settled(cluster).await?;
    fences_hold(cluster).await?;
    no_double_runs(&process_journal(cluster, nodes)?)
}

/// Waits (at most a minute) until no instance is SCHEDULED, PREPARING or STARTING and no
/// operator request, platform-module mutation or rolling deployment is left.
pub async fn settled(cluster: &Cluster) -> anyhow::Result<()> {
    let db = cluster.stores.mongo().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut pending = Vec::new();
        let starting: Vec<Document> = db
            .collection::<Document>("instances")
            .find(doc! { "state": { "$in": ["SCHEDULED", "PREPARING", "STARTING"] } })
            .await?
            .try_collect()
            .await?;
        for instance in &starting {
            pending.push(format!(
                "instance {} is {}",
                instance.get_str("_id").unwrap_or("?"),
                instance.get_str("state").unwrap_or("?")
            ));
        }
        for (collection, filter, what) in [
            ("instance_requests", doc! {}, "operator request"),
            ("module_mutation", doc! {}, "module mutation"),
            (
                "deployments",
                doc! { "state": "ROLLING" },
                "rolling deployment",
            ),
        ] {
            let left = db
                .collection::<Document>(collection)
                .count_documents(filter)
                .await?;
            if left > 0 {
                pending.push(format!("{left} {what}(s) not finished"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "not settled after a minute: {}",
            pending.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The fence invariants: per scope, the tokens of applied writes (`fence_log`, recorded in each
/// write's transaction) never go down and never exceed the scope's mark; and every document
/// stamped by a fenced write carries a token its scope's mark covers.
pub async fn fences_hold(cluster: &Cluster) -> anyhow::Result<()> {
    let db = cluster.stores.mongo().await?;
    let fences: Vec<Document> = db
        .collection::<Document>("fences")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    let marks: BTreeMap<String, i64> = fences
        .iter()
        .filter_map(|f| Some((f.get_str("_id").ok()?.to_owned(), f.get_i64("mark").ok()?)))
        .collect();
    let applied: i64 = fences.iter().filter_map(|f| f.get_i64("writes").ok()).sum();
    let log: Vec<Document> = db
        .collection::<Document>("fence_log")
        .find(doc! {})
        .await?
        .try_collect()
        .await?;
    ensure!(
        log.len() as i64 == applied,
        "fence_log holds {} writes, the fences counted {applied} (is coordination.fenceLog on everywhere?)",
        log.len()
    );
    let mut by_scope: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for entry in &log {
        by_scope
            .entry(entry.get_str("scope")?.to_owned())
            .or_default()
            .push((entry.get_i64("atMs")?, entry.get_i64("token")?));
    }
    for (scope, mut writes) in by_scope {
        writes.sort();
        let mark = marks.get(&scope).copied().unwrap_or(0);
        if let Some((_, top)) = writes.iter().max_by_key(|(_, token)| *token) {
            ensure!(
                *top <= mark,
                "{scope}: a write with token {top} is above the mark {mark}"
            );
        }
        for pair in writes.windows(2) {
            let ((at_a, token_a), (at_b, token_b)) = (pair[0], pair[1]);
            ensure!(
                token_b >= token_a || at_a == at_b,
                "{scope}: a write with token {token_b} was applied at {at_b} after one with token {token_a} at {at_a}"
            );
        }
    }
    for name in db.list_collection_names().await? {
        let stamped: Vec<Document> = db
            .collection::<Document>(&name)
            .find(doc! { "_fence": { "$exists": true } })
            .await?
            .try_collect()
            .await?;
        for doc in stamped {
            let fence = doc.get_document("_fence")?;
            let (scope, token) = (fence.get_str("scope")?, fence.get_i64("token")?);
            let mark = marks.get(scope).copied().unwrap_or(0);
            ensure!(
                token <= mark,
                "{name}/{:?} was written with token {token} of {scope}, above its mark {mark}",
                doc.get("_id")
            );
        }
    }
    Ok(())
}
