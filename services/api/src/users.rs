//! Users and roles. Each REST handler calls one `pub(crate)` function that the dashboard's pages
//! (`crate::ui`) call too, with the same permission checks.

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use mongodb::bson::{Document, doc};
use prexor_domain::now_ms;
use prexor_model::access::{ROLES, RoleRecord, USERS, UserRecord};
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
}

/// A user as shown (never its password hash).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UserView {
    pub(crate) username: String,
    pub(crate) roles: Vec<String>,
    pub(crate) disabled: bool,
    pub(crate) created_at_ms: i64,
    pub(crate) last_login_at_ms: Option<i64>,
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

#[utoipa::path(
    get, path = "/api/v1/users", tag = "users", params(PageRequest),
    responses((status = 200, body = Page<UserView>))
)]
async fn list_users(
    Caller(app, who): Caller,
    page: PageRequest,
) -> ApiResult<Json<Page<UserView>>> {
    Ok(Json(users_page(&app, &who, &page).await?))
}

/// A page of the users, by name, for `who` (`users:read`).
pub(crate) async fn users_page(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<UserView>> {
    who.require("users:read")?;
    let users: Page<UserRecord> = app.page("listing users", doc! {}, page).await?;
    Ok(users.map(|user| UserView::from(&user)))
}

#[utoipa::path(
    get, path = "/api/v1/users/{name}", tag = "users",
    responses((status = 200, body = UserView))
)]
async fn get_user(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<UserView>> {
    Ok(Json(show_user(&app, &who, &name).await?))
}

/// User `name`, for `who` (itself, or `users:read`).
pub(crate) async fn show_user(app: &App, who: &Principal, name: &str) -> ApiResult<UserView> {
    if name != who.user {
        who.require("users:read")?;
    }
    Ok(UserView::from(&app.find(name).await?))
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
pub(crate) struct NewUser {
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) roles: Vec<String>,
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    responses((status = 201, body = UserView))
)]
async fn create_user(
    Caller(app, who): Caller,
    Json(new): Json<NewUser>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    Ok((StatusCode::CREATED, Json(add_user(&app, &who, new).await?)))
}

/// Creates user `new` for `who` (`users:write`, granting only roles within what it holds).
pub(crate) async fn add_user(app: &App, who: &Principal, new: NewUser) -> ApiResult<UserView> {
    who.require("users:write")?;
    crate::error::check_name("username", &new.username)?;
    if let Some(problem) = password_problem(&new.password) {
        return Err(ApiError::field("password", problem));
    }
    check_roles(app, &new.roles).await?;
    let granted = access::roles_permissions(app, &new.roles).await?;
    access::require_within(who, &granted, "roles")?;
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
    app.audit::<(), _>(who, "user.create", &new.username, None, Some(&view))
        .await;
    Ok(view)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserChange {
    pub(crate) password: Option<String>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) disabled: Option<bool>,
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
    Ok(Json(change_user(&app, &who, &name, change).await?))
}

