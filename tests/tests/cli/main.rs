//! `prexorctl` against a running stack (CA, gateways, one api, one scheduler, daemons running the
//! fake server): every operational command is run through the real binary, and its effect is
//! checked through the REST API or MongoDB, not only its exit status. Sign-in and contexts
//! (`login --password-stdin --name`, `context list|use`, `logout`), `status`, `system info`,
//! groups, instances (start, stop, kill, console input and output, crashes), nodes (cordon,
//! join token redeemed by a second daemon, drain, undrain), templates, deployments (wait, pause,
//! resume, rollback), modules, API tokens, users, roles, the audit log, completions, `-o json`
//! and `-o yaml`, and errors that name the problem; plain columns off a terminal, `--no-headers`,
//! `-o wide|name`, help text, the config file under `XDG_CONFIG_HOME` ([`output`]); contexts
//! renamed and deleted; passwords typed at a terminal without echo ([`passwords`]); `events` and
//! `console --follow` resuming across cut connections, `--watch` ([`follow`]); `apply -f DIR`
//! with `--dry-run` and `--prune` ([`apply`]).
//!
//! One scenario, in phases that build on each other (one module each, run in this order):
//! [`sign_in`], [`groups`] and instances, [`deployments`], [`nodes`] and drains, [`templates`],
//! [`modules`], [`access`] (tokens, users and contexts, roles), and [`closing`] (audit,
//! completions, errors, deleting the last group, logout).

mod access;
mod apply;
mod closing;
mod ctl;
mod deployments;
mod follow;
mod groups;
mod modules;
mod nodes;
mod output;
mod passwords;
mod sign_in;
mod templates;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use prexor_acceptance::{Cluster, Fleet, Proc, Rest, scenario_tests, stop_all};
use serde_json::Value;

use ctl::Ctl;

const READY_WITHIN: Duration = Duration::from_secs(60);
const EXIT_WITHIN: Duration = Duration::from_secs(20);
/// A bound for a broken test, not a timing assertion.
const CONDITION_WITHIN: Duration = Duration::from_secs(60);

/// The running stack the phases operate, and `prexorctl` signed in to it as the admin.
struct Stack {
    fleet: Fleet,
    api: Proc,
    scheduler: Proc,
    ctl: Ctl,
    /// REST with the session `prexorctl login` saved in the "local" context.
    rest: Rest,
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a UTF-8 path")
}

/// Whether the JSON list `listed` has an entry that `matches`.
fn lists(listed: &Value, matches: impl Fn(&Value) -> bool) -> bool {
    listed.as_array().is_some_and(|l| l.iter().any(matches))
}

fn has_group(listed: &Value, name: &str) -> bool {
    lists(listed, |g| g["name"] == name)
}

async fn scenario(cluster: &Cluster) -> anyhow::Result<()> {
    let fleet = prexor_acceptance::nodes(cluster, &["node-1"]).await?;
    let password = cluster.bootstrap_admin("admin")?;
    let mut api = cluster.service("api", "api-1", "")?;
    let mut scheduler = cluster.service("scheduler", "scheduler-1", "")?;
    api.wait_ready(READY_WITHIN).await?;
    scheduler.wait_ready(READY_WITHIN).await?;
    let ctl = Ctl::new(cluster)?;
    let rest = sign_in::login(&ctl, &api, &password).await?;
    let mut stack = Stack {
        fleet,
        api,
        scheduler,
        ctl,
        rest,
    };

    sign_in::status_and_info(&stack).await?;
    let lobby = groups::groups_and_instances(cluster, &stack).await?;
    output::output(&stack, &cluster.dir)?;
    follow::followers(&stack).await?;
    follow::gap(&stack).await?;
    follow::watches(&stack).await?;
    apply::apply(cluster, &stack).await?;
    deployments::deployments(cluster, &stack, &lobby).await?;
    nodes::nodes_and_drains(cluster, &mut stack).await?;
    templates::templates(cluster, &stack).await?;
    modules::modules(cluster, &stack).await?;
    access::tokens(cluster, &stack).await?;
    access::users_and_contexts(cluster, &stack).await?;
    passwords::passwords(&stack).await?;
    access::roles(cluster, &stack).await?;
    closing::audit_completions_and_errors(&stack)?;
    closing::delete_and_logout(cluster, &stack).await?;

    let Stack {
        mut fleet,
        mut api,
        mut scheduler,
        ..
    } = stack;
    stop_all([&mut api], EXIT_WITHIN).await?;
    fleet.stop_with(&mut scheduler).await
}

scenario_tests! {
    prexorctl_operates_a_running_cluster: scenario,
}
