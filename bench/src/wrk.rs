//! `wrk` on loopback, pinned to the last core (`taskset`) so that the load generator and the
//! process under load do not share one; what it measured.

use std::process::Command;

/// One wrk run's result.
pub struct Load {
    pub rps: f64,
    pub p99_ms: f64,
}

/// Runs wrk for 10 s with 32 connections against `url` (with the bearer `token`, if any).
pub fn run(url: &str, token: Option<&str>) -> anyhow::Result<Load> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut command = Command::new("taskset");
    command
        .args([
            "-c",
            &(cores - 1).to_string(),
            "wrk",
            "-t1",
            "-c32",
            "-d10s",
            "--latency",
        ])
        .arg(url);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command.output().map_err(|e| {
        anyhow::anyhow!(
            "cannot run taskset/wrk ({e}); compose/dev bench installs wrk (apt-get install wrk)"
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let non_2xx = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .map(str::to_owned);
    anyhow::ensure!(
        non_2xx.is_none(),
        "wrk saw errors: {}",
        non_2xx.unwrap_or_default()
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no Requests/sec in wrk output: {text}"))?;
    let p99_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_duration(v.trim()))
        .ok_or_else(|| anyhow::anyhow!("no 99% latency in wrk output: {text}"))?;
    Ok(Load { rps, p99_ms })
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn parse_duration(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_durations() {
        assert_eq!(super::parse_duration("1.50ms"), Some(1.5));
        assert_eq!(super::parse_duration("500.00us"), Some(0.5));
        assert_eq!(super::parse_duration("1.00s"), Some(1000.0));
        assert_eq!(super::parse_duration("junk"), None);
    }
}
