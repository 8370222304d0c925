//! The caller: who it is, how it authenticated, what it may do; found again on every request
//! unless this replica resolved the same credential a moment ago ([`super::CallerCache`]), and
//! every few seconds on a long-lived stream.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use prexor_model::access::{API_TOKENS, USERS, UserRecord};

use super::{sessions, tokens};
use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::permissions;

/// How the caller authenticated.
#[derive(Debug, Clone)]
pub enum Credential {
    Session {
        id: String,
        expires_at_secs: u64,
        issued_at_ms: i64,
    },
    Token {
        id: String,
        expires_at_ms: Option<i64>,
    },
}

/// An authenticated caller and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    /// The user's id (its credentials are bound to it, not to the name).
    pub user_id: String,
    pub permissions: Vec<String>,
    pub credential: Credential,
}

impl Principal {
    /// 403 unless the caller holds `needed` (`<resource>:<read|write>`).
    pub fn require(&self, needed: &str) -> ApiResult<()> {
        if permissions::allows(&self.permissions, needed) {
            Ok(())
        } else {
            let via = match &self.credential {
                Credential::Session { .. } => format!("user {:?}", self.user),
                Credential::Token { id, .. } => format!("API token {id} of user {:?}", self.user),
            };
            Err(ApiError::forbidden(format!(
                "{via} lacks the permission {needed:?}"
            )))
        }
    }

    pub fn via(&self) -> String {
        match &self.credential {
            Credential::Session { .. } => "session".to_owned(),
            Credential::Token { id, .. } => format!("token:{id}"),
        }
    }

    /// The caller as it stands now: its credential checked again (logged out, deleted, expired,
    /// disabled, ended by a password or role change) and its permissions read again.
    pub async fn refresh(&self, app: &App) -> ApiResult<Principal> {
        match &self.credential {
            Credential::Session {
                id,
                expires_at_secs,
                issued_at_ms,
            } => {
                if *expires_at_secs <= prexor_domain::now_secs().max(0) as u64 {
                    return Err(ApiError::unauthorized(
                        "the session has expired; sign in again",
                    ));
                }
                sessions::principal(
                    app,
                    &self.user,
                    &self.user_id,
                    id,
                    *issued_at_ms,
                    *expires_at_secs,
                )
                .await
            }
            Credential::Token { id, .. } => {
                let record = app.record(API_TOKENS, id).await?.ok_or_else(|| {
                    ApiError::unauthorized(format!("the API token {id} was deleted"))
                })?;
                tokens::principal(app, &record).await
            }
        }
    }
}

/// How often a long-lived stream checks its caller again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(3);

/// Resolves once `who` no longer holds `permission` (its credential ended or its permissions
/// shrank), with the reason; checked every [`RECHECK_EVERY`]. A store that cannot be asked
/// counts as nothing changed.
pub async fn until_lapsed(app: &App, who: &Principal, permission: &str) -> String {
    loop {
        tokio::time::sleep(RECHECK_EVERY).await;
        match who.refresh(app).await {
            Ok(now) => {
                if let Err(err) = now.require(permission) {
                    return err.to_string();
                }
            }
            Err(err) if err.is_unauthorized() => return err.to_string(),
            Err(_) => {}
        }
    }
}

impl FromRequestParts<App> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "sign in first: send `Authorization: Bearer <token>` with a session token from POST /api/v1/auth/login or an API token",
                )
            })?;
        let bearer = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer <token>`")
            })?
            .trim();
        resolve(app, bearer).await
    }
}

/// The caller behind `bearer` (a session token, or an API token `pxt_…`): from this replica's
/// [`super::CallerCache`] when it resolved the same credential a moment ago. The REST API reads
/// it from the `Authorization` header, the dashboard from its session cookie.
pub async fn resolve(app: &App, bearer: &str) -> ApiResult<Principal> {
    if let Some(who) = app.callers.get(bearer) {
        return Ok(who);
    }
    let generation = app.callers.generation();
    let who = if let Some(token) = bearer.strip_prefix("pxt_") {
        tokens::authenticate(app, token).await?
    } else {
        sessions::authenticate(app, bearer).await?
    };
    app.callers.keep(generation, bearer, &who);
    Ok(who)
}

/// An operator's request: the replica's state and the signed-in caller (401 without one).
pub struct Caller(pub App, pub Principal);

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let who = Principal::from_request_parts(parts, app).await?;
        Ok(Caller(app.clone(), who))
    }
}

/// User `name`, if it still exists and is enabled (401 otherwise).
pub(super) async fn active_user(app: &App, name: &str) -> ApiResult<UserRecord> {
    let user: UserRecord = app
        .record(USERS, name)
        .await?
        .ok_or_else(|| ApiError::unauthorized(format!("user {name:?} no longer exists")))?;
    if user.disabled {
        return Err(ApiError::unauthorized(format!("user {name:?} is disabled")));
    }
    Ok(user)
}

/// The union of the user's roles' permissions (built-in or custom).
pub async fn user_permissions(app: &App, user: &UserRecord) -> ApiResult<Vec<String>> {
    crate::access::roles_permissions(app, &user.roles).await
}
