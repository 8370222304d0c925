//! DYNAMIC scaling on the servers' reported load instead of players (docs/scheduling.md,
//! "Scaling on load"): the average of a metric the running instances report
//! (`/api/v1/workload/metrics`) against two thresholds. TPS falls under load (scale up below
//! `scaleUpAt`), MSPT and memory rise (scale up at or above it); between the thresholds nothing
//! changes.

use serde::{Deserialize, Serialize};

/// Which reported metric a group scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum LoadMetric {
    /// Ticks per second (20 at most; lower is busier).
    Tps,
    /// Milliseconds per tick (50 is the budget; higher is busier).
    Mspt,
    /// Memory used, in percent of the group's `memoryMb`.
    Memory,
}

impl LoadMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadMetric::Tps => "tps",
            LoadMetric::Mspt => "mspt",
            LoadMetric::Memory => "memory",
        }
    }

    /// Whether a lower value means more load.
    fn falls_under_load(self) -> bool {
        self == LoadMetric::Tps
    }
}

/// `metric` against `scaleUpAt` and `scaleDownAt`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadSignal {
    pub metric: LoadMetric,
    /// Busy from here on: TPS at or below it; MSPT or memory (%) at or above it.
    pub scale_up_at: f64,
    /// Idle from here on (for `scaleDownDelaySeconds` before one goes): TPS at or above it;
    /// MSPT or memory (%) at or below it.
    pub scale_down_at: f64,
}

impl PartialEq for LoadSignal {
    fn eq(&self, other: &LoadSignal) -> bool {
        self.metric == other.metric
            && self.scale_up_at.to_bits() == other.scale_up_at.to_bits()
            && self.scale_down_at.to_bits() == other.scale_down_at.to_bits()
    }
}

impl Eq for LoadSignal {}

/// What the load says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pressure {
    Up,
    Down,
    Hold,
}

impl LoadSignal {
    /// Every problem, each with the field below `dynamic.load`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let (low, high) = match self.metric {
            LoadMetric::Tps => (0.0, 20.0),
            LoadMetric::Mspt => (0.0, 10_000.0),
            LoadMetric::Memory => (0.0, 100.0),
        };
        for (field, value) in [
            (".scaleUpAt", self.scale_up_at),
            (".scaleDownAt", self.scale_down_at),
        ] {
            if !value.is_finite() || value <= low || value > high {
                problems.push((
                    field,
                    format!(
                        "{value} is not a {} value above {low} and at most {high}",
                        self.metric.as_str()
                    ),
                ));
            }
        }
        if problems.is_empty() {
            let (busy, idle) = (self.scale_up_at, self.scale_down_at);
            let ordered = if self.metric.falls_under_load() {
                idle > busy
            } else {
                idle < busy
            };
            if !ordered {
                problems.push((
                    ".scaleDownAt",
                    if self.metric.falls_under_load() {
                        format!("{idle} must be above scaleUpAt ({busy}): TPS falls as load rises")
                    } else {
                        format!("{idle} must be below scaleUpAt ({busy})")
                    },
                ));
            }
        }
        problems
    }

    /// The pressure of `value` (the running instances' average).
    pub fn pressure(&self, value: f64) -> Pressure {
        let busy = if self.metric.falls_under_load() {
            value <= self.scale_up_at
        } else {
            value >= self.scale_up_at
        };
        let idle = if self.metric.falls_under_load() {
            value >= self.scale_down_at
        } else {
            value <= self.scale_down_at
        };
        if busy {
            Pressure::Up
        } else if idle {
            Pressure::Down
        } else {
            Pressure::Hold
        }
    }
}

/// The average of the values the instances reported (`None` when none did).
pub fn average(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(metric: LoadMetric, up: f64, down: f64) -> LoadSignal {
        LoadSignal {
            metric,
            scale_up_at: up,
            scale_down_at: down,
        }
    }

    #[test]
    fn each_metric_scales_in_its_own_direction() {
        let mspt = signal(LoadMetric::Mspt, 40.0, 15.0);
        assert_eq!(mspt.pressure(45.0), Pressure::Up);
        assert_eq!(mspt.pressure(30.0), Pressure::Hold);
        assert_eq!(mspt.pressure(10.0), Pressure::Down);
        let tps = signal(LoadMetric::Tps, 18.0, 19.8);
        assert_eq!(tps.pressure(17.5), Pressure::Up);
        assert_eq!(tps.pressure(19.0), Pressure::Hold);
        assert_eq!(tps.pressure(20.0), Pressure::Down);
        assert_eq!(average(&[10.0, 20.0]), Some(15.0));
        assert_eq!(average(&[]), None);
    }

    #[test]
    fn thresholds_must_make_sense_for_their_metric() {
        assert!(signal(LoadMetric::Mspt, 40.0, 15.0).problems().is_empty());
        assert!(signal(LoadMetric::Tps, 18.0, 19.8).problems().is_empty());
        let fields =
            |s: LoadSignal| -> Vec<&str> { s.problems().into_iter().map(|p| p.0).collect() };
        assert_eq!(
            fields(signal(LoadMetric::Tps, 19.8, 18.0)),
            [".scaleDownAt"]
        );
        assert_eq!(
            fields(signal(LoadMetric::Mspt, 15.0, 40.0)),
            [".scaleDownAt"]
        );
        assert_eq!(
            fields(signal(LoadMetric::Memory, 120.0, 50.0)),
            [".scaleUpAt"]
        );
        assert_eq!(
            fields(signal(LoadMetric::Tps, 0.0, f64::NAN)),
            [".scaleUpAt", ".scaleDownAt"]
        );
    }
}
