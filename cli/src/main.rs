//! `prexorctl`: the PrexorCloud command line.

mod client;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "prexorctl", version = prexor_version(), about = "Operate a PrexorCloud cluster")]
struct Cli {
    /// Base URL of any api replica (a load balancer works too: no session affinity needed).
    #[arg(
        long,
        global = true,
        env = "PREXOR_CONTROLLER",
        default_value = "http://127.0.0.1:8080"
    )]
    controller: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every replica of every service, and the coordination store. Exits 1 when anything is
    /// unhealthy.
    Status,
    /// Cluster-level information.
    System {
        #[command(subcommand)]
        command: SystemCommand,
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
    let cli = Cli::parse();
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
    let client = match client::Client::new(&cli.controller) {
        Ok(client) => client,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
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
            ExitCode::FAILURE
        }
    }
}
