//! Who may do what: users, roles, API tokens and the audit log.
//!
//! The records hold what is stored, secrets included (password and token hashes); whatever shows
//! them to a caller builds a view without those.

use mongodb::bson::Bson;
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

/// Users (`_id` = user name): [`UserRecord`].
pub const USERS: &str = "users";
/// Custom roles (`_id` = role name): [`RoleRecord`].
pub const ROLES: &str = "roles";
/// API tokens (`_id` = token id): [`ApiTokenRecord`], bound to a user id.
pub const API_TOKENS: &str = "api_tokens";
/// The audit log: one [`AuditRecord`] per change an operator made.
pub const AUDIT: &str = "audit";

/// A user as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    #[serde(rename = "_id")]
    pub name: String,
    /// What its sessions and API tokens are bound to; absent only on records written before
    /// users had ids, until an api replica starts and gives them one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// An argon2id PHC string. Never shown.
    #[serde(default)]
    pub password_hash: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_login_at_ms: Option<i64>,
    /// Sessions issued before this are no longer valid (a password or role change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_valid_after_ms: Option<i64>,
}

impl UserRecord {
    /// The user's id, empty on a record from before users had ids.
    pub fn id(&self) -> &str {
        self.user_id.as_deref().unwrap_or_default()
    }
}

/// A custom role as stored (the built-in ones are not stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRecord {
    #[serde(rename = "_id")]
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// An API token as stored: `pxt_<id>_<secret>` is presented, only the secret's hash is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRecord {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// The owner's user name.
    #[serde(default)]
    pub owner: String,
    /// The owner's user id; absent only on tokens from before users had ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// What it was scoped to (it never exceeds what its owner holds now).
    #[serde(default)]
    pub permissions: Vec<String>,
    /// SHA-256 of the secret, hex. Never shown.
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub created_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<i64>,
}

/// One entry of the audit log as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Its order too: newer entries have greater ids (the log's paging cursor).
    #[serde(rename = "_id")]
    pub id: ObjectId,
    #[serde(default)]
    pub at_ms: i64,
    /// The user name it was done as.
    #[serde(default)]
    pub actor: String,
    /// `session`, `token:<id>` or `login`.
    #[serde(default)]
    pub via: String,
    /// `<resource>.<verb>` (`user.create`, `backup.restore`, ...).
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub target: String,
    /// The changed thing before and after, as the handler that changed it showed it: any shape.
    #[serde(default)]
    pub before: Bson,
    #[serde(default)]
    pub after: Bson,
    /// The api replica that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn records_decode_what_the_api_writes_and_ignore_the_rest() {
        let user: UserRecord = bson::from_document(doc! {
            "_id": "ann", "userId": "u1", "passwordHash": "$argon2id$x", "roles": ["admin"],
            "disabled": false, "createdAtMs": 5_i64, "sessionsValidAfterMs": 7_i64,
            "_fence": { "scope": "x", "token": 1_i64 }, "later": "field",
        })
        .unwrap();
        assert_eq!((user.name.as_str(), user.id()), ("ann", "u1"));
        assert_eq!(user.sessions_valid_after_ms, Some(7));
        assert_eq!(user.last_login_at_ms, None);
        let old: UserRecord = bson::from_document(doc! { "_id": "bob" }).unwrap();
        assert_eq!(old.id(), "");
        assert!(old.roles.is_empty() && !old.disabled);

        let token: ApiTokenRecord = bson::from_document(doc! {
            "_id": "t1", "name": "ci", "owner": "ann", "permissions": ["groups:read"],
            "hash": "ab", "createdAtMs": 1_i32,
        })
        .unwrap();
        assert_eq!(token.created_at_ms, 1);
        assert_eq!(token.owner_id, None);

        let entry: AuditRecord = bson::from_document(doc! {
            "_id": ObjectId::new(), "atMs": 1_i64, "actor": "ann", "via": "session",
            "action": "user.create", "target": "bob", "before": null, "after": { "username": "bob" },
            "replica": "api-1",
        })
        .unwrap();
        assert_eq!(entry.before, Bson::Null);
        assert_eq!(
            entry.after.as_document().unwrap().get_str("username"),
            Ok("bob")
        );
    }

    #[test]
    fn optional_fields_are_not_written_when_absent() {
        let role = RoleRecord {
            name: "ops".into(),
            permissions: vec!["nodes:*".into()],
            description: String::new(),
        };
        let stored = bson::to_document(&role).unwrap();
        assert_eq!(stored.get_str("_id"), Ok("ops"));
        let token = ApiTokenRecord {
            id: "t".into(),
            name: "n".into(),
            owner: "ann".into(),
            owner_id: Some("u1".into()),
            permissions: vec![],
            hash: "h".into(),
            created_at_ms: 1,
            expires_at_ms: None,
            last_used_at_ms: None,
        };
        let stored = bson::to_document(&token).unwrap();
        assert!(!stored.contains_key("expiresAtMs") && !stored.contains_key("lastUsedAtMs"));
        assert_eq!(stored.get_str("ownerId"), Ok("u1"));
    }
}
