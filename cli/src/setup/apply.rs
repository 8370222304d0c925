//! Carrying out a setup plan: the systemd units, the dry-run listing, and the steps that write
//! files, create the service user and start the units.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::{Plan, PlannedFile, Role, SetupArgs, Step};

/// The unit templates shipped in compose/systemd/.
const UNIT_TEMPLATES: &[(&str, &str)] = &[
    (
        "prexor-api.service",
        include_str!("../../../compose/systemd/prexor-api.service"),
    ),
    (
        "prexor-gateway.service",
        include_str!("../../../compose/systemd/prexor-gateway.service"),
    ),
    (
        "prexor-scheduler.service",
        include_str!("../../../compose/systemd/prexor-scheduler.service"),
    ),
    (
        "prexor-ca.service",
        include_str!("../../../compose/systemd/prexor-ca.service"),
    ),
    (
        "prexor-daemon.service",
        include_str!("../../../compose/systemd/prexor-daemon.service"),
    ),
    (
        "prexorcloud-controller.service",
        include_str!("../../../compose/systemd/prexorcloud-controller.service"),
    ),
];

/// The units, with this host's paths and user put into the templates.
pub(super) fn units(args: &SetupArgs, bin_dir: &Path, names: &[String]) -> Vec<PlannedFile> {
    names
        .iter()
        .filter_map(|name| {
            let template = UNIT_TEMPLATES.iter().find(|(n, _)| n == name)?.1;
            let contents = template
                .replace("/usr/local/bin", &bin_dir.display().to_string())
                .replace("/etc/prexorcloud", &args.config_dir.display().to_string())
                .replace(
                    "/var/lib/prexorcloud",
                    &args.state_dir.display().to_string(),
                )
                .replace("User=prexorcloud", &format!("User={}", args.user))
                .replace("Group=prexorcloud", &format!("Group={}", args.user));
            Some(PlannedFile {
                path: args.unit_dir.join(name),
                contents,
                mode: 0o644,
                checked_by: None,
            })
        })
        .collect()
}

pub(super) fn print_dry_run(args: &SetupArgs, plan: &Plan, bin_dir: &Path) {
    let hide = |text: &str| {
        plan.secrets
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "****"))
    };
    println!("dry run: nothing is written, created or started");
    for check in &plan.checked {
        println!("checked: {check}");
    }
    for dir in &plan.dirs {
        println!("would create directory {}", dir.display());
    }
    for (link, target) in &plan.links {
        println!("would link {} -> {}", link.display(), target.display());
    }
    for file in &plan.files {
        println!(
            "would write {} (mode {:o}):",
            file.path.display(),
            file.mode
        );
        for line in file.contents.lines() {
            println!("    {}", hide(line));
        }
    }
    for step in &plan.steps {
        println!("would {}: {}", step.what, step_command(step, bin_dir));
    }
    println!("would give {} to user {}", owned(plan), args.user);
    for command in systemctl(plan) {
        println!("would run: systemctl {}", command.join(" "));
    }
}

fn step_command(step: &Step, bin_dir: &Path) -> String {
    let env: String = step.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!(
        "{env}{} {}",
        bin_dir.join(step.binary).display(),
        step.args.join(" ")
    )
}

/// The directories handed to the service user.
fn owned(plan: &Plan) -> String {
    plan.dirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn systemctl(plan: &Plan) -> Vec<Vec<String>> {
    let mut enable = vec!["enable".to_owned(), "--now".to_owned()];
    enable.extend(plan.units.iter().cloned());
    vec![vec!["daemon-reload".to_owned()], enable]
}

/// `link` pointing at `target`: made, or already so; anything else there is left alone and
/// refused.
fn make_link(link: &Path, target: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(link) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::os::unix::fs::symlink(target, link)
                .with_context(|| format!("linking {} to {}", link.display(), target.display()))?;
            println!("linked {} -> {}", link.display(), target.display());
            Ok(())
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", link.display())),
        Ok(meta) if meta.file_type().is_symlink() && std::fs::read_link(link)? == target => Ok(()),
        Ok(_) => bail!(
            "{} exists and is not a link to {}: move what it holds into {} and remove it, then run setup again",
            link.display(),
            target.display(),
            target.display()
        ),
    }
}

