//! Config rules: data-driven changes to a server's configuration files, made by the daemon after
//! the template layers are unpacked (docs/scheduling.md, "Config rules"). A rule names one file
//! and one change: set a key (`.properties`, YAML, TOML, JSON), replace a text, or replace the
//! matches of a regular expression. Values and replacements may use the plan's placeholders
//! (`{port}`, `{instance}`, `{group}`, `{node}`, `{memory}`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The most rules one group has.
pub const MAX_RULES: usize = 100;
/// The longest regular expression a rule compiles (bytes of its compiled program).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// One change to one configuration file: exactly one of `set`, `replace` and `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigRule {
    /// The file, relative to the server's directory (`server.properties`,
    /// `config/paper-global.yml`).
    pub file: String,
    /// How `set` reads the file; by default from its extension (`.properties`, `.yml` /
    /// `.yaml`, `.toml`, `.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ConfigFormat>,
    /// Sets a key to a value, creating the file (and, in YAML, TOML and JSON, the tables on the
    /// key's path) when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetKey>,
    /// Replaces every occurrence of `find` with `with` (a file that must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<TextReplace>,
    /// Replaces every match of the regular expression `find` with `with` (`$1`, `${name}` name
    /// its groups; a file that must exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<TextReplace>,
}

/// A configuration file's format, for `set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConfigFormat {
    Properties,
    Yaml,
    Toml,
    Json,
}

impl ConfigFormat {
    pub const ALL: [ConfigFormat; 4] = [
        ConfigFormat::Properties,
        ConfigFormat::Yaml,
        ConfigFormat::Toml,
        ConfigFormat::Json,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigFormat::Properties => "properties",
            ConfigFormat::Yaml => "yaml",
            ConfigFormat::Toml => "toml",
            ConfigFormat::Json => "json",
        }
    }

    pub fn parse(name: &str) -> Option<ConfigFormat> {
        ConfigFormat::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The format a file's extension names.
    pub fn of_file(file: &str) -> Option<ConfigFormat> {
        match Path::new(file).extension()?.to_str()? {
            "properties" => Some(ConfigFormat::Properties),
            "yml" | "yaml" => Some(ConfigFormat::Yaml),
            "toml" => Some(ConfigFormat::Toml),
            "json" => Some(ConfigFormat::Json),
            _ => None,
        }
    }
}

/// `key` (a dotted path in YAML, TOML and JSON: `proxies.velocity.enabled`; the whole key in
/// `.properties`) set to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetKey {
    pub key: String,
    pub value: ConfigValue,
}

