//! Printing API answers: tables by default (box-drawn on a terminal, plain aligned columns
//! when stdout is a pipe or a file), `-o wide` with more columns, `-o name` one name per line,
//! `-o json` / `-o yaml` for scripts; `--no-headers` drops the header row.

use std::io::IsTerminal;
use std::sync::OnceLock;

use clap::ValueEnum;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::Value;

/// The output format (`-o`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table: box-drawn on a terminal, plain aligned columns otherwise.
    Table,
    /// The table with more columns (lists of groups, instances, nodes, deployments).
    Wide,
    /// One name (or id) per line, for `xargs` and shell loops.
    Name,
    /// The API's JSON answer, pretty-printed.
    Json,
    /// The API's answer as YAML.
    Yaml,
}

impl Output {
    /// For a person (a table, a name, a sentence), not the API's answer as data.
    pub fn human(self) -> bool {
        matches!(self, Output::Table | Output::Wide | Output::Name)
    }
}

/// How tables are drawn, set once from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub headers: bool,
    /// Box drawing (stdout is a terminal) or plain aligned columns.
    pub boxed: bool,
}

static STYLE: OnceLock<Style> = OnceLock::new();

/// Sets how tables are drawn: `headers` unless `--no-headers`; boxes only on a terminal.
pub fn init(headers: bool) {
    let _ = STYLE.set(Style {
        headers,
        boxed: std::io::stdout().is_terminal(),
    });
}

fn style() -> Style {
    STYLE.get().copied().unwrap_or(Style {
        headers: true,
        boxed: false,
    })
}

/// A column: header and a JSON pointer into each row (`/spec/scaling`).
pub type Column<'a> = (&'a str, &'a str);

pub fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(true)) => "yes".into(),
        Some(Value::Bool(false)) => "no".into(),
        Some(Value::Object(map)) if map.is_empty() => "-".into(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v))))
            .collect::<Vec<_>>()
            .join(" "),
        Some(Value::Array(items)) if items.is_empty() => "-".into(),
        Some(Value::Array(items)) if items.iter().all(|v| !v.is_object() && !v.is_array()) => items
            .iter()
            .map(|v| cell(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// A `…AtMs` value (Unix milliseconds) as UTC time; anything else as [`cell`].
fn time_cell(value: Option<&Value>) -> String {
    match value.and_then(Value::as_i64).filter(|ms| *ms > 0) {
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
        )
        .to_string(),
        None => cell(value),
    }
}

fn structured(value: &(impl Serialize + ?Sized), output: Output) -> anyhow::Result<bool> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
        Output::Table | Output::Wide | Output::Name => return Ok(false),
    }
    Ok(true)
}

/// Rows under `headers` (none: a key/value listing), as the [`Style`] says.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    format_table(style(), headers, rows)
}

fn format_table(style: Style, headers: &[&str], rows: &[Vec<String>]) -> String {
    let headers = if style.headers { headers } else { &[] };
    if style.boxed {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        if !headers.is_empty() {
            table.set_header(headers.iter().copied());
        }
        for row in rows {
            table.add_row(row.iter().map(String::as_str));
        }
        return table.to_string();
    }
    plain(headers, rows)
}

