//! The followers across dropped connections: `events` and `instances console --follow` run
//! through a TCP proxy in front of the api, whose connections are cut (and new ones refused)
//! while changes go on through the api directly; once the proxy passes traffic again, prexorctl
//! has reconnected and resumed: every event exactly once, in order, none missed; every console
//! line once. `--watch` shows a list or an object again on each change the events report.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use prexor_acceptance::fault::{Fault, FaultProxy};
use prexor_acceptance::spec_of;
use serde_json::{Value, json};

use crate::{CONDITION_WITHIN, Stack};

/// A running prexorctl whose output lines arrive on channels.
struct Following {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stdout line so far.
    lines: Vec<String>,
}

impl Following {
    fn start(stack: &Stack, args: &[&str]) -> anyhow::Result<Following> {
        let mut child = stack.ctl.start(args, Stdio::piped())?;
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().context("stdout")?));
        let stderr = lines(Box::new(child.stderr.take().context("stderr")?));
        Ok(Following {
            child,
            stdout,
            stderr,
            lines: Vec::new(),
        })
    }

    /// Collects stdout until a line satisfies `done`.
    async fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + CONDITION_WITHIN;
        loop {
            while let Ok(line) = self.stdout.try_recv() {
                let found = done(&line);
                self.lines.push(line);
                if found {
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "prexorctl ended ({status}) before {what}: {:?} {:?}",
                    self.lines,
                    self.stderr_text()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: never came; so far {:?}, stderr {:?}",
                self.lines,
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes the stdout lines that arrived, without waiting.
    fn drain(&mut self) {
        self.lines.extend(self.stdout.try_iter());
    }

    fn stderr_text(&self) -> String {
        self.stderr.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Ends the prexorctl this test started; what it said on stderr.
    fn stop(mut self) -> anyhow::Result<String> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(self.stderr_text())
    }
}

pub async fn create_group(stack: &Stack, name: &str) -> anyhow::Result<()> {
    let (status, body) = stack
        .rest
        .post(
            "/groups",
            json!({ "name": name, "spec": spec_of(name, 0, &[])? }),
        )
        .await?;
    ensure!(status == 201, "create {name}: {status} {body}");
    Ok(())
}

/// `events -o json` and `instances console --follow` reconnect through a cut connection.
pub async fn followers(stack: &Stack) -> anyhow::Result<()> {
    let target = stack
        .api
        .http
        .trim_start_matches("http://")
        .parse()
        .context("the api's address")?;
    let proxy = FaultProxy::start(target).await?;
    let through = format!("http://{}", proxy.addr());

    let mut events = Following::start(
        stack,
        &[
            "--controller",
            &through,
            "events",
            "--types",
            "GROUP_CREATED",
            "-o",
            "json",
        ],
    )?;
    let mut console = Following::start(
        stack,
        &[
            "--controller",
            &through,
            "instances",
            "console",
            "lobby-1",
            "--follow",
            "--lines",
            "0",
        ],
    )?;
    // Both streams are open once what is done now reaches them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    create_group(stack, "ev-a").await?;
    events
        .until("ev-a", |l| l.contains("\"subject\":\"ev-a\""))
        .await?;
    let command = |line: &'static str| async move {
        let (status, body) = stack
            .rest
            .post("/instances/lobby-1/command", json!({ "command": line }))
            .await?;
        ensure!(status == 204, "{status} {body}");
        anyhow::Ok(())
    };
    command("echo line-before-cut").await?;
    console
        .until("the first line", |l| l.contains("line-before-cut"))
        .await?;

    // Cut: every connection through the proxy closed, new ones refused, while the cluster
    // changes.
    proxy.set(Fault::Reset);
    for name in ["ev-b", "ev-c"] {
        create_group(stack, name).await?;
    }
    command("echo line-during-cut").await?;
    // Long enough for a few failed reconnections (the pause grows).
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(Fault::None);
    events
        .until("ev-c after the reconnection", |l| {
            l.contains("\"subject\":\"ev-c\"")
        })
        .await?;
    console
        .until("the line written during the cut", |l| {
            l.contains("line-during-cut")
        })
        .await?;
    create_group(stack, "ev-d").await?;
    command("echo line-after-cut").await?;
    events
        .until("ev-d", |l| l.contains("\"subject\":\"ev-d\""))
        .await?;
    console
        .until("the line after", |l| l.contains("line-after-cut"))
        .await?;
    // Anything left over (a duplicate would come right after).
    tokio::time::sleep(Duration::from_millis(500)).await;
    events.drain();
    console.drain();

    let parsed: Vec<Value> = events
        .lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("a JSON event: {l}")))
        .collect::<anyhow::Result<_>>()?;
    let subjects: Vec<&str> = parsed
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    ensure!(
        subjects == ["ev-a", "ev-b", "ev-c", "ev-d"],
        "every event once, in order: {:?}",
        events.lines
    );
    let ids: Vec<&str> = parsed.iter().filter_map(|e| e["id"].as_str()).collect();
    ensure!(
        ids.len() == 4
            && ids
                .windows(2)
                .all(|w| prexor_client::id_key(w[0]) < prexor_client::id_key(w[1])),
        "ids in order: {ids:?}"
    );
    let said = events.stop()?;
    ensure!(
        said.contains("connection lost")
            && said.contains(&format!("resuming after event {}", ids[0])),
        "the reconnection is reported: {said}"
    );

    for line in ["line-before-cut", "line-during-cut", "line-after-cut"] {
        // (Lines naming the command itself, if the console shows input, do not count.)
        let times = console
            .lines
            .iter()
            .filter(|l| l.contains(line) && !l.contains("echo"))
            .count();
        ensure!(
            times == 1,
            "{line} shown {times} times: {:?}",
            console.lines
        );
    }
    let said = console.stop()?;
    ensure!(said.contains("connection lost"), "{said}");

    for name in ["ev-a", "ev-b", "ev-c", "ev-d"] {
        stack.rest.delete(&format!("/groups/{name}")).await?;
    }
    for name in ["ev-a", "ev-b", "ev-c", "ev-d"] {
        stack
            .rest
            .wait_gone(&format!("/groups/{name}"), CONDITION_WITHIN)
            .await?;
    }
    Ok(())
}

