use std::time::Duration;

/// How long a lease lives in the coordination store, how often its holder renews it, and when the
/// holder stops trusting it on its own (self-fencing).
///
/// The holder measures the self-fencing deadline from the moment it *sent* its last successful
/// renewal, so a renewal that took long to be answered never extends trust beyond what the store
/// granted. The deadline sits below the TTL: by the time the store could hand the lease to a
/// peer, the old holder has already stopped mutating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub ttl: Duration,
    pub renew_interval: Duration,
    pub self_fence_after: Duration,
}

impl LeaseTiming {
    /// The defaults derived from `scheduler.evaluationIntervalSeconds`: TTL = interval × 2,
    /// renewal four times per TTL, self-fencing at 80 % of the TTL.
    pub fn from_evaluation_interval(interval: Duration) -> Self {
        let ttl = interval * 2;
        LeaseTiming {
            ttl,
            renew_interval: ttl / 4,
            self_fence_after: ttl.mul_f64(0.8),
        }
    }

    /// Every reason the timing is unsafe, as `(key suffix, message)` pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.ttl < Duration::from_millis(100) {
            problems.push((
                "leaseTtl",
                format!("{} is too short; use at least 100ms", humanize(self.ttl)),
            ));
        }
        if self.self_fence_after >= self.ttl {
            problems.push((
                "selfFenceAfter",
                format!(
                    "{} must be shorter than coordination.leaseTtl ({}), or a holder could keep mutating after the store handed its lease to a peer",
                    humanize(self.self_fence_after),
                    humanize(self.ttl)
                ),
            ));
        }
        if self.renew_interval * 2 > self.self_fence_after {
            problems.push((
                "renewInterval",
                format!(
                    "{} is too long: renew at least twice before coordination.selfFenceAfter ({})",
                    humanize(self.renew_interval),
                    humanize(self.self_fence_after)
                ),
            ));
        }
        problems
    }
}

fn humanize(d: Duration) -> String {
    format!("{d:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_evaluation_interval() {
        let t = LeaseTiming::from_evaluation_interval(Duration::from_secs(15));
        assert_eq!(t.ttl, Duration::from_secs(30));
        assert_eq!(t.renew_interval, Duration::from_millis(7500));
        assert_eq!(t.self_fence_after, Duration::from_secs(24));
        assert!(t.problems().is_empty());
    }

    #[test]
    fn unsafe_timings_are_named() {
        let t = LeaseTiming {
            ttl: Duration::from_secs(10),
            renew_interval: Duration::from_secs(6),
            self_fence_after: Duration::from_secs(10),
        };
        let keys: Vec<_> = t.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["selfFenceAfter", "renewInterval"]);
    }
}
