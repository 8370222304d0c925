//! Finding (or, once per cluster, creating) the cluster CA at start-up.
//!
//! The key lives at `<ca.dataDir>/certs/ca/ca.key` (mode 0600) next to `ca.crt`; MongoDB holds
//! only the certificate. A replica whose data dir lacks the key serves the certificate and says
//! "no signing key" instead of signing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prexor_model::pki::{self as records, PublishedCa};
use prexor_pki::{CaCertificate, CertificateAuthority, check_private_mode, write_private};
use prexor_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

/// `--bootstrap`: whether this start may (or must) create the cluster CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// Create the CA only if the cluster has none and no key is on disk (first start).
    Auto,
    /// Create (or publish the one on disk); refuse if the cluster already has a CA.
    Yes,
    /// Never create: use the cluster's CA, waiting until one exists.
    No,
}

impl Bootstrap {
    pub fn from_flag(flag: Option<bool>) -> Bootstrap {
        match flag {
            None => Bootstrap::Auto,
            Some(true) => Bootstrap::Yes,
            Some(false) => Bootstrap::No,
        }
    }
}

/// The CA as this replica has it: always the certificate, the key only where it was put.
pub struct Authority {
    pub certificate: CaCertificate,
    pub signer: Result<CertificateAuthority, String>,
}

