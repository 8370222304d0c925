//! Telling systemd how the process is doing (`Type=notify` units in compose/systemd): `READY=1`
//! once the process is first ready (so `systemctl start` returns when it can serve),
//! `STATUS=` with why it is not ready, and `STOPPING=1` when it begins to stop. Without
//! `NOTIFY_SOCKET` (not started by systemd) this does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::readiness::{Readiness, ReadinessReport};

/// How often readiness is looked at for systemd.
const EVERY: Duration = Duration::from_secs(1);

/// The unit's status line for `report`.
fn status_line(report: &ReadinessReport) -> String {
    if report.ready {
        return "ready".to_owned();
    }
    let failing: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| {
            if c.detail.is_empty() {
                c.name.clone()
            } else {
                format!("{}: {}", c.name, c.detail)
            }
        })
        .collect();
    format!("not ready: {}", failing.join("; "))
}

fn notify(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(false, states) {
        tracing::warn!(error = %err, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Follows `readiness` for systemd until `stop`, then says the process is stopping. Runs only
/// when started by systemd with `Type=notify`.
pub async fn notify_systemd(readiness: Readiness, stop: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut announced = false;
    let mut last = String::new();
    loop {
        let report = tokio::select! {
            () = stop.cancelled() => break,
            report = readiness.report() => report,
        };
        let status = status_line(&report);
        if status != last {
            let status_state = NotifyState::Status(&status);
            if report.ready && !announced {
                notify(&[NotifyState::Ready, status_state]);
                announced = true;
            } else {
                notify(&[status_state]);
            }
            last = status;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::CheckResult;

    #[test]
    fn the_status_line_names_what_is_not_ready() {
        let check = |name: &str, ok, detail: &str| CheckResult {
            name: name.into(),
            ok,
            detail: detail.into(),
        };
        let report = ReadinessReport {
            ready: false,
            checks: vec![
                check("mongo", true, ""),
                check("valkey", false, "connection refused"),
                check("lifecycle", false, ""),
            ],
        };
        assert_eq!(
            status_line(&report),
            "not ready: valkey: connection refused; lifecycle"
        );
        let ready = ReadinessReport {
            ready: true,
            checks: vec![],
        };
        assert_eq!(status_line(&ready), "ready");
    }
}
