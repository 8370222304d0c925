//! A plan's config rules, applied to the instance directory after its layers and files
//! (docs/scheduling.md, "Config rules"): set a key in a `.properties`, YAML, TOML or JSON file,
//! replace a text, or replace a regular expression's matches. The daemon runs as root and the
//! directory may hold what an earlier server left, so a rule never follows a symbolic link.

use std::path::{Component, Path, PathBuf};

use prexor_domain::config_rules::REGEX_SIZE_LIMIT;
use prexor_proto::v1::ConfigRule;
use prexor_proto::v1::config_rule::Change;

/// Applies `rules` in order; the first that cannot be applied fails, naming it
/// (`configRules[i] (file)`, as the group spec numbers them).
pub(crate) fn apply(
    dir: &Path,
    rules: &[ConfigRule],
    substitute: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    for (i, rule) in rules.iter().enumerate() {
        apply_one(dir, rule, substitute)
            .map_err(|e| format!("configRules[{i}] ({}): {e}", rule.file))?;
    }
    Ok(())
}

fn apply_one(
    dir: &Path,
    rule: &ConfigRule,
    substitute: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let path = inside(dir, &rule.file)?;
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let changed = match rule.change.as_ref().ok_or("the rule names no change")? {
        Change::Set(set) => {
            let value: serde_json::Value = serde_json::from_str(&set.value_json)
                .map_err(|e| format!("its value is not JSON: {e}"))?;
            let value = match value {
                serde_json::Value::String(text) => serde_json::Value::String(substitute(&text)),
                other => other,
            };
            let text = existing.clone().unwrap_or_default();
            match set.format.as_str() {
                "properties" => set_property(&text, &set.key, &value),
                "yaml" => set_yaml(&text, &set.key, value)?,
                "toml" => set_toml(&text, &set.key, &value)?,
                "json" => set_json(&text, &set.key, value)?,
                other => return Err(format!("unknown format {other:?}")),
            }
        }
        Change::Replace(replace) => {
            let text = existing.as_deref().ok_or(NO_FILE)?;
            text.replace(&replace.find, &substitute(&replace.with))
        }
        Change::Regex(regex) => {
            let text = existing.as_deref().ok_or(NO_FILE)?;
            let pattern = regex::RegexBuilder::new(&regex.find)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("{:?} is not a regular expression: {e}", regex.find))?;
            pattern
                .replace_all(text, substitute(&regex.with).as_str())
                .into_owned()
        }
    };
    if existing.as_deref() == Some(changed.as_str()) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create its directory: {e}"))?;
    }
    std::fs::write(&path, changed).map_err(|e| format!("cannot write it: {e}"))
}

const NO_FILE: &str = "the file does not exist after the layers were unpacked (replace and regex change an existing file)";

/// `file` below `dir`, refusing a path that leaves it or passes a symbolic link (which an
/// earlier server may have left to make root write elsewhere).
fn inside(dir: &Path, file: &str) -> Result<PathBuf, String> {
    let mut path = dir.to_path_buf();
    for component in Path::new(file).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => continue,
            _ => return Err("the path must stay inside the server's directory".into()),
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; rules never follow one",
                    path.strip_prefix(dir).unwrap_or(&path).display()
                ));
            }
            Ok(_) | Err(_) => {}
        }
    }
    if path == dir {
        return Err("the rule names no file".into());
    }
    if path.is_dir() {
        return Err("it is a directory, not a file".into());
    }
    Ok(path)
}

