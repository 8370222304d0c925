//! A server group as operators declare it (`groups` in MongoDB: `{_id: name, spec, revision}`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::config_rules::{
    ConfigChange, ConfigFormat, ConfigRule, ConfigValue, SetKey, TextReplace,
};
pub use crate::load::{LoadMetric, LoadSignal};
pub use crate::variables::{Variable, VariableType};
use crate::{is_sha256_hex, validate_name};

/// The longest group name: `<name>-<number>` (instance ids) must stay within the 63 characters of
/// a name for up to a million instances.
pub const GROUP_NAME_MAX: usize = 63 - 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// How a DYNAMIC group follows player load (required for DYNAMIC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicScaling>,
    /// Template layers (SHA-256 of each tar.gz), unpacked in order.
    #[serde(default)]
    pub templates: Vec<TemplateRef>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Node labels an instance's node must have.
    #[serde(default)]
    pub affinity: BTreeMap<String, String>,
    /// Node labels an instance's node must not have (any of them excludes the node).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anti_affinity: BTreeMap<String, String>,
    /// No new instances while set.
    #[serde(default)]
    pub maintenance: bool,
    /// Platform modules (installed cluster-wide) whose active version goes into every instance,
    /// unpacked after the templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// Console `stop`, then SIGKILL after this many seconds.
    #[serde(default = "default_grace")]
    pub stop_grace_seconds: u32,
    /// A server taken out of service (scale-down, node drain) while players are online first
    /// DRAINS for up to this many seconds (until they left), then is stopped; 0: stop at once.
    #[serde(default = "default_drain")]
    pub drain_seconds: u32,
    /// Changes to the server's configuration files, made in order after the layers are unpacked
    /// (so one template serves many groups): [`ConfigRule`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_rules: Vec<ConfigRule>,
    /// Typed values substituted as `{vars.NAME}` wherever placeholders are; a secret names only
    /// where its value comes from: [`Variable`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, Variable>,
    /// DYNAMIC groups: instances kept ready beyond the group's target, taken first when it scales
    /// up: [`WarmPool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_pool: Option<WarmPool>,
}

/// A DYNAMIC group's warm pool: `prepared` instances placed and prepared ahead (templates and
/// modules unpacked, files written, config rules applied; with `started`, the server started
/// and idle), never announced to players. A scale-up takes warm instances before it places new
/// ones, and the pool is refilled; the pool never takes the group past `maxInstances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WarmPool {
    /// Instances the pool holds (1 to [`WARM_POOL_MAX`]).
    pub prepared: u32,
    /// Start the warm instances' servers too (they run idle until taken); otherwise a taken
    /// instance starts from its prepared directory.
    #[serde(default)]
    pub started: bool,
}

/// The largest warm pool a group may keep.
pub const WARM_POOL_MAX: u32 = 100;

fn default_grace() -> u32 {
    30
}

fn default_drain() -> u32 {
    60
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    pub from: u16,
    pub to: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScalingMode {
    /// Exactly `minInstances`, with stable names `<group>-1`, `<group>-2`, ...
    Static,
    /// Between min and max on player load (at least `minInstances`).
    Dynamic,
    /// Only what operators start.
    Manual,
}

/// DYNAMIC scaling: `step` more instances when the running ones are `scaleUpPercent` full, `step`
/// fewer (the emptiest) when the others could take every player below that mark for
/// `scaleDownDelaySeconds`; with `load`, on a reported metric instead of players. No two changes
/// within `cooldownSeconds`. Always between min and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DynamicScaling {
    /// Players one instance holds (required unless `load` is given).
    #[serde(default)]
    pub max_players: u32,
    #[serde(default = "default_scale_up_percent")]
    pub scale_up_percent: u32,
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay_seconds: u32,
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u32,
    /// Instances added or removed by one change (default 1).
    #[serde(default = "default_step", skip_serializing_if = "is_default_step")]
    pub step: u32,
    /// Scale on the servers' reported TPS, MSPT or memory instead of players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadSignal>,
}

