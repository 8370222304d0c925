//! Commands to nodes from any replica: through any ready gateway's internal `NodeCommands`,
//! which forwards to the gateway holding the node's session (docs/architecture.md, "Commands to
//! nodes"). Acknowledged with the daemon's result, never fire-and-forget; every call has a
//! deadline, so a frozen or black-holed gateway costs one deadline, and the gateways that did
//! not answer are tried last for a while. Each command is a span `node.command` around the
//! calls to gateways (docs/observability.md, "Traces").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prexor_coord::Registry;
use prexor_domain::ServiceKind;
use prexor_pki::internal::PeerChannels;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{Command, CommandAck, NodeCommandRequest};
use tracing::Instrument;

/// How long a gateway waits for the daemon's ack unless the caller says otherwise.
pub const ACK_WITHIN: Duration = Duration::from_secs(10);
/// The caller's deadline is the ack wait plus this (the gateway's own work and the network).
const CALL_MARGIN: Duration = Duration::from_secs(2);
/// A gateway that did not answer (or whose connection broke) is tried last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(15);

/// Why a command got no ack from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No gateway replica is registered and ready: nothing was delivered.
    #[error("no gateway is ready")]
    NoGateway,
    /// No gateway could take the command: nothing was delivered.
    #[error("{0}")]
    Unavailable(String),
    /// No answer within the deadline: the command may or may not have been carried out.
    #[error("{0}")]
    Timeout(String),
    /// A gateway refused it (the node is offline, the command is malformed).
    #[error("{}", .0.message())]
    Refused(tonic::Status),
}

/// Sends node commands through any ready gateway (in random order; an unavailable one is
/// skipped, one that recently did not answer is tried last).
#[derive(Clone)]
pub struct Gateways {
    registry: Registry,
    channels: PeerChannels,
    suspects: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Gateways {
    /// `channels`: [`crate::Service::internal`]'s peers (mTLS with this replica's certificate).
    pub fn new(registry: Registry, channels: PeerChannels) -> Gateways {
        Gateways {
            registry,
            channels,
            suspects: Arc::default(),
        }
    }

    /// [`Gateways::send_within`] with the default ack wait ([`ACK_WITHIN`]).
    pub async fn send(&self, node: &str, command: Command) -> Result<CommandAck, SendError> {
        self.send_within(node, command, ACK_WITHIN).await
    }

    /// Sends `command` to `node`; the daemon's ack, waited for at most `ack_within` (plus a
    /// margin for the gateways themselves).
    pub async fn send_within(
        &self,
        node: &str,
        command: Command,
        ack_within: Duration,
    ) -> Result<CommandAck, SendError> {
        let span = tracing::info_span!(
            "node.command",
            node,
            command_id = %command.command_id,
            action = command.action_name(),
            scope = %command.scope,
            token = command.fence_token,
            result = tracing::field::Empty,
        );
        let outcome = self
            .try_gateways(node, command, ack_within)
            .instrument(span.clone())
            .await;
        let result = match &outcome {
            Ok(ack) => ack.result().as_str_name(),
            Err(SendError::Timeout(_)) => "timeout",
            Err(_) => "unavailable",
        };
        span.record("result", result);
        outcome
    }

    async fn try_gateways(
        &self,
        node: &str,
        command: Command,
        ack_within: Duration,
    ) -> Result<CommandAck, SendError> {
        let mut gateways = self
            .registry
            .list(Some(ServiceKind::Gateway))
            .await
            .map_err(|e| SendError::Unavailable(e.to_string()))?;
        gateways.retain(|g| g.ready && g.grpc_address.is_some());
        if gateways.is_empty() {
            return Err(SendError::NoGateway);
        }
        let start = rand::random_range(0..gateways.len());
        gateways.rotate_left(start);
        let suspect = self.current_suspects();
        gateways.sort_by_key(|g| suspect.contains(&g.id));
        let mut errors = Vec::new();
        for gateway in &gateways {
            let address = gateway.grpc_address.clone().unwrap_or_default();
            let channel = self
                .channels
                .get(&address)
                .map_err(|e| SendError::Unavailable(e.to_string()))?;
            let mut request = tonic::Request::new(NodeCommandRequest {
                node_id: node.to_string(),
                command: Some(command.clone()),
                timeout_ms: ack_within.as_millis() as u32,
                forwarded: false,
            });
            let deadline = ack_within + CALL_MARGIN;
            request.set_timeout(deadline);
            let mut client = NodeCommandsClient::new(crate::red::metered(channel));
            match tokio::time::timeout(deadline, client.send(request)).await {
                Ok(Ok(reply)) => {
                    return reply.into_inner().ack.ok_or_else(|| {
                        SendError::Unavailable("the gateway answered without an ack".into())
                    });
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                    self.suspect(&gateway.id);
                    errors.push(format!("{}: {}", gateway.id, status.message()));
                }
                Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                    return Err(SendError::Timeout(format!(
                        "{} (through gateway {})",
                        status.message(),
                        gateway.id
                    )));
                }
                Ok(Err(status)) => return Err(SendError::Refused(status)),
                Err(_) => {
                    self.suspect(&gateway.id);
                    return Err(SendError::Timeout(format!(
                        "gateway {} did not answer within {deadline:?}",
                        gateway.id
                    )));
                }
            }
        }
        Err(SendError::Unavailable(errors.join("; ")))
    }

    fn suspect(&self, gateway: &str) {
        metrics::counter!("prexor_node_command_gateway_failures_total").increment(1);
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(gateway.to_owned(), Instant::now());
    }

    fn current_suspects(&self) -> Vec<String> {
        let mut suspects = self.suspects.lock().expect("suspects lock");
        suspects.retain(|_, at| at.elapsed() < SUSPECT_FOR);
        suspects.keys().cloned().collect()
    }
}
