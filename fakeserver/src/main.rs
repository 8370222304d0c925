//! `prexor-fakeserver`: behaves enough like a Paper/Velocity server for the daemon and the tests.
//!
//! - listens on `--port` (or `SERVER_PORT`), accepting and closing connections;
//! - prints `Done (…)! For help, type "help"` once listening, like Paper;
//! - answers console commands on stdin: `stop` (prints `Stopping the server`, exits 0),
//!   `say TEXT` (prints `[Server] TEXT`), `list`, `crash [CODE]` (exits with CODE, default 3),
//!   `hang-on-stop` (from now on `stop` is ignored), `echo TEXT`, `blob BYTES` (prints that many
//!   bytes without a newline, then a newline: one huge line);
//! - for isolation tests: `env` (prints `ENV KEY=VALUE` per variable), `read PATH` (prints
//!   `READ PATH: ok N bytes` or `READ PATH: denied (…)`, a directory is listed), `whoami`
//!   (`UID n`), `alloc MB` (allocates and touches that many MiB, kept until exit);
//! - `--crash-after MS` exits with code 3 after that long;
//! - `--stop-delay MS` takes that long to stop (like saving worlds).

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Whether `path` can be read (a file) or listed (a directory), in words.
fn read(path: &str) -> String {
    let path = std::path::Path::new(path);
    if path.is_dir() {
        return match std::fs::read_dir(path) {
            Ok(entries) => format!("ok {} entries", entries.count()),
            Err(err) => format!("denied ({err})"),
        };
    }
    match std::fs::read(path) {
        Ok(bytes) => format!("ok {} bytes", bytes.len()),
        Err(err) => format!("denied ({err})"),
    }
}

fn main() {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = match arg_value(&args, "--port")
        .or_else(|| std::env::var("SERVER_PORT").ok())
        .map(|p| p.parse())
    {
        Some(Ok(port)) => port,
        Some(Err(_)) | None => {
            eprintln!("prexor-fakeserver: --port PORT (or SERVER_PORT) is required");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("**** FAILED TO BIND TO PORT {port}: {err}");
            std::process::exit(1);
        }
    };
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
    if let Some(ms) = arg_value(&args, "--crash-after").and_then(|v| v.parse::<u64>().ok()) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            say("Exception in server tick loop: simulated crash");
            std::process::exit(3);
        });
    }
    say(&format!(
        "Done ({:.3}s)! For help, type \"help\" (port {port})",
        started.elapsed().as_secs_f64()
    ));

    let stop_delay = arg_value(&args, "--stop-delay")
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    static HANG_ON_STOP: AtomicBool = AtomicBool::new(false);
    static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        let (command, rest) = line.split_once(' ').unwrap_or((line, ""));
        match command {
            "stop" if HANG_ON_STOP.load(Ordering::SeqCst) => say("Ignoring stop"),
            "stop" => {
                say("Stopping the server");
                std::thread::sleep(stop_delay);
                say("Saved the worlds");
                std::process::exit(0);
            }
            "say" => say(&format!("[Server] {rest}")),
            "echo" => say(rest),
            "blob" => {
                let bytes: usize = rest.parse().unwrap_or(1 << 20);
                let mut out = std::io::stdout().lock();
                let chunk = [b'x'; 8192];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len());
                    let _ = out.write_all(&chunk[..n]);
                    left -= n;
                }
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            "list" => say("There are 0 of a max of 20 players online:"),
            "env" => {
                for (key, value) in std::env::vars() {
                    say(&format!("ENV {key}={value}"));
                }
                say("ENV END");
            }
            "read" => say(&format!("READ {rest}: {}", read(rest))),
            "whoami" => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let uid = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().next())
                    .unwrap_or("?");
                say(&format!("UID {uid}"));
            }
            "alloc" => {
                let mb: usize = rest.parse().unwrap_or(64);
                let mut block = vec![0u8; mb << 20];
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                HELD.lock().unwrap().push(block);
                say(&format!("allocated {mb} MiB"));
            }
            "crash" => {
                say("Exception in server tick loop: crash requested");
                std::process::exit(rest.parse().unwrap_or(3));
            }
            "hang-on-stop" => {
                HANG_ON_STOP.store(true, Ordering::SeqCst);
                say("stop will be ignored");
            }
            "" => {}
            other => say(&format!(
                "Unknown command \"{other}\". Type \"help\" for help."
            )),
        }
    }
    // stdin closed (the daemon went away): keep running, like a real server would.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
