//! Why instances a group wants were not placed, node by node (docs/scheduling.md,
//! "Explanations"): when a placement leaves instances missing, the holder judges every node by
//! placement's own rules ([`placement::explain`], over the same in-memory view) and keeps the
//! result in the group's `group_state` (`placement`, fenced), where `GET
//! /api/v1/groups/{name}/explain` reads it on any api replica. Written only when it changes, and
//! once more when everything was placed again, so a group that places cleanly costs nothing.

use mongodb::bson::doc;
use prexor_coord::Lease;
use prexor_domain::{GroupSpec, now_ms, placement};
use prexor_store::Write;

use super::{GROUP_STATE, Groups};

/// Nodes an explanation lists by name (the eligible ones first); the rest are counted by
/// reason, so the record stays small on a large cluster.
const NODES_LISTED: usize = 20;

impl Groups {
    /// Records why `placed` of `missing` instances of group `name` were placed (nothing when
    /// this replica already recorded the same under this lease, or all were placed and nothing
    /// was recorded before).
    pub(super) async fn explain_placement(
        &self,
        name: &str,
        spec: &GroupSpec,
        lease: &Lease,
        missing: usize,
        placed: usize,
    ) -> anyhow::Result<()> {
        let complete = placed >= missing;
        let verdicts = if complete {
            Vec::new()
        } else {
            let view = self.placement_view(name).await?;
            placement::explain(&view.cluster, &placement::Request::of(name, spec))
        };
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (lease.token(), missing, placed, &verdicts).hash(&mut hasher);
            hasher.finish()
        };
        {
            let explained = self.explained.lock().expect("explained lock");
            match explained.get(name) {
                Some(last) if *last == fingerprint => return Ok(()),
                None if complete => return Ok(()),
                _ => {}
            }
        }
        let eligible = verdicts.iter().filter(|v| v.eligible).count();
        let outcome = if complete {
            format!("placed all {missing} missing instances")
        } else if eligible == 0 {
            format!(
                "placed {placed} of {missing}: no node can take an instance (each node's reason below)"
            )
        } else {
            format!(
                "placed {placed} of {missing}: {eligible} nodes were eligible but other replicas won their ports or memory first; placing again next tick"
            )
        };
        let mut by_reason: std::collections::BTreeMap<String, i64> = Default::default();
        for verdict in verdicts.iter().filter(|v| !v.eligible) {
            // "lacks the affinity label zone=eu", "512 MB of memory free …": counted by their
            // kind (the text before a number or a colon).
            let kind = verdict
                .reason
                .split(|c: char| c.is_ascii_digit() || c == ':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned();
            *by_reason.entry(kind).or_default() += 1;
        }
        let nodes: Vec<mongodb::bson::Document> = verdicts
            .iter()
            .take(NODES_LISTED)
            .map(|v| doc! { "node": &v.node, "eligible": v.eligible, "reason": &v.reason })
            .collect();
        let by_reason: mongodb::bson::Document = by_reason
            .into_iter()
            .map(|(k, n)| {
                (
                    if k.is_empty() { "other".to_owned() } else { k },
                    mongodb::bson::Bson::Int64(n),
                )
            })
            .collect();
        let explanation = doc! {
            "atMs": now_ms(),
            "missing": missing as i64,
            "placed": placed as i64,
            "outcome": outcome,
            "nodes": nodes,
            "nodesJudged": verdicts.len() as i64,
            "refusedByReason": by_reason,
        };
        self.write(
            lease,
            vec![
                Write::update_one(
                    GROUP_STATE,
                    doc! { "_id": name },
                    doc! { "$set": { "placement": explanation } },
                )
                .upsert(),
            ],
        )
        .await?;
        self.explained
            .lock()
            .expect("explained lock")
            .insert(name.to_owned(), fingerprint);
        Ok(())
    }
}
