use std::future::Future;
use std::time::Instant;

use serde_json::{Value, json};

/// Milliseconds per sample, sorted.
pub struct Samples(Vec<f64>);

impl Samples {
    /// Times `n` runs of `op` (after 10 % warm-up runs that are not recorded).
    pub async fn measure<F, Fut>(n: usize, mut op: F) -> anyhow::Result<Samples>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        for i in 0..n / 10 {
            op(n + i).await?;
        }
        let mut samples = Vec::with_capacity(n);
        for i in 0..n {
            let started = Instant::now();
            op(i).await?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        samples.sort_by(f64::total_cmp);
        Ok(Samples(samples))
    }

    /// Samples measured elsewhere (milliseconds, any order).
    pub fn from_ms(mut samples: Vec<f64>) -> Samples {
        samples.sort_by(f64::total_cmp);
        Samples(samples)
    }

    /// Nearest-rank percentile, `p` in 0..=100.
    pub fn percentile(&self, p: f64) -> f64 {
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
}

/// One result line.
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<(String, f64)>,
    pub target: Option<String>,
}

impl Metric {
    pub fn floor(name: &str, value: f64) -> Metric {
        Metric {
            name: name.to_owned(),
            value,
            unit: "ms",
            baseline: None,
            target: None,
        }
    }

    pub fn against(name: &str, value: f64, baseline: &Metric, target: &str) -> Metric {
        Metric {
            name: name.to_owned(),
            value,
            unit: "ms",
            baseline: Some((baseline.name.clone(), baseline.value)),
            target: Some(target.to_owned()),
        }
    }

    pub fn print(&self) {
        let ratio = self
            .baseline
            .as_ref()
            .filter(|(_, b)| *b > 0.0)
            .map(|(_, b)| round(self.value / b));
        let line: Value = json!({
            "name": self.name,
            "value": round(self.value),
            "unit": self.unit,
            "baseline": self.baseline.as_ref().map(|(n, v)| json!({ "name": n, "value": round(*v) })),
            "ratio": ratio,
            "target": self.target,
        });
        println!("{line}");
    }
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Samples((1..=100).map(f64::from).collect());
        assert_eq!(s.percentile(50.0), 50.0);
        assert_eq!(s.percentile(95.0), 95.0);
        assert_eq!(s.percentile(100.0), 100.0);
        assert_eq!(s.percentile(0.0), 1.0);
    }
}
