//! Starting one server from its plan: the instance directory (template layers in order, then
//! the plan's files, placeholders substituted), the process in its own process group, and the
//! tasks that read its output, notice it is ready and record its exit.

use std::path::{Component, Path};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_domain::now_ms;
use prexor_proto::v1::{CompositionPlan, InstanceState};
use tokio::process::Command;

use crate::instances::Instances;
use crate::layers::{self, LayerError};

/// How long an instance may take to open its port (or print `Done (`) before it counts as
/// running anyway.
const STARTUP_PROBE: Duration = Duration::from_secs(120);

impl Instances {
    /// Prepares the instance directory and starts the process; its pid.
    pub(crate) async fn launch(&self, plan: &CompositionPlan) -> Result<i32, LayerError> {
        let inner = &self.inner;
        let id = plan.instance_id.clone();
        let dir = inner.dir.join(&id);
        let substitute = |s: &str| {
            s.replace("{port}", &plan.port.to_string())
                .replace("{instance}", &id)
                .replace("{group}", &plan.group)
                .replace("{node}", &inner.node_id)
                .replace("{memory}", &plan.memory_mb.to_string())
        };
        let permanent = LayerError::Permanent;
        let fresh = !dir.exists();
        std::fs::create_dir_all(&dir)
            .map_err(|e| permanent(format!("cannot create {}: {e}", dir.display())))?;
        // Every layer of the instance shares one budget (daemon.instanceDiskMb).
        let budget = inner.layers.budget;
        let mut used = 0u64;
        for layer in &plan.layers {
            let archive = inner.layers.archive(&layer.hash).await?;
            let dest = dir.clone();
            let name = if layer.name.is_empty() {
                layer.hash.clone()
            } else {
                layer.name.clone()
            };
            let left = budget.instance_bytes.saturating_sub(used);
            let unpacked =
                tokio::task::spawn_blocking(move || layers::unpack(&archive, &dest, left, &budget))
                    .await
                    .map_err(|e| permanent(e.to_string()))?;
            match unpacked {
                Ok(bytes) => used += bytes,
                Err(e) => {
                    // A directory made for this start holds nothing but the refused layers: it
                    // goes, so they do not keep the disk they were refused for.
                    if fresh {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    return Err(permanent(format!("template layer {name}: {e}")));
                }
            }
        }
        if !plan.layers.is_empty() {
            substitute_tree(&dir, &substitute).map_err(permanent)?;
        }
        for file in &plan.files {
            let path = dir.join(&file.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| permanent(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(&path, substitute(&file.content))
                .map_err(|e| permanent(format!("cannot write {}: {e}", path.display())))?;
        }
        let argv: Vec<String> = plan.command.iter().map(|a| substitute(a)).collect();
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .current_dir(&dir)
            .env("SERVER_PORT", plan.port.to_string())
            .env("PREXOR_INSTANCE_ID", &id)
            .env("PREXOR_GROUP", &plan.group)
            .env("PREXOR_NODE_ID", &inner.node_id)
            .envs(plan.env.iter().map(|(k, v)| (k.clone(), substitute(v))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a signal to the daemon's group does not reach servers.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .map_err(|e| permanent(format!("cannot start {:?}: {e}", argv[0])))?;
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        // Journaled before anything else can happen to it: a restarted daemon finds the server
        // here (crate::orphans).
        self.journal(serde_json::json!({
            "event": "launch", "atMs": now_ms(), "instance": &id, "group": &plan.group,
            "planHash": &plan.plan_hash, "pid": pid, "port": plan.port,
            "bootId": inner.boot_id.as_deref().unwrap_or_default(),
        }));
        let stdin = child
            .stdin
            .take()
            .map(|s| Arc::new(tokio::sync::Mutex::new(s)));
        let kill = {
            let mut table = self.table();
            let instance = table
                .get_mut(&id)
                .ok_or_else(|| permanent("instance vanished".into()))?;
            instance.pid = pid;
            instance.stdin = stdin;
            instance.kill.clone()
        };
        self.transition(&id, |i| {
            i.state = InstanceState::Starting;
            i.detail = format!("started {}", argv.join(" "));
        });
        tracing::info!(instance = %id, pid, port = plan.port, "instance started");

        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        for output in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let this = self.clone();
            let id = id.clone();
            let ready_tx = ready_tx.clone();
            tokio::spawn(async move {
                crate::output::read_lines(output, |line| {
                    if line.contains("Done (")
                        && let Some(tx) = ready_tx.lock().expect("ready lock").take()
                    {
                        let _ = tx.send(());
                    }
                    this.console_line(&id, line);
                })
                .await;
            });
        }
        // RUNNING once the server says so or its port accepts connections.
        let this = self.clone();
        let port = plan.port;
        let ready_id = id.clone();
        tokio::spawn(async move {
            let probe = async {
                if port == 0 {
                    return std::future::pending::<()>().await;
                }
                loop {
                    if tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let _ = tokio::time::timeout(STARTUP_PROBE, async {
                tokio::select! {
                    _ = ready_rx => {}
                    _ = probe => {}
                }
            })
            .await;
            this.transition(&ready_id, |i| {
                if i.state == InstanceState::Starting {
                    i.state = InstanceState::Running;
                }
            });
        });
        // Exit: STOPPED when asked to stop (or a clean exit), CRASHED otherwise.
        let this = self.clone();
        let plan_hash = plan.plan_hash.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                _ = kill.notified() => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            let (code, how) = match status {
                Ok(status) => match (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                ) {
                    (Some(code), _) => (code, format!("exited with code {code}")),
                    (None, Some(signal)) => (128 + signal, format!("killed by signal {signal}")),
                    (None, None) => (-1, "ended".to_string()),
                },
                Err(err) => (-1, format!("could not be waited for: {err}")),
            };
            this.transition(&id, |i| {
                i.exit_code = Some(code);
                i.stdin = None;
                i.pid = 0;
                if i.stop_requested || code == 0 {
                    i.state = InstanceState::Stopped;
                    if i.detail.is_empty() || !i.detail.starts_with("killed after") {
                        i.detail = how.clone();
                    }
                } else {
                    i.state = InstanceState::Crashed;
                    i.detail = how.clone();
                }
            });
            tracing::info!(instance = %id, code, "instance ended: {how}");
            this.journal(serde_json::json!({
                "event": "exit", "atMs": now_ms(), "instance": &id, "planHash": plan_hash,
                "pid": pid, "code": code,
            }));
        });
        Ok(pid)
    }
}

/// Substitutes placeholders in the configuration files (by extension, under 1 MiB) below `dir`.
fn substitute_tree(dir: &Path, substitute: &dyn Fn(&str) -> String) -> Result<(), String> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries =
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file()
                && meta.len() < 1024 * 1024
                && layers::is_config_file(&path)
                && let Ok(text) = std::fs::read_to_string(&path)
            {
                let replaced = substitute(&text);
                if replaced != text {
                    std::fs::write(&path, replaced)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
            }
        }
    }
    Ok(())
}

/// Refuses plans that can never run, naming the problem.
pub(crate) fn check_plan(plan: &CompositionPlan) -> Result<(), String> {
    prexor_domain::validate_name(&plan.instance_id)
        .map_err(|e| format!("instance id {:?}: {e}", plan.instance_id))?;
    if plan.plan_hash.is_empty() {
        return Err("the plan has no hash".into());
    }
    if plan.command.first().is_none_or(|c| c.is_empty()) {
        return Err("the plan has no command".into());
    }
    if plan.port > u32::from(u16::MAX) {
        return Err(format!("port {} is not a TCP port", plan.port));
    }
    for file in &plan.files {
        let path = Path::new(&file.path);
        let escapes = path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if file.path.is_empty() || escapes {
            return Err(format!(
                "plan file {:?} must be a relative path inside the instance directory",
                file.path
            ));
        }
    }
    Ok(())
}
