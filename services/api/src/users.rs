//! Users, roles and the audit log.

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::routing::get;
use mongodb::bson::{Bson, Document, doc};
use prexor_domain::now_ms;
use prexor_model::access::{AuditRecord, ROLES, RoleRecord, USERS, UserRecord};
use serde::{Deserialize, Serialize};

use crate::access::{self, UserWrite};
use crate::app::App;
use crate::auth::{Caller, Principal, hash_password, password_problem};
use crate::error::{ApiError, ApiResult, Json};
use crate::paging::{Page, PageRequest, cut};
use crate::permissions;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{name}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .route("/roles", get(list_roles).post(create_role))
        .route(
            "/roles/{name}",
            get(get_role).put(update_role).delete(delete_role),
        )
        .route("/audit", get(audit_log))
}

/// A user as shown (never its password hash).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UserView {
    username: String,
    roles: Vec<String>,
    disabled: bool,
    created_at_ms: i64,
    last_login_at_ms: Option<i64>,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> UserView {
        UserView {
            username: user.name.clone(),
            roles: user.roles.clone(),
            disabled: user.disabled,
            created_at_ms: user.created_at_ms,
            last_login_at_ms: user.last_login_at_ms,
        }
    }
}

crate::paging::list_all! {
    list_users = "/api/v1/users", "users", "users:read", UserRecord => UserView;
}

