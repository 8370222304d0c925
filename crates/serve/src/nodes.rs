//! Commands to nodes from any replica: through any ready gateway's internal `NodeCommands`,
//! which forwards to the gateway holding the node's session (ARCHITECTURE.md, "Commands to
//! nodes"). Acknowledged with the daemon's result, never fire-and-forget.

use prexor_coord::Registry;
use prexor_domain::ServiceKind;
use prexor_pki::internal::PeerChannels;
use prexor_proto::v1::node_commands_client::NodeCommandsClient;
use prexor_proto::v1::{Command, CommandAck, NodeCommandRequest};

/// Sends node commands through any ready gateway (tried in random order; an unavailable one is
/// skipped). The error says why no gateway could deliver.
#[derive(Clone)]
pub struct Gateways {
    registry: Registry,
    channels: PeerChannels,
}

impl Gateways {
    /// `channels`: [`crate::Service::internal`]'s peers (mTLS with this replica's certificate).
    pub fn new(registry: Registry, channels: PeerChannels) -> Gateways {
        Gateways { registry, channels }
    }

    pub async fn send(&self, node: &str, command: Command) -> Result<CommandAck, String> {
        let mut gateways = self
            .registry
            .list(Some(ServiceKind::Gateway))
            .await
            .map_err(|e| e.to_string())?;
        gateways.retain(|g| g.ready && g.grpc_address.is_some());
        if gateways.is_empty() {
            return Err("no gateway is ready".into());
        }
        let start = rand::random_range(0..gateways.len());
        let mut errors = Vec::new();
        for i in 0..gateways.len() {
            let gateway = &gateways[(start + i) % gateways.len()];
            let address = gateway.grpc_address.clone().unwrap_or_default();
            let channel = self.channels.get(&address)?;
            let request = NodeCommandRequest {
                node_id: node.to_string(),
                command: Some(command.clone()),
                timeout_ms: 10_000,
                forwarded: false,
            };
            match NodeCommandsClient::new(channel).send(request).await {
                Ok(reply) => {
                    return reply
                        .into_inner()
                        .ack
                        .ok_or_else(|| "the gateway answered without an ack".into());
                }
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    errors.push(format!("{}: {}", gateway.id, status.message()));
                }
                Err(status) => return Err(status.message().to_string()),
            }
        }
        Err(errors.join("; "))
    }
}
