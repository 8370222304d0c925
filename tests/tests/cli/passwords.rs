//! Passwords at a terminal: prexorctl run on a pseudo-terminal (util-linux `script`), the
//! password typed after the prompt is not echoed (`users create` asks twice), and an
//! interrupted prompt leaves the terminal echoing again.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::Stack;

/// prexorctl under `script`: its own terminal, what it shows collected as it comes.
struct Terminal {
    child: Child,
    shown: Arc<Mutex<String>>,
}

impl Terminal {
    /// Runs `shell` (a `sh -c` line) on a new pseudo-terminal.
    fn start(stack: &Stack, shell: &str) -> anyhow::Result<Terminal> {
        let mut child = Command::new("script")
            .args(["-qfec", shell, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("PREXORCTL_CONFIG", stack.ctl.config())
            .env_remove("PREXOR_CONTROLLER")
            .env_remove("PREXOR_TOKEN")
            .env_remove("PREXOR_CONTEXT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting script (util-linux)")?;
        let mut out = child.stdout.take().context("script's output")?;
        let shown = Arc::new(Mutex::new(String::new()));
        let sink = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut shown) = sink.lock() {
                    shown.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Terminal { child, shown })
    }

    fn shown(&self) -> String {
        self.shown.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the terminal shows `text` `times` times in all.
    fn wait_for(&self, text: &str, times: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.shown().matches(text).count() < times {
            ensure!(
                Instant::now() < deadline,
                "the terminal never showed {text:?}: {:?}",
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The prompt is written before echo goes off: give it the moment it takes.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Types `keys` (a line's Enter is `\r`, as a terminal sends it).
    fn type_keys(&mut self, keys: &str) -> anyhow::Result<()> {
        let stdin = self.child.stdin.as_mut().context("script's input")?;
        stdin.write_all(keys.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the end; everything the terminal showed.
    fn finish(mut self) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                anyhow::bail!("still running: {:?}", self.shown());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The reader drains what is left.
        std::thread::sleep(Duration::from_millis(200));
        Ok(self.shown())
    }
}

/// A path as a single-quoted shell word.
fn quoted(path: &std::path::Path) -> anyhow::Result<String> {
    let path = path.to_str().context("a UTF-8 path")?;
    Ok(format!("'{}'", path.replace('\'', "'\\''")))
}

/// `users create` at a terminal: asked twice, never echoed; the user signs in with it.
pub async fn passwords(stack: &Stack) -> anyhow::Result<()> {
    let ctl = quoted(stack.ctl.binary())?;
    let secret = "bob-secret-4321";
    let mut term = Terminal::start(stack, &format!("{ctl} users create bob -r viewer"))?;
    term.wait_for("password for bob: ", 1)?;
    term.type_keys(&format!("{secret}\r"))?;
    term.wait_for("again: ", 1)?;
    term.type_keys(&format!("{secret}\r"))?;
    let shown = term.finish()?;
    ensure!(shown.contains("user bob created"), "{shown:?}");
    ensure!(
        !shown.contains(secret),
        "the password was echoed: {shown:?}"
    );
    stack.api.login("bob", secret).await?;

    // Two different answers: nothing is created.
    let mut term = Terminal::start(stack, &format!("{ctl} users create carol -r viewer"))?;
    term.wait_for("password for carol: ", 1)?;
    term.type_keys("one-password-1\r")?;
    term.wait_for("again: ", 1)?;
    term.type_keys("another-pass-2\r")?;
    let shown = term.finish()?;
    ensure!(
        shown.contains("the passwords differ") && !shown.contains("one-password-1"),
        "{shown:?}"
    );
    let (status, _) = stack.rest.get("/users/carol").await?;
    ensure!(status == 404, "no user carol: {status}");

    // Ctrl-C at the prompt: prexorctl exits, the terminal echoes again (`stty -a` after it).
    let mut term = Terminal::start(
        stack,
        &format!("trap 'stty -a; exit 0' INT; {ctl} login --name x; stty -a"),
    )?;
    term.wait_for("password: ", 1)?;
    term.type_keys("half-typed\u{3}")?;
    let shown = term.finish()?;
    ensure!(
        shown.contains("interrupted") && !shown.contains("half-typed"),
        "{shown:?}"
    );
    let settings: Vec<&str> = shown
        .lines()
        .filter(|l| l.contains("echo"))
        .flat_map(|l| l.split([' ', ';']))
        .collect();
    ensure!(
        settings.contains(&"echo") && !settings.contains(&"-echo"),
        "the terminal echoes again after the interrupt: {shown:?}"
    );

    stack.ctl.deletes("users", "bob")?;
    Ok(())
}
