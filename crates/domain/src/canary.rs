//! Canary deployments (docs/scheduling.md, "Canary deployments"): a deployment with
//! `"strategy": "CANARY"` updates `instances` of the group first and goes on to the rest only
//! once those report ready and at least `minTps` continuously for `healthySeconds`; if that has
//! not happened `timeoutSeconds` after the deployment began, the group's holder rolls it back.

use serde::{Deserialize, Serialize};

/// How a deployment replaces a group's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// A batch at a time, from the start.
    #[default]
    Rolling,
    /// The canaries first, behind a health gate, then a batch at a time.
    Canary,
}

/// The health gate of a canary deployment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CanaryGate {
    /// Instances updated first (default 1).
    #[serde(default = "default_instances")]
    pub instances: u32,
    /// Each canary reports ready and at least this TPS (its last report, at most 60 s old;
    /// default 18)...
    #[serde(default = "default_min_tps")]
    pub min_tps: f64,
    /// ...continuously for this long (default 60).
    #[serde(default = "default_healthy_seconds")]
    pub healthy_seconds: u32,
    /// Rolled back automatically when the gate has not passed this long after the deployment
    /// began (default 600).
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u32,
}

fn default_instances() -> u32 {
    1
}

fn default_min_tps() -> f64 {
    18.0
}

fn default_healthy_seconds() -> u32 {
    60
}

fn default_timeout_seconds() -> u32 {
    600
}

impl Default for CanaryGate {
    fn default() -> CanaryGate {
        CanaryGate {
            instances: default_instances(),
            min_tps: default_min_tps(),
            healthy_seconds: default_healthy_seconds(),
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

impl CanaryGate {
    /// Every problem, each with the field below `canary`.
    pub fn problems(&self, wanted: u32) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.instances == 0 || self.instances > wanted.max(1) {
            problems.push((
                ".instances",
                format!(
                    "{} is not between 1 and the instances the group wants ({wanted})",
                    self.instances
                ),
            ));
        }
        if !self.min_tps.is_finite() || self.min_tps <= 0.0 || self.min_tps > 20.0 {
            problems.push((
                ".minTps",
                format!("{} is not a TPS above 0 and at most 20", self.min_tps),
            ));
        }
        if self.healthy_seconds == 0 {
            problems.push((".healthySeconds", "must be at least 1".to_owned()));
        }
        if self.timeout_seconds <= self.healthy_seconds {
            problems.push((
                ".timeoutSeconds",
                format!(
                    "{} must be above healthySeconds ({}): the canaries need time to start and pass",
                    self.timeout_seconds, self.healthy_seconds
                ),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_must_fit_the_group_and_leave_time_to_pass() {
        assert!(CanaryGate::default().problems(3).is_empty());
        let gate = CanaryGate {
            instances: 4,
            min_tps: 25.0,
            healthy_seconds: 60,
            timeout_seconds: 30,
        };
        let fields: Vec<&str> = gate.problems(3).into_iter().map(|p| p.0).collect();
        assert_eq!(fields, [".instances", ".minTps", ".timeoutSeconds"]);
        let parsed: CanaryGate =
            serde_json::from_value(serde_json::json!({ "instances": 2 })).unwrap();
        assert_eq!(parsed.healthy_seconds, 60);
    }
}
