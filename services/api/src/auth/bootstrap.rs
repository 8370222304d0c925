//! The first admin of a cluster (`prexor-api bootstrap-admin`, `prexorctl setup`).

use mongodb::bson::doc;
use prexor_domain::now_ms;
use prexor_model::access::USERS;
use prexor_store::Store;

use super::passwords::{hash_password, random_secret};

/// Creates the first admin once per cluster: the password is returned to be shown once. A
/// second call is refused, also after a crash between the steps (the marker records how far it
/// got).
pub async fn bootstrap_admin(store: &Store, username: &str) -> anyhow::Result<String> {
    prexor_domain::validate_name(username)
        .map_err(|e| anyhow::anyhow!("user name {username:?}: {e}"))?;
    let cluster = store.documents(prexor_model::cluster::CLUSTER);
    let marker = store
        .bounded(
            "reading the bootstrap record",
            cluster.find_one(doc! { "_id": "bootstrap-admin" }),
        )
        .await?;
    match marker {
        Some(m) if m.get_str("state") == Ok("done") => anyhow::bail!(
            "the bootstrap admin {:?} was already created on this cluster; sign in with it (or have an admin create users) — it is never created twice",
            m.get_str("user").unwrap_or("?")
        ),
        Some(m) if m.get_str("user") != Ok(username) => anyhow::bail!(
            "an interrupted bootstrap created admin {:?}; run bootstrap again with that user name",
            m.get_str("user").unwrap_or("?")
        ),
        Some(_) => {}
        None => {
            store
                .bounded(
                    "recording the bootstrap",
                    cluster.insert_one(doc! { "_id": "bootstrap-admin", "user": username, "state": "creating", "atMs": now_ms() }),
                )
                .await
                .map_err(|e| {
                    if e.is_duplicate_key() {
                        anyhow::anyhow!("another bootstrap is running against this cluster")
                    } else {
                        e.into()
                    }
                })?;
        }
    }
    let password = random_secret(18);
    let hash = hash_password(password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store
        .bounded(
            "creating the admin user",
            store
                .documents(USERS)
                .update_one(
                    doc! { "_id": username },
                    doc! {
                        "$set": {
                            "passwordHash": hash,
                            "roles": ["admin"],
                            "disabled": false,
                            "createdAtMs": now_ms(),
                        },
                        "$setOnInsert": { "userId": crate::access::new_user_id() },
                    },
                )
                .upsert(true),
        )
        .await?;
    store
        .bounded(
            "completing the bootstrap",
            cluster.update_one(
                doc! { "_id": "bootstrap-admin" },
                doc! { "$set": { "state": "done", "doneAtMs": now_ms() } },
            ),
        )
        .await?;
    Ok(password)
}
