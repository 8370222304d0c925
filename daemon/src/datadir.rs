//! The daemon's data directory: certificates, fencing marks, template cache, instance
//! directories. Created owner-only.

use std::path::Path;

/// Creates the directory (mode 0700) if needed and checks the daemon can write to it.
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let metadata = std::fs::metadata(dir)?;
    if metadata.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "daemon.dataDir is readable by other users; certificates are stored there, restrict it to the daemon's user (chmod 700)");
    }
    probe(dir)
}

fn probe(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

/// Readiness check: the directory still accepts writes (disk full, unmounted, read-only).
pub async fn check_writable(dir: &Path) -> Result<(), String> {
    let owned = dir.to_path_buf();
    tokio::task::spawn_blocking(move || probe(&owned))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot write to {}: {e}", dir.display()))
}