pub struct Paths {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl Paths {
    pub fn new(data_dir: &Path) -> Paths {
        let dir = data_dir.join("certs").join("ca");
        Paths {
            key: dir.join("ca.key"),
            cert: dir.join("ca.crt"),
            dir,
        }
    }
}

/// Why start-up cannot continue.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(
        "the cluster already has a CA (fingerprint {fingerprint}, created by {created_by}); refusing to bootstrap a second one. Start this replica with --bootstrap=false to use the existing CA"
    )]
    AlreadyBootstrapped {
        fingerprint: String,
        created_by: String,
    },
    #[error(
        "found a CA key at {key} but the cluster in MongoDB has no CA. If this host's CA is the cluster's, start once with --bootstrap to publish it; if mongo.uri / mongo.database point at the wrong database, fix them"
    )]
    OrphanKey { key: String },
    #[error("cannot create the CA: {0}")]
    Create(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Resolves the cluster CA for this replica. With [`Bootstrap::No`] it waits (reporting through
/// `waiting`) until another replica has published one; `None` if shut down meanwhile.
pub async fn resolve(
    store: &Store,
    paths: &Paths,
    bootstrap: Bootstrap,
    replica_id: &str,
    waiting: impl Fn(Option<String>),
    shutdown: &CancellationToken,
) -> Result<Option<Authority>, AuthorityError> {
    loop {
        let published = records::published_ca(store).await?;
        match (published, bootstrap) {
            (Some(existing), Bootstrap::Yes) => {
                return Err(AuthorityError::AlreadyBootstrapped {
                    fingerprint: existing.certificate.fingerprint,
                    created_by: existing.created_by,
                });
            }
            (Some(existing), _) => return Ok(Some(load(paths, existing))),
            (None, Bootstrap::No) => {
                waiting(Some(
                    "waiting for the cluster CA: MongoDB has none yet (bootstrap the first CA with --bootstrap or `prexorctl setup --bootstrap=true`)".into(),
                ));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
            (None, _) => {
                if let Some(authority) = create(store, paths, bootstrap, replica_id).await? {
                    return Ok(Some(authority));
                }
                // Another replica published first: use theirs.
            }
        }
    }
}

/// After a publish whose answer was an error: `Some(Ok(true))` when this CA is the published
/// one, `Some(Ok(false))` when another is, `Some(Err(()))` when none is; `None` when MongoDB
/// cannot tell (then the key must stay).
async fn settle_publish(store: &Store, ours: &CaCertificate) -> Option<Result<bool, ()>> {
    for _ in 0..10 {
        match records::published_ca(store).await {
            Ok(Some(published)) => {
                return Some(Ok(published.certificate.fingerprint == ours.fingerprint));
            }
            Ok(None) => return Some(Err(())),
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    None
}

/// A key left pending by a bootstrap whose publish outcome was unknown goes into place when
/// the cluster turns out to have published that very CA.
fn recover_pending(paths: &Paths, published: &CaCertificate) {
    let pending = paths.dir.join("ca.key.pending");
    if paths.key.exists() || !pending.exists() {
        return;
    }
    let Ok(key) = std::fs::read_to_string(&pending) else {
        return;
    };
    if CertificateAuthority::from_pem(&published.pem, &key).is_err() {
        return;
    }
    match std::fs::rename(&pending, &paths.key)
        .and_then(|()| std::fs::write(&paths.cert, &published.pem))
    {
        Ok(()) => {
            tracing::warn!(key = %paths.key.display(), "took the pending CA key of an earlier bootstrap into place: the cluster published that CA")
        }
        Err(err) => tracing::error!("cannot take the pending CA key into place: {err}"),
    }
}

fn load(paths: &Paths, published: PublishedCa) -> Authority {
    recover_pending(paths, &published.certificate);
    let certificate = published.certificate;
    let signer = read_key(paths).and_then(|key| {
        CertificateAuthority::from_pem(&certificate.pem, &key).map_err(|e| {
            format!(
                "no signing key: {} does not belong to the cluster CA ({e})",
                paths.key.display()
            )
        })
    });
    Authority {
        certificate,
        signer,
    }
}

fn read_key(paths: &Paths) -> Result<String, String> {
    match std::fs::read_to_string(&paths.key) {
        Ok(key) => {
            check_private_mode(&paths.key).map_err(|e| format!("no signing key: {e}"))?;
            Ok(key)
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "no signing key: {} not found; only the host(s) holding the CA bundle can issue certificates (see docs/ca.md, \"CA private key location\")",
            paths.key.display()
        )),
        Err(err) => Err(format!(
            "no signing key: cannot read {}: {err}",
            paths.key.display()
        )),
    }
}

/// Creates and publishes the CA; `Ok(None)` when another replica published one first.
async fn create(
    store: &Store,
    paths: &Paths,
    bootstrap: Bootstrap,
    replica_id: &str,
) -> Result<Option<Authority>, AuthorityError> {
    let on_disk = paths.key.exists();
    let (authority, key_pem, fresh) = if on_disk {
        if bootstrap != Bootstrap::Yes {
            return Err(AuthorityError::OrphanKey {
                key: paths.key.display().to_string(),
            });
        }
        let key = read_key(paths).map_err(AuthorityError::Create)?;
        let cert = std::fs::read_to_string(&paths.cert).map_err(|e| {
            AuthorityError::Create(format!(
                "{} is there but {} is not readable ({e})",
                paths.key.display(),
                paths.cert.display()
            ))
        })?;
        let authority = CertificateAuthority::from_pem(&cert, &key)
            .map_err(|e| AuthorityError::Create(e.to_string()))?;
        (authority, key, false)
    } else {
        let (authority, key) = CertificateAuthority::generate(replica_id)
            .map_err(|e| AuthorityError::Create(e.to_string()))?;
        (authority, key, true)
    };

    // A fresh key is written (0600) before the certificate is published, under a name that
    // becomes ca.key only if this replica's CA is the one the cluster keeps.
    let pending = paths.dir.join("ca.key.pending");
    if fresh {
        write_private(&pending, key_pem.as_bytes())
            .map_err(|e| AuthorityError::Create(e.to_string()))?;
    }
    let published = records::publish_ca(store, authority.certificate(), replica_id)
        .await
        .and_then(|outcome| {
            // The answer lost on its way back (the insert may have been applied): for tests.
            prexor_serve::failpoint::fail("ca.after-publish").map_err(|what| {
                StoreError::Timeout {
                    op: what.to_string(),
                    timeout: Duration::ZERO,
                }
            })?;
            Ok(outcome)
        });
    match published {
        Ok(Ok(())) => {}
        Ok(Err(_existing)) => {
            let _ = std::fs::remove_file(&pending);
            return Ok(None);
        }
        // A failed publish may still have been applied: look before the key goes.
        Err(err) => match settle_publish(store, authority.certificate()).await {
            Some(Ok(true)) => {
                tracing::warn!(
                    "publishing the CA answered with an error ({err}), but the cluster has this CA: keeping its key"
                );
            }
            Some(Ok(false)) => {
                let _ = std::fs::remove_file(&pending);
                return Ok(None);
            }
            Some(Err(())) => {
                let _ = std::fs::remove_file(&pending);
                return Err(err.into());
            }
            None => {
                return Err(AuthorityError::Create(format!(
                    "publishing the CA failed ({err}) and whether it was applied cannot be told now; its key is kept at {} and taken into place when this replica starts again and finds that CA published",
                    pending.display()
                )));
            }
        },
    }
    if fresh {
        std::fs::rename(&pending, &paths.key).map_err(|e| {
            AuthorityError::Create(format!(
                "published the CA but could not move its key to {}: {e}",
                paths.key.display()
            ))
        })?;
        std::fs::write(&paths.cert, &authority.certificate().pem).map_err(|e| {
            AuthorityError::Create(format!("cannot write {}: {e}", paths.cert.display()))
        })?;
    }
    tracing::info!(
        fingerprint = %authority.certificate().fingerprint,
        key = %paths.key.display(),
        "bootstrapped the cluster CA; only its certificate is in MongoDB"
    );
    Ok(Some(Authority {
        certificate: authority.certificate().clone(),
        signer: Ok(authority),
    }))
}
