//! A server group as operators declare it (`groups` in MongoDB: `{_id: name, spec, revision}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{is_sha256_hex, validate_name};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// `paper`, `velocity`, ... (informational; the command says what runs).
    pub platform: String,
    pub version: String,
    /// argv of the server; placeholders `{port}`, `{instance}`, `{group}`, `{node}`, `{memory}`.
    pub command: Vec<String>,
    pub memory_mb: u64,
    pub port_range: PortRange,
    pub min_instances: u32,
    pub max_instances: u32,
    pub scaling: ScalingMode,
    /// Template layers (SHA-256 of each tar.gz), unpacked in order.
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Node labels an instance's node must have.
    #[serde(default)]
    pub affinity: BTreeMap<String, String>,
    /// No new instances while set.
    #[serde(default)]
    pub maintenance: bool,
    /// Console `stop`, then SIGKILL after this many seconds.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u32,
}

fn default_grace() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScalingMode {
    /// Exactly `minInstances`, with stable names `<group>-1`, `<group>-2`, ...
    Static,
    /// Between min and max on player load (at least `minInstances`).
    Dynamic,
    /// Only what operators start.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    pub hash: String,
    #[serde(default)]
    pub name: String,
}

/// One problem with a group spec: the field (camelCase path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl GroupSpec {
    /// Every problem at once, each naming its field.
    pub fn problems(&self, name: &str) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(FieldProblem {
                field: field.to_string(),
                message,
            })
        };
        if let Err(e) = validate_name(name) {
            problem("name", format!("{name:?} {e}"));
        }
        if self.command.first().is_none_or(|c| c.trim().is_empty()) {
            problem("command", "must name the program to run".into());
        }
        if self.memory_mb < 64 {
            problem(
                "memoryMb",
                format!("{} is below the minimum of 64", self.memory_mb),
            );
        }
        if self.port_range.from == 0 || self.port_range.from > self.port_range.to {
            problem(
                "portRange",
                format!(
                    "{}..{} is not a range of TCP ports (from must be at least 1 and not above to)",
                    self.port_range.from, self.port_range.to
                ),
            );
        }
        if self.min_instances > self.max_instances {
            problem(
                "minInstances",
                format!(
                    "{} is above maxInstances ({})",
                    self.min_instances, self.max_instances
                ),
            );
        }
        let ports = u32::from(self.port_range.to.saturating_sub(self.port_range.from)) + 1;
        if self.max_instances > ports * 64 {
            problem(
                "maxInstances",
                format!("{} cannot fit the port range", self.max_instances),
            );
        }
        for (i, template) in self.templates.iter().enumerate() {
            if !is_sha256_hex(&template.hash) {
                problem(
                    &format!("templates[{i}].hash"),
                    format!("{:?} is not a SHA-256 hash", template.hash),
                );
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GroupSpec {
        GroupSpec {
            platform: "paper".into(),
            version: "1.21".into(),
            command: vec!["java".into(), "-jar".into(), "paper.jar".into()],
            memory_mb: 1024,
            port_range: PortRange {
                from: 30000,
                to: 30099,
            },
            min_instances: 2,
            max_instances: 10,
            scaling: ScalingMode::Static,
            templates: vec![],
            env: BTreeMap::new(),
            affinity: BTreeMap::new(),
            maintenance: false,
            stop_grace_seconds: 30,
        }
    }

    #[test]
    fn a_good_spec_has_no_problems_and_a_bad_one_lists_each() {
        assert!(spec().problems("lobby").is_empty());
        let mut bad = spec();
        bad.command.clear();
        bad.memory_mb = 1;
        bad.port_range = PortRange { from: 10, to: 5 };
        bad.min_instances = 20;
        let fields: Vec<String> = bad
            .problems("Lobby!")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            ["name", "command", "memoryMb", "portRange", "minInstances"]
        );
    }

    #[test]
    fn specs_read_from_camel_case_json_and_reject_unknown_fields() {
        let json = r#"{"platform":"paper","version":"1.21","command":["run"],"memoryMb":512,
            "portRange":{"from":1,"to":9},"minInstances":1,"maxInstances":2,"scaling":"STATIC"}"#;
        let parsed: GroupSpec = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.stop_grace_seconds, 30);
        let unknown = json.replace("\"scaling\"", "\"scalling\":1,\"scaling\"");
        assert!(serde_json::from_str::<GroupSpec>(&unknown).is_err());
    }
}
