//! The network at a glance: instances and nodes per state and players online (the dashboard's
//! overview), and their history: every api replica samples them once per interval into
//! `network_history` for the overview's charts (docs/dashboard.md, "Overview charts").

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use mongodb::bson::doc;
use prexor_domain::{InstanceState, now_ms};
use prexor_model::instances::{
    INSTANCE_LOAD, INSTANCES, InstanceLoad, NETWORK_HISTORY, NetworkSample, has_ended, live_filter,
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::error::ApiResult;

/// How the history is kept: `api.historyEvery`, `api.historyKeep` (docs/configuration.md).
#[derive(Debug, Clone, Copy)]
pub struct HistorySettings {
    pub every: Duration,
    pub keep: Duration,
}

#[derive(Deserialize)]
struct ByState {
    #[serde(rename = "_id")]
    state: Option<String>,
    count: u64,
}

/// Records of `collection` per `state` value.
pub async fn by_state(app: &App, collection: &str, what: &str) -> ApiResult<BTreeMap<String, u64>> {
    let pipeline = vec![doc! { "$group": { "_id": "$state", "count": { "$sum": 1 } } }];
    let counted: Vec<ByState> = app.aggregate(collection, what, pipeline).await?;
    Ok(counted
        .into_iter()
        .map(|c| (c.state.unwrap_or_default(), c.count))
        .collect())
}

/// Players online on live instances, as their servers last reported them.
pub async fn players_online(app: &App) -> ApiResult<u64> {
    let reporting = doc! { "playerNames.0": { "$exists": true } };
    let loads: Vec<InstanceLoad> = app
        .records(
            INSTANCE_LOAD,
            "reading players online",
            reporting,
            doc! {},
            None,
        )
        .await?;
    if loads.is_empty() {
        return Ok(0);
    }
    #[derive(Deserialize)]
    struct Id {
        #[serde(rename = "_id")]
        id: String,
    }
    let ids: Vec<&str> = loads.iter().map(|l| l.id.as_str()).collect();
    let live = doc! { "_id": { "$in": ids }, "state": live_filter() };
    let live: HashSet<String> = app
        .records::<Id>(INSTANCES, "reading live instances", live, doc! {}, None)
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    Ok(loads
        .iter()
        .filter(|l| live.contains(&l.id))
        .map(|l| l.player_names.len() as u64)
        .sum())
}

/// The sample of the interval starting at `at_ms`, from instances per state and players.
fn sample_of(
    at_ms: i64,
    instances: &BTreeMap<String, u64>,
    players: u64,
    replica: &str,
) -> NetworkSample {
    let live: u64 = instances
        .iter()
        .filter(|(state, _)| !has_ended(state))
        .map(|(_, n)| n)
        .sum();
    let running = instances
        .get(InstanceState::Running.as_str())
        .copied()
        .unwrap_or(0);
    NetworkSample {
        at_ms,
        players: players as i64,
        instances: live as i64,
        running: running as i64,
        replica: replica.to_owned(),
    }
}

/// The start of the interval of length `every` holding `now_ms`.
fn interval_start(now_ms: i64, every: Duration) -> i64 {
    let every = (every.as_millis() as i64).max(1);
    now_ms - now_ms.rem_euclid(every)
}

/// Writes this interval's sample and drops those older than the retention.
async fn record_sample(app: &App, settings: HistorySettings) -> ApiResult<()> {
    let (instances, players) = tokio::join!(
        by_state(app, INSTANCES, "counting instances"),
        players_online(app)
    );
    let now = now_ms();
    let sample = sample_of(
        interval_start(now, settings.every),
        &instances?,
        players?,
        &app.service.config.replica_id,
    );
    let store = app.store();
    let history = store.collection::<NetworkSample>(NETWORK_HISTORY);
    store
        .bounded(
            "recording the network's history",
            history
                .replace_one(doc! { "_id": sample.at_ms }, &sample)
                .upsert(true),
        )
        .await?;
    let oldest = now - settings.keep.as_millis() as i64;
    store
        .bounded(
            "pruning the network's history",
            history.delete_many(doc! { "_id": { "$lt": oldest } }),
        )
        .await?;
    Ok(())
}

/// Samples the network once per interval until `stop`. A sample this replica could not write
/// leaves no gap as long as another replica wrote it; with none it is a gap in the charts, which
/// they draw as one.
pub async fn record_history(app: App, settings: HistorySettings, stop: CancellationToken) {
    let mut every = tokio::time::interval(settings.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = record_sample(&app, settings).await {
            tracing::warn!(error = %err.message(), "the network's history has no sample from this replica for this interval");
        }
    }
}

/// The samples of the last `span` (the latest [`MAX_SAMPLES`] of them), oldest first.
pub async fn history(app: &App, span: Duration) -> ApiResult<Vec<NetworkSample>> {
    let since = now_ms() - span.as_millis() as i64;
    let mut samples: Vec<NetworkSample> = app
        .records(
            NETWORK_HISTORY,
            "reading the network's history",
            doc! { "_id": { "$gte": since } },
            doc! { "_id": -1 },
            Some(MAX_SAMPLES),
        )
        .await?;
    samples.reverse();
    Ok(samples)
}

/// At most this many samples are read for a chart (a day of one-minute samples).
pub const MAX_SAMPLES: i64 = 1440;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_counts_live_and_running_instances() {
        let states: BTreeMap<String, u64> = [
            ("RUNNING", 3),
            ("STARTING", 2),
            ("STOPPING", 1),
            ("STOPPED", 7),
            ("CRASHED", 4),
        ]
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
        let sample = sample_of(60_000, &states, 12, "api-1");
        assert_eq!(
            (sample.instances, sample.running, sample.players),
            (6, 3, 12)
        );
    }

    #[test]
    fn samples_of_one_interval_share_its_start() {
        let minute = Duration::from_secs(60);
        assert_eq!(interval_start(125_000, minute), 120_000);
        assert_eq!(interval_start(120_000, minute), 120_000);
        assert_eq!(interval_start(5, Duration::ZERO), 5);
    }
}
