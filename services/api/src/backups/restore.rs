//! Restoring a backup under every mutation lease (see the module above for the procedure).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Path;

use mongodb::bson::{Document, doc};
use prexor_coord::LeaseKeeper;
use prexor_domain::{GroupSpec, Scope, now_ms};
use prexor_model::access::USERS;
use prexor_model::groups::GROUPS;
use prexor_model::nodes::{NODE_DRAINS, drain_is_open};
use prexor_store::Write;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::archive::{self, Archive};
use super::{IDENTITY, MERGED, REPLACED, RESTORE_FLAG, snapshot, verified};
use crate::app::App;
use crate::auth::{Caller, Principal};
use crate::error::{ApiError, ApiResult, ErrorCode, Json};

/// Default and longest time a restore may take to get every lease.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_LEASE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RestoreRequest {
    /// Print the plan, change nothing.
    #[serde(default)]
    pub(crate) dry_run: bool,
    /// Restore a backup of another cluster (its id differs from this one's).
    #[serde(default)]
    pub(crate) force: bool,
    /// How long to try to take every lease before giving up with nothing changed (default 30s).
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

/// The `_id`s of `docs` (a string id as itself, any other as its text).
fn ids(docs: Option<&Vec<Document>>) -> BTreeSet<String> {
    docs.into_iter()
        .flatten()
        .filter_map(|d| {
            d.get("_id")
                .map(|id| id.to_string().trim_matches('"').to_owned())
        })
        .collect()
}

/// `archive` without users, roles, tokens, join tokens and certificates (restored as they are
/// now).
fn without_identity(mut archive: Archive) -> Archive {
    for name in IDENTITY {
        archive.collections.remove(*name);
    }
    archive
}

/// Every group of the archive must be one the API would accept (422 naming it otherwise).
fn check_groups(archive: &Archive) -> ApiResult<()> {
    for group in archive.collections.get(GROUPS).into_iter().flatten() {
        let name = group.get_str("_id").unwrap_or_default();
        let spec: GroupSpec = group
            .get_document("spec")
            .ok()
            .and_then(|s| mongodb::bson::from_document(s.clone()).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::BackupInvalid,
                    format!(
                        "the backup's group {name:?} has no readable spec; nothing was changed"
                    ),
                )
            })?;
        crate::groups::validate(name, &spec).map_err(|err| {
            ApiError::new(
                ErrorCode::BackupInvalid,
                format!("the backup's {err}; nothing was changed"),
            )
        })?;
    }
    Ok(())
}

/// What a restore did (or, with `dryRun`, would do).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreResult {
    pub(crate) id: String,
    pub(crate) dry_run: bool,
    pub(crate) plan: RestorePlan,
    /// Every mutation lease the restore held while it wrote; absent on a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) leases_taken: Option<usize>,
}

/// What a restore changes, per collection (the collections the archive has).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RestorePlan {
    /// The desired configuration, replaced by the backup's: records by `_id`.
    pub(crate) replace: BTreeMap<String, Replacement>,
    /// Certificates and join tokens: how many the store lacks and gets back.
    pub(crate) add_missing: BTreeMap<String, usize>,
    /// Whether users, roles, tokens, certificates and join tokens come back, and why.
    pub(crate) identity: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Replacement {
    /// How many records both have.
    pub(crate) keep: usize,
    /// Records only the backup has, and only the cluster has.
    pub(crate) add: Vec<String>,
    pub(crate) remove: Vec<String>,
}

fn plan(
    current: &BTreeMap<String, Vec<Document>>,
    archive: &Archive,
    identity: String,
) -> RestorePlan {
    let in_archive = |names: &'static [&'static str]| {
        names
            .iter()
            .filter(|n| archive.collections.contains_key(**n))
            .map(|n| {
                (
                    n.to_string(),
                    ids(current.get(*n)),
                    ids(archive.collections.get(*n)),
                )
            })
    };
    RestorePlan {
        replace: in_archive(REPLACED)
            .map(|(name, now, then)| {
                let change = Replacement {
                    keep: now.intersection(&then).count(),
                    add: then.difference(&now).cloned().collect(),
                    remove: now.difference(&then).cloned().collect(),
                };
                (name, change)
            })
            .collect(),
        add_missing: in_archive(MERGED)
            .map(|(name, now, then)| (name, then.difference(&now).count()))
            .collect(),
        identity,
    }
}

