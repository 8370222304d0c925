//! API tokens: `pxt_<id>_<secret>`, stored as the secret's SHA-256, scoped to some of the
//! owner's permissions, with an optional expiry and the time of last use; bound to the owner's
//! user id. Creating, listing and deleting them: each REST handler calls one `pub(crate)`
//! function that the dashboard's page (`crate::ui`) calls too.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use mongodb::bson::doc;
use prexor_domain::{now_ms, sha256_hex};
use prexor_model::access::{API_TOKENS, ApiTokenRecord};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::passwords::random_secret;
use super::principal::{Caller, Credential, Principal, active_user, user_permissions};
use crate::app::App;
use crate::error::{ApiError, ApiResult, Json};
use crate::paging::{Page, PageRequest};
use crate::permissions;

/// API token last-use times are written at most this often.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The caller behind `<id>_<secret>` (what follows `pxt_`).
pub(super) async fn authenticate(app: &App, token: &str) -> ApiResult<Principal> {
    let invalid = || ApiError::unauthorized("the API token is not valid (unknown or deleted)");
    let (id, secret) = token.split_once('_').ok_or_else(invalid)?;
    let record: ApiTokenRecord = app.record(API_TOKENS, id).await?.ok_or_else(invalid)?;
    if record.hash != sha256_hex(secret.as_bytes()) {
        return Err(invalid());
    }
    principal(app, &record).await
}

/// The caller behind an API token (its secret checked): not expired, its owner the user it was
/// created for (same id) and enabled; what the token was scoped to, as far as the owner still
/// holds it.
pub(super) async fn principal(app: &App, record: &ApiTokenRecord) -> ApiResult<Principal> {
    let id = &record.id;
    let now = now_ms();
    if record.expires_at_ms.is_some_and(|at| at <= now) {
        return Err(ApiError::unauthorized(format!(
            "the API token {id} has expired; create a new one"
        )));
    }
    let owner = &record.owner;
    let user = active_user(app, owner).await?;
    if user.id().is_empty() || record.owner_id.as_deref() != Some(user.id()) {
        return Err(ApiError::unauthorized(format!(
            "the API token {id} belongs to an earlier user {owner:?}; it is not valid"
        )));
    }
    let store = app.store();
    let held = user_permissions(app, &user).await?;
    // A token never exceeds its owner: what it was scoped to, as far as the owner still holds it.
    let permissions = permissions_intersection(&record.permissions, &held);
    if record.last_used_at_ms.unwrap_or(0) + LAST_USED_RESOLUTION_MS < now {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let _ = store
                .bounded(
                    "recording an API token's use",
                    store.documents(API_TOKENS).update_one(
                        doc! { "_id": &id },
                        doc! { "$set": { "lastUsedAtMs": now } },
                    ),
                )
                .await;
        });
    }
    Ok(Principal {
        user: owner.clone(),
        user_id: user.id().to_owned(),
        permissions,
        credential: Credential::Token {
            id: id.clone(),
            expires_at_ms: record.expires_at_ms,
        },
    })
}

/// `scoped` narrowed to what `held` allows (concrete permissions).
fn permissions_intersection(scoped: &[String], held: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for resource in permissions::RESOURCES {
        for action in ["read", "write"] {
            let p = format!("{resource}:{action}");
            if permissions::allows(scoped, &p) && permissions::allows(held, &p) {
                out.push(p);
            }
        }
    }
    out
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct NewToken {
    pub(crate) name: String,
    /// Defaults to everything the creator holds.
    #[serde(default)]
    pub(crate) permissions: Option<Vec<String>>,
    /// e.g. "30d", "12h"; none: no expiry.
    #[serde(default)]
    pub(crate) expires_in: Option<String>,
}

/// An API token as shown (never its secret or hash).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    pub(crate) id: String,
    pub(crate) name: String,
    /// The owner's user name.
    pub(crate) owner: String,
    pub(crate) permissions: Vec<String>,
    pub(crate) created_at_ms: i64,
    pub(crate) expires_at_ms: Option<i64>,
    pub(crate) last_used_at_ms: Option<i64>,
}

impl From<&ApiTokenRecord> for TokenView {
    fn from(record: &ApiTokenRecord) -> TokenView {
        TokenView {
            id: record.id.clone(),
            name: record.name.clone(),
            owner: record.owner.clone(),
            permissions: record.permissions.clone(),
            created_at_ms: record.created_at_ms,
            expires_at_ms: record.expires_at_ms,
            last_used_at_ms: record.last_used_at_ms,
        }
    }
}

/// A token just made, with its secret.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatedToken {
    #[serde(flatten)]
    pub(crate) view: TokenView,
    /// Shown once; only its hash is stored.
    pub(crate) token: String,
}

