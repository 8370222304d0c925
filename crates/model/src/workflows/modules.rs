//! Platform modules as stored (`modules`) and the one mutation in flight (`module_mutation`).

use serde::{Deserialize, Serialize};

use super::templates::LayerVersion;
use super::{ModuleState, MutationStep};

/// A platform module (`_id` = its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleRecord {
    #[serde(rename = "_id")]
    pub name: String,
    /// In upload order; a version, once stored, never changes.
    #[serde(default)]
    pub versions: Vec<ModuleVersion>,
    pub state: ModuleState,
    #[serde(default)]
    pub created_at_ms: i64,
    /// The version it runs: set when installed, `null` once uninstalled, absent before.
    #[serde(default)]
    pub active: Option<ActiveModule>,
    /// The last mutation's outcome; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_mutation: Option<MutationOutcome>,
    /// Every mutation's outcome, oldest first; absent before the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<MutationOutcome>,
}

impl ModuleRecord {
    pub fn version(&self, version: &str) -> Option<&ModuleVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The version it runs, if it is installed.
    pub fn active_version(&self) -> Option<&str> {
        self.active.as_ref().map(|a| a.version.as_str())
    }
}

/// A module version: named by its uploader (`1.0.2`).
pub type ModuleVersion = LayerVersion<String>;

/// What an installed module runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveModule {
    pub version: String,
    pub hash: String,
    #[serde(default)]
    pub since_ms: i64,
}

/// How a module mutation ended (`lastMutation`, `history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutationOutcome {
    pub action: String,
    /// `null` for the actions without one (uninstall, delete-storage).
    #[serde(default)]
    pub version: Option<String>,
    /// Who requested it.
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_ms: i64,
    /// [`super::MUTATION_DONE`] or [`super::mutation_failed`].
    #[serde(default)]
    pub result: String,
}

/// The module mutation in flight (`_id` = [`super::CURRENT_MUTATION`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MutationRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub module: String,
    /// `install`, `upgrade`, `uninstall` or `delete-storage` (kept as the text: a holder of
    /// another version fails an action it does not know instead of failing to read it).
    pub action: String,
    pub step: MutationStep,
    #[serde(default)]
    pub requested_by: String,
    #[serde(default)]
    pub requested_at_ms: i64,
    /// The version to install or upgrade to, and its blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Set by the holder when it verified the mutation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, Bson, doc};

    use super::*;

    #[test]
    fn a_module_decodes_through_its_lifecycle() {
        let new: ModuleRecord = bson::from_document(doc! {
            "_id": "essentials", "state": "NEW", "createdAtMs": 1_i64,
            "versions": [{ "version": "1.0", "hash": "a", "size": 3_i64, "files": 1_i64, "uploadedBy": "ann", "uploadedAtMs": 1_i64 }],
        })
        .unwrap();
        assert_eq!(new.state, ModuleState::New);
        assert_eq!(new.version("1.0").map(|v| v.hash.as_str()), Some("a"));
        assert!(new.active.is_none() && new.history.is_empty());

        let outcome = doc! { "action": "uninstall", "version": Bson::Null, "by": "ann", "atMs": 5_i64, "result": "DONE" };
        let uninstalled: ModuleRecord = bson::from_document(doc! {
            "_id": "essentials", "state": "UNINSTALLED", "active": Bson::Null,
            "lastMutation": outcome.clone(), "history": [outcome],
            "_fence": { "scope": "platform-module", "token": 3_i64 },
        })
        .unwrap();
        assert_eq!(uninstalled.state, ModuleState::Uninstalled);
        assert_eq!(uninstalled.active_version(), None);
        assert_eq!(
            uninstalled.last_mutation.map(|m| (m.version, m.result)),
            Some((None, "DONE".to_owned()))
        );
    }

    #[test]
    fn a_mutation_is_written_without_the_fields_it_lacks() {
        let mutation = MutationRecord {
            id: super::super::CURRENT_MUTATION.into(),
            module: "essentials".into(),
            action: "uninstall".into(),
            step: MutationStep::Requested,
            requested_by: "ann".into(),
            requested_at_ms: 1,
            version: None,
            hash: None,
            verified_at_ms: None,
        };
        let stored = bson::to_document(&mutation).unwrap();
        assert_eq!(stored.get_str("step"), Ok("REQUESTED"));
        assert!(!stored.contains_key("version") && !stored.contains_key("verifiedAtMs"));
        let read: MutationRecord = bson::from_document(stored).unwrap();
        assert_eq!(read.step, MutationStep::Requested);
    }
}