#[utoipa::path(
    post, path = "/api/v1/backups/{id}/restore", tag = "backups",
    request_body = RestoreRequest,
    responses(
        (status = 200, description = "restored (or, with dryRun, the plan)", body = RestoreResult),
    )
)]
pub async fn restore(
    Caller(app, who): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RestoreResult>> {
    who.require("backups:write")?;
    let request: RestoreRequest = crate::error::optional_body(&body)?;
    Ok(Json(restore_backup(&app, &who, id, &request).await?))
}

/// Backup `id` restored as `request` asks, by `who` (`backups:write`): with `dry_run`, only
/// what it would change.
pub(crate) async fn restore_backup(
    app: &App,
    who: &Principal,
    id: String,
    request: &RestoreRequest,
) -> ApiResult<RestoreResult> {
    who.require("backups:write")?;
    let timeout = match &request.timeout {
        None => LEASE_TIMEOUT,
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero() && *d <= MAX_LEASE_TIMEOUT)
            .ok_or_else(|| {
                ApiError::field(
                    "timeout",
                    format!("{text:?} is not a duration between 1s and 5m"),
                )
            })?,
    };
    let archive = verified(app, &id).await?;
    let theirs = archive.manifest["clusterId"].as_str().unwrap_or_default();
    if theirs != app.service.cluster_id && !request.force {
        return Err(ApiError::new(
            ErrorCode::OtherCluster,
            format!(
                "backup {id:?} is of cluster {theirs:?}, this is cluster {:?}; restore it with force to replace this cluster's configuration anyway",
                app.service.cluster_id
            ),
        ));
    }
    // Who may do what comes back only from an archive this cluster made; `force` changes
    // nothing about that, nor about any other check.
    let ours = archive.made_with(&archive::mac_key(app.store()).await?);
    let archive = if ours {
        archive
    } else {
        without_identity(archive)
    };
    check_groups(&archive)?;
    let current = snapshot(app).await?;
    let identity = if ours {
        "restored (the archive was made by this cluster)".to_owned()
    } else {
        format!(
            "kept as it is: the archive was not made by this cluster (no valid MAC), so {} are not restored from it",
            IDENTITY.join(", ")
        )
    };
    let plan = plan(&current, &archive, identity);
    if request.dry_run {
        return Ok(RestoreResult {
            id,
            dry_run: true,
            plan,
            leases_taken: None,
        });
    }

    let flag_ttl = timeout + Duration::from_secs(120);
    app.service
        .ephemeral
        .set_for(RESTORE_FLAG, flag_ttl)
        .await
        .map_err(|e| ApiError::unavailable(format!("cannot announce the restore: {e}")))?;
    let stop = CancellationToken::new();
    let (keeper, keeper_task) =
        LeaseKeeper::start(app.service.leases.clone(), "mixed", stop.clone());
    let outcome = restore_under_leases(app, &keeper, &current, &archive, timeout).await;
    keeper.release_all().await;
    stop.cancel();
    let _ = keeper_task.await;
    if let Err(err) = app.service.ephemeral.delete(RESTORE_FLAG).await {
        tracing::warn!("could not clear the restore flag (it expires by itself): {err}");
    }
    let leases = outcome?;
    // Users, roles and tokens may be others now.
    app.access_changed(&id).await;
    // Users and tokens of an archive made before credentials were bound to user ids.
    crate::access::bind_credentials(app.store()).await?;
    let result = RestoreResult {
        id: id.clone(),
        dry_run: false,
        plan,
        leases_taken: Some(leases),
    };
    app.audit_and_publish::<(), _>(
        who,
        "backup.restore",
        &id,
        None,
        Some(&result),
        "BACKUP_RESTORED",
        json!({ "by": &who.user }),
    )
    .await;
    Ok(result)
}

/// Takes every mutation lease (or gives up, nothing changed), then writes the restore in one
/// fenced transaction; the number of leases taken.
async fn restore_under_leases(
    app: &App,
    keeper: &LeaseKeeper,
    current: &BTreeMap<String, Vec<Document>>,
    archive: &Archive,
    timeout: Duration,
) -> ApiResult<usize> {
    let leases = &app.service.leases;
    let own = Scope::restore();
    let guard = leases
        .acquire(&own)
        .await
        .map_err(|e| ApiError::unavailable(format!("taking {own}: {e}")))?
        .ok_or_else(|| ApiError::conflict("another restore is running; wait for it to finish"))?;
    let fence = guard.fence();
    keeper.insert(guard);

    let groups = ids(current.get(GROUPS))
        .union(&ids(archive.collections.get(GROUPS)))
        .cloned()
        .collect::<Vec<_>>();
    let drained: Vec<&str> = current
        .get(NODE_DRAINS)
        .into_iter()
        .flatten()
        .filter(|drain| drain_is_open(drain))
        .filter_map(|drain| drain.get_str("_id").ok())
        .collect();
    let scopes = Scope::scheduled(groups.iter().map(String::as_str), drained);
    let deadline = Instant::now() + timeout;
    for scope in &scopes {
        loop {
            match leases.take_over(scope).await {
                Ok(lease) => {
                    keeper.insert(lease);
                    break;
                }
                Err(err) if Instant::now() < deadline => {
                    tracing::info!(%scope, "restore: taking the lease failed, retrying: {err}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => {
                    return Err(ApiError::unavailable(format!(
                        "could not take lease {scope} within {}: {err}; nothing was changed",
                        humantime::format_duration(timeout)
                    )));
                }
            }
        }
    }

    // Blobs first: content-addressed, adding one changes nothing that reads the store.
    for (hash, path) in &archive.blobs {
        app.store().put_blob_file(path, hash).await?;
        tracing::debug!(hash, "restore: blob present");
    }
    let writes = restore_writes(current, archive);
    let taken = keeper.len();
    if keeper.held().iter().any(|l| !l.is_valid()) {
        return Err(ApiError::unavailable(
            "a lease was lost while the restore prepared; nothing was changed",
        ));
    }
    app.store()
        .fenced_write(&fence, writes)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "writing the restore failed, nothing was changed: {e}"
            ))
        })?;
    tracing::info!(leases = taken, "restore written; releasing every lease");
    Ok(taken)
}

