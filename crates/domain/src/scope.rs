use std::fmt;
use std::str::FromStr;

use crate::name::{NameError, validate_name};

/// A unit of mutating work guarded by one lease and one fencing-token sequence.
///
/// The string form (`group:lobby`, `platform-module`, `workflow:drain-node-1`, `node:node-1`) names
/// the fence record in MongoDB; [`Scope::lease_key`] gives the Valkey key the operator page
/// documents (`prexor:v1:lease:group:<name>`, `prexor:v1:node:<id>`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Placement, scaling, drains and deployments of one group's instances.
    Group(String),
    /// Install / upgrade / uninstall / storage deletion of platform modules (one cluster-wide scope).
    PlatformModule,
    /// Persisted start-retry, node-drain, healing and recoverable-start workflows.
    Workflow(String),
    /// Which gateway replica holds a node's daemon session.
    Node(String),
}

impl Scope {
    /// The Valkey key of this scope's lease, below the given namespace (normally `prexor:v1:`).
    pub fn lease_key(&self, namespace: &str) -> String {
        match self {
            Scope::Group(name) => format!("{namespace}lease:group:{name}"),
            Scope::PlatformModule => format!("{namespace}lease:platform-module"),
            Scope::Workflow(name) => format!("{namespace}lease:workflow:{name}"),
            Scope::Node(id) => format!("{namespace}node:{id}"),
        }
    }

    /// The kind of scope, used as a low-cardinality metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Group(_) => "group",
            Scope::PlatformModule => "platform-module",
            Scope::Workflow(_) => "workflow",
            Scope::Node(_) => "node",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Group(name) => write!(f, "group:{name}"),
            Scope::PlatformModule => f.write_str("platform-module"),
            Scope::Workflow(name) => write!(f, "workflow:{name}"),
            Scope::Node(id) => write!(f, "node:{id}"),
        }
    }
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeParseError {
    #[error(
        "unknown scope {0:?}: expected group:<name>, platform-module, workflow:<name> or node:<id>"
    )]
    Unknown(String),
    #[error("scope {scope:?}: the name {reason}")]
    BadName { scope: String, reason: NameError },
}

impl FromStr for Scope {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "platform-module" {
            return Ok(Scope::PlatformModule);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| ScopeParseError::Unknown(s.to_owned()))?;
        let ctor: fn(String) -> Scope = match kind {
            "group" => Scope::Group,
            "workflow" => Scope::Workflow,
            "node" => Scope::Node,
            _ => return Err(ScopeParseError::Unknown(s.to_owned())),
        };
        validate_name(name).map_err(|reason| ScopeParseError::BadName {
            scope: s.to_owned(),
            reason,
        })?;
        Ok(ctor(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_match_the_operator_page() {
        let ns = "prexor:v1:";
        assert_eq!(
            Scope::Group("lobby".into()).lease_key(ns),
            "prexor:v1:lease:group:lobby"
        );
        assert_eq!(
            Scope::PlatformModule.lease_key(ns),
            "prexor:v1:lease:platform-module"
        );
        assert_eq!(
            Scope::Workflow("drain-n1".into()).lease_key(ns),
            "prexor:v1:lease:workflow:drain-n1"
        );
        assert_eq!(Scope::Node("n1".into()).lease_key(ns), "prexor:v1:node:n1");
    }

    #[test]
    fn display_and_parse_round_trip() {
        for scope in [
            Scope::Group("lobby".into()),
            Scope::PlatformModule,
            Scope::Workflow("heal-x".into()),
            Scope::Node("node-1".into()),
        ] {
            assert_eq!(scope.to_string().parse::<Scope>(), Ok(scope));
        }
    }

    #[test]
    fn parse_refuses_unknown_kinds_and_bad_names() {
        assert!(matches!(
            "tenant:x".parse::<Scope>(),
            Err(ScopeParseError::Unknown(_))
        ));
        assert!(matches!(
            "group:".parse::<Scope>(),
            Err(ScopeParseError::BadName { .. })
        ));
        assert!(matches!(
            "group:a:b".parse::<Scope>(),
            Err(ScopeParseError::BadName { .. })
        ));
    }
}
