//! `prexor-daemon shim <run dir>`: the supervisor of one server, in the style of containerd's
//! shim and conmon. The daemon starts one per instance; it leaves the daemon's session at once,
//! so it outlives the daemon (a crash, an upgrade, `systemctl restart`) and the daemon that
//! comes next adopts it ([`crate::supervise`]).
//!
//! A shim is its server's parent: it keeps the server's stdin open, drains stdout and stderr
//! continuously into the console log and a ring of numbered lines (a slow or absent daemon never
//! blocks the server on a full pipe), records the exit in `exit.json`, and answers on its
//! socket ([`protocol`]). It ends shortly after its server.

pub mod client;
pub mod console;
pub mod protocol;

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prexor_domain::now_ms;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};

use crate::procfs;
use console::{ConsoleLog, Ring};
use protocol::{Exit, PROTOCOL, Reply, Request, RunDir, Spec, Status};

/// How long a shim stays after its server ended, for an attached daemon to read the exit.
const LINGER: Duration = Duration::from_secs(2);
/// How many replies an attached daemon may fall behind before the shim drops it (it attaches
/// again from its last line; the server is never held up).
const SUBSCRIBER_BACKLOG: usize = 8192;

/// The shim's entry point (`prexor-daemon shim <run dir>`).
pub fn main(run_dir: Option<String>) -> ExitCode {
    let Some(run_dir) = run_dir else {
        eprintln!("usage: prexor-daemon shim <run dir> (started by the daemon, not by hand)");
        return ExitCode::from(2);
    };
    // Out of the daemon's session and process group: signals and hang-ups meant for the
    // daemon do not reach the shim.
    let _ = rustix::process::setsid();
    let run = RunDir(PathBuf::from(run_dir));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_shim(run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shim failed: {err}");
            ExitCode::FAILURE
        }
    }
}

struct Shared {
    ring: Ring,
    log: ConsoleLog,
    subscribers: Vec<mpsc::Sender<Reply>>,
    server_pid: i32,
    server_start_ticks: u64,
    exit: Option<Exit>,
}

struct Shim {
    spec: Spec,
    shared: Mutex<Shared>,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    exited: watch::Sender<Option<Exit>>,
}

async fn run_shim(run: RunDir) -> anyhow::Result<()> {
    let spec: Spec = protocol::read_json(&run.spec())?
        .ok_or_else(|| anyhow::anyhow!("{} is missing", run.spec().display()))?;
    let socket = run.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    }
    let shim = Arc::new(Shim {
        shared: Mutex::new(Shared {
            ring: Ring::new(),
            log: ConsoleLog::open(&run.console_log(), spec.log_max_bytes),
            subscribers: Vec::new(),
            server_pid: 0,
            server_start_ticks: 0,
            exit: None,
        }),
        stdin: tokio::sync::Mutex::new(None),
        exited: watch::channel(None).0,
        spec,
    });
    let accepting = tokio::spawn(accept(listener, shim.clone()));
    forward_term(shim.clone());

    let exit = match shim.spawn_server() {
        Ok(child) => shim.supervise(child).await,
        Err(reason) => Exit {
            code: 127,
            signal: None,
            at_ms: now_ms(),
            reason,
            oom: false,
        },
    };
    protocol::write_atomically(&run.exit(), &exit)?;
    shim.finish(exit);
    tokio::time::sleep(LINGER).await;
    // Its own cgroup only (named for this start); the socket file stays, as the run directory
    // may already belong to the instance's next start.
    accepting.abort();
    if let Some(cgroup) = shim.spec.cgroup.clone() {
        // Waits for the kernel to let the cgroup go: off the runtime's only thread.
        let _ = tokio::task::spawn_blocking(move || cgroup.remove()).await;
    }
    Ok(())
}

/// SIGTERM to the shim (a host shutting down) stops the server the same way; SIGINT and SIGHUP
/// are ignored (they were meant for a terminal the shim does not have).
fn forward_term(shim: Arc<Shim>) {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::interrupt(), SignalKind::hangup()] {
        if let Ok(mut ignored) = signal(kind) {
            tokio::spawn(async move { while ignored.recv().await.is_some() {} });
        }
    }
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::spawn(async move {
            while term.recv().await.is_some() {
                let _ = shim.signal("TERM", false);
            }
        });
    }
}

