//! Commands to nodes. Every one carries the scope and fencing token of the lease it is sent
//! under: the gateway refuses it below the scope's mark and the daemon below the highest token it
//! has seen for the scope, so a deposed holder's commands never act (docs/architecture.md,
//! "Commands to nodes"; docs/coordination.md).

use prexor_coord::Lease;
use prexor_proto::v1::Command;
use prexor_proto::v1::command::Action;

/// `action` as a command under `lease`. `command_id` must be the same each time the same
/// command is sent again: the daemon answers a repeated id with the first answer's result.
pub fn fenced_command(lease: &Lease, command_id: String, action: Action) -> Command {
    Command {
        command_id,
        scope: lease.scope().to_string(),
        fence_token: lease.token(),
        action: Some(action),
    }
}