#[utoipa::path(
    get, path = "/api/v1/users/{name}", tag = "users",
    responses((status = 200, body = UserView))
)]
async fn get_user(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<UserView>> {
    if name != who.user {
        who.require("users:read")?;
    }
    Ok(Json(UserView::from(&app.find(&name).await?)))
}

/// Every role name must exist (built-in or custom).
async fn check_roles(app: &App, roles: &[String]) -> ApiResult<()> {
    let custom: Vec<&String> = roles
        .iter()
        .filter(|r| permissions::builtin(r).is_none())
        .collect();
    if custom.is_empty() {
        return Ok(());
    }
    let found: Vec<RoleRecord> = app
        .records(
            ROLES,
            "reading roles",
            doc! { "_id": { "$in": &custom } },
            Document::new(),
            None,
        )
        .await?;
    for role in custom {
        if !found.iter().any(|f| f.name == *role) {
            return Err(ApiError::field(
                "roles",
                format!(
                    "no role {role:?} (built-in: {}; or create it first)",
                    permissions::BUILTIN_ROLES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// 403 unless `who` holds everything user `name` holds (a user changes only users it could have
/// made).
async fn require_holds_user(
    app: &App,
    who: &Principal,
    name: &str,
    user: &UserRecord,
) -> ApiResult<()> {
    if name == who.user {
        return Ok(());
    }
    let held = access::roles_permissions(app, &user.roles).await?;
    access::require_within(who, &held, &format!("user {name:?} holds more than you"))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
    roles: Vec<String>,
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    responses((status = 201, body = UserView))
)]
async fn create_user(
    Caller(app, who): Caller,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    who.require("users:write")?;
    crate::error::check_name("username", &new.username)?;
    if let Some(problem) = password_problem(&new.password) {
        return Err(ApiError::field("password", problem));
    }
    check_roles(&app, &new.roles).await?;
    let granted = access::roles_permissions(&app, &new.roles).await?;
    access::require_within(&who, &granted, "roles")?;
    let record = UserRecord {
        name: new.username.clone(),
        user_id: Some(access::new_user_id()),
        password_hash: hash_password(new.password).await?,
        roles: new.roles,
        disabled: false,
        created_at_ms: now_ms(),
        last_login_at_ms: None,
        sessions_valid_after_ms: None,
    };
    app.insert_new(USERS, "creating a user", &record, || {
        format!("user {:?} already exists", new.username)
    })
    .await?;
    let view = UserView::from(&record);
    app.audit::<(), _>(&who, "user.create", &new.username, None, Some(&view))
        .await;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UserChange {
    password: Option<String>,
    roles: Option<Vec<String>>,
    disabled: Option<bool>,
}

#[utoipa::path(
    patch, path = "/api/v1/users/{name}", tag = "users",
    responses((status = 200, body = UserView))
)]
async fn update_user(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    Json(change): Json<UserChange>,
) -> ApiResult<Json<UserView>> {
    who.require("users:write")?;
    let before = app.find(&name).await?;
    require_holds_user(&app, &who, &name, &before).await?;
    let mut set = Document::new();
    if let Some(password) = change.password {
        if name == who.user {
            return Err(ApiError::field(
                "password",
                "change your own password with POST /api/v1/auth/password (it asks for the current one)",
            ));
        }
        access::require_all_of(&who, "users", "resetting another user's password")?;
        if let Some(problem) = password_problem(&password) {
            return Err(ApiError::field("password", problem));
        }
        set.insert("passwordHash", hash_password(password).await?);
    }
    if let Some(roles) = &change.roles {
        check_roles(&app, roles).await?;
        let granted = access::roles_permissions(&app, roles).await?;
        access::require_within(&who, &granted, "roles")?;
        set.insert("roles", roles);
    }
    if let Some(disabled) = change.disabled {
        set.insert("disabled", disabled);
    }
    if set.is_empty() {
        return Err(ApiError::bad_request(
            "nothing to change: send password, roles or disabled",
        ));
    }
    let reset = set.contains_key("passwordHash");
    // Existing sessions end, so a removed role or a reset password takes effect everywhere.
    set.insert("sessionsValidAfterMs", now_ms());
    access::write_user(&app, &name, before.id(), UserWrite::Set(set)).await?;
    if reset {
        app.audit::<(), ()>(&who, "user.password-reset", &name, None, None)
            .await;
    }
    let after = app.find(&name).await?;
    let (before, after) = (UserView::from(&before), UserView::from(&after));
    app.audit(&who, "user.update", &name, Some(&before), Some(&after))
        .await;
    Ok(Json(after))
}

#[utoipa::path(
    delete, path = "/api/v1/users/{name}", tag = "users",
    responses((status = 204))
)]
async fn delete_user(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    who.require("users:write")?;
    let before = app.find(&name).await?;
    require_holds_user(&app, &who, &name, &before).await?;
    access::write_user(&app, &name, before.id(), UserWrite::Delete).await?;
    app.audit(
        &who,
        "user.delete",
        &name,
        Some(&UserView::from(&before)),
        None::<&()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// A role: built in (`admin`, `operator`, `viewer`) or custom.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RoleView {
    name: String,
    builtin: bool,
    permissions: Vec<String>,
    description: String,
}

impl From<&RoleRecord> for RoleView {
    fn from(role: &RoleRecord) -> RoleView {
        RoleView {
            name: role.name.clone(),
            builtin: false,
            permissions: role.permissions.clone(),
            description: role.description.clone(),
        }
    }
}

impl RoleView {
    fn builtin(name: &str) -> Option<RoleView> {
        Some(RoleView {
            name: name.to_owned(),
            builtin: true,
            permissions: permissions::builtin(name)?,
            description: String::new(),
        })
    }
}

/// Built-in and custom roles together, by name.
#[utoipa::path(
    get, path = "/api/v1/roles", tag = "roles", params(PageRequest),
    responses((status = 200, body = Page<RoleView>))
)]
async fn list_roles(
    Caller(app, who): Caller,
    page: PageRequest,
) -> ApiResult<Json<Page<RoleView>>> {
    who.require("roles:read")?;
    let custom: Vec<RoleRecord> = app.page_read("listing roles", doc! {}, &page).await?;
    let after = page.after.as_deref().unwrap_or_default();
    let mut roles: Vec<RoleView> = permissions::BUILTIN_ROLES
        .iter()
        .filter(|name| **name > after)
        .filter_map(|name| RoleView::builtin(name))
        .chain(custom.iter().map(RoleView::from))
        .collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(cut(roles, page.limit, |role| role.name.clone())))
}

#[utoipa::path(
    get, path = "/api/v1/roles/{name}", tag = "roles",
    responses((status = 200, body = RoleView))
)]
async fn get_role(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<RoleView>> {
    who.require("roles:read")?;
    if let Some(role) = RoleView::builtin(&name) {
        return Ok(Json(role));
    }
    Ok(Json(RoleView::from(&app.find(&name).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    #[serde(default)]
    name: Option<String>,
    permissions: Vec<String>,
    #[serde(default)]
    description: String,
}

fn check_permissions(who: &Principal, list: &[String]) -> ApiResult<()> {
    for p in list {
        permissions::validate(p).map_err(|m| ApiError::field("permissions", m))?;
    }
    permissions::within(list, &who.permissions)
        .map_err(|m| ApiError::forbidden(format!("permissions: {m}")))
}

#[utoipa::path(
    post, path = "/api/v1/roles", tag = "roles",
    responses((status = 201, body = RoleView))
)]
async fn create_role(
    Caller(app, who): Caller,
    Json(body): Json<RoleBody>,
) -> ApiResult<(StatusCode, Json<RoleView>)> {
    who.require("roles:write")?;
    let name = body
        .name
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    crate::error::check_name("name", &name)?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!("{name:?} is a built-in role")));
    }
    check_permissions(&who, &body.permissions)?;
    let record = RoleRecord {
        name: name.clone(),
        permissions: body.permissions,
        description: body.description,
    };
    app.insert_new(ROLES, "creating a role", &record, || {
        format!("role {name:?} already exists")
    })
    .await?;
    let view = RoleView::from(&record);
    app.audit::<(), _>(&who, "role.create", &name, None, Some(&view))
        .await;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    put, path = "/api/v1/roles/{name}", tag = "roles",
    responses((status = 200, body = RoleView))
)]
async fn update_role(
    Caller(app, who): Caller,
    Path(name): Path<String>,
    Json(body): Json<RoleBody>,
) -> ApiResult<Json<RoleView>> {
    who.require("roles:write")?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "{name:?} is a built-in role and cannot be changed"
        )));
    }
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::field("name", "cannot be changed"));
    }
    check_permissions(&who, &body.permissions)?;
    let before = app.find(&name).await?;
    app.update_by_id(
        ROLES,
        "updating a role",
        &name,
        doc! { "$set": { "permissions": &body.permissions, "description": &body.description } },
    )
    .await?;
    app.access_changed(&name).await;
    let after = RoleView::from(&app.find(&name).await?);
    app.audit(
        &who,
        "role.update",
        &name,
        Some(&RoleView::from(&before)),
        Some(&after),
    )
    .await;
    Ok(Json(after))
}