pub(super) fn apply(args: &SetupArgs, plan: &Plan, bin_dir: &Path) -> anyhow::Result<()> {
    // Every binary the units and steps need, and every config accepted by its own service,
    // before anything is written.
    let needed = plan
        .files
        .iter()
        .filter_map(|f| f.checked_by)
        .chain(plan.steps.iter().map(|s| s.binary));
    for binary in needed {
        let path = bin_dir.join(binary);
        if !path.is_file() {
            bail!(
                "{binary} is not installed in {}: install the PrexorCloud binaries there, or pass --bin-dir",
                bin_dir.display()
            );
        }
    }
    let scratch = tempdir()?;
    let checked = plan
        .files
        .iter()
        .filter_map(|f| f.checked_by.map(|b| (f, b)))
        .try_for_each(|(file, binary)| check_config(&scratch, file, &bin_dir.join(binary)));
    let _ = std::fs::remove_dir_all(&scratch);
    checked?;

    let running_as_root = effective_uid() == 0;
    if running_as_root {
        ensure_user(args)?;
    }
    for dir in &plan.dirs {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for (link, target) in &plan.links {
        make_link(link, target)?;
    }
    for file in &plan.files {
        write_file(file)?;
        println!("wrote {}", file.path.display());
    }
    for step in &plan.steps {
        println!("{}: {}", step.what, step_command(step, bin_dir));
        let status = Command::new(bin_dir.join(step.binary))
            .args(&step.args)
            .envs(step.env.iter().copied())
            .env_remove("PREXOR_CONFIG")
            .status()
            .with_context(|| format!("running {}", step.binary))?;
        if !status.success() {
            bail!(
                "could not {} ({} exited with {status}); the files above are written. Fix the cause shown above and run: {}",
                step.what,
                step.binary,
                step_command(step, bin_dir)
            );
        }
    }
    if running_as_root {
        for dir in &plan.dirs {
            run(
                "chown",
                &[
                    "-R".into(),
                    format!("{0}:{0}", args.user),
                    dir.display().to_string(),
                ],
            )?;
        }
    } else {
        println!(
            "not running as root: {} stay owned by you; give them to {} before starting the units",
            owned(plan),
            args.user
        );
    }
    if args.no_enable {
        println!(
            "--no-enable: start with `systemctl daemon-reload && systemctl enable --now {}`",
            plan.units.join(" ")
        );
    } else {
        for command in systemctl(plan) {
            run("systemctl", &command)?;
        }
        println!("enabled and started {}", plan.units.join(", "));
    }
    if args.role == Role::Controller {
        let host = args.advertise_host.as_deref().unwrap_or("<this host>");
        println!(
            "next: prexorctl login --controller https://{host}:8080 --ca-fingerprint <the CA fingerprint above>, then prexorctl status"
        );
    }
    Ok(())
}

/// Runs `<binary> --config <scratch copy> --check-config`: the service's own validation.
fn check_config(scratch: &Path, file: &PlannedFile, binary: &Path) -> anyhow::Result<()> {
    let name = file.path.file_name().unwrap_or_default();
    let copy = scratch.join(name);
    std::fs::write(&copy, &file.contents).with_context(|| format!("writing {}", copy.display()))?;
    let output = Command::new(binary)
        .arg("--config")
        .arg(&copy)
        .arg("--check-config")
        .env_remove("PREXOR_CONFIG")
        .output()
        .with_context(|| format!("running {} --check-config", binary.display()))?;
    if !output.status.success() {
        bail!(
            "{} refuses the configuration setup would write to {}; nothing was written:\n{}{}",
            binary.display(),
            file.path.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// A fresh private directory for the config checks.
fn tempdir() -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!(
        "prexorctl-setup-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes through a temporary file and a rename, so a file is either the old or the new one.
fn write_file(file: &PlannedFile) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = &file.path;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.setup-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.mode)
            .open(&tmp)?;
        out.write_all(file.contents.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// Creates the service user (system account, own group, no login) when it does not exist.
fn ensure_user(args: &SetupArgs) -> anyhow::Result<()> {
    let exists = Command::new("id")
        .arg("-u")
        .arg(&args.user)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        run(
            "useradd",
            &[
                "--system".into(),
                "--user-group".into(),
                "--home-dir".into(),
                args.state_dir.display().to_string(),
                "--no-create-home".into(),
                "--shell".into(),
                "/usr/sbin/nologin".into(),
                args.user.clone(),
            ],
        )?;
        println!("created system user {}", args.user);
    }
    Ok(())
}

fn run(program: &str, args: &[String]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // The owner of /proc/self is the effective user: no libc call needed.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}
