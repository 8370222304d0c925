//! Prometheus for the observability tests (docs/observability.md): finding `prometheus` and
//! `promtool` (Debian's `prometheus` package, which `compose/dev install` extracts into
//! `.svc/prometheus/`), and a real Prometheus server scraping a test's processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prexor_testkit::{free_port, spawn_tied, workspace_root};
use serde_json::Value;

use crate::{Cluster, Proc};

/// How often the test's Prometheus scrapes its targets.
const SCRAPE_EVERY: &str = "1s";

/// Where Prometheus' tool `name` (`prometheus`, `promtool`) is: `$PROMETHEUS` / `$PROMTOOL`,
/// else on `PATH`, else in `.svc/prometheus/usr/bin` (`compose/dev install`). Panics without it:
/// the observability tests run with the real tools, they never skip.
pub fn prometheus_tool(name: &str) -> PathBuf {
    let variable = name.to_uppercase();
    if let Some(path) = std::env::var_os(&variable).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{variable}={} is not a file; unset it, or install {name} with `compose/dev install` \
             (or `apt-get install prometheus`)",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    let extracted = workspace_root().join(".svc/prometheus/usr/bin").join(name);
    on_path
        .or_else(|| extracted.is_file().then_some(extracted))
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at ${variable}, PATH and .svc/prometheus/usr/bin): the \
                 observability tests use the real {name}, never skip. Run `compose/dev install`, \
                 which extracts Debian's prometheus package into .svc/ (or `apt-get install \
                 prometheus`, without starting its service)"
            )
        })
}

/// A Prometheus server of one test, scraping its processes every second; killed when dropped.
pub struct Prometheus {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    log: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus with its configuration and storage in `<test dir>/prometheus`, one scrape
    /// job `prexor-<kind>` per kind of process in `targets` (kind → the processes).
    pub fn start(
        cluster: &Cluster,
        targets: &BTreeMap<String, Vec<&Proc>>,
    ) -> anyhow::Result<Prometheus> {
        let binary = prometheus_tool("prometheus");
        let dir = cluster.dir.join("prometheus");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets)?)?;
        let port = free_port();
        let log = dir.join("prometheus.log");
        let output = std::fs::File::create(&log)?;
        let mut command = Command::new(&binary);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output);
        let child =
            spawn_tied(command).with_context(|| format!("starting {}", binary.display()))?;
        Ok(Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// The result vector of the instant query `query`; an error naming what Prometheus said.
    pub async fn query(&self, query: &str) -> anyhow::Result<Vec<Value>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url),
            [("query", query)],
        )?;
        let answer: Value = self.http.get(url).send().await?.json().await?;
        if answer["status"] != "success" {
            bail!("Prometheus refused {query:?}: {answer}");
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `query` returns at least `count` samples, all satisfying `each`; the samples.
    pub async fn wait_for(
        &self,
        query: &str,
        count: usize,
        within: Duration,
        each: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.query(query).await {
                Ok(samples) if samples.len() >= count && samples.iter().all(&each) => {
                    return Ok(samples);
                }
                Ok(samples) => serde_json::to_string(&samples)?,
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                bail!(
                    "Prometheus' answer to {query:?} did not have {count} good samples within \
                     {within:?}; the last: {last}\n----- Prometheus log -----\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: every target's `/metrics`, by job `prexor-<kind>` (HTTPS unverified for
/// a process serving HTTPS, as compose/observability/prometheus.yml does for the api).
fn scrape_config(targets: &BTreeMap<String, Vec<&Proc>>) -> anyhow::Result<String> {
    let mut config = format!(
        "global:\n  scrape_interval: {SCRAPE_EVERY}\n  scrape_timeout: {SCRAPE_EVERY}\nscrape_configs:\n"
    );
    for (kind, procs) in targets {
        let mut https = false;
        let mut addresses = Vec::new();
        for proc in procs {
            let (scheme, address) = proc
                .http
                .split_once("://")
                .with_context(|| format!("{}: no scheme in {}", proc.name, proc.http))?;
            https |= scheme == "https";
            addresses.push(format!("\"{address}\""));
        }
        config.push_str(&format!(
            "  - job_name: prexor-{kind}\n    scheme: {}\n    static_configs:\n      - targets: [{}]\n",
            if https { "https" } else { "http" },
            addresses.join(", ")
        ));
        if https {
            config.push_str("    tls_config:\n      insecure_skip_verify: true\n");
        }
    }
    Ok(config)
}

/// The lines of `compose/observability/metrics.txt`, trimmed: the metric names the rules and the
/// dashboard use, one a line (a histogram by its base name).
pub fn listed_metrics() -> anyhow::Result<Vec<String>> {
    let path = Path::new("compose/observability/metrics.txt");
    let text = std::fs::read_to_string(workspace_root().join(path))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(|l| l.trim().to_owned()).collect())
}
