//! `prexorctl setup`: makes this host a controller (any of api, gateway, scheduler, ca) or a
//! daemon node. It checks everything first (both stores reachable, the cluster there or not as
//! `--bootstrap` expects, every config accepted by its service's own `--check-config`), then
//! writes the config files and systemd units, bootstraps a new cluster (identity, admin user,
//! CA) and enables the units. Nothing is written when a check fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args, ValueEnum};
use prexor_coord::{LeaseBackend, ValkeyBackend, ValkeyTls};
use prexor_pki::JoinToken;
use prexor_store::Store;

/// How long setup waits for either store before saying it is unreachable.
mod apply;

use apply::{apply, print_dry_run, units};

const STORE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Control-plane services (the `--services` chosen) against the shared stores.
    Controller,
    /// The node daemon that runs game servers on this host.
    Daemon,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ServiceName {
    Api,
    Gateway,
    Scheduler,
    Ca,
}

impl ServiceName {
    fn name(self) -> &'static str {
        match self {
            ServiceName::Api => "api",
            ServiceName::Gateway => "gateway",
            ServiceName::Scheduler => "scheduler",
            ServiceName::Ca => "ca",
        }
    }
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// What this host becomes.
    #[arg(long, value_enum)]
    role: Role,
    /// The MongoDB every controller shares (controller role).
    #[arg(long, value_name = "URI", required_if_eq("role", "controller"))]
    mongo_uri: Option<String>,
    /// The database in it.
    #[arg(long, default_value = "prexorcloud")]
    mongo_database: String,
    /// The Valkey every controller shares (`redis://` or `rediss://`; controller role).
    #[arg(
        long,
        visible_alias = "valkey-uri",
        value_name = "URI",
        required_if_eq("role", "controller")
    )]
    redis_uri: Option<String>,
    /// Key prefix in Valkey (several clusters can share one Valkey under different prefixes).
    #[arg(long, default_value = "prexor:v1:")]
    valkey_namespace: String,
    /// For a `rediss://` URI: the PEM CA that signed Valkey's certificate (default: the system's
    /// trusted roots). Written to `valkey.tlsCaFile`.
    #[arg(long, value_name = "PATH")]
    valkey_tls_ca_file: Option<PathBuf>,
    /// For a Valkey requiring client certificates: the PEM certificate (with
    /// --valkey-tls-key-file). Written to `valkey.tlsCertFile`.
    #[arg(long, value_name = "PATH", requires = "valkey_tls_key_file")]
    valkey_tls_cert_file: Option<PathBuf>,
    /// The key of --valkey-tls-cert-file. Written to `valkey.tlsKeyFile`.
    #[arg(long, value_name = "PATH", requires = "valkey_tls_cert_file")]
    valkey_tls_key_file: Option<PathBuf>,
    /// `true`: the first controller of a new cluster (creates the cluster identity, the admin
    /// user, printed once, and the CA on this host). `false`: join the existing cluster.
    #[arg(long, num_args = 0..=1, default_value = "true", default_missing_value = "true",
          value_name = "true|false", action = ArgAction::Set)]
    bootstrap: bool,
    /// The services this controller runs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "api,gateway,scheduler,ca"
    )]
    services: Vec<ServiceName>,
    /// Check and print what would be written and run; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Write the files and bootstrap, but leave enabling and starting the units to you.
    #[arg(long)]
    no_enable: bool,
    /// The new cluster's id (bootstrap; default: random). When joining, it must match.
    #[arg(long)]
    cluster_id: Option<String>,
    /// Name or address peers, daemons and operators reach this controller by (default: the
    /// host name).
    #[arg(long)]
    advertise_host: Option<String>,
    /// User name of the bootstrap admin.
    #[arg(long, default_value = "admin")]
    admin_user: String,
    /// Where the config files go (the CA key ends up in `<dir>/data/certs/ca/`).
    #[arg(long, default_value = "/etc/prexorcloud")]
    config_dir: PathBuf,
    /// Where the systemd units go.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// State directory (the daemon's data lives in `<dir>/daemon`).
    #[arg(long, default_value = "/var/lib/prexorcloud")]
    state_dir: PathBuf,
    /// Where the prexor-* binaries are installed (default: next to prexorctl).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// System user the services run as (created when setup runs as root and it is missing).
    #[arg(long, default_value = "prexorcloud")]
    user: String,
    /// Daemon role: the node id (default: the one in the join token).
    #[arg(long)]
    node_id: Option<String>,
    /// Daemon role: the join token from `prexorctl nodes join-token NODE`.
    #[arg(long, required_if_eq("role", "daemon"))]
    join_token: Option<String>,
    /// Daemon role: a gateway's daemon port, `host:port` (repeat, or comma-separate, for every
    /// gateway replica).
    #[arg(
        long = "gateway",
        value_delimiter = ',',
        required_if_eq("role", "daemon")
    )]
    gateways: Vec<String>,
    /// Daemon role: a node label, `key=value` (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
}