/// A value a rule sets: a string (placeholders substituted), an integer, a number or a boolean.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum ConfigValue {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl PartialEq for ConfigValue {
    fn eq(&self, other: &ConfigValue) -> bool {
        match (self, other) {
            (ConfigValue::Bool(a), ConfigValue::Bool(b)) => a == b,
            (ConfigValue::Integer(a), ConfigValue::Integer(b)) => a == b,
            (ConfigValue::Number(a), ConfigValue::Number(b)) => a.to_bits() == b.to_bits(),
            (ConfigValue::Text(a), ConfigValue::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for ConfigValue {}

/// `find` replaced with `with`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TextReplace {
    pub find: String,
    pub with: String,
}

/// What a rule does, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigChange<'a> {
    Set(ConfigFormat, &'a SetKey),
    Replace(&'a TextReplace),
    Regex(&'a TextReplace),
}

impl ConfigRule {
    /// Its change; `None` when it has none, more than one, or a `set` of a file whose format is
    /// neither given nor known by its extension ([`ConfigRule::problems`] says which).
    pub fn change(&self) -> Option<ConfigChange<'_>> {
        match (&self.set, &self.replace, &self.regex) {
            (Some(set), None, None) => {
                let format = self.format.or_else(|| ConfigFormat::of_file(&self.file))?;
                Some(ConfigChange::Set(format, set))
            }
            (None, Some(replace), None) => Some(ConfigChange::Replace(replace)),
            (None, None, Some(regex)) => Some(ConfigChange::Regex(regex)),
            _ => None,
        }
    }

    /// Every problem, each with the field below the rule (`.file`, `.set.key`, …).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Some(problem) = file_problem(&self.file) {
            problems.push((".file", problem));
        }
        let changes = [
            self.set.is_some(),
            self.replace.is_some(),
            self.regex.is_some(),
        ];
        match changes.iter().filter(|c| **c).count() {
            0 => problems.push((
                "",
                "names no change: give one of set {\"key\", \"value\"}, replace {\"find\", \"with\"} or regex {\"find\", \"with\"}".to_owned(),
            )),
            1 => {}
            _ => problems.push((
                "",
                "has more than one change: give only one of set, replace and regex (one rule per change)".to_owned(),
            )),
        }
        if let Some(set) = &self.set {
            if self.format.is_none() && ConfigFormat::of_file(&self.file).is_none() {
                problems.push((
                    ".format",
                    format!(
                        "{:?} has no extension set knows (.properties, .yml, .yaml, .toml, .json): give format (properties, yaml, toml or json)",
                        self.file
                    ),
                ));
            }
            let properties = self.format.or_else(|| ConfigFormat::of_file(&self.file))
                == Some(ConfigFormat::Properties);
            if let Some(problem) = key_problem(&set.key, properties) {
                problems.push((".set.key", problem));
            }
            if let ConfigValue::Text(text) = &set.value
                && properties
                && text.contains(['\n', '\r'])
            {
                problems.push((
                    ".set.value",
                    "a .properties value is one line: it must not contain a line break".to_owned(),
                ));
            }
            if let ConfigValue::Number(n) = set.value
                && !n.is_finite()
            {
                problems.push((".set.value", "must be a finite number".to_owned()));
            }
        } else if self.format.is_some() {
            problems.push((
                ".format",
                "applies to set only (replace and regex read the file as text)".to_owned(),
            ));
        }
        if let Some(replace) = &self.replace
            && replace.find.is_empty()
        {
            problems.push((".replace.find", "must not be empty".to_owned()));
        }
        if let Some(regex) = &self.regex {
            match regex::RegexBuilder::new(&regex.find)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
            {
                Err(err) => {
                    problems.push((".regex.find", format!("is not a regular expression: {err}")))
                }
                Ok(compiled) if compiled.is_match("") => problems.push((
                    ".regex.find",
                    format!(
                        "{:?} matches the empty text, so it would match everywhere",
                        regex.find
                    ),
                )),
                Ok(_) => {}
            }
        }
        problems
    }
}

/// Why `file` is not a path inside the server's directory.
fn file_problem(file: &str) -> Option<String> {
    if file.is_empty() {
        return Some("must name a file in the server's directory".to_owned());
    }
    if !crate::paths::stays_inside(file) {
        return Some(format!(
            "{file:?} must be a relative path inside the server's directory (no leading /, no ..)"
        ));
    }
    if file.ends_with('/') {
        return Some(format!("{file:?} names a directory, not a file"));
    }
    None
}

/// Why `key` cannot be set.
fn key_problem(key: &str, properties: bool) -> Option<String> {
    if key.trim().is_empty() {
        return Some("must not be empty".to_owned());
    }
    if properties {
        if key.contains(['=', ':', '\n', '\r']) || key.starts_with(['#', '!']) {
            return Some(format!(
                "{key:?} cannot be a .properties key (no =, :, line breaks, or a leading # or !)"
            ));
        }
    } else if key.split('.').any(|segment| segment.is_empty()) {
        return Some(format!(
            "{key:?} has an empty segment: a dotted path like proxies.velocity.enabled"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: serde_json::Value) -> ConfigRule {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn each_kind_of_rule_reads_and_says_its_change() {
        let set = rule(
            serde_json::json!({ "file": "server.properties", "set": { "key": "motd", "value": "Lobby {instance}" } }),
        );
        assert!(set.problems().is_empty());
        assert!(matches!(
            set.change(),
            Some(ConfigChange::Set(ConfigFormat::Properties, _))
        ));
        let yaml = rule(
            serde_json::json!({ "file": "config/paper-global.yml", "set": { "key": "proxies.velocity.enabled", "value": true } }),
        );
        assert!(matches!(
            yaml.change(),
            Some(ConfigChange::Set(
                ConfigFormat::Yaml,
                SetKey {
                    value: ConfigValue::Bool(true),
                    ..
                }
            ))
        ));
        let number =
            rule(serde_json::json!({ "file": "a.json", "set": { "key": "x", "value": 0.5 } }));
        assert_eq!(number.set.unwrap().value, ConfigValue::Number(0.5));
        let integer =
            rule(serde_json::json!({ "file": "a.toml", "set": { "key": "x", "value": 25565 } }));
        assert_eq!(integer.set.unwrap().value, ConfigValue::Integer(25565));
        let regex = rule(
            serde_json::json!({ "file": "eula.txt", "regex": { "find": "eula=\\w+", "with": "eula=true" } }),
        );
        assert!(regex.problems().is_empty());
        assert!(matches!(regex.change(), Some(ConfigChange::Regex(_))));
    }

    #[test]
    fn a_bad_rule_names_each_problem_by_field() {
        let fields = |json| -> Vec<&'static str> {
            rule(json).problems().into_iter().map(|p| p.0).collect()
        };
        assert_eq!(
            fields(
                serde_json::json!({ "file": "../etc/passwd", "replace": { "find": "", "with": "x" } })
            ),
            [".file", ".replace.find"]
        );
        assert_eq!(fields(serde_json::json!({ "file": "x.properties" })), [""]);
        assert_eq!(
            fields(
                serde_json::json!({ "file": "x.yml", "set": { "key": "a..b", "value": 1 }, "replace": { "find": "a", "with": "b" } })
            ),
            ["", ".set.key"]
        );
        assert_eq!(
            fields(serde_json::json!({ "file": "start.sh", "set": { "key": "a", "value": 1 } })),
            [".format"]
        );
        assert_eq!(
            fields(serde_json::json!({ "file": "x.txt", "regex": { "find": "(", "with": "" } })),
            [".regex.find"]
        );
        assert_eq!(
            fields(serde_json::json!({ "file": "x.txt", "regex": { "find": "a*", "with": "" } })),
            [".regex.find"]
        );
        assert_eq!(
            fields(
                serde_json::json!({ "file": "/abs.txt", "replace": { "find": "a", "with": "" }, "format": "yaml" })
            ),
            [".file", ".format"]
        );
        assert_eq!(
            fields(
                serde_json::json!({ "file": "server.properties", "set": { "key": "motd", "value": "two\nlines" } })
            ),
            [".set.value"]
        );
        let unknown =
            serde_json::from_value::<ConfigRule>(serde_json::json!({ "file": "x", "sett": {} }));
        assert!(unknown.unwrap_err().to_string().contains("sett"));
    }
}
