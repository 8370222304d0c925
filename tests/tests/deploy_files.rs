//! The deployment files (Docker Compose, Dockerfile, systemd units) cannot run here; keep them
//! consistent with the workspace by reading them: every service binary has a unit, a Compose
//! service and a place in the image.

use std::collections::BTreeMap;
use std::path::Path;

use prexor_testkit::workspace_root;

/// The binaries of every deployable process, from the workspace manifests.
fn deployable_binaries() -> Vec<String> {
    let root = workspace_root();
    let mut bins = Vec::new();
    for dir in [
        "services/api",
        "services/gateway",
        "services/scheduler",
        "services/ca",
        "daemon",
    ] {
        let manifest = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap();
        let name = manifest
            .lines()
            .skip_while(|l| l.trim() != "[[bin]]")
            .find_map(|l| {
                l.trim()
                    .strip_prefix("name = ")
                    .map(|n| n.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| panic!("{dir} declares no [[bin]]"));
        bins.push(name);
    }
    bins
}

/// `[Section]` → key → values of a systemd unit file.
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_owned();
            sections.entry(current.clone()).or_default();
        } else {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {line}"));
            assert!(!current.is_empty(), "{line} outside a section");
            sections
                .entry(current.clone())
                .or_default()
                .entry(key.to_owned())
                .or_default()
                .push(value.to_owned());
        }
    }
    sections
}

fn one<'a>(
    unit: &'a BTreeMap<String, BTreeMap<String, Vec<String>>>,
    section: &str,
    key: &str,
) -> &'a str {
    unit.get(section)
        .and_then(|s| s.get(key))
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or_else(|| panic!("[{section}] {key} missing"))
}

#[test]
fn every_binary_has_a_systemd_unit_that_stops_it_gracefully() {
    let dir = workspace_root().join("compose/systemd");
    for bin in deployable_binaries() {
        let path = dir.join(format!("{bin}.service"));
        let unit = parse_unit(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{} missing", path.display())),
        );
        let exec = one(&unit, "Service", "ExecStart");
        assert!(
            exec.starts_with(&format!("/usr/local/bin/{bin} --config /etc/prexorcloud/")),
            "{bin}: {exec}"
        );
        assert_eq!(one(&unit, "Service", "KillSignal"), "SIGTERM", "{bin}");
        assert!(
            one(&unit, "Service", "Restart").starts_with("on-failure")
                || one(&unit, "Service", "Restart") == "always"
        );
        if bin != "prexor-daemon" {
            // `systemctl stop|restart|disable prexorcloud-controller` (operator page) acts on it.
            assert_eq!(
                one(&unit, "Unit", "PartOf"),
                "prexorcloud-controller.service",
                "{bin}"
            );
            assert_eq!(
                one(&unit, "Install", "WantedBy"),
                "prexorcloud-controller.service",
                "{bin}"
            );
        } else {
            assert_eq!(
                one(&unit, "Service", "KillMode"),
                "process",
                "game servers survive a daemon restart"
            );
        }
    }
    let umbrella =
        parse_unit(&std::fs::read_to_string(dir.join("prexorcloud-controller.service")).unwrap());
    assert_eq!(one(&umbrella, "Service", "RemainAfterExit"), "yes");
    assert_eq!(one(&umbrella, "Install", "WantedBy"), "multi-user.target");
}

#[test]
fn every_binary_has_a_compose_service_and_is_in_the_image() {
    let root = workspace_root();
    let mut compose: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(root.join("compose/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    // Resolve the `<<: *controller` anchors as Compose does.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().expect("services");
    let dockerfile = std::fs::read_to_string(root.join("compose/Dockerfile")).unwrap();
    for bin in deployable_binaries() {
        let name = bin.strip_prefix("prexor-").unwrap();
        let service = services
            .get(name)
            .unwrap_or_else(|| panic!("compose has no service {name:?}"));
        let command = service["command"][0].as_str().unwrap_or_default();
        assert_eq!(command, bin, "compose service {name} runs {command:?}");
        assert!(
            service["deploy"]["replicas"]
                .as_u64()
                .is_some_and(|n| n >= 1),
            "{name} replicas"
        );
        assert!(
            dockerfile.contains(&format!("/target/release/{bin}")),
            "the image lacks {bin}"
        );
        let env = service["environment"].as_mapping();
        if name != "daemon" {
            // Controllers share one MongoDB and one Valkey and run in production.
            let env = env.expect("environment");
            assert_eq!(
                env.get("PREXOR_RUNTIME__PROFILE").and_then(|v| v.as_str()),
                Some("production"),
                "{name}"
            );
            assert!(
                env.get("PREXOR_MONGO__URI").is_some() && env.get("PREXOR_VALKEY__URI").is_some(),
                "{name}"
            );
        }
    }
    for (name, replicas) in [("api", 2), ("gateway", 2), ("scheduler", 2)] {
        assert!(
            services[name]["deploy"]["replicas"].as_u64() >= Some(replicas),
            "{name} runs several replicas"
        );
    }
    assert!(dockerfile.contains("/target/release/prexorctl"));
    assert!(Path::new(&root.join("compose/dev")).is_file());
}
