//! The real `prexorctl`, run with its config file in the test's directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, ensure};
use prexor_acceptance::{Cluster, mentions_all};
use serde_json::Value;

/// One finished `prexorctl` run.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the real `prexorctl` with its config file in the test's directory.
pub struct Ctl {
    binary: PathBuf,
    config: PathBuf,
}

impl Ctl {
    pub fn new(cluster: &Cluster) -> anyhow::Result<Ctl> {
        Ok(Ctl {
            binary: prexor_acceptance::binary("prexorctl")?,
            config: cluster.dir.join("prexorctl.json"),
        })
    }

    /// Starts prexorctl with `args` (its environment is only this test's config file), output
    /// captured.
    pub fn start(&self, args: &[&str], stdin: Stdio) -> anyhow::Result<Child> {
        self.command(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting prexorctl")
    }

    /// The command that runs prexorctl with `args` and this test's config file (which a
    /// caller may replace: `env_remove("PREXORCTL_CONFIG")`).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("PREXORCTL_CONFIG", &self.config)
            .env_remove("PREXOR_CONTROLLER")
            .env_remove("PREXOR_TOKEN")
            .env_remove("PREXOR_CONTEXT");
        command
    }

    /// The binary itself.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// The config file this test's runs use.
    pub fn config(&self) -> &std::path::Path {
        &self.config
    }

    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        let piped = if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = self.start(args, piped)?;
        if let Some(input) = stdin {
            // Dropped at the end of the statement: stdin is closed after the input.
            child
                .stdin
                .take()
                .context("prexorctl stdin")?
                .write_all(input.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        Ok(Run {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout)?,
            stderr: String::from_utf8(output.stderr)?,
        })
    }

    /// Runs with `stdin` (if any) as input; requires exit 0; the standard output.
    fn succeeds(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let run = self.run(args, stdin)?;
        ensure!(
            run.success,
            "prexorctl {args:?} exited with {:?}:\n{}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run.stdout)
    }

    /// Runs with `stdin` as input; requires exit 0; the standard output.
    pub fn ok_with(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        self.succeeds(args, Some(stdin))
    }

    /// Requires exit 0; the standard output.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.succeeds(args, None)
    }

    /// Requires exit 0 and a standard output naming every one of `needles`; that output.
    pub fn says(&self, args: &[&str], needles: &[&str]) -> anyhow::Result<String> {
        mentions_all(self.ok(args)?, needles, || {
            format!("prexorctl {args:?} answered")
        })
    }

    /// Requires a non-zero exit and an explanation naming every one of `needles`; that
    /// explanation.
    pub fn fails_saying(&self, args: &[&str], needles: &[&str]) -> anyhow::Result<String> {
        mentions_all(self.fails(args)?, needles, || {
            format!("prexorctl {args:?} failed")
        })
    }

    /// Requires a non-zero exit and an explanation on stderr; that explanation.
    pub fn fails(&self, args: &[&str]) -> anyhow::Result<String> {
        let run = self.run(args, None)?;
        ensure!(
            !run.success && !run.stderr.trim().is_empty(),
            "prexorctl {args:?} should have failed with a message; exit {:?}:\n{}{}",
            run.code,
            run.stdout,
            run.stderr
        );
        Ok(run.stderr)
    }

    /// `KIND delete NAME` (`kind` plural: `users`), requiring the answer "user NAME deleted".
    pub fn deletes(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        let noun = kind.strip_suffix('s').unwrap_or(kind);
        self.says(
            &[kind, "delete", name],
            &[&format!("{noun} {name} deleted")],
        )?;
        Ok(())
    }

    /// `args -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(&[args, &["-o", "json"]].concat())?;
        serde_json::from_str(&out).with_context(|| format!("prexorctl {args:?} -o json: {out}"))
    }

    /// `args -o yaml`, parsed.
    pub fn yaml(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.ok(&[args, &["-o", "yaml"]].concat())?;
        serde_norway::from_str(&out).with_context(|| format!("prexorctl {args:?} -o yaml: {out}"))
    }

    /// The saved contexts file.
    pub fn saved(&self) -> anyhow::Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            &self.config,
        )?)?)
    }
}
