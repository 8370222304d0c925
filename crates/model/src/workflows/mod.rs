//! Operator workflows that outlive a request: rolling deployments, platform modules and their
//! one mutation in flight, templates, backups. Their collection names and states are here; the
//! typed records of each live in its own submodule.

use mongodb::bson::Bson;

pub mod backups;
pub mod deployments;
pub mod modules;
pub mod templates;

/// One record per rolling deployment of a group (`_id` = deployment id).
pub const DEPLOYMENTS: &str = "deployments";
/// One record per platform module (`_id` = module name): `state`, the active version.
pub const MODULES: &str = "modules";
/// The one module mutation in flight (`_id` = [`CURRENT_MUTATION`]), created by the API and
/// completed by the platform-module lease holder.
pub const MODULE_MUTATION: &str = "module_mutation";
/// The `_id` of the mutation in flight.
pub const CURRENT_MUTATION: &str = "current";
/// Templates (`_id` = name) with their versions (each a list of layer blobs) and `current`.
pub const TEMPLATES: &str = "templates";
/// Captures of an instance's files being saved to a template (`_id` = capture id): what the
/// api asked a node for, and what its gateway stored (`templates::CaptureRecord`).
pub const CAPTURES: &str = "captures";
/// Backups (`_id` = backup id): the manifest; the archive itself is a blob.
pub const BACKUPS: &str = "backups";
/// The flag (in the coordination store) that makes every api replica refuse changes while a
/// restore runs.
pub const RESTORE_FLAG: &str = "restore-in-progress";

stored_state! {
    /// Where a rolling deployment stands (`deployments.state`).
    pub enum DeploymentState("deployment") {
        /// Replacing outdated instances, a batch at a time.
        Rolling = "ROLLING",
        /// Paused by an operator; resumable.
        Paused = "PAUSED",
        /// Every instance runs the target spec.
        Done = "DONE",
    }
}

impl DeploymentState {
    /// Deployments that still hold their group (one open deployment per group).
    pub const OPEN: &'static [DeploymentState] =
        &[DeploymentState::Rolling, DeploymentState::Paused];

    /// `{ "$in": [open states] }`, for filters on `state`.
    pub fn open_filter() -> Bson {
        Bson::Document(
            mongodb::bson::doc! { "$in": DeploymentState::any_of(DeploymentState::OPEN) },
        )
    }
}

stored_state! {
    /// A platform module's state (`modules.state`).
    pub enum ModuleState("module") {
        /// Uploaded, never installed.
        New = "NEW",
        /// Installed: its layer is part of every plan.
        Active = "ACTIVE",
        /// Uninstalled; its storage may still exist.
        Uninstalled = "UNINSTALLED",
    }
}

stored_state! {
    /// Where the module mutation in flight stands (`module_mutation.step`).
    pub enum MutationStep("module mutation") {
        /// Written by the API; the holder verifies it next.
        Requested = "REQUESTED",
        /// Verified by the holder; applied next.
        Verified = "VERIFIED",
    }
}

/// The `result` a completed module mutation records.
pub const MUTATION_DONE: &str = "DONE";

/// The `result` of a module mutation that failed for `problem`.
pub fn mutation_failed(problem: &str) -> String {
    format!("FAILED: {problem}")
}