/// A file setup writes.
struct PlannedFile {
    path: PathBuf,
    contents: String,
    mode: u32,
    /// The binary whose `--check-config` must accept this file.
    checked_by: Option<&'static str>,
}

/// A command setup runs after writing the files.
struct Step {
    what: &'static str,
    binary: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

/// Everything setup will do, decided before anything is done.
#[derive(Default)]
struct Plan {
    checked: Vec<String>,
    dirs: Vec<PathBuf>,
    /// Symbolic links (link, target), made once the directories exist: `<config dir>/data` to
    /// the CA's state under the state directory, where docs/ha-setup.md copies the CA key.
    links: Vec<(PathBuf, PathBuf)>,
    files: Vec<PlannedFile>,
    steps: Vec<Step>,
    units: Vec<String>,
    /// Values never printed in a dry run (passwords in URIs, the join token's secret).
    secrets: Vec<String>,
}

pub async fn setup(args: SetupArgs) -> anyhow::Result<ExitCode> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => default_bin_dir(),
    };
    let mut plan = match args.role {
        Role::Controller => controller(&args).await?,
        Role::Daemon => daemon(&args)?,
    };
    plan.files.extend(units(&args, &bin_dir, &plan.units));
    if args.dry_run {
        print_dry_run(&args, &plan, &bin_dir);
        return Ok(ExitCode::SUCCESS);
    }
    apply(&args, &plan, &bin_dir)?;
    Ok(ExitCode::SUCCESS)
}

