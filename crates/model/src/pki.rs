//! What MongoDB keeps about certificates: the published CA certificate (never its key), every
//! issued certificate with its revocation state, and join tokens (stored only as hashes).

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;
use prexor_store::{Store, StoreError};

use prexor_domain::now_ms;

use prexor_pki::{CaCertificate, IssuedCertificate, JoinToken, MalformedJoinToken};

use crate::cluster::CLUSTER_SECRETS;

/// The published cluster CA certificate (`_id` = [`CA_ID`]; never its key).
pub const CLUSTER_CA: &str = "cluster_ca";
/// Every issued certificate (`_id` = serial) with its revocation state.
pub const CERTIFICATES: &str = "certificates";
/// Join tokens, stored only as hashes (`_id` = hash).
pub const JOIN_TOKENS: &str = "join_tokens";
const CA_ID: &str = "current";
/// How long one redemption may hold a join token before another may try again.
const CLAIM_FOR: Duration = Duration::from_secs(60);

fn i64_of(doc: &Document, key: &str) -> Option<i64> {
    match doc.get(key) {
        Some(Bson::Int64(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(i64::from(*v)),
        Some(Bson::Double(v)) => Some(*v as i64),
        _ => None,
    }
}

/// The cluster CA certificate as published in MongoDB.
#[derive(Debug, Clone)]
pub struct PublishedCa {
    pub certificate: CaCertificate,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// `cluster_ca`: the one CA certificate of the cluster.
pub async fn published_ca(store: &Store) -> Result<Option<PublishedCa>, StoreError> {
    let found = store
        .bounded(
            "reading the cluster CA certificate",
            store.documents(CLUSTER_CA).find_one(doc! { "_id": CA_ID }),
        )
        .await?;
    let Some(doc) = found else { return Ok(None) };
    let pem = doc.get_str("certificate_pem").unwrap_or_default();
    let certificate = CaCertificate::from_pem(pem).map_err(|e| StoreError::Precondition {
        what: format!("the cluster CA certificate stored in MongoDB is unreadable ({e})"),
    })?;
    Ok(Some(PublishedCa {
        certificate,
        created_at_ms: i64_of(&doc, "created_at_ms").unwrap_or_default(),
        created_by: doc.get_str("created_by").unwrap_or_default().to_string(),
    }))
}

/// Publishes the CA certificate. `Ok(Err(existing))` when the cluster already has a CA: a second
/// bootstrap never replaces it.
pub async fn publish_ca(
    store: &Store,
    certificate: &CaCertificate,
    created_by: &str,
) -> Result<Result<(), PublishedCa>, StoreError> {
    let inserted = store
        .bounded(
            "publishing the cluster CA certificate",
            store.documents(CLUSTER_CA).insert_one(doc! {
                "_id": CA_ID,
                "certificate_pem": &certificate.pem,
                "fingerprint": &certificate.fingerprint,
                "not_after": certificate.not_after,
                "created_at_ms": now_ms(),
                "created_by": created_by,
            }),
        )
        .await;
    match inserted {
        Ok(_) => Ok(Ok(())),
        Err(err) if err.is_duplicate_key() => match published_ca(store).await? {
            Some(existing) => Ok(Err(existing)),
            None => Err(err),
        },
        Err(err) => Err(err),
    }
}

/// 32 random bytes, lower-case hex.
fn random_hex() -> String {
    prexor_domain::hex(&rand::random::<[u8; 32]>())
}

/// Where the cluster's secrets live (never backed up; the api keeps its session key there too).
const SERVICE_ENROLMENT_ID: &str = "service-enrolment";

/// The cluster's service enrolment secret (created by whichever replica asks first): a replica
/// that can read MongoDB presents it to the CA to obtain its first service certificate. It
/// never leaves MongoDB and the replicas' memory (not in backups, logs or the API).
pub async fn service_enrolment_secret(store: &Store) -> Result<String, StoreError> {
    let secrets = store.documents(CLUSTER_SECRETS);
    let read = || async {
        let found = store
            .bounded(
                "reading the service enrolment secret",
                secrets.find_one(doc! { "_id": SERVICE_ENROLMENT_ID }),
            )
            .await?;
        found
            .map(|doc| {
                doc.get_str("secret")
                    .map(str::to_string)
                    .map_err(|_| StoreError::Precondition {
                        what: "the service enrolment secret stored in MongoDB is unreadable".into(),
                    })
            })
            .transpose()
    };
    if let Some(secret) = read().await? {
        return Ok(secret);
    }
    let created = store
        .bounded(
            "creating the service enrolment secret",
            secrets.insert_one(doc! {
                "_id": SERVICE_ENROLMENT_ID,
                "secret": random_hex(),
                "created_at_ms": now_ms(),
            }),
        )
        .await;
    match created {
        // Created here, or concurrently by another replica: either way, the stored one counts.
        Ok(_) => {}
        Err(err) if err.is_duplicate_key() => {}
        Err(err) => return Err(err),
    }
    read().await?.ok_or_else(|| StoreError::Precondition {
        what: "the service enrolment secret vanished right after it was created".into(),
    })
}

/// Records an issued certificate (the ledger the revocation list is kept in).
pub async fn record_issued(
    store: &Store,
    issued: &IssuedCertificate,
    issued_by: &str,
) -> Result<(), StoreError> {
    let (kind, subject) = match &issued.identity {
        prexor_pki::Identity::Node(id) => ("node", id.clone()),
        prexor_pki::Identity::Service { kind, replica } => (kind.as_str(), replica.clone()),
    };
    store
        .bounded(
            "recording an issued certificate",
            store.documents(CERTIFICATES).insert_one(doc! {
                "_id": &issued.info.serial,
                "kind": kind,
                "subject": subject,
                "fingerprint": &issued.info.fingerprint,
                "not_after": issued.info.not_after,
                "issued_at_ms": now_ms(),
                "issued_by": issued_by,
                "revoked_at_ms": Bson::Null,
            }),
        )
        .await?;
    Ok(())
}

/// Revokes a certificate by serial; gateways refuse it from their next handshake on. Returns
/// `false` when no certificate with that serial was issued.
pub async fn revoke(store: &Store, serial: &str, reason: &str) -> Result<bool, StoreError> {
    let result = store
        .bounded(
            &format!("revoking certificate {serial}"),
            store.documents(CERTIFICATES).update_one(
                doc! { "_id": serial.to_ascii_lowercase() },
                doc! { "$set": { "revoked_at_ms": now_ms(), "revoked_reason": reason } },
            ),
        )
        .await?;
    Ok(result.matched_count == 1)
}

/// When the certificate with this serial was revoked, and why; `None` when it is not revoked.
pub async fn revocation(store: &Store, serial: &str) -> Result<Option<(i64, String)>, StoreError> {
    let found = store
        .bounded(
            "checking the revocation list",
            store.documents(CERTIFICATES).find_one(doc! {
                "_id": serial,
                "revoked_at_ms": { "$gt": 0_i64 },
            }),
        )
        .await?;
    Ok(found.map(|doc| {
        (
            i64_of(&doc, "revoked_at_ms").unwrap_or_default(),
            doc.get_str("revoked_reason")
                .unwrap_or_default()
                .to_string(),
        )
    }))
}

/// A node presenting certificate `serial`: refused (the reason) when it is revoked; otherwise
/// the node's older certificates still valid are revoked now, superseded by this one — a renewal
/// takes effect when the node first uses the new certificate, so a node whose renewal answer was
/// lost keeps working with the old one. (A certificate the ledger does not know supersedes
/// nothing.)
pub async fn admit_node_certificate(
    store: &Store,
    node_id: &str,
    serial: &str,
) -> Result<Option<String>, StoreError> {
    let certificates = store.documents(CERTIFICATES);
    let record = store
        .bounded(
            "checking the revocation list",
            certificates.find_one(doc! { "_id": serial }),
        )
        .await?;
    let Some(record) = record else {
        return Ok(None);
    };
    if i64_of(&record, "revoked_at_ms").unwrap_or(0) > 0 {
        return Ok(Some(
            record
                .get_str("revoked_reason")
                .unwrap_or("revoked")
                .to_owned(),
        ));
    }
    let issued = i64_of(&record, "issued_at_ms").unwrap_or(0);
    store
        .bounded(
            "revoking superseded node certificates",
            certificates.update_many(
                doc! {
                    "kind": "node", "subject": node_id, "_id": { "$ne": serial },
                    "issued_at_ms": { "$lt": issued }, "revoked_at_ms": Bson::Null,
                },
                superseded_by(serial),
            ),
        )
        .await?;
    Ok(None)
}

/// The ledger update that revokes a certificate replaced by `serial`.
fn superseded_by(serial: &str) -> mongodb::bson::Document {
    doc! { "$set": {
        "revoked_at_ms": now_ms(),
        "revoked_reason": format!("superseded by {serial} (renewed)"),
        "superseded_by": serial,
    } }
}

/// Revokes certificate `old`, which a replica has just replaced with `new` (a renewal: the
/// replica serves and dials with `new` from now on). Nothing happens if `old` is revoked.
pub async fn supersede(store: &Store, old: &str, new: &str) -> Result<(), StoreError> {
    store
        .bounded(
            &format!("revoking certificate {old}, superseded by {new}"),
            store.documents(CERTIFICATES).update_one(
                doc! { "_id": old, "revoked_at_ms": Bson::Null },
                superseded_by(new),
            ),
        )
        .await
        .map(drop)
}

/// Revokes every certificate of node `node_id` still valid (the node was deleted); how many.
pub async fn revoke_node(store: &Store, node_id: &str, reason: &str) -> Result<u64, StoreError> {
    let result = store
        .bounded(
            &format!("revoking the certificates of node {node_id}"),
            store.documents(CERTIFICATES).update_many(
                doc! { "kind": "node", "subject": node_id, "revoked_at_ms": Bson::Null },
                doc! { "$set": { "revoked_at_ms": now_ms(), "revoked_reason": reason } },
            ),
        )
        .await?;
    Ok(result.modified_count)
}

/// Of `serials` (certificates in use by live connections), those that no longer stand: revoked,
/// unless superseded by renewals ending in a certificate that is not revoked (a node renews many
/// times over one long session). With the reason.
pub async fn fallen(
    store: &Store,
    serials: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    if serials.is_empty() {
        return Ok(Vec::new());
    }
    let revoked = |ids: Vec<String>| async move {
        store
            .find_all(
                CERTIFICATES,
                "checking live certificates",
                doc! { "_id": { "$in": ids }, "revoked_at_ms": { "$gt": 0_i64 } },
            )
            .await
    };
    // (live serial, reason, the certificate its renewals have reached)
    let mut open: Vec<(String, String, String)> = revoked(serials.to_vec())
        .await?
        .iter()
        .filter_map(|d| {
            let serial = d.get_str("_id").ok()?.to_owned();
            let reason = d.get_str("revoked_reason").unwrap_or("revoked").to_owned();
            let next = d.get_str("superseded_by").unwrap_or_default().to_owned();
            Some((serial, reason, next))
        })
        .collect();
    let mut fallen = Vec::new();
    // One hop per renewal during the session: years of renewals before this gives up.
    for _ in 0..64 {
        let (ended, following): (Vec<_>, Vec<_>) =
            open.into_iter().partition(|(_, _, next)| next.is_empty());
        fallen.extend(
            ended
                .into_iter()
                .map(|(serial, reason, _)| (serial, reason)),
        );
        if following.is_empty() {
            return Ok(fallen);
        }
        let successors: BTreeMap<String, Document> =
            revoked(following.iter().map(|(_, _, n)| n.clone()).collect())
                .await?
                .into_iter()
                .filter_map(|d| Some((d.get_str("_id").ok()?.to_owned(), d)))
                .collect();
        // A successor not revoked: the live certificate stands. A revoked one without a
        // successor of its own ends the chain: the live certificate falls with it.
        open = following
            .into_iter()
            .filter_map(|(serial, _, next)| {
                let record = successors.get(&next)?;
                let reason = record
                    .get_str("revoked_reason")
                    .unwrap_or("revoked")
                    .to_owned();
                let further = record
                    .get_str("superseded_by")
                    .unwrap_or_default()
                    .to_owned();
                Some((serial, reason, further))
            })
            .collect();
    }
    fallen.extend(open.into_iter().map(|(serial, reason, _)| (serial, reason)));
    Ok(fallen)
}

/// The serials of every revoked service certificate not expired yet (what internal ports
/// refuse).
pub async fn revoked_service_serials(
    store: &Store,
) -> Result<std::collections::HashSet<String>, StoreError> {
    Ok(store
        .find_projected(
            CERTIFICATES,
            "reading revoked service certificates",
            doc! {
                "kind": { "$ne": "node" }, "revoked_at_ms": { "$gt": 0_i64 },
                "not_after": { "$gt": prexor_domain::now_secs() },
            },
            doc! { "_id": 1 },
        )
        .await?
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
        .collect())
}

/// Why a join token cannot be redeemed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Malformed(#[from] MalformedJoinToken),
    #[error(
        "the join token is not known to this cluster (mistyped, or created for another cluster)"
    )]
    Unknown,
    #[error("the join token was issued for node {issued_for}, not {requested}")]
    WrongNode {
        issued_for: String,
        requested: String,
    },
    #[error("the join token expired; create a new one")]
    Expired,
    #[error("the join token was already used; create a new one")]
    Used,
    #[error("the join token is being redeemed by another request right now")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl JoinError {
    pub fn code(&self) -> prexor_proto::ErrorCode {
        use prexor_proto::ErrorCode;
        match self {
            JoinError::Malformed(_) => ErrorCode::BadRequest,
            JoinError::Busy => ErrorCode::Conflict,
            JoinError::Store(err) => err.code(),
            JoinError::Unknown
            | JoinError::WrongNode { .. }
            | JoinError::Expired
            | JoinError::Used => ErrorCode::Forbidden,
        }
    }
}

