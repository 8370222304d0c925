//! Users, roles and the audit log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use prexor_domain::now_ms;
use serde::{Deserialize, Serialize};

use crate::access::{self, UserWrite};
use crate::app::{AUDIT, App};
use crate::auth::{Principal, ROLES, USERS, hash_password, password_problem, string_list};
use crate::error::{ApiError, ApiResult, Body};
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

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserView {
    username: String,
    roles: Vec<String>,
    disabled: bool,
    created_at_ms: i64,
    last_login_at_ms: Option<i64>,
}

impl UserView {
    fn from_doc(doc: &Document) -> UserView {
        UserView {
            username: doc.get_str("_id").unwrap_or_default().to_owned(),
            roles: string_list(doc, "roles"),
            disabled: doc.get_bool("disabled").unwrap_or(false),
            created_at_ms: doc.get_i64("createdAtMs").unwrap_or(0),
            last_login_at_ms: doc.get_i64("lastLoginAtMs").ok(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list_users(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<UserView>>> {
    who.require("users:read")?;
    let users = app
        .store()
        .find_sorted(USERS, "listing users", doc! {}, doc! { "_id": 1 }, None)
        .await?;
    Ok(Json(users.iter().map(UserView::from_doc).collect()))
}

async fn find_user(app: &App, name: &str) -> ApiResult<Document> {
    app.must_find(USERS, "user", name).await
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{name}",
    tag = "users",
    params(("name" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn get_user(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<UserView>> {
    if name != who.user {
        who.require("users:read")?;
    }
    Ok(Json(UserView::from_doc(&find_user(&app, &name).await?)))
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
    let found = app
        .store()
        .find_all(ROLES, "reading roles", doc! { "_id": { "$in": &custom } })
        .await?;
    for role in custom {
        if !found.iter().any(|f| f.get_str("_id") == Ok(role.as_str())) {
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
    user: &Document,
) -> ApiResult<()> {
    if name == who.user {
        return Ok(());
    }
    let held = access::roles_permissions(app.store(), &string_list(user, "roles")).await?;
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
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = NewUser,
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn create_user(
    State(app): State<App>,
    who: Principal,
    Body(new): Body<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    who.require("users:write")?;
    prexor_domain::validate_name(&new.username)
        .map_err(|e| ApiError::field("username", e.to_string()))?;
    if let Some(problem) = password_problem(&new.password) {
        return Err(ApiError::field("password", problem));
    }
    check_roles(&app, &new.roles).await?;
    let granted = access::roles_permissions(app.store(), &new.roles).await?;
    access::require_within(&who, &granted, "roles")?;
    let record = doc! {
        "_id": &new.username,
        "userId": access::new_user_id(),
        "passwordHash": hash_password(new.password).await?,
        "roles": &new.roles,
        "disabled": false,
        "createdAtMs": now_ms(),
    };
    let store = app.store();
    match store
        .bounded(
            "creating a user",
            store.documents(USERS).insert_one(&record),
        )
        .await
    {
        Ok(_) => {}
        Err(err) if err.is_duplicate_key() => {
            return Err(ApiError::conflict(format!(
                "user {:?} already exists",
                new.username
            )));
        }
        Err(err) => return Err(err.into()),
    }
    let view = UserView::from_doc(&record);
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
    patch,
    path = "/api/v1/users/{name}",
    tag = "users",
    params(("name" = String, Path)),
    request_body = UserChange,
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn update_user(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(change): Body<UserChange>,
) -> ApiResult<Json<UserView>> {
    who.require("users:write")?;
    let before = find_user(&app, &name).await?;
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
        let granted = access::roles_permissions(app.store(), roles).await?;
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
    let user_id = before.get_str("userId").unwrap_or_default();
    access::write_user(&app, &name, user_id, UserWrite::Set(set)).await?;
    if reset {
        app.audit::<(), ()>(&who, "user.password-reset", &name, None, None)
            .await;
    }
    let after = find_user(&app, &name).await?;
    let (before, after) = (UserView::from_doc(&before), UserView::from_doc(&after));
    app.audit(&who, "user.update", &name, Some(&before), Some(&after))
        .await;
    Ok(Json(after))
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{name}",
    tag = "users",
    params(("name" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn delete_user(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("users:write")?;
    let before = find_user(&app, &name).await?;
    require_holds_user(&app, &who, &name, &before).await?;
    let user_id = before.get_str("userId").unwrap_or_default();
    access::write_user(&app, &name, user_id, UserWrite::Delete).await?;
    app.audit(
        &who,
        "user.delete",
        &name,
        Some(&UserView::from_doc(&before)),
        None::<&()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoleView {
    name: String,
    builtin: bool,
    permissions: Vec<String>,
    description: String,
}

impl RoleView {
    fn from_doc(doc: &Document) -> RoleView {
        RoleView {
            name: doc.get_str("_id").unwrap_or_default().to_owned(),
            builtin: false,
            permissions: string_list(doc, "permissions"),
            description: doc.get_str("description").unwrap_or_default().to_owned(),
        }
    }

    fn builtin(name: &str) -> Option<RoleView> {
        Some(RoleView {
            name: name.to_owned(),
            builtin: true,
            permissions: permissions::builtin(name)?,
            description: String::new(),
        })
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/roles",
    tag = "roles",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list_roles(State(app): State<App>, who: Principal) -> ApiResult<Json<Vec<RoleView>>> {
    who.require("roles:read")?;
    let mut roles: Vec<RoleView> = permissions::BUILTIN_ROLES
        .iter()
        .filter_map(|r| RoleView::builtin(r))
        .collect();
    let custom = app
        .store()
        .find_sorted(ROLES, "listing roles", doc! {}, doc! { "_id": 1 }, None)
        .await?;
    roles.extend(custom.iter().map(RoleView::from_doc));
    Ok(Json(roles))
}

async fn find_role(app: &App, name: &str) -> ApiResult<Document> {
    app.must_find(ROLES, "role", name).await
}

#[utoipa::path(
    get,
    path = "/api/v1/roles/{name}",
    tag = "roles",
    params(("name" = String, Path)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn get_role(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<RoleView>> {
    who.require("roles:read")?;
    if let Some(role) = RoleView::builtin(&name) {
        return Ok(Json(role));
    }
    Ok(Json(RoleView::from_doc(&find_role(&app, &name).await?)))
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
    post,
    path = "/api/v1/roles",
    tag = "roles",
    request_body = RoleBody,
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn create_role(
    State(app): State<App>,
    who: Principal,
    Body(body): Body<RoleBody>,
) -> ApiResult<(StatusCode, Json<RoleView>)> {
    who.require("roles:write")?;
    let name = body
        .name
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    prexor_domain::validate_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!("{name:?} is a built-in role")));
    }
    check_permissions(&who, &body.permissions)?;
    let record =
        doc! { "_id": &name, "permissions": &body.permissions, "description": &body.description };
    let store = app.store();
    match store
        .bounded(
            "creating a role",
            store.documents(ROLES).insert_one(&record),
        )
        .await
    {
        Ok(_) => {}
        Err(err) if err.is_duplicate_key() => {
            return Err(ApiError::conflict(format!("role {name:?} already exists")));
        }
        Err(err) => return Err(err.into()),
    }
    let view = RoleView::from_doc(&record);
    app.audit::<(), _>(&who, "role.create", &name, None, Some(&view))
        .await;
    Ok((StatusCode::CREATED, Json(view)))
}

#[utoipa::path(
    put,
    path = "/api/v1/roles/{name}",
    tag = "roles",
    params(("name" = String, Path)),
    request_body = RoleBody,
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn update_role(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
    Body(body): Body<RoleBody>,
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
    let before = find_role(&app, &name).await?;
    let store = app.store();
    store
        .bounded(
            "updating a role",
            store.documents(ROLES).update_one(
                doc! { "_id": &name },
                doc! { "$set": { "permissions": &body.permissions, "description": &body.description } },
            ),
        )
        .await?;
    let after = RoleView::from_doc(&find_role(&app, &name).await?);
    app.audit(
        &who,
        "role.update",
        &name,
        Some(&RoleView::from_doc(&before)),
        Some(&after),
    )
    .await;
    Ok(Json(after))
}

#[utoipa::path(
    delete,
    path = "/api/v1/roles/{name}",
    tag = "roles",
    params(("name" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn delete_role(
    State(app): State<App>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require("roles:write")?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "{name:?} is a built-in role and cannot be deleted"
        )));
    }
    let before = find_role(&app, &name).await?;
    let holders = app
        .store()
        .find_all(USERS, "finding the role's users", doc! { "roles": &name })
        .await?;
    if !holders.is_empty() {
        let names: Vec<&str> = holders
            .iter()
            .filter_map(|u| u.get_str("_id").ok())
            .collect();
        return Err(ApiError::conflict(format!(
            "role {name:?} is assigned to {}; remove it from them first",
            names.join(", ")
        )));
    }
    let store = app.store();
    store
        .bounded(
            "deleting a role",
            store.documents(ROLES).delete_one(doc! { "_id": &name }),
        )
        .await?;
    app.audit(
        &who,
        "role.delete",
        &name,
        Some(&RoleView::from_doc(&before)),
        None::<&()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct AuditQuery {
    /// Page size (1–500, default 50).
    limit: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    entries: Vec<serde_json::Value>,
    /// Pass as `cursor` for older entries; absent on the last page.
    next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query), ("actor" = Option<String>, Query), ("action" = Option<String>, Query), ("target" = Option<String>, Query)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn audit_log(
    State(app): State<App>,
    who: Principal,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    who.require("audit:read")?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 500"));
    }
    let mut filter = Document::new();
    if let Some(cursor) = &query.cursor {
        let id = ObjectId::parse_str(cursor)
            .map_err(|_| ApiError::field("cursor", "is not a cursor from a previous page"))?;
        filter.insert("_id", doc! { "$lt": id });
    }
    for (key, value) in [
        ("actor", &query.actor),
        ("action", &query.action),
        ("target", &query.target),
    ] {
        if let Some(value) = value {
            filter.insert(key, value);
        }
    }
    let entries = app
        .store()
        .find_sorted(
            AUDIT,
            "reading the audit log",
            filter,
            doc! { "_id": -1 },
            Some(limit),
        )
        .await?;
    let next_cursor = (entries.len() as i64 == limit)
        .then(|| entries.last().and_then(|e| e.get_object_id("_id").ok()))
        .flatten()
        .map(|id| id.to_hex());
    // Where a backup archive is stored is for those who may read backups.
    let backups = who.require("backups:read").is_ok();
    Ok(Json(AuditPage {
        entries: entries
            .into_iter()
            .map(|mut entry| {
                if !backups
                    && entry
                        .get_str("action")
                        .is_ok_and(|a| a.starts_with("backup."))
                {
                    for side in ["before", "after"] {
                        if let Ok(recorded) = entry.get_document_mut(side) {
                            recorded.remove("hash");
                        }
                    }
                }
                crate::json::record(entry)
            })
            .collect(),
        next_cursor,
    }))
}
