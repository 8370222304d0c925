//! `prexor-scheduler`: places, scales, drains and heals instances under group, workflow and
//! platform-module leases.
//!
//! The lease reconciler (`reconciler`) holds this replica's fair share of the scopes (handed over
//! on SIGTERM, taken from a crashed peer after the TTL) and each tick judges the groups it holds
//! (`groups`: placement, dispatch, scaling, healing, deployments) from the change-stream mirror
//! (`mirror`), steps open node drains (`drains`) and the platform-module mutation (`modules`).
//! docs/scheduling.md describes the tick; docs/architecture.md where each part lives.

mod admin;
mod commands;
mod drains;
mod groups;
mod mirror;
mod modules;
mod reconciler;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use prexor_config::SchedulerConfig;
use prexor_coord::LeaseKeeper;
use prexor_serve::{Parts, Service, ServiceArgs};

#[derive(Debug, Parser)]
#[command(name = "prexor-scheduler", version = prexor_domain::VERSION)]
struct SchedulerArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Manage groups directly in the cluster database (until the REST API does).
    #[command(subcommand)]
    Group(GroupCommand),
}

#[derive(Debug, clap::Subcommand)]
enum GroupCommand {
    /// Create or update a group from a JSON spec (validated; every problem is listed).
    Apply {
        name: String,
        /// The spec as JSON (docs/scheduling.md lists the fields).
        #[arg(long)]
        spec: PathBuf,
    },
}

fn main() -> ExitCode {
    let args = SchedulerArgs::parse();
    if let Some(Command::Group(GroupCommand::Apply { name, spec })) = args.command {
        return prexor_serve::launch_with(
            args.service,
            |config: &SchedulerConfig| &config.common.telemetry,
            move |config: SchedulerConfig| async move { admin::apply_group(config, name, &spec).await },
        );
    }
    prexor_serve::launch_with(
        args.service,
        |config: &SchedulerConfig| &config.common.telemetry,
        |config: SchedulerConfig| prexor_serve::run(config.common, Some(config.grpc.listen), build),
    )
}

async fn build(service: Service) -> Result<Parts, prexor_serve::BoxError> {
    let (keeper, keeper_task) =
        LeaseKeeper::start(service.leases.clone(), "mixed", service.shutdown.clone());
    // One client for every node command, so a gateway that did not answer is avoided by all.
    let gateways = service.gateways();
    let drains = drains::Drains {
        store: service.store.clone(),
        gateways: gateways.clone(),
        events: service.events.clone(),
    };
    let modules = modules::Modules {
        store: service.store.clone(),
        events: service.events.clone(),
    };
    let mirror = mirror::Mirror::start(
        service.store.clone(),
        service.config.replica_id.clone(),
        service.shutdown.clone(),
    );
    let reconciler = reconciler::Reconciler {
        drains,
        modules,
        guard: service.guard.clone(),
        groups: groups::Groups::new(
            service.store.clone(),
            gateways.clone(),
            service.events.clone(),
            mirror.clone(),
            service.config.evaluation_interval,
        ),
        store: service.store.clone(),
        group_docs: reconciler::GroupDocs::default(),
        mirror,
        leases: service.leases.clone(),
        keeper: keeper.clone(),
        registry: service.registry.clone(),
        replica_id: service.config.replica_id.clone(),
        interval: service.config.evaluation_interval,
        scopes_cache: Default::default(),
    };
    let ticks = tokio::spawn(reconciler.run(service.shutdown.clone()));
    Ok(Parts {
        keepers: vec![keeper],
        tasks: vec![ticks, keeper_task],
        ..Parts::default()
    })
}
