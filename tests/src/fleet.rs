//! A CA, gateways and enrolled daemons ([`Fleet`]); an api replica with the admin signed in and
//! schedulers ([`Operators`]); both together ([`System`]); each started together and ready, and
//! how a scenario ends with them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use mongodb::bson::Document;

use crate::{Cluster, Proc, Rest, invariants, reported_pid, reported_state, stop_all, wait_doc};

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

/// Waits until instance `id` runs again (scheduler state and report) as another process than
/// in `before`, an earlier record of it; its record.
pub async fn running_again(
    cluster: &Cluster,
    id: &str,
    before: &Document,
    what: &str,
) -> anyhow::Result<Document> {
    let old = reported_pid(before);
    wait_doc(cluster, "instances", id, what, |d| {
        d.get_str("state") == Ok("RUNNING")
            && reported_state(d) == "RUNNING"
            && ![0, old].contains(&reported_pid(d))
    })
    .await
}

/// The plan hash of each of instances `ids`, once all of them run ([`running`]).
pub async fn running_plans(
    cluster: &Cluster,
    ids: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    running(cluster, ids)
        .await?
        .iter()
        .map(|d| {
            Ok((
                d.get_str("_id")?.to_owned(),
                d.get_str("planHash")?.to_owned(),
            ))
        })
        .collect()
}

/// A CA, two gateways and enrolled daemons.
pub struct Fleet {
    pub ca: Proc,
    pub gateways: Vec<Proc>,
    pub daemons: Vec<Proc>,
}

impl Fleet {
    /// Ends a scenario: stops `others`, checks the [`invariants`] over `nodes` while `scheduler`
    /// still runs, then stops it and the fleet (every stop a clean exit).
    pub async fn finish<'a>(
        &mut self,
        cluster: &Cluster,
        nodes: &[&str],
        others: impl IntoIterator<Item = &'a mut Proc>,
        scheduler: &mut Proc,
    ) -> anyhow::Result<()> {
        stop_all(others, FLEET_EXIT_WITHIN).await?;
        invariants(cluster, nodes).await?;
        self.stop_with(scheduler).await
    }

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
    for node in nodes {
        fleet.enrol(cluster, node).await?;
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

/// A [`Fleet`] with daemons on its nodes and the [`Operators`], all ready.
pub struct System {
    pub fleet: Fleet,
    pub api: Proc,
    pub schedulers: Vec<Proc>,
    /// REST on the api as the admin.
    pub rest: Rest,
    nodes: Vec<String>,
}

/// A CA, two gateways and enrolled daemons for `on` ([`nodes`]), then the [`operators`] with
/// `schedulers` scheduler replicas.
pub async fn system(cluster: &Cluster, on: &[&str], schedulers: usize) -> anyhow::Result<System> {
    let fleet = nodes(cluster, on).await?;
    let Operators {
        api,
        schedulers,
        rest,
    } = operators(cluster, schedulers).await?;
    Ok(System {
        fleet,
        api,
        schedulers,
        rest,
        nodes: on.iter().map(|n| n.to_string()).collect(),
    })
}

impl System {
    /// Ends a scenario: checks the [`invariants`] over the system's nodes with every replica still
    /// running, then [`System::stop`]s it.
    pub async fn finish(self, cluster: &Cluster, survivor: usize) -> anyhow::Result<()> {
        let nodes: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        invariants(cluster, &nodes).await?;
        self.stop(survivor).await
    }

    /// Stops the api, every scheduler but `schedulers[survivor]`, and that one with the fleet
    /// (every stop a clean exit).
    pub async fn stop(mut self, survivor: usize) -> anyhow::Result<()> {
        stop_all([&mut self.api], FLEET_EXIT_WITHIN).await?;
        ensure!(
            survivor < self.schedulers.len(),
            "no scheduler {survivor} of {}",
            self.schedulers.len()
        );
        let mut survivor = self.schedulers.remove(survivor);
        stop_all(self.schedulers.iter_mut(), FLEET_EXIT_WITHIN).await?;
        self.fleet.stop_with(&mut survivor).await
    }
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
    let started = self::schedulers(cluster, schedulers).await?;
    api.wait_ready(FLEET_READY_WITHIN).await?;
    let rest = api.rest(&api.login("admin", &password).await?);
    Ok(Operators {
        api,
        schedulers: started,
        rest,
    })
}

/// Scheduler replicas `scheduler-1` to `scheduler-<count>`, ready.
pub async fn schedulers(cluster: &Cluster, count: usize) -> anyhow::Result<Vec<Proc>> {
    let mut started = Vec::new();
    for i in 1..=count {
        started.push(cluster.service("scheduler", &format!("scheduler-{i}"), "")?);
    }
    for scheduler in &mut started {
        scheduler.wait_ready(FLEET_READY_WITHIN).await?;
    }
    Ok(started)
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

    /// Starts a daemon `name` for `node` (data in `<test dir>/<node>`) dialing every gateway,
    /// enrolling with `join_token` if it has no certificate yet; not waited for.
    pub fn start_daemon(
        &self,
        cluster: &Cluster,
        name: &str,
        node: &str,
        join_token: Option<&str>,
    ) -> anyhow::Result<Proc> {
        let ports = self.daemon_ports();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        cluster.daemon(name, node, node, &ports, join_token, &[])
    }

    /// Adds a daemon for `node` dialing every gateway, enrolled with a fresh join token
    /// ([`enrolled_daemon`]); ready.
    pub async fn enrol(&mut self, cluster: &Cluster, node: &str) -> anyhow::Result<()> {
        let ports = self.daemon_ports();
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        self.daemons
            .push(enrolled_daemon(cluster, node, &ports).await?);
        Ok(())
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
    let ca_cert = prexor_model::pki::published_ca(&store)
        .await?
        .context("CA")?
        .certificate;
    let (token, _) = prexor_model::pki::create_join_token(
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
