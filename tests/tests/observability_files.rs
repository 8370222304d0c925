//! The observability files (`compose/observability`, docs/observability.md): the Prometheus
//! configuration and alert rules are checked and unit-tested by the real `promtool`; the rules and
//! the Grafana dashboard use exactly the metric names of `metrics.txt` (the list to hold against
//! what the services export); the Compose file runs Prometheus and Grafana with these files.
//!
//! `promtool` comes from Debian's `prometheus` package (`compose/dev install` fetches it). Without it
//! these tests fail: they never skip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use prexor_testkit::workspace_root;
use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// The alerts docs/observability.md describes; each must exist with these names.
const ALERTS: &[&str] = &[
    "PrexorReplicaNotReady",
    "PrexorReplicaDown",
    "PrexorLeasesNotRenewed",
    "PrexorFencedWritesRefusedRising",
    "PrexorStoreUnavailable",
    "PrexorStoreMismatch",
    "PrexorClockUnsynchronized",
    "PrexorCertificateExpiresSoon",
    "PrexorGroupsCrashLooping",
    "PrexorDeploymentsStuck",
    "PrexorApiErrorsHigh",
];

/// Scrape job → the Compose service it scrapes.
const JOBS: &[(&str, &str)] = &[
    ("prexor-api", "api"),
    ("prexor-gateway", "gateway"),
    ("prexor-scheduler", "scheduler"),
    ("prexor-ca", "ca"),
    ("prexor-daemon", "daemon"),
];