#[utoipa::path(
    delete, path = "/api/v1/roles/{name}", tag = "roles",
    responses((status = 204))
)]
async fn delete_role(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    who.require("roles:write")?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "{name:?} is a built-in role and cannot be deleted"
        )));
    }
    let before = app.find(&name).await?;
    let holders: Vec<UserRecord> = app
        .records(
            USERS,
            "finding the role's users",
            doc! { "roles": &name },
            Document::new(),
            None,
        )
        .await?;
    if !holders.is_empty() {
        let names: Vec<&str> = holders.iter().map(|u| u.name.as_str()).collect();
        return Err(ApiError::conflict(format!(
            "role {name:?} is assigned to {}; remove it from them first",
            names.join(", ")
        )));
    }
    let before = RoleView::from(&before);
    let deleted = app
        .delete_audited(
            &who,
            ROLES,
            "deleting a role",
            "role.delete",
            &name,
            &before,
        )
        .await;
    app.access_changed(&name).await;
    deleted
}

#[derive(Deserialize)]
struct AuditQuery {
    /// `after` by its older name.
    cursor: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
}

/// One page of the audit log, newest first.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    entries: Vec<AuditEntryView>,
    /// Pass as `after` for older entries; `null` on the last page.
    next_cursor: Option<String>,
}

