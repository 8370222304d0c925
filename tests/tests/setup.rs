//! `prexorctl setup` against real stores: the dry run prints exactly the files it would write
//! (snapshots), the first controller bootstraps the cluster once (identity, admin, CA), a second
//! bootstrap is refused, `--bootstrap=false` joins with the CA certificate from MongoDB, and
//! unreachable stores are named without anything written. Services then start from the files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::doc;
use prexor_acceptance::{Cluster, bin_dir, binary, find_one, free_port, get_doc, scenario_tests};

const READY_WITHIN: Duration = Duration::from_secs(60);

fn prexorctl(args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(binary("prexorctl")?)
        .args(args)
        .env_remove("PREXOR_CONTROLLER")
        .env_remove("PREXOR_TOKEN")
        .output()?)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One host's directories under the test dir.
struct Host {
    root: PathBuf,
}

impl Host {
    fn new(cluster: &Cluster, name: &str) -> Host {
        Host {
            root: cluster.dir.join(name),
        }
    }

    fn etc(&self) -> PathBuf {
        self.root.join("etc")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--config-dir".into(),
            self.etc().display().to_string(),
            "--unit-dir".into(),
            self.root.join("units").display().to_string(),
            "--state-dir".into(),
            self.root.join("var").display().to_string(),
        ]
    }
}

/// `args`, then `host`'s directories.
fn on_host(args: &[&str], host: &Host) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(host.args());
    all
}

