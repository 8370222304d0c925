//! Group variables: typed values a group's servers get wherever placeholders are substituted
//! (`{vars.NAME}` in the command, environment, configuration files and config rules). A secret
//! holds no value, only where its value comes from (`env://NAME` or `file:///path` on the
//! scheduler's host), read when an instance is dispatched and sent to that instance's node
//! alone: never stored, shown, logged or backed up (docs/scheduling.md, "Variables and
//! secrets").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ConfigValue;

/// The most variables one group has.
pub const MAX_VARIABLES: usize = 100;
/// The largest secret a resolver reads.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// One variable: its type and its value, or (a secret) where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variable {
    #[serde(rename = "type")]
    pub kind: VariableType,
    /// The value (every type but `secret`): a string, an integer (`int`, `port`) or a boolean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ConfigValue>,
    /// A secret's source: `env://NAME` (the scheduler's environment) or `file:///path` (a file
    /// on the scheduler's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum VariableType {
    String,
    Int,
    Bool,
    Port,
    Secret,
}

impl VariableType {
    pub fn as_str(self) -> &'static str {
        match self {
            VariableType::String => "string",
            VariableType::Int => "int",
            VariableType::Bool => "bool",
            VariableType::Port => "port",
            VariableType::Secret => "secret",
        }
    }
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource<'a> {
    Env(&'a str),
    File(&'a str),
}

impl<'a> SecretSource<'a> {
    /// `env://NAME` or `file:///absolute/path`; why not otherwise.
    pub fn parse(from: &'a str) -> Result<SecretSource<'a>, String> {
        if let Some(name) = from.strip_prefix("env://") {
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            return if valid {
                Ok(SecretSource::Env(name))
            } else {
                Err(format!(
                    "{from:?}: env://NAME names an environment variable (letters, digits, _)"
                ))
            };
        }
        if let Some(path) = from.strip_prefix("file://") {
            return if path.starts_with('/') && !path.split('/').any(|p| p == "..") {
                Ok(SecretSource::File(path))
            } else {
                Err(format!(
                    "{from:?}: file:// takes an absolute path without .. (file:///etc/prexorcloud/secrets/rcon)"
                ))
            };
        }
        Err(format!(
            "{from:?} is not a secret source: env://NAME or file:///path on the scheduler's host"
        ))
    }
}

impl Variable {
    /// The value as placeholders give it (not for a secret, which has none here).
    pub fn plain_value(&self) -> Option<String> {
        Some(match self.value.as_ref()? {
            ConfigValue::Bool(b) => b.to_string(),
            ConfigValue::Integer(i) => i.to_string(),
            ConfigValue::Number(n) => n.to_string(),
            ConfigValue::Text(t) => t.clone(),
        })
    }

    /// Every problem, each with the field below the variable (`.value`, `.from`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.kind == VariableType::Secret {
            if self.value.is_some() {
                problems.push((
                    ".value",
                    "a secret's value is never stored: give from (env://NAME or file:///path on the scheduler's host)".to_owned(),
                ));
            }
            match &self.from {
                None => problems.push((
                    ".from",
                    "is required for a secret: env://NAME or file:///path".to_owned(),
                )),
                Some(from) => {
                    if let Err(problem) = SecretSource::parse(from) {
                        problems.push((".from", problem));
                    }
                }
            }
            return problems;
        }
        if self.from.is_some() {
            problems.push((".from", "applies to secrets only; give value".to_owned()));
        }
        let fits = match (self.kind, &self.value) {
            (_, None) => {
                problems.push((".value", "is required".to_owned()));
                return problems;
            }
            (VariableType::String, Some(ConfigValue::Text(t))) => !t.contains(['\n', '\r', '\0']),
            (VariableType::Int, Some(ConfigValue::Integer(_))) => true,
            (VariableType::Bool, Some(ConfigValue::Bool(_))) => true,
            (VariableType::Port, Some(ConfigValue::Integer(p))) => (1..=65535).contains(p),
            _ => false,
        };
        if !fits {
            let expected = match self.kind {
                VariableType::String => "a string on one line",
                VariableType::Int => "an integer",
                VariableType::Bool => "true or false",
                VariableType::Port => "a TCP port (1 to 65535)",
                VariableType::Secret => unreachable!("secrets returned above"),
            };
            problems.push((
                ".value",
                format!("must be {expected} for a {} variable", self.kind.as_str()),
            ));
        }
        problems
    }
}

/// Why `name` cannot name a variable (`{vars.NAME}`).
pub fn name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    (!valid).then(|| {
        format!("{name:?} is not a variable name: letters, digits and _, not starting with a digit, at most 64")
    })
}

/// Substitutes `{vars.NAME}` in `text` with the values of `variables`; an unknown name stays.
pub fn substitute_vars(text: &str, variables: &BTreeMap<String, String>) -> String {
    if !text.contains("{vars.") {
        return text.to_owned();
    }
    variables
        .iter()
        .fold(text.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{vars.{name}}}"), value)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variable(json: serde_json::Value) -> Variable {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_type_takes_its_values_only() {
        let ok = [
            serde_json::json!({ "type": "string", "value": "Lobby" }),
            serde_json::json!({ "type": "int", "value": 100 }),
            serde_json::json!({ "type": "bool", "value": false }),
            serde_json::json!({ "type": "port", "value": 25575 }),
            serde_json::json!({ "type": "secret", "from": "env://RCON_PASSWORD" }),
            serde_json::json!({ "type": "secret", "from": "file:///etc/prexorcloud/rcon" }),
        ];
        for json in ok {
            assert!(variable(json.clone()).problems().is_empty(), "{json}");
        }
        let bad = [
            (
                serde_json::json!({ "type": "int", "value": "100" }),
                ".value",
            ),
            (
                serde_json::json!({ "type": "port", "value": 70000 }),
                ".value",
            ),
            (serde_json::json!({ "type": "bool" }), ".value"),
            (
                serde_json::json!({ "type": "string", "value": "a", "from": "env://A" }),
                ".from",
            ),
            (
                serde_json::json!({ "type": "secret", "value": "hunter2", "from": "env://A" }),
                ".value",
            ),
            (serde_json::json!({ "type": "secret" }), ".from"),
            (
                serde_json::json!({ "type": "secret", "from": "file://relative" }),
                ".from",
            ),
            (
                serde_json::json!({ "type": "secret", "from": "vault://x" }),
                ".from",
            ),
        ];
        for (json, field) in bad {
            let problems = variable(json.clone()).problems();
            assert_eq!(
                problems.first().map(|p| p.0),
                Some(field),
                "{json}: {problems:?}"
            );
        }
        assert!(
            serde_json::from_value::<Variable>(serde_json::json!({ "type": "float", "value": 1 }))
                .is_err()
        );
    }

    #[test]
    fn placeholders_take_the_values() {
        let values = BTreeMap::from([
            ("MOTD".to_owned(), "Hi".to_owned()),
            ("PORT".to_owned(), "1".to_owned()),
        ]);
        assert_eq!(
            substitute_vars("{vars.MOTD} at {vars.PORT} {vars.OTHER}", &values),
            "Hi at 1 {vars.OTHER}"
        );
        assert!(name_problem("RCON_PASSWORD").is_none());
        assert!(name_problem("1A").is_some() && name_problem("a-b").is_some());
    }
}
