//! One test's processes: its stores and directory, the replicas and daemons it starts (their
//! logs printed if the test fails), and internal gRPC from the test itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use prexor_testkit::{Launch, TestStores, binary, free_port};

use crate::{Proc, run_ok};

/// The processes of one test, sharing its stores. Prints every log if the test panics.
pub struct Cluster {
    pub stores: TestStores,
    pub dir: PathBuf,
    procs: Mutex<Vec<(String, PathBuf)>>,
    internal: tokio::sync::OnceCell<prexor_pki::internal::InternalTls>,
    /// Environment variables of every process started from now on ([`Cluster::set_env`]).
    env: Mutex<Vec<(String, String)>>,
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
            env: Mutex::new(Vec::new()),
        })
    }

    /// Sets `key` to `value` in the environment of every process this cluster starts from now
    /// on (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`), after the process's own variables.
    pub fn set_env(&self, key: &str, value: &str) {
        self.env
            .lock()
            .expect("env lock")
            .push((key.to_owned(), value.to_owned()));
    }

    /// Internal mTLS for the test itself: a service certificate (api replica
    /// `acceptance-client`) obtained the way a replica gets its first one — the cluster's service
    /// enrolment secret, presented to a running CA replica. Waits up to a minute for one.
    pub async fn internal(&self) -> anyhow::Result<&prexor_pki::internal::InternalTls> {
        self.internal
            .get_or_try_init(|| async {
                let store = self.store().await?;
                let registry = self.registry(Duration::from_secs(15))?;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match prexor_testkit::enrol_internal_tls(
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

    /// The replica registry in this test's Valkey namespace, with registrations that live `ttl`.
    pub fn registry(&self, ttl: Duration) -> anyhow::Result<prexor_coord::Registry> {
        Ok(prexor_coord::Registry::Valkey {
            backend: prexor_coord::ValkeyBackend::connect(
                &self.stores.valkey_url,
                Duration::from_secs(2),
            )?,
            namespace: self.stores.namespace.clone(),
            ttl,
        })
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
        self.start(Launch::replica(kind, replica_id, &self.dir, base, extra)?.args(args))
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
        let base = self.common_toml(replica_id);
        let launch = Launch::replica(kind, replica_id, &self.dir, &base, extra)?;
        self.start(launch.env(env.iter().copied()))
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
        let launch = Launch::new(binary_name, name, &self.dir, toml, http_port)?
            .grpc_port(grpc_port)
            .env(env)
            .args(args);
        self.start(launch)
    }

    /// Starts `launch` with its output in `<test dir>/<name>.log` (printed if the test fails).
    pub fn start(&self, launch: Launch) -> anyhow::Result<Proc> {
        let name = launch.name().to_owned();
        let log = self.dir.join(format!("{name}.log"));
        let env = self.env.lock().expect("env lock").clone();
        let process = launch
            .rust_log("info,prexor_coord=debug")
            .extra_env(env)
            .log_to(log.clone())
            .start()?;
        self.procs.lock().expect("procs lock").push((name, log));
        Ok(Proc::from(process))
    }
}

impl Cluster {
    /// Creates the cluster's first admin (`prexor-api bootstrap-admin`); its password.
    pub fn bootstrap_admin(&self, user: &str) -> anyhow::Result<String> {
        let config = self.dir.join("bootstrap-admin.toml");
        std::fs::write(&config, self.common_toml("bootstrap"))?;
        let file = self.dir.join(format!("{user}.password"));
        run_ok(
            Command::new(binary("prexor-api")?)
                .arg("--config")
                .arg(&config)
                .args(["bootstrap-admin", "--username", user, "--password-file"])
                .arg(&file)
                .env_remove("PREXOR_CONFIG"),
            "bootstrap-admin",
        )?;
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
        self.start(
            self.daemon_launch(name, node_id, data, gateways, join_token)?
                .env(env.iter().copied()),
        )
    }

    /// How [`Cluster::daemon`] starts a daemon, to change before [`Cluster::start`] (another
    /// binary, more arguments).
    pub fn daemon_launch(
        &self,
        name: &str,
        node_id: &str,
        data: &str,
        gateways: &[&str],
        join_token: Option<&str>,
    ) -> anyhow::Result<Launch> {
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
        Launch::new("prexor-daemon", name, &self.dir, &toml, http)
    }

    /// A connection to this test's database.
    pub async fn store(&self) -> anyhow::Result<prexor_store::Store> {
        self.stores.store("prexor-acceptance").await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Daemons' shims and servers outlive the daemons by design: end everything that works in
        // or names this test's directory.
        prexor_testkit::reap::kill_under(&self.dir);
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
    call: Result<T, tonic::Status>,
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
