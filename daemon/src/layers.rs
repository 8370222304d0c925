//! Template layers: content-addressed tar.gz blobs fetched through a gateway once (streamed to
//! disk, never held whole), cached under `<dataDir>/cache/layers/<sha256>.tar.gz`, checked
//! against their hash, unpacked in plan order under the node's disk budget ([`DiskBudget`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prexor_domain::StreamHash;
use prexor_proto::v1::node_content_client::NodeContentClient;
use prexor_proto::v1::{FetchBlobRequest, StoreBlobChunk, StoredBlob};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
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
    /// Streams layer `hash` into `sink` (restarting it when a source fails midway).
    async fn fetch(&self, hash: &str, sink: &mut LayerSink) -> Result<(), LayerError>;

    /// Stores the archive at `archive` in the cluster store for capture `capture_id` (save to
    /// template); what the store recorded.
    async fn store(&self, capture_id: &str, archive: &Path) -> Result<StoredBlob, LayerError>;
}

/// Bytes per chunk of an archive sent to the cluster store.
const STORE_CHUNK: usize = 256 * 1024;

/// The disk rules of a node: every write keeps `min_free_bytes` free on the data directory's
/// file system, and one instance's layers unpack to at most `instance_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct DiskBudget {
    pub instance_bytes: u64,
    pub min_free_bytes: u64,
}

impl DiskBudget {
    /// Whether `need` more bytes fit in `dir`'s file system above the reserve.
    pub fn room(&self, dir: &Path, need: u64) -> Result<(), String> {
        let stat = rustix::fs::statvfs(dir)
            .map_err(|e| format!("cannot tell the free space of {}: {e}", dir.display()))?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free < need.saturating_add(self.min_free_bytes) {
            return Err(format!(
                "{} has {} MiB free, and the daemon keeps {} MiB free (daemon.minFreeDiskMb)",
                dir.display(),
                free / 1024 / 1024,
                self.min_free_bytes / 1024 / 1024
            ));
        }
        Ok(())
    }
}

/// A layer being fetched: a partial file in the cache, hashed as it is written, never past the
/// free-space reserve. Nothing of a layer is held in memory beyond one chunk.
pub struct LayerSink {
    path: PathBuf,
    file: tokio::fs::File,
    hash: StreamHash,
    budget: DiskBudget,
}

impl LayerSink {
    /// Starts the layer over (a source failed midway).
    pub async fn restart(&mut self) -> Result<(), LayerError> {
        self.file
            .set_len(0)
            .await
            .and(self.file.rewind().await)
            .map_err(|e| {
                LayerError::Transient(format!("cannot rewrite {}: {e}", self.path.display()))
            })?;
        self.hash = StreamHash::default();
        Ok(())
    }

    pub async fn write(&mut self, data: &[u8]) -> Result<(), LayerError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // Out of room: this start fails (the scheduler places it again), naming the reserve.
        self.budget
            .room(dir, data.len() as u64)
            .map_err(LayerError::Permanent)?;
        self.file.write_all(data).await.map_err(|e| {
            LayerError::Transient(format!("cannot write {}: {e}", self.path.display()))
        })?;
        self.hash.update(data);
        Ok(())
    }
}

/// Layers from the cluster store, through any reachable gateway.
pub struct GatewayLayers {
    pub node_id: String,
    pub identity: NodeIdentity,
    pub gateways: Vec<String>,
}

impl GatewayLayers {
    /// A `NodeContent` client of `gateway`, connected with the node's identity; `None` (the
    /// reason added to `reasons`) when it cannot be had.
    async fn client(
        &self,
        gateway: &str,
        reasons: &mut Vec<String>,
    ) -> Option<NodeContentClient<prexor_serve::MeteredChannel>> {
        let connected = match self.identity.client_config() {
            Ok(tls) => prexor_pki::tls::connect(gateway, tls, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string()),
            Err(reason) => Err(reason),
        };
        match connected {
            Ok(channel) => Some(NodeContentClient::new(prexor_serve::metered(channel))),
            Err(reason) => {
                reasons.push(reason);
                None
            }
        }
    }
}

