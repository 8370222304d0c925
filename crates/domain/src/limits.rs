//! Bounds on what a node sends about its servers, shared by the daemon (which cuts output as it
//! reads it) and the gateway (which never trusts a node to have done so): a server printing a
//! megabyte without a newline must neither exhaust the daemon's memory nor push a Hello past
//! the gRPC message limit.

/// One console line, in bytes; longer lines are cut (see [`cut_line`]).
pub const CONSOLE_LINE_MAX: usize = 8 * 1024;
/// Lines of output kept for a crash report.
pub const LOG_TAIL_LINES: usize = 50;
/// A crash report's log tail, in bytes all together; the oldest lines go first.
pub const LOG_TAIL_MAX: usize = 16 * 1024;
/// Console lines in one message from the daemon.
pub const CONSOLE_BATCH_MAX: usize = 256;

/// What is appended to a line that was cut.
pub const CUT_MARK: &str = " …[cut]";

/// `line` cut to at most `max` bytes (on a character boundary) with [`CUT_MARK`] appended when
/// anything was cut.
pub fn cut_line(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max.saturating_sub(CUT_MARK.len());
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &line[..end])
}

/// The last lines of `tail` that fit [`LOG_TAIL_LINES`] and [`LOG_TAIL_MAX`], each line cut to
/// [`CONSOLE_LINE_MAX`].
pub fn cap_tail(tail: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for line in tail.iter().rev().take(LOG_TAIL_LINES) {
        let line = cut_line(line, CONSOLE_LINE_MAX);
        if bytes + line.len() > LOG_TAIL_MAX {
            break;
        }
        bytes += line.len();
        kept.push(line);
    }
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_on_a_character_boundary() {
        assert_eq!(cut_line("short", 10), "short");
        let cut = cut_line(&"é".repeat(100), 21);
        assert!(cut.len() <= 21 && cut.ends_with(CUT_MARK), "{cut}");
        assert!(cut.starts_with("éé"));
        let huge = "x".repeat(1 << 20);
        assert_eq!(cut_line(&huge, CONSOLE_LINE_MAX).len(), CONSOLE_LINE_MAX);
    }

    #[test]
    fn a_tail_keeps_the_newest_lines_within_its_bounds() {
        let many: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
        let kept = cap_tail(&many);
        assert_eq!(kept.len(), LOG_TAIL_LINES);
        assert_eq!(kept.last().map(String::as_str), Some("line 199"));
        let big: Vec<String> = (0..10).map(|_| "y".repeat(1 << 20)).collect();
        let kept = cap_tail(&big);
        assert_eq!(kept.len(), 2, "two cut lines of 8 KiB fit 16 KiB");
        assert!(kept.iter().map(String::len).sum::<usize>() <= LOG_TAIL_MAX);
    }
}
