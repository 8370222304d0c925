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

/// The kinds of scope, each with its own lease-key form. Code that must consider every kind
/// (restore taking every lease, metrics labels) iterates [`ScopeKind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeKind {
    Group,
    PlatformModule,
    Workflow,
    Node,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 4] = [
        ScopeKind::Group,
        ScopeKind::PlatformModule,
        ScopeKind::Workflow,
        ScopeKind::Node,
    ];

    /// The kind's name: the prefix of the scope's string form, a low-cardinality metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Group => "group",
            ScopeKind::PlatformModule => "platform-module",
            ScopeKind::Workflow => "workflow",
            ScopeKind::Node => "node",
        }
    }
}

/// The workflow name of a node's drain is this prefix and the node id.
const DRAIN_PREFIX: &str = "drain-";
/// The workflow name a restore runs under.
const RESTORE: &str = "restore";

impl Scope {
    pub fn group(name: impl Into<String>) -> Scope {
        Scope::Group(name.into())
    }

    pub fn node(id: impl Into<String>) -> Scope {
        Scope::Node(id.into())
    }

    /// The workflow scope of `node`'s drain (`workflow:drain-<node>`).
    pub fn drain(node: &str) -> Scope {
        Scope::Workflow(format!("{DRAIN_PREFIX}{node}"))
    }

    /// The workflow scope a backup restore holds while it replaces the cluster's state.
    pub fn restore() -> Scope {
        Scope::Workflow(RESTORE.to_owned())
    }

    /// Every scope the schedulers work under, given the cluster's groups and the nodes with an
    /// open drain: one per group, the platform modules, one per drain. The reconciler splits
    /// these among scheduler replicas; a restore takes them all.
    pub fn scheduled<'a>(
        groups: impl IntoIterator<Item = &'a str>,
        drained_nodes: impl IntoIterator<Item = &'a str>,
    ) -> std::collections::BTreeSet<Scope> {
        let mut scopes: std::collections::BTreeSet<Scope> =
            groups.into_iter().map(Scope::group).collect();
        scopes.insert(Scope::PlatformModule);
        scopes.extend(drained_nodes.into_iter().map(Scope::drain));
        scopes
    }

    /// The node whose drain this scope is, if it is a drain.
    pub fn drained_node(&self) -> Option<&str> {
        match self {
            Scope::Workflow(name) => name.strip_prefix(DRAIN_PREFIX),
            _ => None,
        }
    }

    /// The Valkey key of this scope's lease, below the given namespace (normally `prexor:v1:`).
    pub fn lease_key(&self, namespace: &str) -> String {
        match self {
            Scope::Group(name) => format!("{namespace}lease:group:{name}"),
            Scope::PlatformModule => format!("{namespace}lease:platform-module"),
            Scope::Workflow(name) => format!("{namespace}lease:workflow:{name}"),
            Scope::Node(id) => format!("{namespace}node:{id}"),
        }
    }

    pub fn kind(&self) -> ScopeKind {
        match self {
            Scope::Group(_) => ScopeKind::Group,
            Scope::PlatformModule => ScopeKind::PlatformModule,
            Scope::Workflow(_) => ScopeKind::Workflow,
            Scope::Node(_) => ScopeKind::Node,
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
        if s == ScopeKind::PlatformModule.as_str() {
            return Ok(Scope::PlatformModule);
        }
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| ScopeParseError::Unknown(s.to_owned()))?;
        let kind = ScopeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| ScopeParseError::Unknown(s.to_owned()))?;
        let ctor: fn(String) -> Scope = match kind {
            ScopeKind::Group => Scope::Group,
            ScopeKind::Workflow => Scope::Workflow,
            ScopeKind::Node => Scope::Node,
            ScopeKind::PlatformModule => return Err(ScopeParseError::Unknown(s.to_owned())),
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
            Scope::drain("n1").lease_key(ns),
            "prexor:v1:lease:workflow:drain-n1"
        );
        assert_eq!(Scope::Node("n1".into()).lease_key(ns), "prexor:v1:node:n1");
    }

    #[test]
    fn drains_and_restores_have_their_own_workflow_names() {
        assert_eq!(Scope::drain("node-1").to_string(), "workflow:drain-node-1");
        assert_eq!(Scope::drain("node-1").drained_node(), Some("node-1"));
        assert_eq!(Scope::restore().to_string(), "workflow:restore");
        assert_eq!(Scope::restore().drained_node(), None);
        assert_eq!(Scope::group("drain-x").drained_node(), None);
    }

    #[test]
    fn the_scheduled_scopes_are_groups_modules_and_drains() {
        let scopes = Scope::scheduled(["lobby", "bedwars"], ["node-1"]);
        assert_eq!(
            scopes.into_iter().collect::<Vec<_>>(),
            vec![
                Scope::group("bedwars"),
                Scope::group("lobby"),
                Scope::PlatformModule,
                Scope::drain("node-1"),
            ]
        );
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
