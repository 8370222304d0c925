//! Template layers: content-addressed tar.gz blobs fetched through a gateway once, cached under
//! `<dataDir>/cache/layers/<sha256>.tar.gz`, checked against their hash, unpacked in plan order.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prexor_proto::v1::FetchBlobRequest;
use prexor_proto::v1::node_content_client::NodeContentClient;
use tonic::Code;

use crate::identity::NodeIdentity;

/// Why a layer could not be had.
#[derive(Debug)]
pub enum LayerError {
    /// It will not work as sent (unknown hash, corrupt archive).
    Permanent(String),
    /// Try again later (no gateway reachable).
    Transient(String),
}

#[async_trait]
pub trait LayerSource: Send + Sync {
    async fn fetch(&self, hash: &str) -> Result<Vec<u8>, LayerError>;
}

/// Layers from the cluster store, through any reachable gateway.
pub struct GatewayLayers {
    pub node_id: String,
    pub identity: NodeIdentity,
    pub gateways: Vec<String>,
}

#[async_trait]
impl LayerSource for GatewayLayers {
    async fn fetch(&self, hash: &str) -> Result<Vec<u8>, LayerError> {
        let tls = self
            .identity
            .client_config()
            .map_err(LayerError::Transient)?;
        let mut reasons = Vec::new();
        for gateway in &self.gateways {
            let channel = match prexor_pki::tls::connect(
                gateway,
                tls.clone(),
                Duration::from_secs(5),
            )
            .await
            {
                Ok(channel) => channel,
                Err(e) => {
                    reasons.push(e.to_string());
                    continue;
                }
            };
            let mut stream = match NodeContentClient::new(channel)
                .fetch_blob(FetchBlobRequest {
                    node_id: self.node_id.clone(),
                    hash: hash.to_string(),
                })
                .await
            {
                Ok(response) => response.into_inner(),
                // Not in the store, or not for this node (no plan of it names the layer).
                Err(status) if matches!(status.code(), Code::NotFound | Code::PermissionDenied) => {
                    return Err(LayerError::Permanent(status.message().to_string()));
                }
                Err(status) => {
                    reasons.push(format!("{gateway}: {}", status.message()));
                    continue;
                }
            };
            let mut bytes = Vec::new();
            let complete = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk.data),
                    Ok(None) => break true,
                    Err(status) => {
                        reasons.push(format!("{gateway}: {}", status.message()));
                        break false;
                    }
                }
            };
            if complete {
                return Ok(bytes);
            }
        }
        Err(LayerError::Transient(format!(
            "no gateway could deliver layer {hash} ({})",
            reasons.join("; ")
        )))
    }
}

#[derive(Clone)]
pub struct LayerCache {
    dir: PathBuf,
    source: Arc<dyn LayerSource>,
}

impl LayerCache {
    pub fn new(data_dir: &Path, source: Arc<dyn LayerSource>) -> LayerCache {
        LayerCache {
            dir: data_dir.join("cache").join("layers"),
            source,
        }
    }

    /// The cached archive of `hash`, fetched (and checked) first if needed.
    pub async fn archive(&self, hash: &str) -> Result<PathBuf, LayerError> {
        if !prexor_domain::is_sha256_hex(hash) {
            return Err(LayerError::Permanent(format!(
                "template layer {hash:?} is not a SHA-256 hash"
            )));
        }
        let path = self.dir.join(format!("{hash}.tar.gz"));
        if path.is_file() {
            return Ok(path);
        }
        let bytes = self.source.fetch(hash).await?;
        let actual = prexor_domain::sha256_hex(&bytes);
        if actual != hash {
            return Err(LayerError::Permanent(format!(
                "template layer {hash} arrived with hash {actual}"
            )));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            LayerError::Transient(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        let tmp = self
            .dir
            .join(format!(".{hash}.partial-{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| LayerError::Transient(format!("cannot cache layer {hash}: {e}")))?;
        metrics::counter!("prexor_daemon_layers_fetched_total").increment(1);
        Ok(path)
    }
}

/// Unpacks a tar.gz into `dest`; an entry that would land outside `dest` fails the unpack.
pub fn unpack(archive: &Path, dest: &Path) -> Result<(), String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    let entries = tar
        .entries()
        .map_err(|e| format!("{} is not a tar.gz: {e}", archive.display()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("{} is corrupt: {e}", archive.display()))?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| format!("cannot unpack {name}: {e}"))?;
        if !inside {
            return Err(format!(
                "the layer contains {name:?}, which points outside the instance directory"
            ));
        }
    }
    Ok(())
}

/// Text files whose placeholders are substituted after unpacking (configuration, not jars).
pub fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("properties" | "yml" | "yaml" | "toml" | "json" | "txt" | "conf" | "cfg" | "ini")
    )
}
