//! Resource limits per server, where the host allows: one cgroup per instance, with
//! `memory.max` from the plan's memory (plus `daemon.memoryOverheadPercent`), an optional CPU
//! quota (`daemon.cpuQuotaPercent`), and the whole process tree killed on stop.
//!
//! cgroup v2 is used where the daemon's own cgroup has the memory controller (systemd's
//! `Delegate=yes`, or the root cgroup); the daemon moves itself into a `daemon` leaf so that
//! its cgroup may hold the `instances` subtree. On hybrid hosts the v1 memory (and cpu)
//! hierarchies are used. Without either, servers run without limits and the daemon says so in
//! its log and node status ([`Cgroups::detect`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The cgroup of one server (the shim places the server in it and kills it through it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cgroup {
    /// 1 or 2.
    pub version: u8,
    /// The instance's cgroup directory in every hierarchy it uses (v2: one; v1: memory, then
    /// cpu where a quota is set). The first one lists the processes.
    pub dirs: Vec<PathBuf>,
}

/// Where instance cgroups are made on this host.
#[derive(Debug, Clone)]
pub struct Cgroups {
    version: u8,
    /// v2: `<base>/instances`; v1: `<memory base>` (and the cpu base, if any).
    memory: PathBuf,
    cpu: Option<PathBuf>,
}

/// The limits of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Percent of one CPU (100 = one core).
    pub cpu_percent: Option<u32>,
}

const CPU_PERIOD_US: u64 = 100_000;