#[async_trait]
impl LayerSource for GatewayLayers {
    async fn fetch(&self, hash: &str, sink: &mut LayerSink) -> Result<(), LayerError> {
        let mut reasons = Vec::new();
        for gateway in &self.gateways {
            let Some(mut client) = self.client(gateway, &mut reasons).await else {
                continue;
            };
            let mut stream = match client
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
                // Busy (RESOURCE_EXHAUSTED), unreachable: the next gateway, or later.
                Err(status) => {
                    reasons.push(format!("{gateway}: {}", status.message()));
                    continue;
                }
            };
            sink.restart().await?;
            let complete = loop {
                match stream.message().await {
                    Ok(Some(chunk)) => sink.write(&chunk.data).await?,
                    Ok(None) => break true,
                    Err(status) => {
                        reasons.push(format!("{gateway}: {}", status.message()));
                        break false;
                    }
                }
            };
            if complete {
                return Ok(());
            }
        }
        Err(LayerError::Transient(format!(
            "no gateway could deliver layer {hash} ({})",
            reasons.join("; ")
        )))
    }

    async fn store(&self, capture_id: &str, archive: &Path) -> Result<StoredBlob, LayerError> {
        let mut reasons = Vec::new();
        for gateway in &self.gateways {
            let Some(mut client) = self.client(gateway, &mut reasons).await else {
                continue;
            };
            let chunks = archive_chunks(&self.node_id, capture_id, archive).await?;
            match client.store_blob(chunks).await {
                Ok(stored) => return Ok(stored.into_inner()),
                // Not asked for, too large, not a layer: another gateway says the same.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::PermissionDenied | Code::ResourceExhausted | Code::InvalidArgument
                    ) =>
                {
                    return Err(LayerError::Permanent(status.message().to_string()));
                }
                Err(status) => reasons.push(format!("{gateway}: {}", status.message())),
            }
        }
        Err(LayerError::Transient(format!(
            "no gateway could store the archive ({})",
            reasons.join("; ")
        )))
    }
}

