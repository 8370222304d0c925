//! A server's output as the shim keeps it: every line appended to `console.log` (rotated to
//! `console.log.1` at `daemon.consoleLogMb`, so a chatty server costs at most twice that), and
//! the last [`RING_LINES`] lines numbered in memory for a daemon attaching (again) to replay.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How many recent lines a shim keeps for replay.
pub const RING_LINES: usize = 2000;

pub struct ConsoleLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    max: u64,
}

impl ConsoleLog {
    pub fn open(path: &Path, max: u64) -> ConsoleLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Err(err) = &file {
            eprintln!("cannot open {}: {err}", path.display());
        }
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        ConsoleLog {
            path: path.to_path_buf(),
            file: file.ok(),
            size,
            max: max.max(4096),
        }
    }

    /// Appends one line; a failing disk loses log lines, never the server's output pipe.
    pub fn append(&mut self, line: &str) {
        if self.size + line.len() as u64 + 1 > self.max {
            self.rotate();
        }
        if let Some(file) = &mut self.file
            && file.write_all(format!("{line}\n").as_bytes()).is_ok()
        {
            self.size += line.len() as u64 + 1;
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        self.file = std::fs::File::create(&self.path).ok();
        self.size = 0;
    }
}

/// The numbered recent lines.
#[derive(Default)]
pub struct Ring {
    lines: VecDeque<(u64, String)>,
    /// The number of the next line (the first is 1).
    next: u64,
}

impl Ring {
    pub fn new() -> Ring {
        Ring {
            lines: VecDeque::new(),
            next: 1,
        }
    }

    /// Keeps `text`; its number.
    pub fn push(&mut self, text: String) -> u64 {
        let n = self.next;
        if self.lines.len() == RING_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back((n, text));
        self.next += 1;
        n
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    /// The kept lines numbered `from` or later.
    pub fn since(&self, from: u64) -> impl Iterator<Item = &(u64, String)> {
        self.lines.iter().filter(move |(n, _)| *n >= from)
    }
}

/// The last `count` lines of a console log (and the rotated one before it, when the current
/// one is shorter): the tail a crash report carries when the shim is gone.
pub fn tail(path: &Path, count: usize) -> Vec<String> {
    let read = |p: &Path| std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut lines: Vec<String> = read(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    if lines.len() < count {
        let older: Vec<String> = read(&path.with_extension("log.1"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        lines = older.into_iter().chain(lines).collect();
    }
    let skip = lines.len().saturating_sub(count);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_numbers_lines_and_forgets_the_oldest() {
        let mut ring = Ring::new();
        for i in 0..RING_LINES + 5 {
            ring.push(format!("line {i}"));
        }
        assert_eq!(ring.next(), RING_LINES as u64 + 6);
        let first = ring.since(0).next().unwrap();
        assert_eq!(first, &(6, "line 5".to_string()));
        assert_eq!(ring.since(ring.next() - 2).count(), 2);
    }

    #[test]
    fn the_log_rotates_at_its_cap_and_the_tail_spans_both_files() {
        let dir = std::env::temp_dir().join(format!("prexor-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = ConsoleLog::open(&path, 4096);
        for i in 0..1000 {
            log.append(&format!("line {i:04}"));
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(path.with_extension("log.1"))
            .unwrap()
            .len();
        assert!(current <= 4096 && rotated <= 4096, "{current} {rotated}");
        let last = tail(&path, 3);
        assert_eq!(last, ["line 0997", "line 0998", "line 0999"]);
        let many = tail(&path, 500);
        assert_eq!(many.last().unwrap(), "line 0999");
        assert!(many.len() > 400, "{}", many.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