impl Cgroups {
    /// Finds (and prepares) the place for instance cgroups of the daemon of node `node` with
    /// its data in `data_dir` (both name it: two daemons on one host never share one); the
    /// reason when this host offers none.
    pub fn detect(node: &str, data_dir: &Path) -> Result<Cgroups, String> {
        let digest = prexor_domain::sha256_hex(data_dir.as_os_str().as_encoded_bytes());
        let name = format!("prexorcloud-{node}-{}", &digest[..8]);
        let node = name.as_str();
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let unified = Path::new("/sys/fs/cgroup");
        if unified.join("cgroup.controllers").exists() {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
            return Self::prepare_v2(&unified.join(path.trim_start_matches('/')), node);
        }
        let v1 = |controller: &str| {
            let mount = Path::new("/sys/fs/cgroup").join(controller);
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names
                    .split(',')
                    .any(|n| n == controller)
                    .then(|| path.trim_start_matches('/').to_owned())
            })?;
            let base = mount.join(path).join(node);
            std::fs::create_dir_all(&base).ok()?;
            Some(base)
        };
        let memory = v1("memory").ok_or(
            "neither a cgroup v2 hierarchy at /sys/fs/cgroup nor a writable v1 memory hierarchy",
        )?;
        if !memory.join("memory.limit_in_bytes").exists() {
            return Err(format!("{} has no memory.limit_in_bytes", memory.display()));
        }
        Ok(Cgroups {
            version: 1,
            memory,
            cpu: v1("cpu").filter(|cpu| cpu.join("cpu.cfs_quota_us").exists()),
        })
    }

    fn prepare_v2(own: &Path, name: &str) -> Result<Cgroups, String> {
        let fail = |what: &str, e: std::io::Error| format!("{what}: {e}");
        // The root cgroup may hold processes and children at once; any other may not, so the
        // daemon moves into a leaf of its own first.
        let base = if own == Path::new("/sys/fs/cgroup") {
            let base = own.join(name);
            std::fs::create_dir_all(&base).map_err(|e| fail("creating the node's cgroup", e))?;
            base
        } else {
            let leaf = own.join("daemon");
            std::fs::create_dir_all(&leaf).map_err(|e| fail("creating the daemon's cgroup", e))?;
            std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
                .map_err(|e| fail("moving the daemon into its own cgroup", e))?;
            own.to_path_buf()
        };
        let controllers = std::fs::read_to_string(base.join("cgroup.controllers"))
            .map_err(|e| fail("reading cgroup.controllers", e))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "the memory controller is not delegated to {} (systemd: Delegate=yes)",
                base.display()
            ));
        }
        let cpu = controllers.split_whitespace().any(|c| c == "cpu");
        let enable = if cpu { "+memory +cpu" } else { "+memory" };
        let instances = base.join("instances");
        std::fs::write(base.join("cgroup.subtree_control"), enable)
            .and_then(|()| std::fs::create_dir_all(&instances))
            .and_then(|()| std::fs::write(instances.join("cgroup.subtree_control"), enable))
            .map_err(|e| fail(&format!("enabling {enable} below {}", base.display()), e))?;
        Ok(Cgroups {
            version: 2,
            memory: instances.clone(),
            cpu: cpu.then_some(instances),
        })
    }

    /// In words, for the log and the node's status.
    pub fn describe(&self) -> String {
        format!(
            "cgroup v{} at {}{}",
            self.version,
            self.memory.display(),
            if self.cpu.is_some() {
                " (memory and CPU)"
            } else {
                " (memory)"
            }
        )
    }

    /// A fresh cgroup for this start of `instance` with `limits`, named `<instance>.<start ms>`:
    /// the shim of an earlier start, still lingering, removes only its own.
    pub fn create(&self, instance: &str, limits: Limits) -> std::io::Result<Cgroup> {
        let name = format!("{instance}.{}", prexor_domain::now_ms());
        let instance = name.as_str();
        let memory = self.memory.join(instance);
        let mut cgroup = Cgroup {
            version: self.version,
            dirs: vec![memory.clone()],
        };
        std::fs::create_dir_all(&memory)?;
        let bytes = limits.memory_bytes.to_string();
        if self.version == 2 {
            std::fs::write(memory.join("memory.max"), &bytes)?;
            // Swap would hide the limit; not every kernel has the file.
            let _ = std::fs::write(memory.join("memory.swap.max"), "0");
            if let (Some(percent), Some(_)) = (limits.cpu_percent, &self.cpu) {
                let quota = CPU_PERIOD_US * u64::from(percent) / 100;
                std::fs::write(memory.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            }
        } else {
            std::fs::write(memory.join("memory.limit_in_bytes"), &bytes)?;
            let _ = std::fs::write(memory.join("memory.memsw.limit_in_bytes"), &bytes);
            if let (Some(percent), Some(cpu_base)) = (limits.cpu_percent, &self.cpu) {
                let cpu = cpu_base.join(instance);
                std::fs::create_dir_all(&cpu)?;
                std::fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                let quota = CPU_PERIOD_US * u64::from(percent) / 100;
                std::fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
                cgroup.dirs.push(cpu);
            }
        }
        Ok(cgroup)
    }
}

impl Cgroup {
    /// Moves `pid` (and its later children) into the cgroup.
    pub fn add(&self, pid: i32) -> std::io::Result<()> {
        for dir in &self.dirs {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        self.dirs
            .first()
            .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup (forks racing the kill included: v2's
    /// `cgroup.kill` is atomic, v1 is swept until empty).
    pub fn kill_all(&self) {
        if let Some(dir) = self.dirs.first()
            && self.version == 2
            && std::fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for _ in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = crate::procfs::signal_process(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dirs.first() else {
            return false;
        };
        let file = if self.version == 2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|kills| kills > 0)
    }

    /// The memory limit in MiB, for messages.
    pub fn memory_limit_mb(&self) -> Option<u64> {
        let dir = self.dirs.first()?;
        let file = if self.version == 2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let bytes: u64 = std::fs::read_to_string(dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(bytes / 1024 / 1024)
    }

    /// Removes the cgroup (killing what is left in it first).
    pub fn remove(&self) {
        if self.dirs.iter().all(|d| !d.exists()) {
            return;
        }
        if !self.pids().is_empty() {
            self.kill_all();
        }
        for dir in &self.dirs {
            // A cgroup goes once its last process has been reaped; that can take a moment.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
