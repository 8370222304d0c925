//! `GET /api/v1/groups/{name}/explain`: why a group has the instances it has (docs/scheduling.md,
//! "Explanations"). The scaling part is read from the spec, the instance counts and what the
//! group's holder keeps in `group_state` (a DYNAMIC group's signal and decision, a crash-loop
//! pause); the placement part is the holder's own verdict on every node from its last placement
//! that left instances missing. Any api replica answers it.

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use prexor_domain::{GroupSpec, ScalingMode, now_ms};
use prexor_model::groups::{GROUP_STATE, GroupStateRecord};
use prexor_model::instances::has_ended;
use serde::Serialize;

use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiResult, Json};
use crate::groups::show_group;

pub fn routes() -> Router<App> {
    Router::new().route("/groups/{name}/explain", get(explain))
}

/// A group's current decisions and their reasons.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Explanation {
    pub(crate) group: String,
    pub(crate) revision: i64,
    /// Instances the group wants now, and has (placed and not ended).
    pub(crate) wanted: Option<u32>,
    pub(crate) active: u32,
    /// Why the group has, gets or loses instances, in words.
    pub(crate) scaling: String,
    /// The last placement that left instances missing, node by node (none: every placement
    /// so far found room).
    pub(crate) placement: Option<PlacementView>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PlacementView {
    pub(crate) at_ms: i64,
    pub(crate) missing: i64,
    pub(crate) placed: i64,
    pub(crate) outcome: String,
    /// The first 20 nodes judged: the eligible ones first, in the order placement ranks them,
    /// then the others with the first rule each fails.
    pub(crate) nodes: Vec<NodeVerdictView>,
    pub(crate) nodes_judged: i64,
    /// The refused nodes counted by reason.
    pub(crate) refused_by_reason: std::collections::BTreeMap<String, i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeVerdictView {
    pub(crate) node: String,
    pub(crate) eligible: bool,
    pub(crate) reason: String,
}

#[utoipa::path(
    get, path = "/api/v1/groups/{name}/explain", tag = "groups",
    responses((status = 200, body = Explanation))
)]
async fn explain(
    Caller(app, who): Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Explanation>> {
    Ok(Json(explain_group(&app, &who, &name).await?))
}

/// Group `name` explained for `who` (`groups:read`).
pub(crate) async fn explain_group(
    app: &App,
    who: &Principal,
    name: &str,
) -> ApiResult<Explanation> {
    let group = show_group(app, who, name).await?;
    let state: Option<GroupStateRecord> = app.record(GROUP_STATE, name).await?;
    let active: u32 = group
        .status
        .instances
        .iter()
        .filter(|(state, _)| !has_ended(state))
        .map(|(_, n)| *n)
        .sum();
    let (wanted, scaling) = scaling(
        &group.name,
        &group.spec,
        group.deleting,
        state.as_ref(),
        active,
        now_ms(),
    );
    Ok(Explanation {
        group: group.name,
        revision: group.revision,
        wanted,
        active,
        scaling,
        placement: state.and_then(|s| s.placement).map(|p| PlacementView {
            at_ms: p.at_ms,
            missing: p.missing,
            placed: p.placed,
            outcome: p.outcome,
            nodes: p
                .nodes
                .into_iter()
                .map(|n| NodeVerdictView {
                    node: n.node,
                    eligible: n.eligible,
                    reason: n.reason,
                })
                .collect(),
            nodes_judged: p.nodes_judged,
            refused_by_reason: p.refused_by_reason,
        }),
    })
}

/// What the group wants and why, from its record and the holder's state.
fn scaling(
    name: &str,
    spec: &GroupSpec,
    deleting: bool,
    state: Option<&GroupStateRecord>,
    active: u32,
    now: i64,
) -> (Option<u32>, String) {
    let wanted = match spec.scaling {
        ScalingMode::Static => Some(spec.min_instances),
        ScalingMode::Dynamic => Some(
            state
                .and_then(|s| s.scale_target)
                .map_or(spec.min_instances, |t| t.max(0) as u32)
                .clamp(spec.min_instances, spec.max_instances),
        ),
        ScalingMode::Manual => None,
    };
    let mut why = match spec.scaling {
        ScalingMode::Static => format!(
            "STATIC: keeps exactly minInstances ({}); {active} active",
            spec.min_instances
        ),
        ScalingMode::Dynamic => {
            match state.and_then(|s| Some((s.signal.as_ref()?, s.decision.as_deref()?))) {
                Some((signal, decision)) => format!("DYNAMIC: {}; {decision}", signal.reading),
                None => format!(
                    "DYNAMIC: no decision recorded yet (its holder has not judged it); starts at minInstances ({})",
                    spec.min_instances
                ),
            }
        }
        ScalingMode::Manual => format!(
            "MANUAL: instances start only when an operator asks (POST /api/v1/groups/{name}/instances); {active} active"
        ),
    };
    if let Some((until, reason)) = state.and_then(|s| s.paused_at(now)) {
        why = format!(
            "crash loop: new placements paused for {} s more ({}); {why}",
            (until - now + 999) / 1000,
            reason.unwrap_or("its instances keep crashing")
        );
    }
    if spec.maintenance {
        why = format!("maintenance: nothing is started or stopped; {why}");
    }
    if deleting {
        why = format!("being deleted: its instances are stopping; {why}");
    }
    (wanted, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> GroupSpec {
        let mut base = serde_json::json!({
            "platform": "fake", "version": "1", "command": ["x"], "memoryMb": 256,
            "portRange": { "from": 30000, "to": 30010 }, "minInstances": 2, "maxInstances": 5,
            "scaling": "STATIC",
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn the_scaling_reason_names_the_mode_and_what_holds_it() {
        let (wanted, why) = scaling("lobby", &spec(serde_json::json!({})), false, None, 1, 0);
        assert_eq!(wanted, Some(2));
        assert_eq!(why, "STATIC: keeps exactly minInstances (2); 1 active");
        let paused = GroupStateRecord {
            group: "lobby".into(),
            paused_until_ms: Some(31_000),
            pause_reason: Some("3 crashes in 60 s".into()),
            ..GroupStateRecord::default()
        };
        let (_, why) = scaling(
            "lobby",
            &spec(serde_json::json!({ "maintenance": true })),
            true,
            Some(&paused),
            2,
            1_000,
        );
        assert_eq!(
            why,
            "being deleted: its instances are stopping; maintenance: nothing is started or stopped; crash loop: new placements paused for 30 s more (3 crashes in 60 s); STATIC: keeps exactly minInstances (2); 2 active"
        );
        let (wanted, why) = scaling(
            "arena",
            &spec(serde_json::json!({ "scaling": "MANUAL" })),
            false,
            None,
            0,
            0,
        );
        assert!(wanted.is_none() && why.starts_with("MANUAL: instances start only when an operator asks (POST /api/v1/groups/arena/instances)"));
    }
}