/// A join token held by one redemption: complete it after the certificate was issued, or
/// release it so the token can be tried again.
#[derive(Debug)]
pub struct Claim {
    hash: String,
    claim_id: String,
}

/// Creates a single-use join token for `node_id`, valid for `ttl`. The cluster CA must exist
/// (its fingerprint goes into the token).
pub async fn create_join_token(
    store: &Store,
    node_id: &str,
    ca: &CaCertificate,
    ttl: Duration,
    created_by: &str,
) -> Result<(JoinToken, i64), StoreError> {
    let token = JoinToken::generate(node_id, &ca.fingerprint);
    let expires_at_ms = now_ms() + ttl.as_millis() as i64;
    store
        .bounded(
            "creating a join token",
            store.documents(JOIN_TOKENS).insert_one(doc! {
                "_id": token.hash(),
                "node_id": node_id,
                "created_at_ms": now_ms(),
                "created_by": created_by,
                "expires_at_ms": expires_at_ms,
                "claim_until_ms": 0_i64,
                "used_at_ms": Bson::Null,
            }),
        )
        .await?;
    Ok((token, expires_at_ms))
}

/// Claims a join token for one redemption by `node_id`. Of concurrent redemptions exactly one
/// gets the claim; a claim that is neither completed nor released lapses after a minute.
pub async fn claim_join_token(
    store: &Store,
    token: &JoinToken,
    node_id: &str,
) -> Result<Claim, JoinError> {
    let now = now_ms();
    let claim_id = uuid_like();
    let claimed = store
        .bounded(
            "redeeming a join token",
            store
                .documents(JOIN_TOKENS)
                .find_one_and_update(
                    doc! {
                        "_id": token.hash(),
                        "node_id": node_id,
                        "used_at_ms": Bson::Null,
                        "expires_at_ms": { "$gt": now },
                        "claim_until_ms": { "$lt": now },
                    },
                    doc! { "$set": {
                        "claim_until_ms": now + CLAIM_FOR.as_millis() as i64,
                        "claim_id": &claim_id,
                    } },
                )
                .return_document(ReturnDocument::After),
        )
        .await?;
    if claimed.is_some() {
        return Ok(Claim {
            hash: token.hash(),
            claim_id,
        });
    }
    // Say precisely why.
    let found = store
        .bounded(
            "reading a join token",
            store
                .documents(JOIN_TOKENS)
                .find_one(doc! { "_id": token.hash() }),
        )
        .await?;
    let Some(doc) = found else {
        return Err(JoinError::Unknown);
    };
    let issued_for = doc.get_str("node_id").unwrap_or_default();
    if issued_for != node_id {
        return Err(JoinError::WrongNode {
            issued_for: issued_for.to_string(),
            requested: node_id.to_string(),
        });
    }
    if i64_of(&doc, "used_at_ms").is_some() {
        return Err(JoinError::Used);
    }
    if i64_of(&doc, "expires_at_ms").unwrap_or_default() <= now {
        return Err(JoinError::Expired);
    }
    Err(JoinError::Busy)
}

/// Marks the token used by the certificate `serial`.
pub async fn complete_join_token(
    store: &Store,
    claim: Claim,
    serial: &str,
) -> Result<(), StoreError> {
    store
        .bounded(
            "marking a join token used",
            store.documents(JOIN_TOKENS).update_one(
                doc! { "_id": &claim.hash, "claim_id": &claim.claim_id },
                doc! { "$set": { "used_at_ms": now_ms(), "serial": serial } },
            ),
        )
        .await?;
    Ok(())
}

/// Gives a claimed token back (the certificate could not be issued): it can be redeemed again.
pub async fn release_join_token(store: &Store, claim: Claim) -> Result<(), StoreError> {
    store
        .bounded(
            "releasing a join token",
            store.documents(JOIN_TOKENS).update_one(
                doc! { "_id": &claim.hash, "claim_id": &claim.claim_id, "used_at_ms": Bson::Null },
                doc! { "$set": { "claim_until_ms": 0_i64 } },
            ),
        )
        .await?;
    Ok(())
}

fn uuid_like() -> String {
    prexor_domain::hex(&rand::random::<[u8; 16]>())
}
