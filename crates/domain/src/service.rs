use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The deployable control-plane processes. Each runs as one or more identical replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Api,
    Gateway,
    Scheduler,
    Ca,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 4] = [
        ServiceKind::Api,
        ServiceKind::Gateway,
        ServiceKind::Scheduler,
        ServiceKind::Ca,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Api => "api",
            ServiceKind::Gateway => "gateway",
            ServiceKind::Scheduler => "scheduler",
            ServiceKind::Ca => "ca",
        }
    }

    /// The executable name, e.g. `prexor-scheduler`.
    pub fn binary(self) -> &'static str {
        match self {
            ServiceKind::Api => "prexor-api",
            ServiceKind::Gateway => "prexor-gateway",
            ServiceKind::Scheduler => "prexor-scheduler",
            ServiceKind::Ca => "prexor-ca",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown service {s:?}: expected api, gateway, scheduler or ca"))
    }
}

/// `runtime.profile`: production wires the real (Valkey) coordination; development may run
/// without Valkey, single-writer only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Development,
    Production,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Development => "development",
            Profile::Production => "production",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "development" => Ok(Profile::Development),
            "production" => Ok(Profile::Production),
            other => Err(format!(
                "unknown profile {other:?}: expected \"development\" or \"production\""
            )),
        }
    }
}
