//! `prexor.v1.NodeCommands` on the internal gRPC port: any gateway accepts a command for any
//! node and hands it to the gateway that owns the node's session, so the replica that decides
//! never needs to be the one holding the stream.

use std::time::{Duration, Instant};

use prexor_coord::Registry;
use prexor_domain::{Scope, ServiceKind, validate_name};
use prexor_pki::internal::{PeerChannels, require_service_caller};
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::node_commands_server::NodeCommands;
use prexor_proto::v1::{AckResult, Command, CommandAck, NodeCommandReply, NodeCommandRequest};
use tonic::{Code, Request, Response, Status};

use crate::sessions::{DeliveryError, Sessions};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Commands {
    pub sessions: Sessions,
    pub registry: Registry,
    channels: PeerChannels,
}

impl Commands {
    pub fn new(sessions: Sessions, registry: Registry, channels: PeerChannels) -> Commands {
        Commands {
            sessions,
            registry,
            channels,
        }
    }

    /// The internal gRPC address of the gateway replica `replica`.
    async fn address_of(&self, replica: &str) -> Result<Option<String>, Status> {
        let gateways = self
            .registry
            .list(Some(ServiceKind::Gateway))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(gateways
            .into_iter()
            .find(|g| g.id == replica)
            .and_then(|g| g.grpc_address))
    }
}

impl Commands {
    /// A STALE_FENCE ack when the command's token is below its scope's mark in MongoDB: a
    /// newer holder has taken the scope, so a deposed one's late command (sent after a pause)
    /// never reaches the node, whatever the node has seen so far.
    async fn below_mark(&self, command: &Command) -> Result<Option<CommandAck>, Status> {
        let mark = self
            .sessions
            .store()
            .fence_mark(&command.scope)
            .await
            .map_err(|e| Status::unavailable(format!("cannot check the command's fence: {e}")))?;
        if command.fence_token >= mark {
            return Ok(None);
        }
        Ok(Some(CommandAck {
            command_id: command.command_id.clone(),
            result: AckResult::StaleFence as i32,
            message: format!(
                "fencing token {} of {} is below the scope's mark {mark}: another replica holds it now; not delivered",
                command.fence_token, command.scope
            ),
            ..CommandAck::default()
        }))
    }
}

fn validate(request: &NodeCommandRequest) -> Result<(), Status> {
    validate_name(&request.node_id)
        .map_err(|e| Status::invalid_argument(format!("node id {:?}: {e}", request.node_id)))?;
    let Some(command) = &request.command else {
        return Err(Status::invalid_argument("the request has no command"));
    };
    if command.command_id.is_empty() {
        return Err(Status::invalid_argument("the command has no command_id"));
    }
    if command.action.is_none() {
        return Err(Status::invalid_argument("the command has no action"));
    }
    if command.scope.parse::<Scope>().is_err() {
        return Err(Status::invalid_argument(format!(
            "the command's scope {:?} is not a lease scope (group:<name>, workflow:<name>, platform-module, node:<id>)",
            command.scope
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl NodeCommands for Commands {
    async fn send(
        &self,
        request: Request<NodeCommandRequest>,
    ) -> Result<Response<NodeCommandReply>, Status> {
        require_service_caller(&request)?;
        let request = request.into_inner();
        validate(&request)?;
        let timeout = match request.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
        };
        let deadline = Instant::now() + timeout;
        let node = request.node_id.clone();
        let command = request.command.clone().expect("validated");
        let started = Instant::now();
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break Err(Status::deadline_exceeded(format!(
                    "node {node} did not acknowledge command {} within {timeout:?}",
                    command.command_id
                )));
            }
            if let Some(session) = self.sessions.get(&node) {
                if let Some(stale) = self.below_mark(&command).await? {
                    break Ok(NodeCommandReply {
                        ack: Some(stale),
                        handled_by: self.sessions.replica_id().to_string(),
                    });
                }
                break match session.deliver(command.clone(), remaining).await {
                    Ok(ack) => Ok(NodeCommandReply {
                        ack: Some(ack),
                        handled_by: self.sessions.replica_id().to_string(),
                    }),
                    Err(DeliveryError::Timeout) => Err(Status::deadline_exceeded(format!(
                        "node {node} did not acknowledge command {} within {timeout:?}",
                        command.command_id
                    ))),
                    // The session ended meanwhile: look for the new owner.
                    Err(DeliveryError::Closed) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
            }
            if request.forwarded {
                break Err(Status::unavailable(format!(
                    "gateway {} does not hold node {node}'s session (ownership changed)",
                    self.sessions.replica_id()
                )));
            }
            let holders = self
                .sessions
                .leases()
                .holders(&[Scope::node(node.clone())])
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let Some(owner) = holders.into_iter().next().flatten() else {
                break Err(Status::failed_precondition(format!(
                    "node {node} is offline: no gateway holds its session"
                )));
            };
            if owner.holder == self.sessions.replica_id() {
                // Accepting or closing right now; look again shortly.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let Some(address) = self.address_of(&owner.holder).await? else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut forward = request.clone();
            forward.forwarded = true;
            forward.timeout_ms = remaining.as_millis() as u32;
            let mut call = Request::new(forward);
            call.set_timeout(remaining);
            match NodeCommandsClient::new(prexor_serve::metered(
                self.channels
                    .get(&address)
                    .map_err(|e| Status::internal(e.to_string()))?,
            ))
            .send(call)
            .await
            {
                Ok(reply) => {
                    metrics::counter!("prexor_gateway_commands_forwarded_total").increment(1);
                    break Ok(reply.into_inner());
                }
                Err(status) if status.code() == Code::Unavailable => {
                    // The owner changed or is going away; resolve again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(status) => break Err(status),
            }
        };
        let label = match &outcome {
            Ok(reply)
                if reply
                    .ack
                    .as_ref()
                    .is_some_and(|a| a.result() == AckResult::StaleFence) =>
            {
                "stale"
            }
            Ok(_) => "acked",
            Err(status) => match status.code() {
                Code::FailedPrecondition => "offline",
                Code::DeadlineExceeded => "timeout",
                _ => "error",
            },
        };
        metrics::counter!("prexor_gateway_commands_total", "outcome" => label).increment(1);
        metrics::histogram!("prexor_gateway_command_seconds")
            .record(started.elapsed().as_secs_f64());
        outcome.map(Response::new)
    }
}
