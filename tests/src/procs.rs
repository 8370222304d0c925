//! One running process of the system under test ([`Proc`]: a `prexor-testkit` process, with
//! REST on an api replica), and what tests do with several of them.

use std::ops::{Deref, DerefMut};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use prexor_testkit::Process;

use crate::Rest;

/// One running process of the system under test (killed when dropped): everything of
/// [`Process`] (readiness, signals, `/status`, `/metrics`, its log), and REST on an api replica.
pub struct Proc(Process);

impl From<Process> for Proc {
    fn from(process: Process) -> Proc {
        Proc(process)
    }
}

impl Deref for Proc {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.0
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.0
    }
}

impl Proc {
    /// An authenticated REST client for this api replica (`""`: anonymous).
    pub fn rest(&self, token: &str) -> Rest {
        Rest::new(&self.http, token)
    }

    /// Signs in on this api replica; the session token.
    pub async fn login(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let session = self
            .rest("")
            .client()
            .login(user, password)
            .await
            .with_context(|| format!("login as {user}"))?;
        Ok(session.token)
    }

    /// Waits (at most `within`) for this process to exit with a failure whose log names every
    /// one of `needles`; the log.
    pub async fn wait_failure(
        &mut self,
        within: Duration,
        needles: &[&str],
    ) -> anyhow::Result<String> {
        let status = self.wait_exit(within).await?;
        let log = self.log_text();
        ensure!(
            !status.success(),
            "{} should have failed but exited with {status}:\n{log}",
            self.name
        );
        mentions_all(log, needles, || format!("{} failed ({status})", self.name))
    }
}

/// Requires `text` to contain every one of `needles` (else an error: `what()` without the missing
/// ones, and the text); the text.
pub fn mentions_all(
    text: String,
    needles: &[&str],
    what: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    let missing: Vec<&str> = needles
        .iter()
        .copied()
        .filter(|n| !text.contains(n))
        .collect();
    ensure!(
        missing.is_empty(),
        "{} without {missing:?}:\n{text}",
        what()
    );
    Ok(text)
}

/// Which of `procs` holds the lease `scope` now (from their status).
pub async fn holder_of(procs: &[Proc], scope: &str) -> anyhow::Result<Option<usize>> {
    for (i, proc) in procs.iter().enumerate() {
        if proc.leases_held().await?.iter().any(|s| s == scope) {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Which of `procs` holds the lease `scope`, waiting up to `within` for one to (a hand-over may
/// be under way).
pub async fn wait_holder(procs: &[Proc], scope: &str, within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = holder_of(procs, scope).await? {
            return Ok(i);
        }
        ensure!(Instant::now() < deadline, "nobody holds {scope}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stops every process in order (SIGTERM, clean exit required).
pub async fn stop_all<'a>(
    procs: impl IntoIterator<Item = &'a mut Proc>,
    within: Duration,
) -> anyhow::Result<()> {
    for proc in procs {
        proc.stop(within).await?;
    }
    Ok(())
}

/// Runs `command` to its end and requires a zero exit (the error names `what` and carries all
/// it printed); its standard output.
pub fn run_ok(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// Waits until `/readyz` answers 503 with a body containing `needle`.
pub async fn wait_unready_because(proc: &Proc, needle: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..400 {
        match proc.get("/readyz").await {
            Ok((503, body)) if body.contains(needle) => return Ok(()),
            Ok((_, body)) => last = body,
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{} never reported unready because of {needle:?}; last: {last}",
        proc.name
    )
}