/// A JSON scalar as a `.properties` value.
fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// `text` with `key=value`: the first line setting `key` replaced, or the line appended.
fn set_property(text: &str, key: &str, value: &serde_json::Value) -> String {
    let line = format!("{key}={}", plain(value));
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let sets_key = |l: &str| {
        let l = l.trim_start();
        if l.starts_with('#') || l.starts_with('!') {
            return false;
        }
        let end = l
            .find(|c: char| c == '=' || c == ':' || c.is_whitespace())
            .unwrap_or(l.len());
        &l[..end] == key
    };
    match lines.iter().position(|l| sets_key(l)) {
        Some(at) => lines[at] = line,
        None => lines.push(line),
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Walks `key`'s dotted path in a tree of maps, making missing maps; the last segment and the
/// map holding it.
fn descend<'a, M>(
    root: &'a mut M,
    key: &str,
    next: impl Fn(&'a mut M, &str) -> Result<&'a mut M, String>,
) -> Result<(&'a mut M, String), String> {
    let segments: Vec<&str> = key.split('.').collect();
    let (last, path) = segments.split_last().ok_or("the key is empty")?;
    let mut at = root;
    for segment in path {
        at = next(at, segment)?;
    }
    Ok((at, (*last).to_owned()))
}

fn not_a_table(segment: &str) -> String {
    format!("{segment:?} on the key's path holds a value, not a table of keys")
}

fn set_yaml(text: &str, key: &str, value: serde_json::Value) -> Result<String, String> {
    use serde_norway::{Mapping, Value};
    let mut root: Value = if text.trim().is_empty() {
        Value::Mapping(Mapping::new())
    } else {
        serde_norway::from_str(text).map_err(|e| format!("it is not YAML: {e}"))?
    };
    if !root.is_mapping() {
        return Err("its top level is not a mapping of keys".into());
    }
    let (table, last) = descend(&mut root, key, |at, segment| {
        let map = at.as_mapping_mut().ok_or_else(|| not_a_table(segment))?;
        let child = map
            .entry(Value::String(segment.to_owned()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if child.is_mapping() {
            Ok(child)
        } else {
            Err(not_a_table(segment))
        }
    })?;
    let value: Value = serde_norway::to_value(value).map_err(|e| e.to_string())?;
    table
        .as_mapping_mut()
        .ok_or_else(|| not_a_table(&last))?
        .insert(Value::String(last), value);
    serde_norway::to_string(&root).map_err(|e| e.to_string())
}

fn set_toml(text: &str, key: &str, value: &serde_json::Value) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut =
        text.parse().map_err(|e| format!("it is not TOML: {e}"))?;
    let item = match value {
        serde_json::Value::Bool(b) => toml_edit::value(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => toml_edit::value(i),
            (None, Some(f)) => toml_edit::value(f),
            _ => return Err(format!("{n} is not a TOML number")),
        },
        serde_json::Value::String(s) => toml_edit::value(s.as_str()),
        other => return Err(format!("{other} is not a string, number or boolean")),
    };
    let (table, last) = descend(doc.as_table_mut(), key, |at, segment| {
        at.entry(segment)
            .or_insert_with(toml_edit::table)
            .as_table_mut()
            .ok_or_else(|| not_a_table(segment))
    })?;
    table.insert(&last, item);
    Ok(doc.to_string())
}

fn set_json(text: &str, key: &str, value: serde_json::Value) -> Result<String, String> {
    use serde_json::{Map, Value};
    let mut root: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(text).map_err(|e| format!("it is not JSON: {e}"))?
    };
    if !root.is_object() {
        return Err("its top level is not an object".into());
    }
    let (table, last) = descend(&mut root, key, |at, segment| {
        let map = at.as_object_mut().ok_or_else(|| not_a_table(segment))?;
        let child = map
            .entry(segment.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if child.is_object() {
            Ok(child)
        } else {
            Err(not_a_table(segment))
        }
    })?;
    table
        .as_object_mut()
        .ok_or_else(|| not_a_table(&last))?
        .insert(last, value);
    let mut out = serde_json::to_string_pretty(&root).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prexor_proto::v1::{SetKey, TextReplace};

    use super::*;

    fn set(file: &str, format: &str, key: &str, value: &str) -> ConfigRule {
        ConfigRule {
            file: file.into(),
            change: Some(Change::Set(SetKey {
                format: format.into(),
                key: key.into(),
                value_json: value.into(),
            })),
        }
    }

    fn text(file: &str, find: &str, with: &str, regex: bool) -> ConfigRule {
        let replace = TextReplace {
            find: find.into(),
            with: with.into(),
        };
        ConfigRule {
            file: file.into(),
            change: Some(if regex {
                Change::Regex(replace)
            } else {
                Change::Replace(replace)
            }),
        }
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "prexor-rules-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn port(s: &str) -> String {
        s.replace("{port}", "25570")
    }

    #[test]
    fn each_format_gets_its_key_and_keeps_the_rest() {
        let dir = dir();
        std::fs::write(
            dir.join("server.properties"),
            "# comment\nmotd=Old\nserver-port=25565\n",
        )
        .unwrap();
        std::fs::write(dir.join("paper.yml"), "settings:\n  chunks: 8\nother: x\n").unwrap();
        std::fs::write(
            dir.join("velocity.toml"),
            "# kept\nbind = \"0.0.0.0:1\"\n\n[servers]\nlobby = \"a\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("a.json"), "{\"keep\": 1}").unwrap();
        let rules = [
            set(
                "server.properties",
                "properties",
                "server-port",
                "\"{port}\"",
            ),
            set("server.properties", "properties", "online-mode", "false"),
            set("paper.yml", "yaml", "proxies.velocity.enabled", "true"),
            set(
                "velocity.toml",
                "toml",
                "servers.hub",
                "\"127.0.0.1:{port}\"",
            ),
            set("a.json", "json", "limits.players", "20"),
            set("new/fresh.yml", "yaml", "a.b", "0.5"),
        ];
        apply(&dir, &rules, &port).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("server.properties")).unwrap(),
            "# comment\nmotd=Old\nserver-port=25570\nonline-mode=false\n"
        );
        let yaml: serde_norway::Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join("paper.yml")).unwrap())
                .unwrap();
        assert_eq!(
            yaml["proxies"]["velocity"]["enabled"],
            serde_norway::Value::Bool(true)
        );
        assert_eq!(yaml["settings"]["chunks"].as_u64(), Some(8));
        let toml = std::fs::read_to_string(dir.join("velocity.toml")).unwrap();
        assert!(toml.starts_with("# kept\nbind = \"0.0.0.0:1\""), "{toml}");
        assert!(toml.contains("hub = \"127.0.0.1:25570\""), "{toml}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("a.json")).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "keep": 1, "limits": { "players": 20 } })
        );
        assert!(
            std::fs::read_to_string(dir.join("new/fresh.yml"))
                .unwrap()
                .contains("b: 0.5")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replace_and_regex_change_an_existing_file_and_name_a_missing_one() {
        let dir = dir();
        std::fs::write(dir.join("eula.txt"), "eula=false\nname=x\n").unwrap();
        let rules = [
            text("eula.txt", "eula=\\w+", "eula=true", true),
            text("eula.txt", "name=x", "name={port}", false),
        ];
        apply(&dir, &rules, &port).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("eula.txt")).unwrap(),
            "eula=true\nname=25570\n"
        );
        let err = apply(&dir, &[text("gone.txt", "a", "b", false)], &port).unwrap_err();
        assert!(
            err.starts_with("configRules[0] (gone.txt): the file does not exist"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_rule_never_follows_a_symbolic_link_or_leaves_the_directory() {
        let dir = dir();
        let outside = dir.join("outside.txt");
        std::fs::write(&outside, "secret").unwrap();
        let inner = dir.join("server");
        std::fs::create_dir_all(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("server.properties")).unwrap();
        let err = apply(
            &inner,
            &[set("server.properties", "properties", "a", "1")],
            &port,
        )
        .unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret");
        let err = apply(
            &inner,
            &[set("../outside.txt", "properties", "a", "1")],
            &port,
        )
        .unwrap_err();
        assert!(err.contains("inside the server's directory"), "{err}");
        let err = apply(
            &inner,
            &[
                set("x.yml", "yaml", "a.b", "1"),
                set("x.yml", "yaml", "a.b.c", "1"),
            ],
            &port,
        )
        .unwrap_err();
        assert!(
            err.starts_with("configRules[1] (x.yml): \"b\" on the key's path holds a value"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