/// One change an operator made.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct AuditEntryView {
    /// Its place in the log (a MongoDB object id, hex).
    id: String,
    at_ms: i64,
    actor: String,
    /// `session`, `token:<id>` or `login`.
    via: String,
    action: String,
    target: String,
    /// The changed thing before and after (`null` for none), as the operation that changed it
    /// showed it: open-ended, since every kind of record is audited.
    before: serde_json::Value,
    after: serde_json::Value,
    /// The api replica that recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<String>,
}

impl AuditEntryView {
    /// `entry` as shown; `hide_archives` leaves out where backup archives are stored (their
    /// blob hash), for a reader without `backups:read`.
    fn new(mut entry: AuditRecord, hide_archives: bool) -> AuditEntryView {
        if hide_archives && entry.action.starts_with("backup.") {
            for side in [&mut entry.before, &mut entry.after] {
                if let Bson::Document(recorded) = side {
                    recorded.remove("hash");
                }
            }
        }
        AuditEntryView {
            id: entry.id.to_hex(),
            at_ms: entry.at_ms,
            actor: entry.actor,
            via: entry.via,
            action: entry.action,
            target: entry.target,
            before: crate::json::value_of(entry.before),
            after: crate::json::value_of(entry.after),
            replica: entry.replica,
        }
    }
}

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    params(PageRequest, ("cursor" = Option<String>, Query, description = "`after` by its older name"), ("actor" = Option<String>, Query), ("action" = Option<String>, Query), ("target" = Option<String>, Query)),
    responses((status = 200, body = AuditPage))
)]
async fn audit_log(
    Caller(app, who): Caller,
    mut page: PageRequest,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    who.require("audit:read")?;
    page.after = page.after.or(query.cursor);
    let mut filter = Document::new();
    for (key, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("target", &query.target),
    ] {
        if let Some(value) = value {
            filter.insert(key, value);
        }
    }
    let entries: Page<AuditRecord> = app.page("reading the audit log", filter, &page).await?;
    // Where a backup archive is stored is for those who may read backups.
    let hide_archives = who.require("backups:read").is_err();
    let entries = entries.map(|entry| AuditEntryView::new(entry, hide_archives));
    Ok(Json(AuditPage {
        entries: entries.items,
        next_cursor: entries.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use mongodb::bson::oid::ObjectId;
    use mongodb::bson::{self, doc};

    use super::*;

    #[test]
    fn an_audit_entry_is_shown_as_stored_and_hides_archives_when_asked() {
        let stored = doc! {
            "_id": ObjectId::new(), "atMs": 1_i64, "actor": "ann", "via": "session",
            "action": "backup.create", "target": "backup-1", "before": null,
            "after": { "id": "backup-1", "hash": "h", "size": 3_i64 }, "replica": "api-1",
        };
        let record: AuditRecord = bson::from_document(stored.clone()).unwrap();
        let shown = serde_json::to_value(AuditEntryView::new(record.clone(), false)).unwrap();
        assert_eq!(shown, crate::json::record(stored));
        let hidden = serde_json::to_value(AuditEntryView::new(record, true)).unwrap();
        assert!(hidden["after"].get("hash").is_none() && hidden["after"]["size"] == 3);
    }

    #[test]
    fn a_user_is_shown_without_its_secrets() {
        let record: UserRecord = bson::from_document(doc! {
            "_id": "ann", "userId": "u1", "passwordHash": "$argon2id$secret", "roles": ["admin"],
            "disabled": false, "createdAtMs": 1_i64, "sessionsValidAfterMs": 2_i64,
        })
        .unwrap();
        let shown = serde_json::to_value(UserView::from(&record)).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({ "username": "ann", "roles": ["admin"], "disabled": false, "createdAtMs": 1, "lastLoginAtMs": null })
        );
    }
}