#[utoipa::path(
    post, path = "/api/v1/auth/tokens", tag = "auth",
    responses((status = 201, body = CreatedToken))
)]
pub(super) async fn create_token(
    Caller(app, principal): Caller,
    Json(new): Json<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let created = new_token(&app, &principal, new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Makes an API token for `principal` (`tokens:write`), scoped within what it holds: the token
/// with its secret, shown this once.
pub(crate) async fn new_token(
    app: &App,
    principal: &Principal,
    new: NewToken,
) -> ApiResult<CreatedToken> {
    principal.require("tokens:write")?;
    if new.name.trim().is_empty() || new.name.len() > 100 {
        return Err(ApiError::field("name", "must be 1 to 100 characters"));
    }
    let permissions = match new.permissions {
        Some(list) => {
            for p in &list {
                permissions::validate(p).map_err(|m| ApiError::field("permissions", m))?;
            }
            permissions::within(&list, &principal.permissions)
                .map_err(|m| ApiError::forbidden(format!("permissions: {m}")))?;
            list
        }
        None => principal.permissions.clone(),
    };
    let expires_at_ms = expiry(principal, new.expires_in.as_deref())?;
    let id = {
        let mut raw = [0u8; 8];
        rand::rng().fill_bytes(&mut raw);
        prexor_domain::hex(&raw)
    };
    let secret = random_secret(32);
    let record = ApiTokenRecord {
        id: id.clone(),
        name: new.name.trim().to_owned(),
        owner: principal.user.clone(),
        owner_id: Some(principal.user_id.clone()),
        permissions,
        hash: sha256_hex(secret.as_bytes()),
        created_at_ms: now_ms(),
        expires_at_ms,
        last_used_at_ms: None,
    };
    app.insert(API_TOKENS, "storing an API token", &record)
        .await?;
    let view = TokenView::from(&record);
    app.audit::<(), _>(principal, "token.create", &id, None, Some(&view))
        .await;
    Ok(CreatedToken {
        view,
        token: format!("pxt_{id}_{secret}"),
    })
}

/// When a new token expires: `expires_in` from now, and never after the API token that makes
/// it (by default it ends with it).
fn expiry(principal: &Principal, expires_in: Option<&str>) -> ApiResult<Option<i64>> {
    let asked = match expires_in {
        Some(text) => {
            let ttl = crate::error::duration("expiresIn", text)?;
            if ttl.is_zero() {
                return Err(ApiError::field("expiresIn", "must be positive"));
            }
            Some(now_ms().saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64))
        }
        None => None,
    };
    let Credential::Token {
        id,
        expires_at_ms: Some(limit),
    } = &principal.credential
    else {
        return Ok(asked);
    };
    match asked {
        Some(at) if at > *limit => Err(ApiError::forbidden(format!(
            "expiresIn: the new token would outlive API token {id}, which created it; ask for at most its remaining lifetime"
        ))),
        Some(at) => Ok(Some(at)),
        None => Ok(Some(*limit)),
    }
}

#[derive(Deserialize)]
pub(super) struct TokenFilter {
    /// `all` (needs users:read) or one user's name; default: the caller's own.
    owner: Option<String>,
}

/// Oldest first.
#[utoipa::path(
    get, path = "/api/v1/auth/tokens", tag = "auth",
    params(("owner" = Option<String>, Query), PageRequest),
    responses((status = 200, body = Page<TokenView>))
)]
pub(super) async fn list_tokens(
    Caller(app, principal): Caller,
    Query(filter): Query<TokenFilter>,
    page: PageRequest,
) -> ApiResult<Json<Page<TokenView>>> {
    let tokens = tokens_page(&app, &principal, filter.owner.as_deref(), &page).await?;
    Ok(Json(tokens))
}

/// A page of API tokens, oldest first, for `principal` (`tokens:read`): its own (`owner` none or
/// itself), or (with `users:read`) another user's or `all`.
pub(crate) async fn tokens_page(
    app: &App,
    principal: &Principal,
    owner: Option<&str>,
    page: &PageRequest,
) -> ApiResult<Page<TokenView>> {
    principal.require("tokens:read")?;
    let query = match owner {
        None => doc! { "owner": &principal.user },
        Some(owner) if owner == principal.user => doc! { "owner": owner },
        Some(owner) => {
            principal.require("users:read")?;
            if owner == "all" {
                doc! {}
            } else {
                doc! { "owner": owner }
            }
        }
    };
    let tokens: Page<ApiTokenRecord> = app.page("listing API tokens", query, page).await?;
    Ok(tokens.map(|token| TokenView::from(&token)))
}

#[utoipa::path(
    delete, path = "/api/v1/auth/tokens/{id}", tag = "auth",
    responses((status = 204))
)]
pub(super) async fn delete_token(
    Caller(app, principal): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    revoke_token(&app, &principal, &id).await
}

/// Deletes API token `id` for `principal` (`tokens:write`; another user's: `users:write` too).
pub(crate) async fn revoke_token(
    app: &App,
    principal: &Principal,
    id: &str,
) -> ApiResult<StatusCode> {
    principal.require("tokens:write")?;
    let record: ApiTokenRecord = app.find(id).await?;
    if record.owner != principal.user {
        principal.require("users:write")?;
    }
    let before = TokenView::from(&record);
    let doing = "deleting an API token";
    let deleted = app
        .delete_audited(principal, API_TOKENS, doing, "token.delete", id, &before)
        .await;
    app.access_changed(id).await;
    deleted
}