/// The chunks of `archive` for `StoreBlob`, read as they are sent: the first names the node and
/// the capture. A read failing midway ends the stream short, which the gateway refuses as not a
/// layer.
async fn archive_chunks(
    node_id: &str,
    capture_id: &str,
    archive: &Path,
) -> Result<tokio_stream::wrappers::ReceiverStream<StoreBlobChunk>, LayerError> {
    let mut file = tokio::fs::File::open(archive)
        .await
        .map_err(|e| LayerError::Transient(format!("cannot read {}: {e}", archive.display())))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = StoreBlobChunk {
        node_id: node_id.to_owned(),
        capture_id: capture_id.to_owned(),
        data: Vec::new(),
    };
    let path = archive.to_path_buf();
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        loop {
            let mut data = vec![0u8; STORE_CHUNK];
            match file.read(&mut data).await {
                Ok(0) => return,
                Ok(n) => {
                    data.truncate(n);
                    let chunk = StoreBlobChunk {
                        data,
                        ..StoreBlobChunk::default()
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(archive = %path.display(), "reading the archive to store it failed: {e}");
                    return;
                }
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[derive(Clone)]
pub struct LayerCache {
    dir: PathBuf,
    source: Arc<dyn LayerSource>,
    pub budget: DiskBudget,
}

impl LayerCache {
    pub fn new(data_dir: &Path, source: Arc<dyn LayerSource>, budget: DiskBudget) -> LayerCache {
        LayerCache {
            dir: data_dir.join("cache").join("layers"),
            source,
            budget,
        }
    }

    /// Stores `archive` in the cluster store for capture `capture_id` (save to template).
    pub async fn store(&self, capture_id: &str, archive: &Path) -> Result<StoredBlob, LayerError> {
        self.source.store(capture_id, archive).await
    }

    /// The cached archive of `hash`, fetched (streamed to disk and checked) first if needed.
    pub async fn archive(&self, hash: &str) -> Result<PathBuf, LayerError> {
        if !prexor_domain::is_sha256_hex(hash) {
            return Err(LayerError::Permanent(format!(
                "template layer {hash:?} is not a SHA-256 hash"
            )));
        }
        let path = self.dir.join(format!("{hash}.tar.gz"));
        if path.is_file() {
            // Re-verified before every reuse: a cached layer that changed on disk (corruption,
            // tampering) is fetched again rather than unpacked into another instance.
            let cached = path.clone();
            let actual = tokio::task::spawn_blocking(move || hash_file(&cached))
                .await
                .map_err(|e| LayerError::Transient(e.to_string()))?;
            match actual {
                Ok(actual) if actual == hash => return Ok(path),
                Ok(actual) => {
                    tracing::warn!(layer = %hash, %actual, "a cached template layer no longer matches its hash; fetching it again");
                    metrics::counter!("prexor_daemon_layers_refetched_total").increment(1);
                    let _ = std::fs::remove_file(&path);
                }
                Err(err) => {
                    return Err(LayerError::Transient(format!(
                        "cannot read cached layer {}: {err}",
                        path.display()
                    )));
                }
            }
        }
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
            LayerError::Transient(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        let tmp = self
            .dir
            .join(format!(".{hash}.partial-{}", std::process::id()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| LayerError::Transient(format!("cannot create {}: {e}", tmp.display())))?;
        let mut sink = LayerSink {
            path: tmp.clone(),
            file,
            hash: StreamHash::default(),
            budget: self.budget,
        };
        let fetched = self.source.fetch(hash, &mut sink).await;
        let written = sink.file.flush().await;
        let LayerSink { hash: seen, .. } = sink;
        let outcome = fetched.and_then(|()| {
            written
                .map_err(|e| LayerError::Transient(format!("cannot cache layer {hash}: {e}")))?;
            let actual = seen.finish();
            if actual != hash {
                return Err(LayerError::Permanent(format!(
                    "template layer {hash} arrived with hash {actual}"
                )));
            }
            std::fs::rename(&tmp, &path)
                .map_err(|e| LayerError::Transient(format!("cannot cache layer {hash}: {e}")))
        });
        if outcome.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        outcome?;
        metrics::counter!("prexor_daemon_layers_fetched_total").increment(1);
        Ok(path)
    }
}

/// The SHA-256 of a file, read in chunks.
fn hash_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hash = StreamHash::default();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hash.finish());
        }
        hash.update(&buffer[..n]);
    }
}

/// Unpacks a layer into `dest` with at most `max_bytes` of content (what is left of the
/// instance's budget), keeping the free-space reserve before every file; the bytes unpacked.
/// Paths, links and special files are refused as on upload (`prexor_archive`).
pub fn unpack(
    archive: &Path,
    dest: &Path,
    max_bytes: u64,
    budget: &DiskBudget,
) -> Result<u64, String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let limits = prexor_archive::Limits {
        max_entries: prexor_archive::MAX_ENTRIES,
        max_unpacked_bytes: max_bytes,
    };
    let summary = prexor_archive::unpack(std::io::BufReader::new(file), dest, &limits, |size| {
        budget.room(dest, size)
    })
    .map_err(|problem| match problem {
        prexor_archive::ArchiveError::TooLarge { .. } => format!(
            "{problem}: an instance's layers may unpack to at most {} MiB (daemon.instanceDiskMb)",
            budget.instance_bytes / 1024 / 1024
        ),
        other => other.to_string(),
    })?;
    Ok(summary.unpacked_bytes)
}

/// Text files whose placeholders are substituted after unpacking (configuration, not jars).
pub fn is_config_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("properties" | "yml" | "yaml" | "toml" | "json" | "txt" | "conf" | "cfg" | "ini")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Serves one blob and counts the fetches.
    struct OneBlob {
        bytes: Vec<u8>,
        fetches: AtomicUsize,
    }

    #[async_trait]
    impl LayerSource for OneBlob {
        async fn fetch(&self, _hash: &str, sink: &mut LayerSink) -> Result<(), LayerError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            sink.restart().await?;
            sink.write(&self.bytes).await
        }

        async fn store(&self, _: &str, _: &Path) -> Result<StoredBlob, LayerError> {
            Err(LayerError::Permanent("this source stores nothing".into()))
        }
    }

    #[tokio::test]
    async fn a_cached_layer_that_changed_on_disk_is_fetched_again() {
        let dir = std::env::temp_dir().join(format!("prexor-layers-{}", std::process::id()));
        let bytes = b"not really a tar.gz, but hashed all the same".to_vec();
        let hash = prexor_domain::sha256_hex(&bytes);
        let source = Arc::new(OneBlob {
            bytes: bytes.clone(),
            fetches: AtomicUsize::new(0),
        });
        let cache = LayerCache::new(
            &dir,
            source.clone(),
            DiskBudget {
                instance_bytes: 1 << 20,
                min_free_bytes: 0,
            },
        );
        let path = cache.archive(&hash).await.unwrap();
        cache.archive(&hash).await.unwrap();
        assert_eq!(
            source.fetches.load(Ordering::SeqCst),
            1,
            "reused while intact"
        );
        std::fs::write(&path, b"poisoned by a server").unwrap();
        let again = cache.archive(&hash).await.unwrap();
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2, "fetched again");
        assert_eq!(std::fs::read(&again).unwrap(), bytes);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