impl Shim {
    fn spawn_server(&self) -> Result<Child, String> {
        let spec = &self.spec;
        let program = spec.argv.first().ok_or("the spec has no command")?;
        let mut command = Command::new(program);
        command
            .args(&spec.argv[1..])
            .current_dir(&spec.cwd)
            .env_clear()
            .envs(&spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        if let Some(gid) = spec.gid {
            command.gid(gid);
        }
        if let Some(uid) = spec.uid {
            command.uid(uid);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("could not be started: {program:?}: {e}"))?;
        let pid = child.id().map_or(0, |p| p as i32);
        if let Some(cgroup) = &spec.cgroup
            && let Err(err) = cgroup.add(pid)
        {
            let _ = procfs::signal_group(pid, rustix::process::Signal::KILL);
            return Err(format!(
                "could not be placed in its cgroup {}: {err}",
                cgroup.dirs[0].display()
            ));
        }
        *self.stdin.try_lock().expect("stdin is free at start") = child.stdin.take();
        let mut shared = self.shared.lock().expect("shim lock");
        shared.server_pid = pid;
        shared.server_start_ticks = procfs::start_ticks(pid).unwrap_or(0);
        Ok(child)
    }

    /// Drains the server's output until it ends; its exit.
    async fn supervise(self: &Arc<Shim>, mut child: Child) -> Exit {
        let mut readers = Vec::new();
        let outputs: [Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for output in outputs.into_iter().flatten() {
            let shim = self.clone();
            readers.push(tokio::spawn(async move {
                crate::output::read_lines(output, |line| shim.line(line)).await;
            }));
        }
        let status = child.wait().await;
        // The last lines, unless a grandchild holds the pipes open.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            for reader in readers {
                let _ = reader.await;
            }
        })
        .await;
        let oom = self.spec.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        let (code, signal, mut reason) = match status {
            Ok(status) => match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(code), _) => (code, None, format!("exited with code {code}")),
                (None, Some(signal)) => (
                    128 + signal,
                    Some(signal),
                    format!("killed by signal {signal}"),
                ),
                (None, None) => (-1, None, "ended".to_string()),
            },
            Err(err) => (-1, None, format!("could not be waited for: {err}")),
        };
        if oom {
            let limit = self.spec.cgroup.as_ref().and_then(|c| c.memory_limit_mb());
            reason = match limit {
                Some(mb) => format!("killed by the kernel: out of memory (limit {mb} MiB)"),
                None => "killed by the kernel: out of memory".to_string(),
            };
        }
        // What the server left behind in its group or cgroup goes with it.
        let pid = self.shared.lock().expect("shim lock").server_pid;
        let _ = procfs::signal_group(pid, rustix::process::Signal::KILL);
        if let Some(cgroup) = self.spec.cgroup.clone() {
            // A v1 sweep waits between rounds: off the runtime's only thread, so the socket
            // keeps answering meanwhile.
            let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
        }
        Exit {
            code,
            signal,
            at_ms: now_ms(),
            reason,
            oom,
        }
    }

    fn line(&self, text: String) {
        let mut shared = self.shared.lock().expect("shim lock");
        shared.log.append(&text);
        let n = shared.ring.push(text.clone());
        let reply = Reply::Line { n, text };
        shared
            .subscribers
            .retain(|s| s.try_send(reply.clone()).is_ok());
    }

    fn finish(&self, exit: Exit) {
        let mut shared = self.shared.lock().expect("shim lock");
        shared.exit = Some(exit.clone());
        for subscriber in shared.subscribers.drain(..) {
            let _ = subscriber.try_send(Reply::Exited(exit.clone()));
        }
        self.exited.send_replace(Some(exit));
    }

    fn status(shared: &Shared) -> Status {
        Status {
            shim_pid: std::process::id() as i32,
            server_pid: shared.server_pid,
            server_start_ticks: shared.server_start_ticks,
            next_line: shared.ring.next(),
            exit: shared.exit.clone(),
        }
    }

    fn signal(&self, name: &str, tree: bool) -> Result<(), String> {
        let signal = procfs::signal_named(name)?;
        let (pid, ended) = {
            let shared = self.shared.lock().expect("shim lock");
            (shared.server_pid, shared.exit.is_some())
        };
        if ended || pid == 0 {
            return Err("the server has ended".into());
        }
        let sent = procfs::signal_group(pid, signal).map_err(|e| e.to_string());
        if tree && let Some(cgroup) = &self.spec.cgroup {
            if signal == rustix::process::Signal::KILL {
                cgroup.kill_all();
            } else {
                for pid in cgroup.pids() {
                    let _ = procfs::signal_process(pid, signal);
                }
            }
        }
        sent
    }

    async fn input(&self, line: &str) -> Result<(), String> {
        let mut stdin = self.stdin.lock().await;
        let stdin = stdin.as_mut().ok_or("the server has no console")?;
        async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.flush().await
        }
        .await
        .map_err(|e| format!("the console is closed: {e}"))
    }
}

