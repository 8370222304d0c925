//! Progress of a `--wait`: a bar (`indicatif`) when stderr is a terminal; otherwise one plain
//! line each time the progress changes, for CI logs and files.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    /// What is followed, e.g. `deployment d-1`.
    what: String,
    bar: Option<ProgressBar>,
    /// The last line printed (plain lines only).
    last: String,
}

impl Progress {
    /// Progress of `what`, with a bar on a terminal.
    pub fn new(what: &str) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("#>."),
            );
            bar.set_prefix(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what: what.to_owned(),
            bar,
            last: String::new(),
        }
    }

    /// `done` of `total` (none: no count, a state only), in `state`.
    pub fn update(&mut self, done: Option<(u64, u64)>, state: &str) {
        if let Some(bar) = &self.bar {
            if let Some((done, total)) = done {
                bar.set_length(total);
                bar.set_position(done);
            }
            bar.set_message(state.to_owned());
            return;
        }
        let line = match done {
            Some((done, total)) => format!("{}: {done}/{total} updated, {state}", self.what),
            None => format!("{}: {state}", self.what),
        };
        if line != self.last {
            eprintln!("{line}");
            self.last = line;
        }
    }

    /// Ends the bar (a plain line needs nothing).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