/// Changes user `name`'s password, roles or disabled flag for `who` (`users:write`, holding
/// everything the user holds; another's password: `users:*`). The user's sessions end.
pub(crate) async fn change_user(
    app: &App,
    who: &Principal,
    name: &str,
    change: UserChange,
) -> ApiResult<UserView> {
    who.require("users:write")?;
    let before = app.find(name).await?;
    require_holds_user(app, who, name, &before).await?;
    let mut set = Document::new();
    if let Some(password) = change.password {
        if name == who.user {
            return Err(ApiError::field(
                "password",
                "change your own password with POST /api/v1/auth/password (it asks for the current one)",
            ));
        }
        access::require_all_of(who, "users", "resetting another user's password")?;
        if let Some(problem) = password_problem(&password) {
            return Err(ApiError::field("password", problem));
        }
        set.insert("passwordHash", hash_password(password).await?);
    }
    if let Some(roles) = &change.roles {
        check_roles(app, roles).await?;
        let granted = access::roles_permissions(app, roles).await?;
        access::require_within(who, &granted, "roles")?;
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
    access::write_user(app, name, before.id(), UserWrite::Set(set)).await?;
    if reset {
        app.audit::<(), ()>(who, "user.password-reset", name, None, None)
            .await;
    }
    let after = app.find(name).await?;
    let (before, after) = (UserView::from(&before), UserView::from(&after));
    app.audit(who, "user.update", name, Some(&before), Some(&after))
        .await;
    Ok(after)
}

#[utoipa::path(
    delete, path = "/api/v1/users/{name}", tag = "users",
    responses((status = 204))
)]
async fn delete_user(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    remove_user(&app, &who, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes user `name` and its API tokens for `who` (`users:write`, holding everything the user
/// holds); never the last enabled admin.
pub(crate) async fn remove_user(app: &App, who: &Principal, name: &str) -> ApiResult<()> {
    who.require("users:write")?;
    let before = app.find(name).await?;
    require_holds_user(app, who, name, &before).await?;
    access::write_user(app, name, before.id(), UserWrite::Delete).await?;
    app.audit(
        who,
        "user.delete",
        name,
        Some(&UserView::from(&before)),
        None::<&()>,
    )
    .await;
    Ok(())
}

/// A role: built in (`admin`, `operator`, `viewer`) or custom.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoleView {
    pub(crate) name: String,
    pub(crate) builtin: bool,
    pub(crate) permissions: Vec<String>,
    pub(crate) description: String,
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
    Ok(Json(roles_page(&app, &who, &page).await?))
}

/// A page of the roles, built-in and custom together by name, for `who` (`roles:read`).
pub(crate) async fn roles_page(
    app: &App,
    who: &Principal,
    page: &PageRequest,
) -> ApiResult<Page<RoleView>> {
    who.require("roles:read")?;
    let custom: Vec<RoleRecord> = app.page_read("listing roles", doc! {}, page).await?;
    let after = page.after.as_deref().unwrap_or_default();
    let mut roles: Vec<RoleView> = permissions::BUILTIN_ROLES
        .iter()
        .filter(|name| **name > after)
        .filter_map(|name| RoleView::builtin(name))
        .chain(custom.iter().map(RoleView::from))
        .collect();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(cut(roles, page.limit, |role| role.name.clone()))
}

#[utoipa::path(
    get, path = "/api/v1/roles/{name}", tag = "roles",
    responses((status = 200, body = RoleView))
)]
async fn get_role(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<Json<RoleView>> {
    Ok(Json(show_role(&app, &who, &name).await?))
}

/// Role `name` (built-in or custom), for `who` (`roles:read`).
pub(crate) async fn show_role(app: &App, who: &Principal, name: &str) -> ApiResult<RoleView> {
    who.require("roles:read")?;
    if let Some(role) = RoleView::builtin(name) {
        return Ok(role);
    }
    Ok(RoleView::from(&app.find(name).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoleBody {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) permissions: Vec<String>,
    #[serde(default)]
    pub(crate) description: String,
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
    Ok((StatusCode::CREATED, Json(add_role(&app, &who, body).await?)))
}

/// Creates custom role `body` for `who` (`roles:write`, granting only what it holds).
pub(crate) async fn add_role(app: &App, who: &Principal, body: RoleBody) -> ApiResult<RoleView> {
    who.require("roles:write")?;
    let name = body
        .name
        .ok_or_else(|| ApiError::field("name", "is required"))?;
    crate::error::check_name("name", &name)?;
    if permissions::builtin(&name).is_some() {
        return Err(ApiError::conflict(format!("{name:?} is a built-in role")));
    }
    check_permissions(who, &body.permissions)?;
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
    app.audit::<(), _>(who, "role.create", &name, None, Some(&view))
        .await;
    Ok(view)
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
    Ok(Json(change_role(&app, &who, &name, body).await?))
}

/// Replaces custom role `name`'s permissions and description for `who` (`roles:write`,
/// granting only what it holds); built-in roles do not change.
pub(crate) async fn change_role(
    app: &App,
    who: &Principal,
    name: &str,
    body: RoleBody,
) -> ApiResult<RoleView> {
    who.require("roles:write")?;
    if permissions::builtin(name).is_some() {
        return Err(ApiError::conflict(format!(
            "{name:?} is a built-in role and cannot be changed"
        )));
    }
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::field("name", "cannot be changed"));
    }
    check_permissions(who, &body.permissions)?;
    let before = app.find(name).await?;
    app.update_by_id(
        ROLES,
        "updating a role",
        name,
        doc! { "$set": { "permissions": &body.permissions, "description": &body.description } },
    )
    .await?;
    app.access_changed(name).await;
    let after = RoleView::from(&app.find(name).await?);
    app.audit(
        who,
        "role.update",
        name,
        Some(&RoleView::from(&before)),
        Some(&after),
    )
    .await;
    Ok(after)
}

#[utoipa::path(
    delete, path = "/api/v1/roles/{name}", tag = "roles",
    responses((status = 204))
)]
async fn delete_role(Caller(app, who): Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    remove_role(&app, &who, &name).await
}

/// Deletes custom role `name` for `who` (`roles:write`); refused while any user holds it.
pub(crate) async fn remove_role(app: &App, who: &Principal, name: &str) -> ApiResult<StatusCode> {
    who.require("roles:write")?;
    if permissions::builtin(name).is_some() {
        return Err(ApiError::conflict(format!(
            "{name:?} is a built-in role and cannot be deleted"
        )));
    }
    let before = app.find(name).await?;
    let holders: Vec<UserRecord> = app
        .records(
            USERS,
            "finding the role's users",
            doc! { "roles": name },
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
        .delete_audited(who, ROLES, "deleting a role", "role.delete", name, &before)
        .await;
    app.access_changed(name).await;
    deleted
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{self, doc};

    use super::*;

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
