//! Reading a server's output line by line without trusting it: a line longer than
//! [`CONSOLE_LINE_MAX`] is cut as it is read (the rest up to the newline is discarded), so a
//! server printing a megabyte without a newline costs the daemon at most one line's buffer.

use prexor_domain::limits::{CONSOLE_LINE_MAX, CUT_MARK};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Calls `line` for every line of `output` until it ends (or fails), each at most
/// [`CONSOLE_LINE_MAX`] bytes.
pub async fn read_lines(output: impl AsyncRead + Unpin, mut line: impl FnMut(String)) {
    let mut reader = BufReader::new(output);
    let room = CONSOLE_LINE_MAX - CUT_MARK.len();
    let mut current: Vec<u8> = Vec::new();
    let mut cut = false;
    let emit = |current: &mut Vec<u8>, cut: &mut bool, line: &mut dyn FnMut(String)| {
        if current.last() == Some(&b'\r') {
            current.pop();
        }
        let mut text = String::from_utf8_lossy(current).into_owned();
        if *cut {
            text.push_str(CUT_MARK);
        }
        current.clear();
        *cut = false;
        line(text);
    };
    while let Ok(buffer) = reader.fill_buf().await {
        if buffer.is_empty() {
            if !current.is_empty() || cut {
                emit(&mut current, &mut cut, &mut line);
            }
            break;
        }
        let (chunk, used, ends) = match buffer.iter().position(|b| *b == b'\n') {
            Some(newline) => (&buffer[..newline], newline + 1, true),
            None => (buffer, buffer.len(), false),
        };
        let take = chunk.len().min(room.saturating_sub(current.len()));
        current.extend_from_slice(&chunk[..take]);
        cut |= take < chunk.len();
        reader.consume(used);
        if ends {
            emit(&mut current, &mut cut, &mut line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: Vec<u8>) -> Vec<String> {
        let mut lines = Vec::new();
        read_lines(&input[..], |l| lines.push(l)).await;
        lines
    }

    #[tokio::test]
    async fn lines_are_split_and_a_last_line_without_newline_counts() {
        assert_eq!(
            lines_of(b"one\r\ntwo\nthree".to_vec()).await,
            ["one", "two", "three"]
        );
        assert!(lines_of(Vec::new()).await.is_empty());
    }

    #[tokio::test]
    async fn a_megabyte_without_a_newline_is_cut_and_reading_goes_on() {
        let mut input = vec![b'x'; 1 << 20];
        input.extend(b"\nafter\n");
        let lines = lines_of(input).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), CONSOLE_LINE_MAX);
        assert!(lines[0].ends_with(CUT_MARK));
        assert_eq!(lines[1], "after");
    }
}