fn dir() -> PathBuf {
    workspace_root().join("compose/observability")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool`: `$PROMTOOL`, else on `PATH`, else where `compose/dev install` extracts it.
fn promtool() -> PathBuf {
    prexor_acceptance::prometheus_tool("promtool")
}

/// Runs promtool in `cwd`; its output, or a panic naming the command and what it said.
fn run_promtool(cwd: &Path, args: &[&str]) -> String {
    let tool = promtool();
    let out = Command::new(&tool)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} (in {}) failed ({}):\n{text}",
        args.join(" "),
        cwd.display(),
        out.status
    );
    text
}

/// A fresh directory of this test run under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "prexor-observability-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn str_of<'a>(value: &'a Yaml, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {value:?}"))
}

fn seq<'a>(value: &'a Yaml, what: &str) -> &'a [Yaml] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: not a list: {value:?}"))
}

/// The Compose file with its `<<: *anchor` merges resolved, as Compose does.
fn compose() -> Yaml {
    let mut compose = yaml(&workspace_root().join("compose/docker-compose.yml"));
    compose.apply_merge().unwrap();
    compose
}

/// A Compose service's bind mounts: host path (resolved against compose/) → container path.
fn bind_mounts(service: &Yaml, name: &str) -> BTreeMap<PathBuf, String> {
    let base = workspace_root().join("compose");
    seq(&service["volumes"], &format!("{name}.volumes"))
        .iter()
        .filter_map(|v| {
            let spec = str_of(v, "volume");
            let mut parts = spec.split(':');
            let (host, target) = (parts.next()?, parts.next()?);
            host.starts_with("./")
                .then(|| (base.join(host.trim_start_matches("./")), target.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Metric names in PromQL
// ---------------------------------------------------------------------------------------------

/// Identifiers in a PromQL expression that name a PrexorCloud or process metric (`prexor_*`,
/// `process_*`), outside string literals.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.starts_with("prexor_") || word.starts_with("process_") {
                names.insert(word);
            }
        } else if c.is_ascii_digit() {
            // A number (`0.95`, `7e3`) or duration (`5m`): no metric name starts inside it.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The entry of `listed` a used name stands for: itself, or a histogram's base name for its
/// `_bucket`, `_sum` and `_count` series.
fn listed_as<'a>(name: &str, listed: &'a BTreeSet<String>) -> Option<&'a String> {
    listed.get(name).or_else(|| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).and_then(|base| listed.get(base)))
    })
}

#[test]
fn metric_names_are_found_outside_strings_and_numbers() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (le) (rate(prexor_x_seconds_bucket{job=~"prexor_y"}[5m])))
               / process_threads or label_replace(prexor_z, "use", "prexor_w", "", "") > 7e3"#
        ),
        BTreeSet::from([
            "prexor_x_seconds_bucket".to_owned(),
            "process_threads".to_owned(),
            "prexor_z".to_owned(),
        ])
    );
    let listed = BTreeSet::from(["prexor_x_seconds".to_owned(), "prexor_a_count".to_owned()]);
    assert_eq!(
        listed_as("prexor_x_seconds_bucket", &listed).map(String::as_str),
        Some("prexor_x_seconds")
    );
    assert_eq!(
        listed_as("prexor_a_count", &listed).map(String::as_str),
        Some("prexor_a_count")
    );
    assert_eq!(listed_as("prexor_x", &listed), None);
}

// ---------------------------------------------------------------------------------------------
// The files
// ---------------------------------------------------------------------------------------------

/// metrics.txt: one name a line, no duplicates, nothing else.
fn listed_metrics() -> BTreeSet<String> {
    let mut listed = BTreeSet::new();
    for line in prexor_acceptance::listed_metrics().expect("metrics.txt") {
        let name = line.as_str();
        assert!(!name.is_empty(), "metrics.txt: empty line");
        assert!(
            (name.starts_with("prexor_") || name.starts_with("process_"))
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metrics.txt: {name:?} is not a prexor_/process_ metric name"
        );
        assert!(
            !["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.ends_with(s)),
            "metrics.txt: {name} should be listed by its histogram's base name"
        );
        assert!(listed.insert(name.to_owned()), "metrics.txt: {name} twice");
    }
    listed
}

/// The alerting rules of alerts.yml, by alert name.
fn alert_rules() -> BTreeMap<String, Yaml> {
    let rules = yaml(&dir().join("alerts.yml"));
    let groups = seq(&rules["groups"], "groups");
    assert_eq!(groups.len(), 1, "alerts.yml has one group");
    assert_eq!(str_of(&groups[0]["name"], "group name"), "prexorcloud");
    let mut alerts = BTreeMap::new();
    for rule in seq(&groups[0]["rules"], "rules") {
        let name = str_of(&rule["alert"], "alert").to_owned();
        assert!(
            alerts.insert(name.clone(), rule.clone()).is_none(),
            "{name} twice"
        );
    }
    alerts
}

/// Every PromQL expression of the dashboard (panels, rows' panels, template queries): where it
/// is (panel title and refId) → expression.
fn dashboard_exprs(dashboard: &Json) -> Vec<(String, String)> {
    fn walk(value: &Json, at: &str, out: &mut Vec<(String, String)>) {
        match value {
            Json::Object(map) => {
                let here = match (map.get("title"), map.get("refId")) {
                    (_, Some(Json::String(r))) => format!("{at} {r}"),
                    (Some(Json::String(t)), _) => t.clone(),
                    _ => at.to_owned(),
                };
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Json::String(expr)) => out.push((here.clone(), expr.clone())),
                        _ => walk(v, &here, out),
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    out
}

fn dashboard() -> Json {
    let path = dir().join("grafana/dashboards/prexorcloud.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn the_prometheus_configuration_is_valid_and_scrapes_every_service_on_its_compose_port() {
    // From another directory: rule_files must resolve relative to prometheus.yml.
    let elsewhere = Scratch::new();
    let config = dir().join("prometheus.yml");
    let out = run_promtool(&elsewhere.0, &["check", "config", config.to_str().unwrap()]);
    assert!(
        out.contains("alerts.yml") && !out.contains(" 0 rules found"),
        "promtool did not load the alert rules through rule_files:\n{out}"
    );

    let prometheus = yaml(&config);
    let rule_files: Vec<&str> = seq(&prometheus["rule_files"], "rule_files")
        .iter()
        .map(|f| str_of(f, "rule file"))
        .collect();
    assert_eq!(rule_files, ["alerts.yml"]);

    let compose = compose();
    let services = &compose["services"];
    let jobs = seq(&prometheus["scrape_configs"], "scrape_configs");
    let names: Vec<&str> = jobs
        .iter()
        .map(|j| str_of(&j["job_name"], "job_name"))
        .collect();
    assert_eq!(
        names,
        JOBS.iter().map(|(job, _)| *job).collect::<Vec<_>>(),
        "one job per service"
    );
    for (job, (name, service_name)) in jobs.iter().zip(JOBS) {
        let service = &services[*service_name];
        assert!(
            service.is_mapping(),
            "{name}: compose has no service {service_name}"
        );
        // The port /metrics is served on: the service's http.listen in the compose file.
        let listen = str_of(
            &service["environment"]["PREXOR_HTTP__LISTEN"],
            &format!("{service_name} PREXOR_HTTP__LISTEN"),
        );
        let port: u64 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let metrics_path = job["metrics_path"].as_str().unwrap_or("/metrics");
        assert_eq!(metrics_path, "/metrics", "{name}");
        let sd = seq(&job["dns_sd_configs"], &format!("{name} dns_sd_configs"));
        assert_eq!(
            sd.len(),
            1,
            "{name}: one DNS lookup (every replica of the service)"
        );
        let lookup: Vec<&str> = seq(&sd[0]["names"], "names")
            .iter()
            .map(|n| str_of(n, "name"))
            .collect();
        assert_eq!(
            lookup,
            [*service_name],
            "{name} looks up the compose service"
        );
        assert_eq!(str_of(&sd[0]["type"], "type"), "A", "{name}");
        assert_eq!(
            sd[0]["port"].as_u64(),
            Some(port),
            "{name}: port of {listen}"
        );
        // The api serves its port over HTTPS unless api.tls is off.
        let https = *service_name == "api"
            && service["environment"]["PREXOR_API__TLS"].as_str() != Some("off");
        let scheme = job["scheme"].as_str().unwrap_or("http");
        assert_eq!(
            scheme,
            if https { "https" } else { "http" },
            "{name} scheme"
        );
    }
}

#[test]
fn the_alert_rules_are_valid_documented_and_pass_their_unit_tests() {
    let dir = dir();
    let out = run_promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{out}"
    );
    run_promtool(&dir, &["test", "rules", "alerts_test.yml"]);

    let alerts = alert_rules();
    assert_eq!(
        alerts.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ALERTS.iter().copied().collect::<BTreeSet<_>>(),
        "the alerts of docs/observability.md"
    );
    let doc = read(&workspace_root().join("docs/observability.md"));
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                rule["annotations"][annotation]
                    .as_str()
                    .is_some_and(|s| s.trim().len() > 10),
                "{name}: no {annotation}"
            );
        }
        assert!(
            doc.contains(name.as_str()),
            "docs/observability.md lacks {name}"
        );
    }

    // Every alert has a unit test where it fires and one where it must not.
    let tests = yaml(&dir.join("alerts_test.yml"));
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in seq(&tests["tests"], "tests") {
        for check in seq(&case["alert_rule_test"], "alert_rule_test") {
            let name = str_of(&check["alertname"], "alertname").to_owned();
            let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected == 0 {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for name in ALERTS {
        assert!(fires.contains(*name), "alerts_test.yml: {name} never fires");
        assert!(
            quiet.contains(*name),
            "alerts_test.yml: no case where {name} must not fire"
        );
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs(&dashboard());
    assert!(!exprs.is_empty());
    // promtool parses PromQL in rule files: one recording rule per query.
    let scratch = Scratch::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    std::fs::write(scratch.0.join("dashboard.yml"), rules).unwrap();
    let out = run_promtool(&scratch.0, &["check", "rules", "dashboard.yml"]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn the_rules_and_the_dashboard_use_exactly_the_listed_metrics() {
    let listed = listed_metrics();
    let mut exprs: Vec<(String, String)> = alert_rules()
        .into_iter()
        .map(|(name, rule)| {
            (
                format!("alert {name}"),
                str_of(&rule["expr"], "expr").to_owned(),
            )
        })
        .collect();
    exprs.extend(dashboard_exprs(&dashboard()));

    let mut used = BTreeSet::new();
    let mut unlisted = Vec::new();
    for (at, expr) in &exprs {
        for name in metric_names(expr) {
            match listed_as(&name, &listed) {
                Some(entry) => {
                    used.insert(entry.clone());
                }
                None => unlisted.push(format!("{name} (in {at})")),
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "metrics used but not in compose/observability/metrics.txt: {unlisted:#?}"
    );
    let unused: Vec<&String> = listed.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "metrics.txt lists names no rule or panel uses: {unused:?}"
    );
}

#[test]
fn the_dashboard_is_provisioned_against_the_prometheus_datasource() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "prexorcloud");
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");

    let mut panels: Vec<&Json> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{title}: id twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && w > 0, "{title}: gridPos {grid}");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        assert_eq!(panel["datasource"]["uid"], "prometheus", "{title}");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "prometheus", "{title}");
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "{title}: refId twice"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "{title}: empty query"
            );
        }
    }

    let provisioning = dir().join("grafana/provisioning");
    let datasources = yaml(&provisioning.join("datasources/prometheus.yml"));
    let prometheus = &seq(&datasources["datasources"], "datasources")[0];
    assert_eq!(str_of(&prometheus["uid"], "uid"), "prometheus");
    assert_eq!(str_of(&prometheus["type"], "type"), "prometheus");
    assert_eq!(
        str_of(&prometheus["url"], "url"),
        "http://prometheus:9090",
        "the compose service"
    );

    // Grafana loads the dashboards from where the Compose file mounts them.
    let providers = yaml(&provisioning.join("dashboards/prexorcloud.yml"));
    let provider_path = str_of(
        &seq(&providers["providers"], "providers")[0]["options"]["path"],
        "path",
    )
    .to_owned();
    let compose = compose();
    let grafana = &compose["services"]["grafana"];
    assert!(
        str_of(&grafana["image"], "grafana image").starts_with("grafana/grafana"),
        "grafana image"
    );
    let mounts = bind_mounts(grafana, "grafana");
    let dashboards_dir = dir().join("grafana/dashboards");
    assert_eq!(
        mounts.get(&dashboards_dir).map(|t| t.trim_end_matches('/')),
        Some(provider_path.trim_end_matches('/')),
        "grafana mounts the dashboards where the provider reads them: {mounts:?}"
    );
    for sub in ["datasources", "dashboards"] {
        assert_eq!(
            mounts.get(&provisioning.join(sub)).map(String::as_str),
            Some(format!("/etc/grafana/provisioning/{sub}").as_str()),
            "grafana provisioning/{sub}: {mounts:?}"
        );
    }
    let ports: Vec<&str> = seq(&grafana["ports"], "grafana ports")
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":3000")), "{ports:?}");
}

#[test]
fn compose_runs_prometheus_with_the_configuration_and_the_rules() {
    let compose = compose();
    let prometheus = &compose["services"]["prometheus"];
    assert!(
        str_of(&prometheus["image"], "prometheus image").starts_with("prom/prometheus"),
        "prometheus image"
    );
    let mounts = bind_mounts(prometheus, "prometheus");
    for target in mounts.values() {
        assert!(target.starts_with('/'), "{target}");
    }
    for host in mounts.keys() {
        assert!(host.exists(), "mounted {} does not exist", host.display());
    }
    let config = mounts
        .get(&dir().join("prometheus.yml"))
        .expect("prometheus mounts prometheus.yml");
    let rules = mounts
        .get(&dir().join("alerts.yml"))
        .expect("prometheus mounts alerts.yml");
    // rule_files is relative to the configuration: the rules sit next to it in the container.
    assert_eq!(
        Path::new(rules).parent(),
        Path::new(config).parent(),
        "alerts.yml next to prometheus.yml"
    );
    let command: Vec<&str> = prometheus["command"]
        .as_sequence()
        .map(|c| c.iter().map(|a| str_of(a, "argument")).collect())
        .unwrap_or_default();
    if !command.is_empty() {
        assert!(
            command.contains(&format!("--config.file={config}").as_str()),
            "{command:?}"
        );
    }
    let ports: Vec<&str> = seq(&prometheus["ports"], "prometheus ports")
        .iter()
        .map(|p| str_of(p, "port"))
        .collect();
    assert!(ports.iter().any(|p| p.ends_with(":9090")), "{ports:?}");
}
