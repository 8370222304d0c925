use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::{Uncased, Value};
use serde::de::DeserializeOwned;

use crate::services::ServiceConfig;

/// One thing wrong with a configuration: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

/// Every problem found in a configuration. Displayed as one message listing each of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
}

/// Loads a service's configuration: defaults, then the TOML file (if given), then `PREXOR_*`
/// environment variables. Either the whole configuration is valid or every problem is returned.
pub fn load<C: ServiceConfig>(path: Option<&Path>) -> Result<C, ConfigError> {
    let mut figment = Figment::new();
    if let Some(path) = path {
        if !path.is_file() {
            return Err(ConfigError {
                problems: vec![Problem {
                    key: "--config".into(),
                    message: format!(
                        "file {} does not exist or is not a regular file",
                        path.display()
                    ),
                }],
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        // `lowercase(false)` last: every filter or map added after it turns lowercasing back on.
        // Not configuration: the config file's path, prexorctl's variables (an operator's shell
        // may have them set) and the local stack's port offset.
        Env::prefixed("PREXOR_")
            .ignore(&[
                "config",
                "controller",
                "token",
                "context",
                "dev_port_offset",
            ])
            .map(|key| Uncased::from_owned(key_for_env(key.as_str())))
            .lowercase(false),
    );
    let mut reader = Reader::new(figment)?;
    let config = C::read(&mut reader);
    reader.finish()?;
    Ok(config)
}

/// Reads typed values out of the merged configuration, remembering every key asked for (to find
/// unknown keys) and every problem (to report them all at once).
pub struct Reader {
    figment: Figment,
    known: BTreeSet<String>,
    problems: Vec<Problem>,
}

impl Reader {
    fn new(figment: Figment) -> Result<Self, ConfigError> {
        // Surfaces TOML syntax errors before any key is read.
        if let Err(err) = figment.extract::<Value>() {
            return Err(ConfigError {
                problems: vec![Problem {
                    key: "--config".into(),
                    message: err.to_string(),
                }],
            });
        }
        Ok(Reader {
            figment,
            known: BTreeSet::new(),
            problems: Vec::new(),
        })
    }

    /// The value at `key`, if set. A value of the wrong type is recorded as a problem.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        self.known.insert(key.to_owned());
        if !self.figment.contains(key) {
            return None;
        }
        match self.figment.extract_inner::<T>(key) {
            Ok(value) => Some(value),
            Err(err) => {
                let message = err.kind.to_string();
                self.problem(key, message);
                None
            }
        }
    }

    /// The value at `key`, or `default` when unset or invalid (invalid is recorded).
    pub fn get_or<T: DeserializeOwned>(&mut self, key: &str, default: T) -> T {
        self.get(key).unwrap_or(default)
    }

    /// The value at `key`; records "missing" when unset.
    pub fn required<T: DeserializeOwned>(&mut self, key: &str, why: &str) -> Option<T> {
        let value = self.get(key);
        if value.is_none() && !self.has_problem(key) {
            self.problem(key, format!("is required: {why}"));
        }
        value
    }

    /// A string value parsed with `FromStr`; the parse error becomes the problem's message.
    pub fn parse<T>(&mut self, key: &str) -> Option<T>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        let raw: String = self.get(key)?;
        match raw.parse() {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(key, err.to_string());
                None
            }
        }
    }

    /// A duration written the humantime way (`"15s"`, `"1m 30s"`, `"250ms"`).
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let raw: String = self.get(key)?;
        match humantime::parse_duration(&raw) {
            Ok(value) => Some(value),
            Err(err) => {
                self.problem(
                    key,
                    format!(
                        "{raw:?} is not a duration ({err}); write it like \"15s\" or \"250ms\""
                    ),
                );
                None
            }
        }
    }

    /// Records a problem with `key` found by validation after reading.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let source = self.source_of(key);
        let mut message = message.into();
        if let Some(source) = source {
            message.push_str(&format!(" ({source})"));
        }
        self.problems.push(Problem {
            key: key.to_owned(),
            message,
        });
    }

    /// Marks `key` (and everything below it) as known without reading it, for maps read whole.
    pub fn allow(&mut self, key: &str) {
        self.known.insert(key.to_owned());
    }

    fn has_problem(&self, key: &str) -> bool {
        self.problems.iter().any(|p| p.key == key)
    }

    fn source_of(&self, key: &str) -> Option<String> {
        if !self.figment.contains(key) {
            return None;
        }
        let meta = self.figment.find_metadata(key)?;
        if meta.name.contains("environment") {
            return Some(format!("set by {}", env_var_for(key)));
        }
        meta.source
            .as_ref()
            .and_then(|s| s.file_path())
            .map(|p| format!("in {}", p.display()))
    }

    fn finish(mut self) -> Result<(), ConfigError> {
        let mut leaves = Vec::new();
        if let Ok(root) = self.figment.extract::<Value>() {
            collect_leaves(&root, String::new(), &mut leaves);
        }
        for leaf in leaves {
            let known = self
                .known
                .iter()
                .any(|k| leaf == *k || leaf.starts_with(&format!("{k}.")));
            if !known {
                let hint = self.closest_known(&leaf);
                self.problem(&leaf, format!("unknown key{hint}"));
            }
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }

    fn closest_known(&self, leaf: &str) -> String {
        let lower = leaf.to_ascii_lowercase();
        self.known
            .iter()
            .find(|k| k.to_ascii_lowercase() == lower)
            .map(|k| format!("; did you mean {k}?"))
            .unwrap_or_default()
    }
}

fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Dict(_, dict) if !dict.is_empty() => {
            for (k, v) in dict {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

/// `scheduler__evaluation_interval_seconds` → `scheduler.evaluationIntervalSeconds`.
fn key_for_env(raw: &str) -> String {
    raw.to_ascii_lowercase()
        .split("__")
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut upper = false;
            for c in segment.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The environment variable that sets `key`: `scheduler.evaluationIntervalSeconds` →
/// `PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS`.
pub fn env_var_for(key: &str) -> String {
    let segments: Vec<String> = key
        .split('.')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len() + 4);
            for c in segment.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        })
        .collect();
    format!("PREXOR_{}", segments.join("__"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_and_keys_are_inverse() {
        for key in [
            "scheduler.evaluationIntervalSeconds",
            "mongo.uri",
            "coordination.selfFenceAfter",
        ] {
            let env = env_var_for(key);
            let stripped = env.strip_prefix("PREXOR_").unwrap();
            assert_eq!(key_for_env(stripped), key, "{env}");
        }
        assert_eq!(
            env_var_for("scheduler.evaluationIntervalSeconds"),
            "PREXOR_SCHEDULER__EVALUATION_INTERVAL_SECONDS"
        );
    }
}
