//! `prexor-daemon`: runs the server processes of one host and keeps one session with one gateway
//! at a time, out of the configured list.

mod capture;
mod cgroup;
mod config_rules;
mod datadir;
mod fences;
mod identity;
mod instances;
mod isolation;
mod launch;
mod layers;
mod outbox;
mod output;
mod procfs;
mod record;
mod session;
mod shim;
mod supervise;

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use prexor_config::DaemonConfig;
use prexor_serve::{Identity, Readiness};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    // `prexor-daemon shim <run dir>`: the per-server supervisor the daemon starts (crate::shim).
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("shim") {
        return shim::main(args.next());
    }
    prexor_serve::launch(|config: &DaemonConfig| &config.telemetry, run)
}

async fn run(config: DaemonConfig) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    prexor_serve::stop_on_signals(stop.clone());
    datadir::prepare(&config.data_dir)
        .with_context(|| format!("daemon.dataDir {} is not usable", config.data_dir.display()))?;
    let isolation = isolation::Isolation::prepare(&config)?;
    let isolation_summary = isolation.summary();

    let readiness = Readiness::new();
    {
        let dir = config.data_dir.clone();
        readiness.add("dataDir", move || {
            let dir = dir.clone();
            async move { datadir::check_writable(&dir).await }
        });
    }
    let listener = prexor_serve::bind("http.listen", config.http.listen).await?;
    tracing::info!(
        node = %config.node_id,
        http = %listener.local_addr()?,
        gateways = ?config.gateways,
        version = prexor_domain::VERSION,
        "starting"
    );
    let identity = Arc::new(Identity {
        kind: "daemon".into(),
        replica_id: config.node_id.clone(),
        version: prexor_domain::VERSION,
        keepers: Default::default(),
    });
    let servers_stop = CancellationToken::new();
    let server = tokio::spawn(prexor_serve::serve_ops(
        listener,
        identity,
        readiness.clone(),
        Arc::new(OnceLock::new()),
        None,
        servers_stop.clone(),
    ));

    tokio::spawn(prexor_serve::notify_systemd(
        readiness.clone(),
        stop.clone(),
    ));
    // The node certificate: on disk, or obtained now with the join token.
    readiness.set_phase(Some("loading the node certificate".into()));
    let phase = readiness.clone();
    let obtained = identity::obtain(
        &config.node_id,
        &config.data_dir,
        config.join_token.as_deref(),
        &config.gateways,
        move |why| phase.set_phase(Some(why)),
        &stop,
    )
    .await;
    let mut tasks = Vec::new();
    match obtained {
        Ok(Some(node)) => {
            let state = fences::Fences::load(&config.data_dir)
                .and_then(|fences| Ok((fences, outbox::Outbox::open(&config.data_dir)?)));
            let (fences, outbox) = match state {
                Ok((fences, outbox)) => (Arc::new(fences), Arc::new(outbox)),
                Err(err) => {
                    servers_stop.cancel();
                    let _ = server.await;
                    return Err(err);
                }
            };
            let (console_tx, console_rx) = tokio::sync::mpsc::channel(4096);
            let layer_source = Arc::new(layers::GatewayLayers {
                node_id: config.node_id.clone(),
                identity: node.clone(),
                gateways: config.gateways.clone(),
            });
            let instances = instances::Instances::new(
                &config.data_dir,
                &config.node_id,
                outbox.clone(),
                console_tx,
                layers::LayerCache::new(
                    &config.data_dir,
                    layer_source,
                    layers::DiskBudget {
                        instance_bytes: config.instance_disk_bytes,
                        min_free_bytes: config.min_free_disk_bytes,
                    },
                ),
                isolation,
            );
            instances.adopt().await;
            let status = session::SessionStatus::default();
            let check = status.clone();
            readiness.add("gateway", move || {
                let check = check.clone();
                async move { check.check() }
            });
            let session = session::Session {
                node_id: config.node_id.clone(),
                version: prexor_domain::VERSION,
                labels: config.labels.clone(),
                isolation: isolation_summary,
                memory_mb: config.memory_mb,
                gateways: config.gateways.clone(),
                max_backoff: config.reconnect_max_backoff,
                identity: node.clone(),
                instances,
                fences,
                outbox,
                status,
                shutdown: stop.clone(),
            };
            tasks.push(tokio::spawn(session.run(console_rx, stop.clone())));
            tasks.push(tokio::spawn(identity::keep_renewed(
                node,
                config.node_id.clone(),
                config.data_dir.clone(),
                config.gateways.clone(),
                stop.clone(),
            )));
            readiness.set_phase(None);
        }
        Ok(None) => {}
        Err(err) => {
            readiness.set_draining();
            servers_stop.cancel();
            let _ = server.await;
            return Err(err);
        }
    }

    stop.cancelled().await;
    for task in tasks {
        let _ = task.await;
    }
    readiness.set_draining();
    servers_stop.cancel();
    server.await??;
    tracing::info!("stopped");
    Ok(())
}
