//! What keeps servers away from the daemon and from each other: their directories live in
//! `daemon.serversDir`, apart from the daemon's private `dataDir` (mode 0700: the node key, the
//! fencing marks, the layer cache, the shims' run directories); their environment is built from
//! the plan alone; when the daemon runs as root they run as `daemon.runAs` (by default one uid
//! per running server from a range); and each gets a cgroup with its memory limit where the host
//! has one ([`crate::cgroup`]). See `docs/daemon-protocol.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prexor_config::{DEFAULT_UID_RANGE, DaemonConfig, RunAs};
use prexor_proto::v1::{CompositionPlan, NodeIsolation};

use crate::cgroup::{Cgroup, Cgroups, Limits};

/// The `PATH` servers get (nothing of the daemon's environment is passed on).
const SERVER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct Isolation {
    pub servers_dir: PathBuf,
    run_as: RunAs,
    cgroups: Result<Cgroups, String>,
    memory_overhead_percent: u32,
    cpu_quota_percent: Option<u32>,
    pub console_log_bytes: u64,
}

/// The user one server runs as: `None` for the daemon's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerUser {
    pub uid: u32,
    pub gid: u32,
}

impl Isolation {
    /// Resolves the settings for this host: `daemon.runAs` against the daemon's own user,
    /// the servers directory (created, reachable by the servers' users), the cgroup support.
    pub fn prepare(config: &DaemonConfig) -> anyhow::Result<Isolation> {
        let settings = &config.isolation;
        let root = rustix::process::getuid().is_root();
        let run_as = match (&settings.run_as, root) {
            (Some(RunAs::Daemon) | None, false) => RunAs::Daemon,
            (Some(_), false) => anyhow::bail!(
                "daemon.runAs needs the daemon to run as root (it runs as uid {}); remove it to run servers as the daemon's user",
                rustix::process::getuid().as_raw()
            ),
            (Some(run_as), true) => run_as.clone(),
            (None, true) => DEFAULT_UID_RANGE,
        };
        let dir = &settings.servers_dir;
        let switching = run_as != RunAs::Daemon;
        make_dir(dir, if switching { 0o711 } else { 0o700 })
            .map_err(|e| anyhow::anyhow!("daemon.serversDir {}: {e}", dir.display()))?;
        if switching {
            reachable_by_others(dir)?;
        }
        let cgroups = if settings.cgroups {
            Cgroups::detect(&config.node_id, &config.data_dir)
        } else {
            Err("turned off (daemon.cgroups = false)".into())
        };
        let isolation = Isolation {
            servers_dir: dir.clone(),
            run_as,
            cgroups,
            memory_overhead_percent: settings.memory_overhead_percent,
            cpu_quota_percent: settings.cpu_quota_percent,
            console_log_bytes: settings.console_log_bytes,
        };
        let summary = isolation.summary();
        match (&isolation.run_as, &isolation.cgroups) {
            (RunAs::Daemon, _) => {
                tracing::warn!(run_as = %summary.run_as, "servers run as the daemon's own user and can read its data directory (the node key): run the daemon as root with daemon.runAs for isolation")
            }
            _ => tracing::info!(run_as = %summary.run_as, "servers run as unprivileged users"),
        }
        match &isolation.cgroups {
            Ok(_) => tracing::info!(limits = %summary.limits, "per-server resource limits"),
            Err(_) => {
                tracing::warn!(limits = %summary.limits, "servers run without resource limits")
            }
        }
        Ok(isolation)
    }

    /// In words, for the node's status (`prexorctl nodes show`).
    pub fn summary(&self) -> NodeIsolation {
        NodeIsolation {
            run_as: match &self.run_as {
                RunAs::Daemon => "the daemon's own user".into(),
                RunAs::User { uid, gid } => format!("uid {uid}, gid {gid}"),
                RunAs::Range { first, last } => {
                    format!("one uid per server from {first}-{last}")
                }
            },
            limits: match &self.cgroups {
                Ok(cgroups) => cgroups.describe(),
                Err(reason) => format!("unavailable: {reason}"),
            },
            resource_limits: self.cgroups.is_ok(),
        }
    }