/// Columns aligned with spaces, two between columns, no trailing blanks: what `awk`,
/// `cut` and `column` expect.
fn plain(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut lines: Vec<Vec<&str>> = Vec::with_capacity(rows.len() + 1);
    if !headers.is_empty() {
        lines.push(headers.to_vec());
    }
    lines.extend(rows.iter().map(|r| r.iter().map(String::as_str).collect()));
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|line| {
            let mut text = String::new();
            for (c, value) in line.iter().enumerate() {
                // Newlines would break the row apart.
                let value = value.replace(['\n', '\r'], " ");
                text.push_str(&value);
                if c + 1 < line.len() {
                    let pad = widths[c] - value.chars().count() + 2;
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            text.trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cells of one row.
fn row_cells(row: &Value, columns: &[Column]) -> Vec<String> {
    columns
        .iter()
        .map(|(_, p)| {
            if p.ends_with("AtMs") || p.ends_with("HeartbeatMs") {
                time_cell(row.pointer(p))
            } else {
                cell(row.pointer(p))
            }
        })
        .collect()
}

/// A list of objects as a table with `columns`.
pub fn list(
    value: &(impl Serialize + ?Sized),
    columns: &[Column],
    output: Output,
) -> anyhow::Result<()> {
    list_wide(value, columns, &[], output)
}

/// A list of objects as a table with `columns`, and `wide` after them with `-o wide`.
pub fn list_wide(
    value: &(impl Serialize + ?Sized),
    columns: &[Column],
    wide: &[Column],
    output: Output,
) -> anyhow::Result<()> {
    if let Some(text) = list_text(&serde_json::to_value(value)?, columns, wide, output)? {
        println!("{text}");
    }
    Ok(())
}

/// What [`list_wide`] prints (`None`: nothing, an empty `-o name` list).
pub fn list_text(
    value: &Value,
    columns: &[Column],
    wide: &[Column],
    output: Output,
) -> anyhow::Result<Option<String>> {
    match output {
        Output::Json => return Ok(Some(serde_json::to_string_pretty(value)?)),
        Output::Yaml => {
            return Ok(Some(serde_norway::to_string(value)?.trim_end().to_owned()));
        }
        _ => {}
    }
    let rows = value.as_array().cloned().unwrap_or_default();
    if output == Output::Name {
        // The column that names a row: NAME, ID, USER or ROLE, else the first.
        let pointer = columns
            .iter()
            .find(|(h, _)| matches!(*h, "NAME" | "ID" | "USER" | "ROLE"))
            .or(columns.first())
            .map_or("/name", |(_, p)| *p);
        let names: Vec<String> = rows.iter().map(|r| cell(r.pointer(pointer))).collect();
        return Ok((!names.is_empty()).then(|| names.join("\n")));
    }
    if rows.is_empty() {
        // Said on stderr: a script reading the table gets no rows, not a row "(none)".
        eprintln!("(none)");
        return Ok(None);
    }
    let columns: Vec<Column> = match output {
        Output::Wide => columns.iter().chain(wide).copied().collect(),
        _ => columns.to_vec(),
    };
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| row_cells(r, &columns)).collect();
    Ok(Some(table(&headers, &cells)))
}

/// What [`list_wide`] prints, as one string (empty for nothing).
pub fn list_string(
    value: &(impl Serialize + ?Sized),
    columns: &[Column],
    wide: &[Column],
    output: Output,
) -> anyhow::Result<String> {
    Ok(list_text(&serde_json::to_value(value)?, columns, wide, output)?.unwrap_or_default())
}

/// What [`object`] prints, for any answer.
pub fn object_string(value: &(impl Serialize + ?Sized), output: Output) -> anyhow::Result<String> {
    object_text(&serde_json::to_value(value)?, output)
}

/// One object as a two-column table (nested objects flattened to `key=value`); with `-o name`
/// its name (or id).
pub fn object(value: &(impl Serialize + ?Sized), output: Output) -> anyhow::Result<()> {
    println!("{}", object_text(&serde_json::to_value(value)?, output)?);
    Ok(())
}

/// What [`object`] prints.
pub fn object_text(value: &Value, output: Output) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => serde_json::to_string_pretty(value)?,
        Output::Yaml => serde_norway::to_string(value)?.trim_end().to_owned(),
        Output::Name => ["/name", "/id", "/username"]
            .iter()
            .find_map(|p| value.pointer(p).and_then(Value::as_str))
            .unwrap_or("-")
            .to_owned(),
        Output::Table | Output::Wide => {
            let rows: Vec<Vec<String>> = match value.as_object() {
                Some(fields) => fields
                    .iter()
                    .map(|(key, value)| vec![key.clone(), cell(Some(value))])
                    .collect(),
                None => vec![vec![cell(Some(value))]],
            };
            table(&[], &rows)
        }
    })
}

/// A short confirmation, or the answer itself for scripts.
pub fn done(
    value: &(impl Serialize + ?Sized),
    message: &str,
    output: Output,
) -> anyhow::Result<()> {
    if !structured(value, output)? {
        println!("{message}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Output, Style, cell, format_table, list_text, time_cell};

    #[test]
    fn cells_are_readable() {
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(Some(&json!(null))), "-");
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(true))), "yes");
        assert_eq!(cell(Some(&json!({ "RUNNING": 2 }))), "RUNNING=2");
        assert_eq!(cell(Some(&json!(["a", "b"]))), "a,b");
        assert_eq!(
            time_cell(Some(&json!(1_795_682_695_434_i64))),
            "2026-11-26T08:44:55Z"
        );
        assert_eq!(time_cell(Some(&json!(null))), "-");
    }

    #[test]
    fn plain_tables_are_aligned_without_boxes() {
        let rows = vec![
            vec!["lobby".to_owned(), "1".to_owned(), "-".to_owned()],
            vec!["event-long".to_owned(), "12".to_owned(), "x".to_owned()],
        ];
        let plain = Style {
            headers: true,
            boxed: false,
        };
        assert_eq!(
            format_table(plain, &["NAME", "REV", "NOTE"], &rows),
            "NAME        REV  NOTE\nlobby       1    -\nevent-long  12   x"
        );
        let bare = Style {
            headers: false,
            ..plain
        };
        assert_eq!(
            format_table(bare, &["NAME", "REV", "NOTE"], &rows),
            "lobby       1   -\nevent-long  12  x"
        );
        let boxed = format_table(
            Style {
                headers: true,
                boxed: true,
            },
            &["NAME"],
            &rows[..1],
        );
        assert!(boxed.contains('│') && boxed.contains("lobby"), "{boxed}");
    }

    #[test]
    fn names_and_wide_columns() {
        let groups = json!([{ "name": "a", "rev": 1 }, { "name": "b", "rev": 2 }]);
        let columns = [("NAME", "/name")];
        let names = list_text(&groups, &columns, &[("REV", "/rev")], Output::Name).unwrap();
        assert_eq!(names.as_deref(), Some("a\nb"));
        let wide = list_text(&groups, &columns, &[("REV", "/rev")], Output::Wide)
            .unwrap()
            .unwrap();
        assert!(wide.contains("REV") && wide.contains('2'), "{wide}");
        let narrow = list_text(&groups, &columns, &[("REV", "/rev")], Output::Table)
            .unwrap()
            .unwrap();
        assert!(!narrow.contains("REV"), "{narrow}");
    }
}
