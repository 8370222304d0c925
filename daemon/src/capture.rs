//! Save to template: chosen paths of an instance's directory packed into a tar.gz (regular files
//! and directories; symlinks and special files left out, never followed) of at most the size the
//! api allowed, then stored in the cluster store through a gateway for the api's capture
//! (`NodeContent.StoreBlob`). The archive is made in `<dataDir>/captures/` and removed once it
//! is stored or refused. docs/daemon-protocol.md, "Save to template".

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use prexor_proto::v1::{AckResult, CaptureFiles, CommandAck, InstanceState};

use crate::instances::{Instances, ack};
use crate::layers::LayerError;

impl Instances {
    pub async fn capture(&self, request: CaptureFiles) -> CommandAck {
        let id = request.instance_id.clone();
        let Some((state, pid)) = self.table().get(&id).map(|i| (i.state, i.pid)) else {
            return ack(
                AckResult::Permanent,
                InstanceState::Unspecified,
                0,
                format!("instance {id} is not on this node"),
            );
        };
        let refuse = |message: String| ack(AckResult::Permanent, state, pid, message);
        if let Some(problem) = prexor_domain::paths::capture_paths_problem(&request.paths) {
            return refuse(format!("{}: {}", problem.field, problem.message));
        }
        if prexor_domain::validate_name(&request.capture_id).is_err() {
            return refuse(format!("capture id {:?} is not a name", request.capture_id));
        }
        let dir = self.inner.isolation.instance_dir(&id);
        let captures = self.inner.run_root.with_file_name("captures");
        if let Err(e) = std::fs::create_dir_all(&captures) {
            return ack(
                AckResult::Transient,
                state,
                pid,
                format!("cannot create {}: {e}", captures.display()),
            );
        }
        let archive = captures.join(format!("{}.tar.gz", request.capture_id));
        let (paths, max_bytes, into) = (request.paths.clone(), request.max_bytes, archive.clone());
        let packed = tokio::task::spawn_blocking(move || pack(&dir, &paths, &into, max_bytes))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let answer = match packed {
            Err(problem) => refuse(format!("instance {id}: {problem}")),
            Ok(packed) => match self.inner.layers.store(&request.capture_id, &archive).await {
                Ok(stored) => ack(
                    AckResult::Done,
                    state,
                    pid,
                    format!(
                        "captured {} entries ({} bytes, {} left out) as {}",
                        stored.entries, stored.size, packed.left_out, stored.hash
                    ),
                ),
                Err(LayerError::Permanent(reason)) => refuse(reason),
                Err(LayerError::Transient(reason)) => {
                    let mut later = ack(AckResult::Transient, state, pid, reason);
                    later.retry_after_ms = 2000;
                    later
                }
            },
        };
        let _ = std::fs::remove_file(&archive);
        answer
    }
}

/// What [`pack`] put in the archive.
#[derive(Debug, PartialEq)]
pub struct Packed {
    pub entries: u64,
    /// Symlinks and special files, not captured.
    pub left_out: u64,
}

/// Packs `paths` of `dir` into the tar.gz `archive`, refusing once it passes `max_bytes`.
pub fn pack(
    dir: &Path,
    paths: &[String],
    archive: &Path,
    max_bytes: u64,
) -> Result<Packed, String> {
    let file = std::fs::File::create(archive)
        .map_err(|e| format!("cannot create {}: {e}", archive.display()))?;
    let bounded = Bounded {
        inner: std::io::BufWriter::new(file),
        written: 0,
        limit: max_bytes,
    };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        bounded,
        flate2::Compression::default(),
    ));
    tar.follow_symlinks(false);
    let mut packed = Packed {
        entries: 0,
        left_out: 0,
    };
    let mut added = HashSet::new();
    for path in paths {
        let full = dir.join(path);
        if std::fs::symlink_metadata(&full).is_err() {
            return Err(format!("{path} does not exist in the instance directory"));
        }
        add(&mut tar, dir, &full, &mut added, &mut packed).map_err(|e| e.to_string())?;
    }
    let mut bounded = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .map_err(|e| e.to_string())?;
    bounded.flush().map_err(|e| e.to_string())?;
    if packed.entries == 0 {
        return Err("nothing to capture: the paths hold no files or directories".into());
    }
    Ok(packed)
}

/// Adds `path` (below `root`) and, for a directory, what it holds, in name order.
fn add<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    path: &Path,
    added: &mut HashSet<PathBuf>,
    packed: &mut Packed,
) -> std::io::Result<()> {
    let relative = path.strip_prefix(root).unwrap_or(path).to_path_buf();
    if !added.insert(relative.clone()) {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        tar.append_dir(&relative, path)?;
        packed.entries += 1;
        let mut children: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        children.sort();
        for child in children {
            add(tar, root, &child, added, packed)?;
        }
    } else if meta.is_file() {
        tar.append_path_with_name(path, &relative)?;
        packed.entries += 1;
    } else {
        packed.left_out += 1;
    }
    Ok(())
}

/// A writer that refuses to go past `limit` bytes.
struct Bounded<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        if self.written > self.limit {
            return Err(std::io::Error::other(format!(
                "the archive is larger than the {} MiB a template layer may be (uploads.layerMb)",
                self.limit / 1024 / 1024
            )));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_packs_files_and_directories_within_its_limit() {
        let dir = std::env::temp_dir().join(format!("prexor-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("world/region")).unwrap();
        std::fs::write(dir.join("world/level.dat"), b"level").unwrap();
        std::fs::write(dir.join("world/region/r.0.0.mca"), vec![7u8; 4096]).unwrap();
        std::fs::write(dir.join("server.properties"), b"motd=hi\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("world/link")).unwrap();
        let archive = dir.with_extension("tar.gz");
        let paths = [
            "world".to_string(),
            "world/level.dat".to_string(),
            "server.properties".to_string(),
        ];
        let packed = pack(&dir, &paths, &archive, 1 << 20).unwrap();
        // world, world/level.dat, world/region, world/region/r.0.0.mca, server.properties; the
        // symlink left out; world/level.dat once although named twice.
        assert_eq!(
            packed,
            Packed {
                entries: 5,
                left_out: 1
            }
        );
        let file = std::fs::File::open(&archive).unwrap();
        let summary = prexor_archive::check(
            std::io::BufReader::new(file),
            &prexor_archive::Limits {
                max_entries: 100,
                max_unpacked_bytes: 1 << 20,
            },
        )
        .unwrap();
        assert_eq!(summary.entries, 5);
        let too_small = pack(&dir, &paths, &archive, 64).unwrap_err();
        assert!(too_small.contains("uploads.layerMb"), "{too_small}");
        let missing = pack(&dir, &["nether".to_string()], &archive, 1 << 20).unwrap_err();
        assert!(missing.contains("nether does not exist"), "{missing}");
        let _ = std::fs::remove_file(&archive);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
