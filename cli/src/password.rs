//! Reading passwords: at the terminal without echo (`rpassword`), the terminal's settings put
//! back even when the prompt is interrupted (Ctrl-C, a hang-up, SIGTERM); or the first line of
//! stdin for scripts (`--password-stdin`, or stdin not a terminal).

use std::io::{BufRead, IsTerminal};

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};

/// The first line of stdin, without its line ending.
fn stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Whether a password is read from stdin rather than prompted for.
pub fn from_stdin(asked: bool) -> bool {
    asked || !std::io::stdin().is_terminal()
}

/// A password: from stdin when asked to or when stdin is not a terminal, else prompted for
/// with `prompt` without echo. `confirm` asks a second time at the terminal (a new password).
pub async fn read(stdin: bool, prompt: &str, confirm: bool) -> anyhow::Result<String> {
    if from_stdin(stdin) {
        return stdin_line();
    }
    let password = hidden(prompt).await?;
    if confirm && hidden("again: ").await? != password {
        bail!("the passwords differ; nothing was changed");
    }
    Ok(password)
}

/// Prompts on the terminal with echo off; an interrupt restores the terminal's settings as
/// they were before the prompt, then exits 130.
async fn hidden(prompt: &str) -> anyhow::Result<String> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal to ask for the password (or pass --password-stdin)")?;
    let saved = rustix::termios::tcgetattr(&tty).context("reading the terminal's settings")?;
    // Listening before echo goes off: a signal arriving in between is not missed.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let prompt = prompt.to_owned();
    let reading = tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt));
    let password = tokio::select! {
        read = reading => read.context("the password prompt")??,
        _ = interrupt.recv() => restore_and_exit(&tty, &saved),
        _ = terminate.recv() => restore_and_exit(&tty, &saved),
        _ = hangup.recv() => restore_and_exit(&tty, &saved),
    };
    // Listening replaced the signals' default action for good: they still end the command.
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            _ = hangup.recv() => {}
        }
        std::process::exit(130);
    });
    Ok(password)
}

fn restore_and_exit(tty: &std::fs::File, saved: &rustix::termios::Termios) -> ! {
    let _ = rustix::termios::tcsetattr(tty, rustix::termios::OptionalActions::Now, saved);
    eprintln!();
    eprintln!("interrupted");
    std::process::exit(130)
}
