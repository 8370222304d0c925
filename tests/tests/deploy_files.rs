//! The deployment files (Docker Compose, Dockerfile, systemd units) cannot run here (no Docker
//! engine, no systemd as PID 1); keep them consistent with the workspace by reading them, and
//! check them with the tools that would read them: every unit passes `systemd-analyze verify`,
//! the Compose file conforms to the Compose Specification's schema (`tests/deploy`). Every
//! service binary has a hardened unit that notifies systemd, a Compose service with a healthcheck
//! (its own `--probe`) and a place in the image, with its volumes owned by its user.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

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
        // Ready (sd_notify) when its /readyz is, with its own state directory and private files.
        assert_eq!(one(&unit, "Service", "Type"), "notify", "{bin}");
        assert_eq!(one(&unit, "Service", "NotifyAccess"), "main", "{bin}");
        assert!(
            one(&unit, "Service", "StateDirectory").starts_with("prexorcloud/"),
            "{bin}"
        );
        assert_eq!(one(&unit, "Service", "UMask"), "0077", "{bin}");
        for key in [
            "NoNewPrivileges",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "LockPersonality",
            "RestrictRealtime",
        ] {
            assert_eq!(one(&unit, "Service", key), "true", "{bin}: {key}");
        }
        assert!(
            one(&unit, "Service", "RestrictAddressFamilies")
                .starts_with("AF_UNIX AF_INET AF_INET6"),
            "{bin}"
        );
        assert!(
            one(&unit, "Service", "Restart").starts_with("on-failure")
                || one(&unit, "Service", "Restart") == "always"
        );
        if bin != "prexor-daemon" {
            // A controller needs the network and its state directory, nothing else.
            for (key, value) in [
                ("ProtectSystem", "strict"),
                ("ProtectControlGroups", "true"),
                ("MemoryDenyWriteExecute", "true"),
                ("CapabilityBoundingSet", ""),
                ("SystemCallFilter", "@system-service"),
                ("PrivateDevices", "true"),
            ] {
                assert_eq!(one(&unit, "Service", key), value, "{bin}: {key}");
            }
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

/// Runs `compose/dev install` once (systemd-analyze, `tests/deploy`'s packages): these tests use
/// the real tools and fail, never skip, without them.
fn tools() {
    prexor_testkit::ensure_installed().expect("compose/dev install");
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    tools();
    let dir = tempdir("units");
    let bins = prexor_testkit::bin_dir();
    let units = workspace_root().join("compose/systemd");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        // The binaries at their built place (verify checks that ExecStart can run).
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/", &format!("{}/", bins.display()));
        let copy = dir.join(path.file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        files.push(copy);
    }
    assert!(files.len() >= 6, "units: {files:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .expect("systemd-analyze (Debian's systemd; compose/dev install installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("prexor-deploy-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `node tests/deploy/compose-schema.mjs FILE`: its exit status and what it printed.
fn compose_schema(file: &Path) -> (bool, String) {
    let out = Command::new("node")
        .arg(workspace_root().join("tests/deploy/compose-schema.mjs"))
        .arg(file)
        .output()
        .expect("node (Debian: apt-get install nodejs)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_compose_file_conforms_to_the_compose_specification() {
    tools();
    let file = workspace_root().join("compose/docker-compose.yml");
    let (ok, said) = compose_schema(&file);
    assert!(ok, "{said}");
    // The checker refuses what Compose would: a condition Compose does not know.
    let broken = std::fs::read_to_string(&file).unwrap().replacen(
        "condition: service_healthy",
        "condition: healthy",
        1,
    );
    let copy = tempdir("compose").join("docker-compose.yml");
    std::fs::write(&copy, broken).unwrap();
    let (ok, said) = compose_schema(&copy);
    assert!(
        !ok && said.contains("condition") && said.contains("service_healthy"),
        "{said}"
    );
}

/// The Compose file with its merge keys resolved, and its services.
fn compose() -> serde_norway::Value {
    let mut compose: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(workspace_root().join("compose/docker-compose.yml")).unwrap(),
    )
    .unwrap();
    compose.apply_merge().unwrap();
    compose
}

/// Whether a Compose service runs the PrexorCloud image.
fn ours(service: &serde_norway::Value) -> bool {
    service["image"]
        .as_str()
        .is_some_and(|i| i.contains("prexorcloud/prexorcloud"))
}

#[test]
fn every_compose_service_is_health_checked_and_waits_for_healthy_dependencies() {
    let compose = compose();
    for (name, service) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        let test = &service["healthcheck"]["test"];
        assert!(test.as_sequence().is_some(), "{name} has no healthcheck");
        if !ours(service) {
            continue;
        }
        let binary = service["command"][0].as_str().unwrap();
        assert_eq!(
            test.as_sequence()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>(),
            ["CMD", binary, "--probe"],
            "{name} is healthy when its own /readyz is"
        );
        let depends = service["depends_on"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name}: depends_on names conditions"));
        for (on, condition) in depends {
            assert_eq!(
                condition["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {on:?} to be healthy"
            );
        }
    }
}

#[test]
fn every_volume_path_exists_in_the_image_owned_by_its_user() {
    let root = workspace_root();
    let dockerfile = std::fs::read_to_string(root.join("compose/Dockerfile")).unwrap();
    // The runtime stage's directories: `install -d ... -o prexorcloud -g prexorcloud PATH...`.
    let joined = dockerfile.replace("\\\n", " ");
    let created: Vec<&str> = joined
        .lines()
        .filter_map(|l| l.split("install -d ").nth(1))
        .filter(|l| l.contains("-o prexorcloud -g prexorcloud"))
        .flat_map(|l| l.split_whitespace().filter(|w| w.starts_with('/')))
        .collect();
    assert!(
        dockerfile.contains("\nUSER prexorcloud\n"),
        "the services run as prexorcloud"
    );
    let compose = compose();
    let mut mounted = 0;
    for (name, service) in compose["services"].as_mapping().unwrap() {
        if !ours(service) {
            continue;
        }
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let target = volume.as_str().unwrap().split(':').nth(1).unwrap();
            assert!(
                created.contains(&target),
                "{name:?} mounts {target}, which the image does not create owned by prexorcloud ({created:?})"
            );
            mounted += 1;
        }
    }
    assert!(
        mounted >= 2,
        "the ca and the daemon keep their state in volumes"
    );
    // The build: locked, only the deployable binaries, a context without build output.
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("--mount=type=cache"));
    for bin in deployable_binaries() {
        assert!(dockerfile.contains(&format!("--bin {bin}")), "{bin}");
    }
    assert!(!dockerfile.contains("--workspace") && !dockerfile.contains("fakeserver"));
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for path in ["target/", ".svc/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l == path),
            ".dockerignore lacks {path}"
        );
    }
}
