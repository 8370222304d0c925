//! The standard process metrics of Prometheus clients, read from `/proc/self` before each
//! rendering of `/metrics` (docs/observability.md, "Metrics"):
//!
//! - `process_cpu_seconds_total`: user and system CPU time;
//! - `process_resident_memory_bytes`: resident memory;
//! - `process_open_fds`: open file descriptors;
//! - `process_threads`: OS threads;
//! - `process_start_time_seconds`: when the process started, in Unix seconds.
//!
//! On a system without `/proc` they are simply not exported.

use std::sync::OnceLock;

/// Sets every process metric from `/proc/self`.
pub(crate) fn record() {
    let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
    if let Some(stat) = stat_fields() {
        let field = |index: usize| stat.get(index).and_then(|v| v.parse::<f64>().ok());
        // Indexes from field 3 (state) of proc(5): utime is field 14, stime 15, num_threads 20.
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            metrics::gauge!("process_cpu_seconds_total").set((user + system) / ticks);
        }
        if let Some(threads) = field(17) {
            metrics::gauge!("process_threads").set(threads);
        }
    }
    if let Some(start) = start_time(ticks) {
        metrics::gauge!("process_start_time_seconds").set(start);
    }
    let resident = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok());
    if let Some(pages) = resident {
        metrics::gauge!("process_resident_memory_bytes")
            .set(pages * rustix::param::page_size() as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
}

/// Hands the memory the allocator holds free back to the system. glibc keeps what a large,
/// short-lived peak freed (a scheduler's first tick over 10,000 groups decodes every group's
/// records) for reuse, so without this the resident size stays at the peak. A no-op elsewhere
/// than on glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `/proc/self/stat` from field 3 (state) on: the command name in parentheses may contain
/// spaces, so the split starts after its closing parenthesis.
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Boot time (`btime` of `/proc/stat`) plus the process's start (field 22 of its stat, in clock
/// ticks since boot); read once, it does not change.
fn start_time(ticks: f64) -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let started: f64 = stat_fields()?.get(19)?.parse().ok()?;
        Some(boot + started / ticks)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_is_described() {
        let stat = super::stat_fields().expect("/proc/self/stat");
        assert!(stat[17].parse::<u64>().unwrap() >= 1, "threads: {stat:?}");
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let start = super::start_time(ticks).expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