fn default_step() -> u32 {
    1
}

fn is_default_step(step: &u32) -> bool {
    *step == 1
}

fn default_scale_up_percent() -> u32 {
    80
}

fn default_scale_down_delay() -> u32 {
    120
}

fn default_cooldown() -> u32 {
    30
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// SHA-256 of the layer. When a spec is written through the API it may be left out and the
    /// template named instead; the API fills it in.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub name: String,
    /// The template version the hash belongs to (informational once resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// One problem with a group spec: the field (camelCase path) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl GroupSpec {
    /// What the spec says, as a hash: instances record the hash of the spec they were placed
    /// from, and a deployment is done when every instance runs its target hash.
    pub fn hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("group specs serialize");
        crate::sha256_hex(&canonical)
    }

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
        } else if name.len() > GROUP_NAME_MAX {
            problem(
                "name",
                format!(
                    "{name:?} is {} characters long; a group name has at most {GROUP_NAME_MAX}, so that its instance ids (<name>-<number>) stay valid names",
                    name.len()
                ),
            );
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
        match (self.scaling, &self.dynamic) {
            (ScalingMode::Dynamic, None) => problem(
                "dynamic",
                "is required for DYNAMIC scaling: {\"maxPlayers\": N, \"scaleUpPercent\": 80, \"scaleDownDelaySeconds\": 120, \"cooldownSeconds\": 30}".into(),
            ),
            (_, Some(dynamic)) => {
                if dynamic.max_players == 0 && dynamic.load.is_none() {
                    problem(
                        "dynamic.maxPlayers",
                        "must be at least 1 (or give load to scale on TPS, MSPT or memory)".into(),
                    );
                }
                if dynamic.step == 0 || dynamic.step > self.max_instances.max(1) {
                    problem(
                        "dynamic.step",
                        format!(
                            "{} is not between 1 and maxInstances ({})",
                            dynamic.step, self.max_instances
                        ),
                    );
                }
                if let Some(load) = &dynamic.load {
                    for (field, message) in load.problems() {
                        problem(&format!("dynamic.load{field}"), message);
                    }
                }
                if !(1..=100).contains(&dynamic.scale_up_percent) {
                    problem(
                        "dynamic.scaleUpPercent",
                        format!("{} is not between 1 and 100", dynamic.scale_up_percent),
                    );
                }
                if self.scaling != ScalingMode::Dynamic {
                    problem(
                        "dynamic",
                        "applies to DYNAMIC groups only; set scaling to DYNAMIC or remove it".into(),
                    );
                }
            }
            _ => {}
        }
        if let Some(pool) = &self.warm_pool {
            if self.scaling != ScalingMode::Dynamic {
                problem(
                    "warmPool",
                    "applies to DYNAMIC groups only (a STATIC group keeps the fixed names <group>-1..N, which a warm instance cannot take); set scaling to DYNAMIC or remove it".into(),
                );
            }
            if !(1..=WARM_POOL_MAX).contains(&pool.prepared) {
                problem(
                    "warmPool.prepared",
                    format!("{} is not between 1 and {WARM_POOL_MAX}", pool.prepared),
                );
            }
        }
        for (i, module) in self.modules.iter().enumerate() {
            if let Err(e) = validate_name(module) {
                problem(&format!("modules[{i}]"), format!("{module:?} {e}"));
            }
        }
        if self.config_rules.len() > crate::config_rules::MAX_RULES {
            problem(
                "configRules",
                format!(
                    "{} rules; a group has at most {}",
                    self.config_rules.len(),
                    crate::config_rules::MAX_RULES
                ),
            );
        }
        for (i, rule) in self.config_rules.iter().enumerate() {
            for (field, message) in rule.problems() {
                problem(&format!("configRules[{i}]{field}"), message);
            }
        }
        if self.variables.len() > crate::variables::MAX_VARIABLES {
            problem(
                "variables",
                format!(
                    "{} variables; a group has at most {}",
                    self.variables.len(),
                    crate::variables::MAX_VARIABLES
                ),
            );
        }
        for (name, variable) in &self.variables {
            if let Some(message) = crate::variables::name_problem(name) {
                problem(&format!("variables.{name}"), message);
                continue;
            }
            for (field, message) in variable.problems() {
                problem(&format!("variables.{name}{field}"), message);
            }
        }
        for (i, template) in self.templates.iter().enumerate() {
            if template.hash.is_empty() {
                problem(
                    &format!("templates[{i}].hash"),
                    "is missing: give the layer's SHA-256 (the REST API also resolves a template name)".into(),
                );
            } else if !is_sha256_hex(&template.hash) {
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
            dynamic: None,
            templates: vec![],
            env: BTreeMap::new(),
            affinity: BTreeMap::new(),
            anti_affinity: BTreeMap::new(),
            maintenance: false,
            modules: vec![],
            stop_grace_seconds: 30,
            drain_seconds: 60,
            config_rules: vec![],
            variables: BTreeMap::new(),
            warm_pool: None,
        }
    }

    #[test]
    fn a_warm_pool_belongs_to_a_dynamic_group_and_has_a_size() {
        let mut pooled = spec();
        pooled.warm_pool = Some(WarmPool {
            prepared: 0,
            started: false,
        });
        let fields: Vec<String> = pooled
            .problems("lobby")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["warmPool", "warmPool.prepared"]);
        pooled.scaling = ScalingMode::Dynamic;
        pooled.dynamic = Some(DynamicScaling {
            max_players: 20,
            scale_up_percent: 80,
            scale_down_delay_seconds: 120,
            cooldown_seconds: 30,
            step: 1,
            load: None,
        });
        pooled.warm_pool = Some(WarmPool {
            prepared: 2,
            started: false,
        });
        assert!(pooled.problems("lobby").is_empty());
        // No pool: the spec (and its hash) is what it was before pools existed.
        let json = serde_json::to_value(spec()).unwrap();
        assert!(json.get("warmPool").is_none());
        let parsed: WarmPool = serde_json::from_str(r#"{"prepared": 3, "started": true}"#).unwrap();
        assert!(parsed.started && parsed.prepared == 3);
        assert!(serde_json::from_str::<WarmPool>(r#"{"prepared": 3, "size": 1}"#).is_err());
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
    fn a_group_name_leaves_room_for_its_instance_numbers() {
        let longest = "g".repeat(GROUP_NAME_MAX);
        assert!(spec().problems(&longest).is_empty());
        assert!(crate::validate_name(&format!("{longest}-999999")).is_ok());
        let fields: Vec<String> = spec()
            .problems(&format!("{longest}x"))
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["name"]);
    }

    #[test]
    fn the_spec_hash_follows_the_content() {
        let mut other = spec();
        assert_eq!(spec().hash(), other.hash());
        other.env.insert("VERSION".into(), "2".into());
        assert_ne!(spec().hash(), other.hash());
    }

    #[test]
    fn dynamic_groups_need_their_scaling_rules() {
        let mut dynamic = spec();
        dynamic.scaling = ScalingMode::Dynamic;
        let fields: Vec<String> = dynamic
            .problems("lobby")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["dynamic"]);
        dynamic.dynamic = Some(DynamicScaling {
            max_players: 0,
            scale_up_percent: 150,
            scale_down_delay_seconds: 60,
            cooldown_seconds: 10,
            step: 1,
            load: None,
        });
        let fields: Vec<String> = dynamic
            .problems("lobby")
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(fields, ["dynamic.maxPlayers", "dynamic.scaleUpPercent"]);
        let json = r#"{"maxPlayers": 50}"#;
        let parsed: DynamicScaling = serde_json::from_str(json).unwrap();
        assert_eq!(parsed.scale_up_percent, 80);
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
