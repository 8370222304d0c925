//! `prexorctl`: the PrexorCloud command line.

mod commands;
mod complete;
mod contexts;
mod password;
mod progress;
mod render;
mod session;
mod setup;
mod status;
mod watch;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prexor_client::{Client, Trust};

#[derive(Debug, Parser)]
#[command(name = "prexorctl", version = prexor_version(), about = "Operate a PrexorCloud cluster")]
struct Cli {
    /// Base URL of any api replica (a load balancer works too: no session affinity needed).
    /// Default: the current context's, else http://127.0.0.1:8080.
    #[arg(long, global = true, env = "PREXOR_CONTROLLER")]
    controller: Option<String>,
    /// Bearer token (an API token or session) instead of the context's session.
    #[arg(long, global = true, env = "PREXOR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Saved context to use instead of the current one.
    #[arg(long, global = true, env = "PREXOR_CONTEXT")]
    context: Option<String>,
    /// Trust the https:// controller's certificate if it chains to this CA (PEM) instead of the
    /// cluster CA kept in the context.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Do not check the controller's certificate at all (warned about on every use).
    #[arg(long, global = true)]
    insecure_skip_verify: bool,
    /// Output format: table (plain aligned columns when stdout is not a terminal), wide (more
    /// columns), name (one per line), json or yaml.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Tables without their header row.
    #[arg(long, global = true)]
    no_headers: bool,
    #[command(subcommand)]
    command: Command,
}

pub use render::Output;

