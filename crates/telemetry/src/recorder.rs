//! The process-wide Prometheus recorder behind the `metrics` facade (docs/observability.md,
//! "Metrics"): every histogram is exported as a Prometheus histogram with [`BUCKETS`] (`_bucket`,
//! `_sum`, `_count`), every series carries the process's `service` and `replica` labels, and the
//! recorder's upkeep (draining histogram samples) runs every [`UPKEEP_EVERY`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Upper bounds (seconds) of every histogram's buckets: request latencies and tick durations
/// from half a millisecond to ten seconds (anything longer lands in `+Inf`).
pub const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's upkeep runs (histogram samples are also drained at each scrape).
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use with `labels` as global labels (later
/// calls return the installed one and ignore theirs). Its upkeep runs on a thread of its own,
/// so a busy async runtime does not delay it.
pub(crate) fn install(labels: &[(&str, &str)]) -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let mut builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("BUCKETS is not empty");
        for (key, value) in labels {
            builder = builder.add_global_label(*key, *value);
        }
        let handle = builder
            .install_recorder()
            .expect("the Prometheus recorder is installed exactly once, here");
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "no metrics upkeep thread; histograms are drained at each scrape only");
        }
        handle
    })
}

/// The process-wide recorder (installed without global labels when [`crate::Telemetry::init`]
/// has not run: unit tests).
pub fn prometheus() -> &'static PrometheusHandle {
    install(&[])
}

#[cfg(test)]
mod tests {
    #[test]
    fn histograms_have_buckets_and_every_series_the_process_labels() {
        super::install(&[("service", "api"), ("replica", "api-1")]);
        metrics::histogram!("prexor_test_seconds", "route" => "/x").record(0.003);
        metrics::counter!("prexor_test_total").increment(2);
        crate::process::record();
        let page = super::prometheus().render();
        assert!(
            page.contains(
                "prexor_test_seconds_bucket{service=\"api\",replica=\"api-1\",route=\"/x\",le=\"0.0025\"} 0"
            ) && page.contains(
                "prexor_test_seconds_bucket{service=\"api\",replica=\"api-1\",route=\"/x\",le=\"0.005\"} 1"
            ),
            "{page}"
        );
        assert!(
            page.contains("prexor_test_total{service=\"api\",replica=\"api-1\"} 2"),
            "{page}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(
                page.contains(&format!("\n{name}{{service=\"api\",replica=\"api-1\"}} ")),
                "{name}: {page}"
            );
        }
    }
}