fn controller_args(cluster: &Cluster, host: &Host, extra: &[&str]) -> Vec<String> {
    let mut args = on_host(
        &[
            "setup",
            "--role",
            "controller",
            "--mongo-uri",
            &cluster.stores.mongo_uri,
            "--redis-uri",
            &cluster.stores.valkey_url,
            "--mongo-database",
            &cluster.stores.database,
            "--valkey-namespace",
            &cluster.stores.namespace,
            "--advertise-host",
            "controller-1",
        ],
        host,
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> anyhow::Result<Output> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    prexorctl(&args)
}

/// Compares `actual` with `tests/snapshots/<name>` (`UPDATE_SNAPSHOTS=1` rewrites it).
fn snapshot(name: &str, actual: &str) -> anyhow::Result<()> {
    let path = prexor_testkit::workspace_root()
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().context("snapshot dir")?)?;
        std::fs::write(&path, actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path)
        .with_context(|| format!("{} (UPDATE_SNAPSHOTS=1 creates it)", path.display()))?;
    ensure!(
        expected == actual,
        "dry-run output differs from {} (UPDATE_SNAPSHOTS=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
    Ok(())
}

/// `output` with this test's varying values replaced by placeholders.
fn normalize(cluster: &Cluster, output: &str, more: &[(&str, &str)]) -> String {
    let mut text = output
        .replace(&cluster.dir.display().to_string(), "{TEST_DIR}")
        .replace(&cluster.stores.mongo_uri, "{MONGO_URI}")
        .replace(&cluster.stores.valkey_url, "{VALKEY_URI}")
        .replace(&cluster.stores.database, "{DATABASE}")
        .replace(&cluster.stores.namespace, "{NAMESPACE}")
        .replace(&bin_dir().display().to_string(), "{BIN_DIR}");
    for (value, placeholder) in more {
        text = text.replace(value, placeholder);
    }
    text
}

/// `out` succeeded; everything it said.
fn succeeded(out: &Output) -> anyhow::Result<String> {
    let said = text(out);
    ensure!(out.status.success(), "{said}");
    Ok(said)
}

/// `out` failed saying each of `needles`, and nothing was written for `host`.
fn refused(out: &Output, host: &Host, needles: &[&str]) -> anyhow::Result<()> {
    let said = text(out);
    ensure!(
        !out.status.success() && needles.iter().all(|n| said.contains(n)),
        "{said}"
    );
    ensure!(
        !host.root.exists(),
        "nothing written to {}",
        host.root.display()
    );
    Ok(())
}

fn mode(path: &Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{}", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

fn current_user() -> anyhow::Result<String> {
    let out = Command::new("id").arg("-un").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

async fn setup(cluster: &Cluster) -> anyhow::Result<()> {
    let user = current_user()?;
    let bins = bin_dir().display().to_string();
    // A real install on `host`: this build's binaries, run as this user, units not enabled.
    let install = |host: &Host, extra: &[&str]| {
        let real = ["--bin-dir", &bins, "--user", &user, "--no-enable"];
        run(&controller_args(cluster, host, &[extra, &real].concat()))
    };

    // Joining a cluster that does not exist yet is refused.
    let lonely = Host::new(cluster, "lonely");
    let out = run(&controller_args(cluster, &lonely, &["--bootstrap=false"]))?;
    refused(
        &out,
        &lonely,
        &["holds no PrexorCloud cluster yet", "--bootstrap=true"],
    )?;

    // The dry run: checks the stores, prints every file and command, writes nothing.
    let first = Host::new(cluster, "controller-1");
    let out = run(&controller_args(
        cluster,
        &first,
        &[
            "--cluster-id",
            "setup-test",
            "--bin-dir",
            "/usr/local/bin",
            "--dry-run",
        ],
    ))?;
    succeeded(&out)?;
    snapshot(
        "setup-controller-dry-run.txt",
        &normalize(cluster, &String::from_utf8(out.stdout)?, &[]),
    )?;
    ensure!(!first.root.exists(), "a dry run writes nothing");

    // The first controller: files, identity, admin (printed once), CA.
    let said = succeeded(&install(&first, &["--cluster-id", "setup-test"])?)?;
    let password = said
        .lines()
        .find_map(|l| {
            l.split_once("password (shown once): ")
                .map(|(_, p)| p.trim())
        })
        .with_context(|| format!("the admin password is printed: {said}"))?
        .to_owned();
    let etc = first.etc();
    for service in ["api", "gateway", "scheduler", "ca"] {
        let config = etc.join(format!("{service}.toml"));
        ensure!(mode(&config)? == 0o600, "{} is 0600", config.display());
        let unit =
            std::fs::read_to_string(first.root.join(format!("units/prexor-{service}.service")))?;
        ensure!(
            unit.contains(&format!(
                "ExecStart={bins}/prexor-{service} --config {}",
                config.display()
            )) && unit.contains(&format!("User={user}")),
            "{unit}"
        );
    }
    ensure!(
        first
            .root
            .join("units/prexorcloud-controller.service")
            .is_file()
    );
    let key = etc.join("data/certs/ca/ca.key");
    ensure!(mode(&key)? == 0o600, "the CA key is 0600");
    // The CA's state lives under the state directory; the documented path links to it.
    let state = first.root.join("var/ca");
    ensure!(
        std::fs::read_link(etc.join("data"))? == state && state.join("certs/ca/ca.key").is_file(),
        "{} links to {}",
        etc.join("data").display(),
        state.display()
    );
    let identity = get_doc(cluster, "cluster", "identity").await?;
    ensure!(identity.get_str("clusterId")? == "setup-test", "{identity}");
    let ca_pem = find_one(cluster, "cluster_ca", doc! {})
        .await?
        .context("the CA certificate is published")?
        .get_str("certificate_pem")?
        .to_owned();
    ensure!(
        std::fs::read_to_string(etc.join("data/certs/ca/ca.crt"))? == ca_pem,
        "ca.crt is the published certificate"
    );

    // The services start from what setup wrote; the admin signs in.
    let from_setup = async |kind: &str| {
        let toml = std::fs::read_to_string(etc.join(format!("{kind}.toml")))?;
        let mut proc = cluster.service_from(kind, &format!("{kind}-setup"), &toml, "")?;
        proc.wait_ready(READY_WITHIN).await?;
        anyhow::Ok(proc)
    };
    let mut api = from_setup("api").await?;
    let token = api.login("admin", &password).await?;
    let mut ca = from_setup("ca").await?;
    let (status, join) = api
        .rest(&token)
        .post("/nodes/node-7/join-token", serde_json::json!({}))
        .await?;
    ensure!(status == 201, "{status} {join}");
    let join_token = join["token"].as_str().context("token")?.to_owned();

    // A second bootstrap against this cluster is refused, and writes nothing.
    let again = Host::new(cluster, "controller-x");
    let out = install(&again, &[])?;
    refused(
        &out,
        &again,
        &["already holds cluster \"setup-test\"", "--bootstrap=false"],
    )?;

    // controller-2 joins: no admin, no new CA, the CA certificate read from MongoDB.
    let second = Host::new(cluster, "controller-2");
    let said = succeeded(&install(&second, &["--bootstrap=false"])?)?;
    ensure!(
        !said.contains("password"),
        "no admin on a joining controller: {said}"
    );
    let etc_2 = second.etc();
    ensure!(std::fs::read_to_string(etc_2.join("data/certs/ca/ca.crt"))? == ca_pem);
    ensure!(
        !etc_2.join("data/certs/ca/ca.key").exists(),
        "the key stays on controller-1"
    );
    ensure!(
        std::fs::read_to_string(etc_2.join("scheduler.toml"))?.contains("id = \"setup-test\""),
        "joins the existing cluster id"
    );
    let out = run(&controller_args(
        cluster,
        &Host::new(cluster, "controller-y"),
        &["--bootstrap=false", "--cluster-id", "other", "--dry-run"],
    ))?;
    ensure!(
        !out.status.success() && text(&out).contains("does not match the cluster"),
        "{}",
        text(&out)
    );

    // A daemon host: its config with the join token, the token's secret never printed.
    let node = Host::new(cluster, "node-7");
    let mut daemon_args = on_host(
        &[
            "setup",
            "--role",
            "daemon",
            "--join-token",
            &join_token,
            "--gateway",
            "controller-1:9443,controller-2:9443",
            "--label",
            "zone=eu-1",
        ],
        &node,
    );
    let mut dry = daemon_args.clone();
    dry.extend([
        "--bin-dir".into(),
        "/usr/local/bin".into(),
        "--dry-run".into(),
    ]);
    let out = run(&dry)?;
    succeeded(&out)?;
    let secret = join_token.split('.').nth(2).context("secret")?;
    let fingerprint = join_token.split('.').nth(3).context("fingerprint")?;
    let printed = String::from_utf8(out.stdout)?;
    ensure!(!printed.contains(secret), "the secret is hidden: {printed}");
    snapshot(
        "setup-daemon-dry-run.txt",
        &normalize(cluster, &printed, &[(fingerprint, "{CA_FINGERPRINT}")]),
    )?;
    daemon_args.extend([
        "--bin-dir".into(),
        bins.clone(),
        "--user".into(),
        user.clone(),
        "--no-enable".into(),
    ]);
    let out = run(&daemon_args)?;
    succeeded(&out)?;
    let daemon_toml = std::fs::read_to_string(node.etc().join("daemon.toml"))?;
    ensure!(
        daemon_toml.contains(&join_token) && mode(&node.etc().join("daemon.toml"))? == 0o600,
        "{daemon_toml}"
    );
    let mut wrong = daemon_args.clone();
    wrong.extend(["--node-id".into(), "node-8".into()]);
    let out = run(&wrong)?;
    ensure!(
        !out.status.success() && text(&out).contains("issued for node \"node-7\""),
        "{}",
        text(&out)
    );

    api.stop(Duration::from_secs(20)).await?;
    ca.stop(Duration::from_secs(20)).await?;
    Ok(())
}

async fn unreachable(cluster: &Cluster) -> anyhow::Result<()> {
    let host = Host::new(cluster, "nowhere");
    let setup = |mongo: &str, valkey: &str| -> anyhow::Result<Output> {
        let mut args: Vec<String> = ["setup", "--role", "controller", "--mongo-uri", mongo]
            .iter()
            .chain(&["--redis-uri", valkey])
            .map(|s| s.to_string())
            .collect();
        args.extend(host.args());
        run(&args)
    };
    let dead_mongo = format!("mongodb://127.0.0.1:{}/", free_port());
    let out = setup(&dead_mongo, &cluster.stores.valkey_url)?;
    refused(
        &out,
        &host,
        &[&format!("MongoDB at {dead_mongo} is not reachable")],
    )?;
    let dead_valkey = format!("redis://127.0.0.1:{}", free_port());
    let out = setup(&cluster.stores.mongo_uri, &dead_valkey)?;
    refused(
        &out,
        &host,
        &[&format!("Valkey at {dead_valkey} is not reachable")],
    )
}

scenario_tests! {
    setup_bootstraps_once_joins_and_writes_what_the_services_accept: setup,
    setup_names_an_unreachable_store_and_writes_nothing: unreachable,
}
