//! Who may change whom (docs/security.md): nobody grants, changes or removes more than they hold.
//!
//! - A user's roles are granted only within the caller's permissions, and a user is changed or
//!   deleted only by a caller who holds everything that user holds.
//! - Another user's password is reset only by a caller holding `users:*` (or `*`), and audited.
//! - The cluster never ends without an enabled admin, also under concurrent changes: every write
//!   of a user goes through one transaction that re-counts the admins and touches a guard
//!   document, so two concurrent demotions conflict and the later one sees the first.
//! - Credentials are bound to a user's id, not its name: a user deleted and created again under
//!   the same name gets none of the old tokens or sessions back.

use futures::future::BoxFuture;
use mongodb::ClientSession;
use mongodb::bson::{Document, doc};
use prexor_domain::now_ms;
use prexor_model::access::{API_TOKENS, ROLES, RoleRecord, USERS};
use prexor_store::{Store, StoreError};

use crate::app::{App, AppState};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::permissions;

use prexor_model::cluster::{CLUSTER as GUARD, USERS_GUARD as GUARD_ID};

/// The permissions `roles` grant: built-in roles by name, custom ones from `roles`.
pub async fn roles_permissions(app: &AppState, roles: &[String]) -> ApiResult<Vec<String>> {
    let mut granted = Vec::new();
    let mut custom = Vec::new();
    for role in roles {
        match permissions::builtin(role) {
            Some(list) => granted.extend(list),
            None => custom.push(role.clone()),
        }
    }
    if !custom.is_empty() {
        let filter = doc! { "_id": { "$in": custom } };
        let found: Vec<RoleRecord> = app
            .records(ROLES, "reading roles", filter, Document::new(), None)
            .await?;
        granted.extend(found.into_iter().flat_map(|role| role.permissions));
    }
    granted.sort();
    granted.dedup();
    Ok(granted)
}

/// 403 unless every permission of `wanted` is within what `who` holds.
pub fn require_within(who: &Principal, wanted: &[String], what: &str) -> ApiResult<()> {
    permissions::within(wanted, &who.permissions)
        .map_err(|m| ApiError::forbidden(format!("{what}: {m}")))
}

/// 403 unless `who` holds every permission of `resource` outright (`<resource>:*` or `*`).
pub fn require_all_of(who: &Principal, resource: &str, what: &str) -> ApiResult<()> {
    let all = format!("{resource}:*");
    if who.permissions.iter().any(|p| p == "*" || *p == all) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "{what} needs {all:?} (or admin)"
    )))
}

/// A change to one user.
#[derive(Clone)]
pub enum UserWrite {
    /// `$set` these fields.
    Set(Document),
    /// Delete the user and every API token it owns.
    Delete,
}

/// Why a user write was undone: it would have left no enabled admin.
#[derive(Debug)]
struct LastAdmin;

/// What one user write's transaction needs.
struct UserTransaction {
    store: Store,
    name: String,
    user_id: String,
    write: UserWrite,
}

/// Applies `write` to user `name` unless that leaves the cluster without an enabled admin;
/// atomically, so concurrent demotions cannot both pass (409 for the one that would).
pub async fn write_user(app: &App, name: &str, user_id: &str, write: UserWrite) -> ApiResult<()> {
    let context = UserTransaction {
        store: app.store().clone(),
        name: name.to_owned(),
        user_id: user_id.to_owned(),
        write,
    };
    let written = app
        .store()
        .transaction("changing a user", &context, user_transaction)
        .await;
    match written {
        Ok(()) => {
            app.access_changed(name).await;
            Ok(())
        }
        Err(err) if err.custom::<LastAdmin>().is_some() => Err(ApiError::conflict(format!(
            "{name:?} is the last enabled admin; make another user admin first"
        ))),
        Err(err) => Err(err.into()),
    }
}

fn user_transaction<'a>(
    session: &'a mut ClientSession,
    tx: &'a UserTransaction,
) -> BoxFuture<'a, mongodb::error::Result<()>> {
    Box::pin(async move {
        let store = &tx.store;
        store
            .documents(GUARD)
            .update_one(
                doc! { "_id": GUARD_ID },
                doc! { "$inc": { "writes": 1_i64 }, "$set": { "atMs": now_ms() } },
            )
            .upsert(true)
            .session(&mut *session)
            .await?;
        let users = store.documents(USERS);
        match &tx.write {
            UserWrite::Set(set) => {
                users
                    .update_one(doc! { "_id": &tx.name }, doc! { "$set": set.clone() })
                    .session(&mut *session)
                    .await?;
            }
            UserWrite::Delete => {
                users
                    .delete_one(doc! { "_id": &tx.name })
                    .session(&mut *session)
                    .await?;
                store
                    .documents(API_TOKENS)
                    .delete_many(
                        doc! { "$or": [ { "ownerId": &tx.user_id }, { "owner": &tx.name } ] },
                    )
                    .session(&mut *session)
                    .await?;
            }
        }
        let admins = users
            .count_documents(doc! { "roles": "admin", "disabled": { "$ne": true } })
            .session(&mut *session)
            .await?;
        if admins == 0 {
            return Err(mongodb::error::Error::custom(LastAdmin));
        }
        Ok(())
    })
}

/// A new user's id: what its sessions and API tokens are bound to.
pub fn new_user_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Binds the credentials of records written before users had ids: every user gets an id, and
/// every API token its owner's id — unless the token is older than its owner (a user deleted
/// and created again under the same name), in which case it is deleted. Run by every api
/// replica at start; conditional writes make it safe to run concurrently.
pub async fn bind_credentials(store: &Store) -> Result<(), StoreError> {
    let users = store.documents(USERS);
    for user in lacking(store, USERS, "reading users without an id", "userId").await? {
        let Ok(name) = user.get_str("_id") else {
            continue;
        };
        store
            .bounded(
                "giving a user an id",
                users.update_one(
                    doc! { "_id": name, "userId": { "$exists": false } },
                    doc! { "$set": { "userId": new_user_id() } },
                ),
            )
            .await?;
    }
    let tokens = store.documents(API_TOKENS);
    let what = "reading API tokens without an owner id";
    for token in lacking(store, API_TOKENS, what, "ownerId").await? {
        let (Ok(id), Ok(owner)) = (token.get_str("_id"), token.get_str("owner")) else {
            continue;
        };
        let user = store
            .bounded(
                "reading a token's owner",
                users.find_one(doc! { "_id": owner }),
            )
            .await?;
        let created = token.get_i64("createdAtMs").unwrap_or(0);
        match user {
            Some(user) if user.get_i64("createdAtMs").unwrap_or(0) <= created => {
                let user_id = user.get_str("userId").unwrap_or_default();
                store
                    .bounded(
                        "binding an API token to its owner",
                        tokens.update_one(
                            doc! { "_id": id, "ownerId": { "$exists": false } },
                            doc! { "$set": { "ownerId": user_id } },
                        ),
                    )
                    .await?;
            }
            _ => {
                tracing::warn!(
                    token = id,
                    owner,
                    "deleting an API token older than its owner (the user was deleted and created again)"
                );
                store
                    .bounded(
                        "deleting an orphaned API token",
                        tokens.delete_one(doc! { "_id": id }),
                    )
                    .await?;
            }
        }
    }
    Ok(())
}

/// The records of `collection` without `field` (written before it existed).
async fn lacking(
    store: &Store,
    collection: &str,
    what: &str,
    field: &str,
) -> Result<Vec<Document>, StoreError> {
    store
        .find_all(collection, what, doc! { field: { "$exists": false } })
        .await
}