#[derive(Debug, Subcommand)]
enum Command {
    /// Make this host a controller or a daemon node: check the stores, write config files and
    /// systemd units, bootstrap a new cluster (identity, admin, CA), enable the units.
    Setup(Box<setup::SetupArgs>),
    /// Every replica of every service, and the coordination store. Exits 1 when anything is
    /// unhealthy.
    Status,
    /// Cluster-level information.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Sign in to a cluster and save it as a context (the password is read from the terminal,
    /// or from stdin with --password-stdin).
    Login {
        /// The user to sign in as.
        #[arg(long, short, default_value = "admin")]
        user: String,
        /// Read the password from the first line of stdin (scripts) instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
        /// Name of the context to save (default: "default").
        #[arg(long, default_value = "default")]
        name: String,
        /// The cluster CA's SHA-256 fingerprint to expect from an https:// controller (from
        /// `prexorctl setup`); without it the fingerprint is shown and confirmed at the terminal.
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
    },
    /// End the current context's session (on every replica).
    Logout,
    /// Saved clusters.
    Context {
        #[command(subcommand)]
        command: contexts::ContextCommand,
    },
    /// Make the cluster's groups what spec files declare: one group per .json / .yaml / .yml
    /// file, named after the file (FILE or every such file in DIR); created, updated or left
    /// alone; templates referenced by name get their current version.
    Apply {
        /// A spec file or a directory of them (repeatable).
        #[arg(long, short = 'f', value_name = "FILE|DIR", required = true)]
        file: Vec<std::path::PathBuf>,
        /// Show what would change (field by field) against the cluster; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also delete the groups that no file declares.
        #[arg(long)]
        prune: bool,
    },
    /// Server groups.
    #[command(subcommand, alias = "group")]
    Groups(commands::GroupCommand),
    /// Game server instances.
    #[command(subcommand, alias = "instance")]
    Instances(commands::InstanceCommand),
    /// Hosts running a daemon.
    #[command(subcommand, alias = "node")]
    Nodes(commands::NodeCommand),
    /// Versioned template layers.
    #[command(subcommand, alias = "template")]
    Templates(commands::TemplateCommand),
    /// Rolling deployments.
    #[command(subcommand, alias = "deployment")]
    Deployments(commands::DeploymentCommand),
    /// Platform modules.
    #[command(subcommand, alias = "module")]
    Modules(commands::ModuleCommand),
    /// Backups of the cluster's state.
    #[command(subcommand, alias = "backups")]
    Backup(commands::BackupCommand),
    /// Replace the cluster's configuration with a backup's, every replica still running: takes
    /// every mutation lease, writes the backup in one fenced transaction, lets the schedulers
    /// reconcile what runs.
    Restore {
        /// The backup's id (see `prexorctl backup list`).
        id: String,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Restore a backup of another cluster.
        #[arg(long)]
        force: bool,
        /// How long to try to take every lease (default 30s).
        #[arg(long)]
        timeout: Option<String>,
    },
    /// API tokens.
    #[command(subcommand, alias = "token")]
    Tokens(commands::TokenCommand),
    /// Users.
    #[command(subcommand, alias = "user")]
    Users(commands::UserCommand),
    /// Roles.
    #[command(subcommand, alias = "role")]
    Roles(commands::RoleCommand),
    /// The audit log, newest first.
    Audit {
        /// How many entries to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Follow domain events from any replica, reconnecting after a dropped connection (resumed
    /// after the last event seen: none twice, none missed, or a `gap` line when the server no
    /// longer has them).
    Events {
        /// Comma-separated event types (default: all).
        #[arg(long)]
        types: Option<String>,
        /// Start after this event id (replayed from the server's buffer) instead of now.
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Shell completions: `prexorctl completions bash > /etc/bash_completion.d/prexorctl`; the
    /// script asks prexorctl, which completes group, instance and node names from the cluster.
    Completions {
        /// The shell to write the script for.
        shell: clap_complete::Shell,
        /// A script that completes subcommands and flags only, without running prexorctl.
        #[arg(long = "static")]
        offline: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SystemCommand {
    /// Version, profile and cluster id of the answering replica.
    Info,
}

const fn prexor_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn main() -> ExitCode {
    // `COMPLETE=SHELL prexorctl -- WORDS...`: the completion script asking what comes next.
    clap_complete::CompleteEnv::with_factory(|| {
        use clap::CommandFactory;
        Cli::command()
    })
    .complete();
    let cli = Cli::parse();
    render::init(!cli.no_headers);
    // The one TLS crypto provider compiled in (ring), for every client built without one
    // (the REST client's reqwest, Valkey over TLS in setup).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let cli = match cli.command {
            // Runs on a host being set up: no context, controller or session involved.
            Command::Setup(args) => return setup::setup(*args).await,
            // The config file only.
            Command::Context { command } => return contexts::context(command, cli.output),
            _ => cli,
        };
        let saved = contexts::Config::load()?;
        let context = saved.get(cli.context.as_deref())?.cloned();
        let controller = cli
            .controller
            .clone()
            .or_else(|| context.as_ref().map(|c| c.controller.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
        let token = cli
            .token
            .clone()
            .or_else(|| context.as_ref().and_then(|c| c.token.clone()));
        let trust = Trust {
            ca_pem: match &cli.ca_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading --ca-file {}", file.display()))?,
                ),
                None => context.as_ref().and_then(|c| c.ca.clone()),
            },
            insecure: cli.insecure_skip_verify,
        };
        if let Command::Login {
            user,
            password_stdin,
            name,
            ca_fingerprint,
        } = &cli.command
        {
            // A new sign-in chooses its CA itself (the context's may be another cluster's).
            let trust = Trust {
                ca_pem: trust.ca_pem.filter(|_| cli.ca_file.is_some()),
                ..trust
            };
            return session::login(
                &controller,
                user,
                *password_stdin,
                name,
                &trust,
                ca_fingerprint.as_deref(),
            )
            .await;
        }
        let client = connect(&controller, token, &trust)?;
        match cli.command {
            Command::Login { .. } => unreachable!("handled above"),
            Command::Logout => session::logout(&client, cli.context.as_deref()).await,
            Command::Context { .. } => unreachable!("handled above"),
            Command::Apply {
                file,
                dry_run,
                prune,
            } => commands::apply(&client, &file, dry_run, prune, cli.output).await,
            Command::Groups(command) => commands::groups(&client, command, cli.output).await,
            Command::Instances(command) => commands::instances(&client, command, cli.output).await,
            Command::Nodes(command) => commands::nodes(&client, command, cli.output).await,
            Command::Templates(command) => commands::templates(&client, command, cli.output).await,
            Command::Deployments(command) => {
                commands::deployments(&client, command, cli.output).await
            }
            Command::Modules(command) => commands::modules(&client, command, cli.output).await,
            Command::Tokens(command) => commands::tokens(&client, command, cli.output).await,
            Command::Backup(command) => commands::backups(&client, command, cli.output).await,
            Command::Restore {
                id,
                dry_run,
                force,
                timeout,
            } => commands::restore(&client, &id, dry_run, force, timeout, cli.output).await,
            Command::Users(command) => commands::users(&client, command, cli.output).await,
            Command::Roles(command) => commands::roles(&client, command, cli.output).await,
            Command::Audit { limit } => commands::audit(&client, limit, cli.output).await,
            Command::Events { types, after } => {
                commands::events(&client, types, after, cli.output).await
            }
            Command::Completions { shell, offline } => {
                use clap::CommandFactory;
                if offline {
                    clap_complete::generate(
                        shell,
                        &mut Cli::command(),
                        "prexorctl",
                        &mut std::io::stdout(),
                    );
                } else {
                    complete::registration(shell, &mut std::io::stdout())?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Setup(_) => unreachable!("handled above"),
            Command::Status => status::status(&client, cli.output).await,
            Command::System {
                command: SystemCommand::Info,
            } => status::info(&client, cli.output).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if let Some(hint) = hint(&err) {
                eprintln!("{hint}");
            }
            ExitCode::FAILURE
        }
    }
}

/// A client for `controller`, with what is wrong said in the command line's terms.
pub(crate) fn connect(
    controller: &str,
    token: Option<String>,
    trust: &Trust,
) -> anyhow::Result<Client> {
    if controller.starts_with("https://") && trust.insecure {
        eprintln!(
            "warning: --insecure-skip-verify: the controller's certificate is not checked; anyone on the path can read and change this session"
        );
    }
    Client::new(controller, token, trust).map_err(|err| match err {
        prexor_client::Error::BadUrl { url } => anyhow::anyhow!(
            "--controller {url:?} must be an http:// or https:// URL, e.g. https://controller-1:8080"
        ),
        prexor_client::Error::NoTrustedCa { base } => anyhow::anyhow!(
            "no CA to check {base} against: sign in with `prexorctl login --controller {base}` (it shows the cluster CA's fingerprint and keeps the CA), or pass --ca-file"
        ),
        err => err.into(),
    })
}

/// What to do about a failed call of the api.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    match err.downcast_ref::<prexor_client::Error>()? {
        prexor_client::Error::Unreachable { .. } => Some("check --controller or PREXOR_CONTROLLER"),
        refused if refused.status_code() == Some(401) => Some("sign in with `prexorctl login`"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every subcommand and every argument of `command` without help text, by path.
    fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" || arg.is_global_set() && !path.is_empty() {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} <{id}>"));
            }
        }
        for sub in command.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_subcommand_and_flag_has_help() {
        let command = Cli::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        undocumented(&command, "", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }
}