async fn accept(listener: UnixListener, shim: Arc<Shim>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, shim.clone()));
            }
            Err(err) => {
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(writer: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> bool {
    let mut line = serde_json::to_vec(reply).expect("replies serialize");
    line.push(b'\n');
    writer.write_all(&line).await.is_ok()
}

/// One connection: `Hello` first, then requests until the daemon hangs up.
async fn serve(stream: UnixStream, shim: Arc<Shim>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut greeted = false;
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(err) => Reply::Error {
                message: format!("unknown request ({err}); this shim speaks protocol {PROTOCOL}"),
            },
            Ok(Request::Hello { protocol }) => {
                greeted = true;
                Reply::Hello {
                    protocol: protocol.min(PROTOCOL),
                    version: prexor_domain::VERSION.to_string(),
                }
            }
            Ok(_) if !greeted => Reply::Error {
                message: "say hello first".into(),
            },
            Ok(Request::Status) => {
                Reply::Status(Shim::status(&shim.shared.lock().expect("shim lock")))
            }
            Ok(Request::Input { line }) => done(shim.input(&line).await),
            Ok(Request::Signal { signal, tree }) => done(shim.signal(&signal, tree)),
            Ok(Request::Wait) => {
                let mut exited = shim.exited.subscribe();
                match exited.wait_for(Option::is_some).await {
                    Ok(exit) => Reply::Exited(exit.clone().expect("waited for")),
                    Err(_) => return,
                }
            }
            Ok(Request::Attach { from }) => {
                attach(&shim, from, &mut write).await;
                return;
            }
        };
        if !send(&mut write, &reply).await {
            return;
        }
    }
}

fn done(outcome: Result<(), String>) -> Reply {
    match outcome {
        Ok(()) => Reply::Done,
        Err(message) => Reply::Error { message },
    }
}

/// Subscribes first, then sends the status, the kept lines from `from`, and everything after.
async fn attach(shim: &Shim, from: u64, write: &mut tokio::net::unix::OwnedWriteHalf) {
    let (tx, mut rx) = mpsc::channel(SUBSCRIBER_BACKLOG);
    let (status, kept) = {
        let mut shared = shim.shared.lock().expect("shim lock");
        let kept: Vec<Reply> = shared
            .ring
            .since(from)
            .map(|(n, text)| Reply::Line {
                n: *n,
                text: text.clone(),
            })
            .collect();
        let status = Shim::status(&shared);
        if status.exit.is_none() {
            shared.subscribers.push(tx);
        }
        (status, kept)
    };
    let exit = status.exit.clone();
    if !send(write, &Reply::Status(status)).await {
        return;
    }
    for reply in &kept {
        if !send(write, reply).await {
            return;
        }
    }
    if let Some(exit) = exit {
        let _ = send(write, &Reply::Exited(exit)).await;
        return;
    }
    while let Some(reply) = rx.recv().await {
        let last = matches!(reply, Reply::Exited(_));
        if !send(write, &reply).await || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ShimClient;
    use super::*;

    /// A shim run in this process: the server's output is numbered and replayed, input
    /// reaches it, the exit is recorded in the exit file and answered to a waiting client.
    #[tokio::test]
    async fn a_shim_supervises_its_server_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("prexor-shim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunDir(dir.clone());
        let spec = Spec {
            instance_id: "t-1".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo hello; echo $SECRET_OF_THE_DAEMON; read line; echo got $line; exit 3".into(),
            ],
            cwd: dir.clone(),
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            uid: None,
            gid: None,
            log_max_bytes: 1 << 20,
            cgroup: None,
        };
        protocol::write_atomically(&run.spec(), &spec).unwrap();
        let shim = tokio::spawn(run_shim(run.clone()));
        let client = ShimClient::new(&run.socket());
        let status = loop {
            match client.status().await {
                Ok(status) if status.server_pid != 0 => break status,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert!(status.exit.is_none());
        let waiter = {
            let client = client.clone();
            tokio::spawn(async move { client.wait().await })
        };
        let mut attached = client.attach(1).await.unwrap();
        assert!(matches!(attached.next().await, Ok(Some(Reply::Status(_)))));
        client.input("world").await.unwrap();
        let mut lines = Vec::new();
        let exit = loop {
            match attached.next().await.unwrap() {
                Some(Reply::Line { n, text }) => lines.push((n, text)),
                Some(Reply::Exited(exit)) => break exit,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(
            lines,
            [
                (1, "hello".to_string()),
                (2, String::new()),
                (3, "got world".to_string())
            ]
        );
        assert_eq!(exit.code, 3);
        assert_eq!(waiter.await.unwrap().unwrap(), exit);
        let recorded: Exit = protocol::read_json(&run.exit()).unwrap().unwrap();
        assert_eq!(recorded, exit);
        // A late attach replays the kept lines and the exit.
        let mut late = client.attach(2).await.unwrap();
        assert!(matches!(late.next().await, Ok(Some(Reply::Status(s))) if s.exit.is_some()));
        assert!(matches!(
            late.next().await,
            Ok(Some(Reply::Line { n: 2, .. }))
        ));
        shim.await.unwrap().unwrap();
        assert!(
            client.status().await.is_err(),
            "the shim is gone after its linger"
        );
        let log = std::fs::read_to_string(run.console_log()).unwrap();
        assert_eq!(log, "hello\n\ngot world\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