/// A `gap` from the server (its buffer no longer reaches back to `--after`): `events` prints it
/// as a line of its own and warns, then goes on. The api's buffer is far too large to lose events
/// in a test, so a one-connection SSE server on loopback says it, as the api does.
pub async fn gap(stack: &Stack) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let controller = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await?;
            ensure!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                  event: gap\ndata: {\"message\":\"events after 1-0 are gone\"}\n\n\
                  id: 9-0\nevent: GROUP_CREATED\ndata: {\"id\":\"9-0\",\"subject\":\"late\"}\n\n",
            )
            .await?;
        // Held open: prexorctl is stopped by the test.
        tokio::time::sleep(CONDITION_WITHIN).await;
        anyhow::Ok(String::from_utf8_lossy(&request).to_ascii_lowercase())
    });
    let mut events = Following::start(
        stack,
        &[
            "--controller",
            &controller,
            "events",
            "--after",
            "1-0",
            "-o",
            "json",
        ],
    )?;
    events
        .until("the event after the gap", |l| l.contains("\"late\""))
        .await?;
    let lines: Vec<Value> = events
        .lines
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("JSON: {l}")))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        lines.len() == 2
            && lines[0]["type"] == "gap"
            && lines[0]["message"] == "events after 1-0 are gone"
            && lines[1]["subject"] == "late",
        "{lines:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let said = events.stop()?;
    ensure!(said.contains("some events were missed"), "{said}");
    server.abort();
    Ok(())
}

/// The showings of a `--watch` so far (in a pipe they are separated by blank lines).
fn showings(lines: &[String]) -> Vec<String> {
    lines
        .split(|l| l.is_empty())
        .map(|s| s.join("\n"))
        .filter(|s| !s.is_empty())
        .collect()
}

/// `nodes get --watch` and `groups list --watch` show again what changed, only then.
pub async fn watches(stack: &Stack) -> anyhow::Result<()> {
    let mut node = Following::start(stack, &["nodes", "get", "node-1", "--watch"])?;
    let mut groups = Following::start(stack, &["groups", "list", "--watch"])?;
    let cordoned = |yes: bool| {
        move |l: &str| l.starts_with("cordoned ") && l.ends_with(if yes { " yes" } else { " no" })
    };
    node.until("the node, not cordoned", cordoned(false))
        .await?;
    groups
        .until("the groups", |l| l.starts_with("lobby "))
        .await?;
    // The streams are open once the first showing is out.
    let (status, body) = stack.rest.post("/nodes/node-1/cordon", json!({})).await?;
    ensure!(status < 300, "cordon: {status} {body}");
    node.until("cordoned", cordoned(true)).await?;
    let (status, body) = stack.rest.post("/nodes/node-1/uncordon", json!({})).await?;
    ensure!(status < 300, "uncordon: {status} {body}");
    node.until("uncordoned", cordoned(false)).await?;

    create_group(stack, "watched").await?;
    groups
        .until("the new group", |l| l.starts_with("watched "))
        .await?;
    stack.rest.delete("/groups/watched").await?;
    stack
        .rest
        .wait_gone("/groups/watched", CONDITION_WITHIN)
        .await?;
    let deadline = Instant::now() + CONDITION_WITHIN;
    loop {
        groups.drain();
        let shown = showings(&groups.lines);
        let last = shown.last().cloned().unwrap_or_default();
        if !last.contains("watched") && shown.iter().any(|s| s.contains("watched")) {
            ensure!(last.contains("lobby"), "{shown:?}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the deletion never shown: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    groups.stop()?;

    tokio::time::sleep(Duration::from_millis(500)).await;
    node.drain();
    let shown = showings(&node.lines);
    ensure!(
        shown.len() == 3 && !shown.iter().any(|s| s.contains('│')),
        "shown once at first and once per change, plain: {shown:#?}"
    );
    node.stop()?;
    Ok(())
}
