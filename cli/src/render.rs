//! Printing API answers: tables by default, `-o json` / `-o yaml` for scripts.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use serde_json::Value;

use crate::Output;

/// A column: header and a JSON pointer into each row (`/spec/scaling`).
pub type Column<'a> = (&'a str, &'a str);

fn cell(value: Option<&Value>) -> String {
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
        Output::Table => return Ok(false),
    }
    Ok(true)
}

/// A list of objects as a table with `columns`.
pub fn list(
    value: &(impl Serialize + ?Sized),
    columns: &[Column],
    output: Output,
) -> anyhow::Result<()> {
    if structured(value, output)? {
        return Ok(());
    }
    let rows = serde_json::to_value(value)?
        .as_array()
        .cloned()
        .unwrap_or_default();
    if rows.is_empty() {
        println!("(none)");
        return Ok(());
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(columns.iter().map(|(h, _)| *h));
    for row in &rows {
        table.add_row(columns.iter().map(|(_, p)| {
            if p.ends_with("AtMs") {
                time_cell(row.pointer(p))
            } else {
                cell(row.pointer(p))
            }
        }));
    }
    println!("{table}");
    Ok(())
}

/// One object as a two-column table (nested objects flattened to `key=value`).
pub fn object(value: &(impl Serialize + ?Sized), output: Output) -> anyhow::Result<()> {
    if structured(value, output)? {
        return Ok(());
    }
    let value = &serde_json::to_value(value)?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    match value.as_object() {
        Some(fields) => {
            for (key, value) in fields {
                table.add_row([key.clone(), cell(Some(value))]);
            }
        }
        None => {
            table.add_row([cell(Some(value))]);
        }
    }
    println!("{table}");
    Ok(())
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

    use super::{cell, time_cell};

    #[test]
    fn cells_are_readable() {
        assert_eq!(cell(Some(&json!("x"))), "x");
        assert_eq!(cell(Some(&json!(null))), "-");
        assert_eq!(cell(None), "-");
        assert_eq!(cell(Some(&json!(true))), "yes");
        assert_eq!(cell(Some(&json!({ "RUNNING": 2 }))), "RUNNING=2");
        assert_eq!(
            time_cell(Some(&json!(1_795_682_695_434_i64))),
            "2026-11-26T08:44:55Z"
        );
        assert_eq!(time_cell(Some(&json!(null))), "-");
    }
}