    /// The user for a new server, given those of the servers running now.
    pub fn user_for(&self, taken: &[ServerUser]) -> Result<Option<ServerUser>, String> {
        match self.run_as {
            RunAs::Daemon => Ok(None),
            RunAs::User { uid, gid } => Ok(Some(ServerUser { uid, gid })),
            RunAs::Range { first, last } => (first..=last)
                .find(|uid| !taken.iter().any(|t| t.uid == *uid))
                .map(|uid| Some(ServerUser { uid, gid: uid }))
                .ok_or_else(|| {
                    format!(
                        "every uid of daemon.runAs {first}-{last} is in use by a running server"
                    )
                }),
        }
    }

    /// A cgroup for `instance` with the plan's memory, where the host has cgroups.
    pub fn cgroup_for(&self, instance: &str, memory_mb: u64) -> Result<Option<Cgroup>, String> {
        let Ok(cgroups) = &self.cgroups else {
            return Ok(None);
        };
        if memory_mb == 0 {
            return Ok(None);
        }
        let limit_mb = memory_mb + memory_mb * u64::from(self.memory_overhead_percent) / 100;
        cgroups
            .create(
                instance,
                Limits {
                    memory_bytes: limit_mb * 1024 * 1024,
                    cpu_percent: self.cpu_quota_percent,
                },
            )
            .map(Some)
            .map_err(|e| format!("cannot create the cgroup of {instance}: {e}"))
    }

    /// The instance's directory (below `daemon.serversDir`).
    pub fn instance_dir(&self, instance: &str) -> PathBuf {
        self.servers_dir.join(instance)
    }

    /// Hands `dir` (and everything in it) to `user`, readable by nobody else.
    pub fn hand_over(&self, dir: &Path, user: Option<ServerUser>) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
        let Some(user) = user else {
            return Ok(());
        };
        let mut pending = vec![dir.to_path_buf()];
        while let Some(path) = pending.pop() {
            std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("cannot give {} to uid {}: {e}", path.display(), user.uid))?;
            if path.is_dir() && !path.is_symlink() {
                let entries =
                    std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
        Ok(())
    }
}

/// The whole environment of a server: a fixed `PATH`, `HOME` (its directory), `LANG`, the
/// documented `SERVER_PORT` and `PREXOR_*` variables, and the plan's own (placeholders
/// substituted). Nothing of the daemon's environment is passed on.
pub fn server_env(
    plan: &CompositionPlan,
    node_id: &str,
    dir: &Path,
    substitute: &dyn Fn(&str) -> String,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([
        ("PATH".to_string(), SERVER_PATH.to_string()),
        ("HOME".to_string(), dir.display().to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("SERVER_PORT".to_string(), plan.port.to_string()),
        ("PREXOR_INSTANCE_ID".to_string(), plan.instance_id.clone()),
        ("PREXOR_GROUP".to_string(), plan.group.clone()),
        ("PREXOR_NODE_ID".to_string(), node_id.to_string()),
    ]);
    env.extend(plan.env.iter().map(|(k, v)| (k.clone(), substitute(v))));
    env
}

fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Every directory above `dir` must let other users pass (`o+x`), or no server reaches its
/// working directory.
fn reachable_by_others(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.permissions().mode() & 0o001 == 0 {
            anyhow::bail!(
                "servers run as other users (daemon.runAs) but cannot reach daemon.serversDir {}: {} is not searchable by other users (chmod o+x it, or move daemon.serversDir)",
                dir.display(),
                ancestor.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_the_plans_only() {
        let plan = CompositionPlan {
            instance_id: "lobby-1".into(),
            group: "lobby".into(),
            port: 25565,
            env: [("JAVA_OPTS".to_string(), "-Xmx{memory}M".to_string())].into(),
            ..CompositionPlan::default()
        };
        let env = server_env(&plan, "node-1", Path::new("/srv/lobby-1"), &|s: &str| {
            s.replace("{memory}", "1024")
        });
        assert_eq!(env["JAVA_OPTS"], "-Xmx1024M");
        assert_eq!(env["SERVER_PORT"], "25565");
        assert_eq!(env["HOME"], "/srv/lobby-1");
        assert!(env.keys().all(|k| !k.starts_with("PREXOR_DAEMON")));
        assert_eq!(env.len(), 8);
    }
}