/// The directory holding this prexorctl, where packages install the prexor-* binaries too.
fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .filter(|dir| dir.join("prexor-api").is_file() || dir.join("prexor-daemon").is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// `path` made absolute against the working directory (configs are read from elsewhere).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

async fn controller(args: &SetupArgs) -> anyhow::Result<Plan> {
    let (Some(mongo_uri), Some(valkey_uri)) = (&args.mongo_uri, &args.redis_uri) else {
        bail!("--role controller needs --mongo-uri and --redis-uri");
    };
    if args.services.is_empty() {
        bail!("--services must name at least one of api, gateway, scheduler, ca");
    }
    if args.bootstrap && !args.services.contains(&ServiceName::Api) {
        bail!(
            "--bootstrap=true creates the admin user with prexor-api: include api in --services, or bootstrap on a host that runs the api"
        );
    }
    if let Some(id) = &args.cluster_id {
        check_cluster_id(id)?;
    }
    let mut plan = Plan {
        secrets: [mongo_uri, valkey_uri]
            .into_iter()
            .filter_map(|uri| uri_password(uri))
            .collect(),
        ..Plan::default()
    };
    let mongo_shown = prexor_domain::redact_uri(mongo_uri);
    let valkey_shown = prexor_domain::redact_uri(valkey_uri);
    let database = &args.mongo_database;

    let store = Store::connect(mongo_uri, database, "prexorctl-setup", STORE_TIMEOUT)
        .await
        .with_context(|| format!("MongoDB at {mongo_shown} is not usable"))?;
    store
        .ping()
        .await
        .with_context(|| format!("MongoDB at {mongo_shown} is not reachable"))?;
    let tls = ValkeyTls::from_files(
        args.valkey_tls_ca_file.as_deref(),
        args.valkey_tls_cert_file
            .as_deref()
            .zip(args.valkey_tls_key_file.as_deref()),
    )
    .map_err(|e| anyhow::anyhow!("--valkey-tls-*: {e}"))?;
    let valkey = ValkeyBackend::connect_tls(valkey_uri, &tls, STORE_TIMEOUT)
        .with_context(|| format!("Valkey at {valkey_shown} is not usable"))?;
    valkey
        .ping()
        .await
        .with_context(|| format!("Valkey at {valkey_shown} is not reachable"))?;
    let existing = prexor_serve::guard::existing_cluster(&store)
        .await
        .map_err(|e| anyhow::anyhow!("MongoDB at {mongo_shown}: {e}"))?;
    let store_key = prexor_serve::guard::store_id_key(&args.valkey_namespace);
    let valkey_store = valkey
        .get(&store_key)
        .await
        .with_context(|| format!("Valkey at {valkey_shown}: reading {store_key}"))?;

    let cluster_id = if args.bootstrap {
        if let Some(existing) = &existing {
            bail!(
                "database {database:?} at {mongo_shown} already holds cluster {:?}: refusing to bootstrap it a second time. To add this host to that cluster run setup with --bootstrap=false",
                existing.id
            );
        }
        if let Some(other) = valkey_store {
            bail!(
                "Valkey at {valkey_shown} already coordinates a cluster under {:?} (store id {other}), but database {database:?} has none: a new cluster needs its own Valkey (or another --valkey-namespace); two clusters on one store would fence each other",
                args.valkey_namespace
            );
        }
        plan.checked.push(format!(
            "MongoDB at {mongo_shown} reachable; database {database:?} holds no cluster yet"
        ));
        args.cluster_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
    } else {
        let Some(existing) = existing else {
            bail!(
                "database {database:?} at {mongo_shown} holds no PrexorCloud cluster yet: set up the first controller with --bootstrap=true, or fix --mongo-uri / --mongo-database"
            );
        };
        if let Some(id) = &args.cluster_id
            && *id != existing.id
        {
            bail!(
                "--cluster-id {id:?} does not match the cluster in database {database:?} at {mongo_shown} ({:?})",
                existing.id
            );
        }
        if let (Some(in_valkey), Some(expected)) = (&valkey_store, &existing.store_id)
            && in_valkey != expected
        {
            bail!(
                "Valkey at {valkey_shown} holds store id {in_valkey} but cluster {:?} uses store {expected}: this is a different Valkey than the other controllers use (split brain). Pass the cluster's Valkey URI",
                existing.id
            );
        }
        let ca = prexor_model::pki::published_ca(&store)
            .await
            .with_context(|| format!("MongoDB at {mongo_shown}: reading the cluster CA"))?
            .with_context(|| {
                format!(
                    "cluster {:?} has no CA yet: start the first controller's prexor-ca (setup --bootstrap=true does) before adding controllers",
                    existing.id
                )
            })?;
        plan.checked.push(format!(
            "MongoDB at {mongo_shown} reachable; cluster {:?}, CA fingerprint {}",
            existing.id, ca.certificate.fingerprint
        ));
        plan.files.push(PlannedFile {
            path: ca_dir(args).join("ca.crt"),
            contents: ca.certificate.pem,
            mode: 0o644,
            checked_by: None,
        });
        existing.id
    };
    plan.checked
        .push(format!("Valkey at {valkey_shown} reachable"));

    // The CA's key and certificate change (first start, renewals): state, under the state
    // directory; `<config dir>/data` links to it.
    let data_dir = ca_data_dir(args);
    plan.dirs = vec![
        args.config_dir.clone(),
        args.state_dir.clone(),
        data_dir.clone(),
    ];
    plan.links = vec![(args.config_dir.join("data"), data_dir.clone())];
    for service in &args.services {
        let name = service.name();
        let mut toml = format!(
            "# Written by `prexorctl setup --role controller`; see docs/configuration.md.\n[runtime]\nprofile = \"production\"\n\n[cluster]\nid = {}\n\n",
            quoted(&cluster_id)
        );
        if let Some(host) = &args.advertise_host {
            toml.push_str(&format!("[replica]\nadvertiseHost = {}\n\n", quoted(host)));
        }
        toml.push_str(&format!(
            "[mongo]\nuri = {}\ndatabase = {}\n\n[valkey]\nuri = {}\nnamespace = {}\n",
            quoted(mongo_uri),
            quoted(database),
            quoted(valkey_uri),
            quoted(&args.valkey_namespace)
        ));
        for (key, path) in [
            ("tlsCaFile", &args.valkey_tls_ca_file),
            ("tlsCertFile", &args.valkey_tls_cert_file),
            ("tlsKeyFile", &args.valkey_tls_key_file),
        ] {
            if let Some(path) = path {
                toml.push_str(&format!(
                    "{key} = {}\n",
                    quoted(&absolute(path).display().to_string())
                ));
            }
        }
        if *service == ServiceName::Ca {
            toml.push_str(&format!(
                "\n[ca]\n# The CA key is <dataDir>/certs/ca/ca.key (0600), only on hosts allowed to sign.\ndataDir = {}\n",
                quoted(&data_dir.display().to_string())
            ));
        }
        plan.files.push(PlannedFile {
            path: config_file(args, name),
            contents: toml,
            mode: 0o600,
            checked_by: Some(binary_of(*service)),
        });
        plan.units.push(format!("prexor-{name}.service"));
    }
    plan.units.push("prexorcloud-controller.service".into());

    if args.bootstrap {
        plan.steps.push(Step {
            what: "create the cluster identity and the bootstrap admin",
            binary: "prexor-api",
            args: vec![
                "--config".into(),
                config_file(args, "api").display().to_string(),
                "bootstrap-admin".into(),
                "--username".into(),
                args.admin_user.clone(),
            ],
            env: vec![("PREXOR_CLUSTER__BOOTSTRAP", "true")],
        });
        if args.services.contains(&ServiceName::Ca) {
            plan.steps.push(Step {
                what: "create the cluster CA on this host",
                binary: "prexor-ca",
                args: vec![
                    "--config".into(),
                    config_file(args, "ca").display().to_string(),
                    "init".into(),
                ],
                env: vec![],
            });
        }
    }
    Ok(plan)
}

fn daemon(args: &SetupArgs) -> anyhow::Result<Plan> {
    let token = args
        .join_token
        .as_deref()
        .context("--role daemon needs --join-token (from `prexorctl nodes join-token NODE`)")?;
    let parsed = JoinToken::parse(token).map_err(|e| anyhow::anyhow!("--join-token: {e}"))?;
    let node_id = args.node_id.clone().unwrap_or(parsed.node_id.clone());
    prexor_domain::validate_name(&node_id)
        .map_err(|e| anyhow::anyhow!("--node-id {node_id:?}: {e}"))?;
    if node_id != parsed.node_id {
        bail!(
            "--join-token was issued for node {:?}, not {node_id:?}: create a token for {node_id:?} or drop --node-id",
            parsed.node_id
        );
    }
    if args.gateways.is_empty() {
        bail!("--role daemon needs --gateway host:port for every gateway replica");
    }
    for gateway in &args.gateways {
        let port_ok = gateway.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            bail!(
                "--gateway {gateway:?} is not host:port (a gateway's daemon port, e.g. controller-1:9443)"
            );
        }
    }
    let mut labels = String::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
            bail!("--label {label:?} is not key=value");
        };
        labels.push_str(&format!(
            "{} = {}\n",
            quoted(key.trim()),
            quoted(value.trim())
        ));
    }
    let data_dir = args.state_dir.join("daemon");
    let gateways: Vec<String> = args.gateways.iter().map(|g| quoted(g)).collect();
    let mut toml = format!(
        "# Written by `prexorctl setup --role daemon`; see docs/configuration.md.\n[node]\nid = {}\n",
        quoted(&node_id)
    );
    if !labels.is_empty() {
        toml.push_str(&format!("\n[node.labels]\n{labels}"));
    }
    toml.push_str(&format!(
        "\n[daemon]\ndataDir = {}\ngateways = [{}]\n# Used once: exchanged for the node certificate on first start.\njoinToken = {}\n",
        quoted(&data_dir.display().to_string()),
        gateways.join(", "),
        quoted(token.trim()),
    ));
    Ok(Plan {
        checked: vec![format!(
            "join token for node {node_id:?}, trusting only the CA with fingerprint {}",
            parsed.ca_fingerprint
        )],
        dirs: vec![args.config_dir.clone(), args.state_dir.clone(), data_dir],
        links: vec![],
        files: vec![PlannedFile {
            path: config_file(args, "daemon"),
            contents: toml,
            mode: 0o600,
            checked_by: Some("prexor-daemon"),
        }],
        steps: vec![],
        units: vec!["prexor-daemon.service".into()],
        secrets: token
            .split('.')
            .nth(2)
            .map(str::to_owned)
            .into_iter()
            .collect(),
    })
}

fn config_file(args: &SetupArgs, name: &str) -> PathBuf {
    args.config_dir.join(format!("{name}.toml"))
}

/// The CA's `ca.dataDir`.
fn ca_data_dir(args: &SetupArgs) -> PathBuf {
    args.state_dir.join("ca")
}

fn ca_dir(args: &SetupArgs) -> PathBuf {
    ca_data_dir(args).join("certs").join("ca")
}

fn binary_of(service: ServiceName) -> &'static str {
    match service {
        ServiceName::Api => "prexor-api",
        ServiceName::Gateway => "prexor-gateway",
        ServiceName::Scheduler => "prexor-scheduler",
        ServiceName::Ca => "prexor-ca",
    }
}

fn check_cluster_id(id: &str) -> anyhow::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("--cluster-id {id:?}: use 1-64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// A TOML basic string.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The password part of `scheme://user:password@host/…`, if any.
fn uri_password(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_passwords() {
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(
            uri_password("mongodb://root:s3cret@db:27017/?x=1").as_deref(),
            Some("s3cret")
        );
        assert_eq!(uri_password("redis://127.0.0.1:6379"), None);
        assert!(check_cluster_id("prod-eu_1").is_ok());
        assert!(check_cluster_id("no spaces").is_err());
    }
}