/// A restored user keeps the later of its two `sessionsValidAfterMs`: sessions ended since the
/// backup (a password or role change) stay ended.
fn keep_sessions_ended(user: &mut Document, current: Option<&Vec<Document>>) {
    let now = current
        .into_iter()
        .flatten()
        .find(|u| u.get("_id") == user.get("_id"))
        .and_then(|u| u.get_i64("sessionsValidAfterMs").ok());
    let then = user.get_i64("sessionsValidAfterMs").ok();
    if let Some(later) = now.max(then) {
        user.insert("sessionsValidAfterMs", later);
    }
}

/// The writes that turn `current` into the backup's configuration.
fn restore_writes(current: &BTreeMap<String, Vec<Document>>, archive: &Archive) -> Vec<Write> {
    let now = now_ms();
    let mut writes = Vec::new();
    let current_groups: BTreeMap<String, i64> = current
        .get(GROUPS)
        .into_iter()
        .flatten()
        .filter_map(|g| {
            Some((
                g.get_str("_id").ok()?.to_owned(),
                g.get_i64("revision").unwrap_or(1),
            ))
        })
        .collect();
    let restored_groups = ids(archive.collections.get(GROUPS));
    for name in REPLACED {
        let docs = archive.collections.get(*name).cloned().unwrap_or_default();
        if *name == GROUPS {
            // A restored group gets a revision above both, so a client's stale compare-and-set
            // fails, and a fresh update time, so every scheduler reads it again.
            for mut group in docs {
                let Ok(id) = group.get_str("_id").map(str::to_owned) else {
                    continue;
                };
                let revision = group
                    .get_i64("revision")
                    .unwrap_or(1)
                    .max(current_groups.get(&id).copied().unwrap_or(0))
                    + 1;
                group.insert("revision", revision);
                group.insert("updatedAtMs", now);
                group.remove("deleting");
                group.remove("_fence");
                writes.push(Write::replace_one(GROUPS, doc! { "_id": &id }, group).upsert());
            }
            // Groups the backup does not have go the normal way: their holders stop their
            // instances, then remove them.
            for (id, _) in current_groups
                .iter()
                .filter(|(g, _)| !restored_groups.contains(*g))
            {
                writes.push(Write::update_one(
                    GROUPS,
                    doc! { "_id": id },
                    doc! { "$set": { "deleting": true, "updatedAtMs": now }, "$inc": { "revision": 1_i64 } },
                ));
            }
            continue;
        }
        if !archive.collections.contains_key(*name) {
            // Not restored from this archive (identity from an archive of elsewhere): kept.
            continue;
        }
        writes.push(Write::delete_many(name, doc! {}));
        for mut doc in docs {
            doc.remove("_fence");
            if *name == USERS {
                keep_sessions_ended(&mut doc, current.get(USERS));
            }
            writes.push(Write::insert(name, doc));
        }
    }
    for name in MERGED {
        for mut doc in archive.collections.get(*name).cloned().unwrap_or_default() {
            let Some(id) = doc.remove("_id") else {
                continue;
            };
            doc.remove("_fence");
            writes.push(
                Write::update_one(name, doc! { "_id": id }, doc! { "$setOnInsert": doc }).upsert(),
            );
        }
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_user_keeps_its_later_session_cut_off() {
        let current = vec![doc! { "_id": "dave", "sessionsValidAfterMs": 2_000_i64 }];
        let mut older = doc! { "_id": "dave", "sessionsValidAfterMs": 1_000_i64 };
        keep_sessions_ended(&mut older, Some(&current));
        assert_eq!(older.get_i64("sessionsValidAfterMs"), Ok(2_000));
        let mut newer = doc! { "_id": "dave", "sessionsValidAfterMs": 3_000_i64 };
        keep_sessions_ended(&mut newer, Some(&current));
        assert_eq!(newer.get_i64("sessionsValidAfterMs"), Ok(3_000));
        let mut unknown = doc! { "_id": "erin" };
        keep_sessions_ended(&mut unknown, Some(&current));
        assert!(unknown.get("sessionsValidAfterMs").is_none());
    }
}
