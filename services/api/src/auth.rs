//! Who is calling: JWT sessions (HS256, signing key shared by every replica through MongoDB,
//! logout revocations in Valkey) and API tokens (`pxt_<id>_<secret>`, stored as a SHA-256 hash,
//! scoped permissions, expiry, last use), both bound to the user's id. Passwords are argon2id
//! hashes; signing in is [`crate::login`].

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mongodb::bson::{Document, doc};
use prexor_domain::{now_ms, sha256_hex};
use prexor_store::Store;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::{ApiError, ApiResult, Body};
use crate::permissions;

pub const USERS: &str = "users";
pub const ROLES: &str = "roles";
pub const API_TOKENS: &str = "api_tokens";

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// API token last-use times are written at most this often.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// The session signing key, the same on every replica.
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SessionKeys {
    /// Reads the cluster's signing key, creating it if this is the first replica ever.
    pub async fn load(store: &Store) -> Result<SessionKeys, prexor_store::StoreError> {
        let key =
            crate::app::cluster_secret(store, "session-hs256", "the session signing key").await?;
        Ok(SessionKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The user's id: a user deleted and created again under the same name is another user.
    #[serde(default)]
    uid: String,
    jti: String,
    iat: u64,
    /// Issue time in milliseconds, compared with `sessionsValidAfterMs`.
    #[serde(rename = "iatMs")]
    iat_ms: i64,
    exp: u64,
}

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
                session_principal(
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
                let record = app.by_id(API_TOKENS, id).await?.ok_or_else(|| {
                    ApiError::unauthorized(format!("the API token {id} was deleted"))
                })?;
                token_principal(app, id, &record).await
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

/// A new session for `user` (its record `record`): the signed token and when it expires (ms).
pub(crate) fn sign_session(app: &App, user: &str, record: &Document) -> ApiResult<(String, i64)> {
    let now = prexor_domain::now_secs().max(0) as u64;
    let claims = Claims {
        sub: user.to_owned(),
        uid: record.get_str("userId").unwrap_or_default().to_owned(),
        jti: uuid::Uuid::new_v4().simple().to_string(),
        iat: now,
        iat_ms: now_ms(),
        exp: now + SESSION_TTL.as_secs(),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &app.sessions.encoding,
    )
    .map_err(|e| ApiError::internal(format!("cannot sign the session: {e}")))?;
    Ok((token, (claims.exp * 1000) as i64))
}

pub(crate) fn revoked_key(session_id: &str) -> String {
    format!("session:revoked:{session_id}")
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
        if let Some(token) = bearer.strip_prefix("pxt_") {
            authenticate_token(app, token).await
        } else {
            authenticate_session(app, bearer).await
        }
    }
}

async fn authenticate_session(app: &App, jwt: &str) -> ApiResult<Principal> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Claims>(jwt, &app.sessions.decoding, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ApiError::unauthorized("the session has expired; sign in again")
            }
            _ => ApiError::unauthorized(
                "the bearer token is neither a valid session of this cluster nor an API token",
            ),
        })?
        .claims;
    session_principal(
        app,
        &claims.sub,
        &claims.uid,
        &claims.jti,
        claims.iat_ms,
        claims.exp,
    )
    .await
}

/// The caller behind a session: not logged out, its user still the one it was issued to (same
/// id), enabled, and not ended by a password or role change since.
async fn session_principal(
    app: &App,
    user: &str,
    user_id: &str,
    session_id: &str,
    issued_at_ms: i64,
    expires_at_secs: u64,
) -> ApiResult<Principal> {
    if app
        .service
        .ephemeral
        .remaining(&revoked_key(session_id))
        .await?
        .is_some()
    {
        return Err(ApiError::unauthorized(
            "the session was logged out; sign in again",
        ));
    }
    let record = active_user(app, user).await?;
    if user_id.is_empty() || record.get_str("userId") != Ok(user_id) {
        return Err(ApiError::unauthorized(format!(
            "the session belongs to an earlier user {user:?}; sign in again"
        )));
    }
    if record.get_i64("sessionsValidAfterMs").unwrap_or(0) > issued_at_ms {
        return Err(ApiError::unauthorized(
            "the session was ended by a password or role change; sign in again",
        ));
    }
    Ok(Principal {
        permissions: user_permissions(app.store(), &record).await?,
        user: user.to_owned(),
        user_id: user_id.to_owned(),
        credential: Credential::Session {
            id: session_id.to_owned(),
            expires_at_secs,
            issued_at_ms,
        },
    })
}

async fn authenticate_token(app: &App, token: &str) -> ApiResult<Principal> {
    let invalid = || ApiError::unauthorized("the API token is not valid (unknown or deleted)");
    let (id, secret) = token.split_once('_').ok_or_else(invalid)?;
    let record = app.by_id(API_TOKENS, id).await?.ok_or_else(invalid)?;
    if record.get_str("hash").ok() != Some(sha256_hex(secret.as_bytes()).as_str()) {
        return Err(invalid());
    }
    token_principal(app, id, &record).await
}

/// The caller behind an API token (its secret checked): not expired, its owner the user it was
/// created for (same id) and enabled; what the token was scoped to, as far as the owner still
/// holds it.
async fn token_principal(app: &App, id: &str, record: &Document) -> ApiResult<Principal> {
    let now = now_ms();
    let expires_at_ms = record.get_i64("expiresAtMs").ok();
    if expires_at_ms.is_some_and(|at| at <= now) {
        return Err(ApiError::unauthorized(format!(
            "the API token {id} has expired; create a new one"
        )));
    }
    let owner = record.get_str("owner").unwrap_or_default().to_owned();
    let user = active_user(app, &owner).await?;
    let user_id = user.get_str("userId").unwrap_or_default().to_owned();
    if user_id.is_empty() || record.get_str("ownerId") != Ok(user_id.as_str()) {
        return Err(ApiError::unauthorized(format!(
            "the API token {id} belongs to an earlier user {owner:?}; it is not valid"
        )));
    }
    let store = app.store();
    let held = user_permissions(store, &user).await?;
    let scoped: Vec<String> = string_list(record, "permissions");
    // A token never exceeds its owner: what it was scoped to, as far as the owner still holds it.
    let permissions = permissions_intersection(&scoped, &held);
    if record.get_i64("lastUsedAtMs").unwrap_or(0) + LAST_USED_RESOLUTION_MS < now {
        let store = store.clone();
        let id = id.to_owned();
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
        user: owner,
        user_id,
        permissions,
        credential: Credential::Token {
            id: id.to_owned(),
            expires_at_ms,
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

pub fn string_list(doc: &Document, key: &str) -> Vec<String> {
    doc.get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn active_user(app: &App, name: &str) -> ApiResult<Document> {
    let store = app.store();
    let user = store
        .bounded(
            "reading a user",
            store.documents(USERS).find_one(doc! { "_id": name }),
        )
        .await?
        .ok_or_else(|| ApiError::unauthorized(format!("user {name:?} no longer exists")))?;
    if user.get_bool("disabled").unwrap_or(false) {
        return Err(ApiError::unauthorized(format!("user {name:?} is disabled")));
    }
    Ok(user)
}

/// The union of the user's roles' permissions (built-in or custom).
pub async fn user_permissions(
    store: &Store,
    user: &Document,
) -> Result<Vec<String>, prexor_store::StoreError> {
    crate::access::roles_permissions(store, &string_list(user, "roles")).await
}

/// An argon2id hash of `password` (PHC string).
pub async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::internal(format!("hashing the password failed: {e}")))?
    .map_err(|e| ApiError::internal(format!("hashing the password failed: {e}")))
}

pub(crate) async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Checks a new password's strength.
pub fn password_problem(password: &str) -> Option<String> {
    if password.chars().count() < 12 {
        return Some("must be at least 12 characters".to_owned());
    }
    if password.len() > 1024 {
        return Some("must be at most 1024 bytes".to_owned());
    }
    None
}

/// A random secret, URL-safe.
pub fn random_secret(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

pub fn routes() -> Router<App> {
    Router::new()
        .route("/auth/me", get(me))
        .route("/auth/password", post(change_password))
        .route("/auth/tokens", get(list_tokens).post(create_token))
        .route("/auth/tokens/{id}", delete(delete_token))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Me {
    user: String,
    via: String,
    permissions: Vec<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "auth",
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn me(principal: Principal) -> Json<Me> {
    Json(Me {
        via: principal.via(),
        user: principal.user,
        permissions: principal.permissions,
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/password",
    tag = "auth",
    request_body = PasswordChange,
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn change_password(
    State(app): State<App>,
    principal: Principal,
    Body(change): Body<PasswordChange>,
) -> ApiResult<StatusCode> {
    if let Some(problem) = password_problem(&change.new_password) {
        return Err(ApiError::field("newPassword", problem));
    }
    let user = active_user(&app, &principal.user).await?;
    let hash = user.get_str("passwordHash").unwrap_or_default().to_owned();
    if !verify_password(change.current_password, hash).await {
        return Err(ApiError::field(
            "currentPassword",
            "is not the current password",
        ));
    }
    let hash = hash_password(change.new_password).await?;
    let store = app.store();
    store
        .bounded(
            "changing a password",
            store.documents(USERS).update_one(
                doc! { "_id": &principal.user },
                doc! { "$set": { "passwordHash": hash, "sessionsValidAfterMs": now_ms() } },
            ),
        )
        .await?;
    app.audit::<(), ()>(&principal, "user.password", &principal.user, None, None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NewToken {
    name: String,
    /// Defaults to everything the creator holds.
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// e.g. "30d", "12h"; none: no expiry.
    #[serde(default)]
    expires_in: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    id: String,
    name: String,
    owner: String,
    permissions: Vec<String>,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
}

impl TokenView {
    fn from_doc(doc: &Document) -> TokenView {
        TokenView {
            id: doc.get_str("_id").unwrap_or_default().to_owned(),
            name: doc.get_str("name").unwrap_or_default().to_owned(),
            owner: doc.get_str("owner").unwrap_or_default().to_owned(),
            permissions: string_list(doc, "permissions"),
            created_at_ms: doc.get_i64("createdAtMs").unwrap_or(0),
            expires_at_ms: doc.get_i64("expiresAtMs").ok(),
            last_used_at_ms: doc.get_i64("lastUsedAtMs").ok(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedToken {
    #[serde(flatten)]
    view: TokenView,
    /// Shown once; only its hash is stored.
    token: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/tokens",
    tag = "auth",
    request_body = NewToken,
    responses((status = 201, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn create_token(
    State(app): State<App>,
    principal: Principal,
    Body(new): Body<NewToken>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
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
    let mut expires_at_ms = match &new.expires_in {
        Some(text) => {
            let ttl = humantime::parse_duration(text).map_err(|e| {
                ApiError::field("expiresIn", format!("{text:?} is not a duration: {e}"))
            })?;
            if ttl.is_zero() {
                return Err(ApiError::field("expiresIn", "must be positive"));
            }
            Some(now_ms().saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64))
        }
        None => None,
    };
    // A token never outlives the token that made it (by default it ends with it).
    if let Credential::Token {
        id,
        expires_at_ms: Some(limit),
    } = &principal.credential
    {
        match expires_at_ms {
            Some(at) if at > *limit => {
                return Err(ApiError::forbidden(format!(
                    "expiresIn: the new token would outlive API token {id}, which created it; ask for at most its remaining lifetime"
                )));
            }
            Some(_) => {}
            None => expires_at_ms = Some(*limit),
        }
    }
    let id = {
        let mut raw = [0u8; 8];
        rand::rng().fill_bytes(&mut raw);
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let secret = random_secret(32);
    let mut record = doc! {
        "_id": &id,
        "name": new.name.trim(),
        "owner": &principal.user,
        "ownerId": &principal.user_id,
        "permissions": &permissions,
        "hash": sha256_hex(secret.as_bytes()),
        "createdAtMs": now_ms(),
    };
    if let Some(at) = expires_at_ms {
        record.insert("expiresAtMs", at);
    }
    let store = app.store();
    store
        .bounded(
            "storing an API token",
            store.documents(API_TOKENS).insert_one(&record),
        )
        .await?;
    let view = TokenView::from_doc(&record);
    app.audit::<(), _>(&principal, "token.create", &id, None, Some(&view))
        .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            view,
            token: format!("pxt_{id}_{secret}"),
        }),
    ))
}

#[derive(Deserialize)]
struct TokenFilter {
    /// `all` (needs users:read) or one user's name; default: the caller's own.
    owner: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/auth/tokens",
    tag = "auth",
    params(("owner" = Option<String>, Query)),
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn list_tokens(
    State(app): State<App>,
    principal: Principal,
    axum::extract::Query(filter): axum::extract::Query<TokenFilter>,
) -> ApiResult<Json<Vec<TokenView>>> {
    principal.require("tokens:read")?;
    let query = match filter.owner.as_deref() {
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
    let tokens = app
        .store()
        .find_sorted(
            API_TOKENS,
            "listing API tokens",
            query,
            doc! { "createdAtMs": 1 },
            None,
        )
        .await?;
    Ok(Json(tokens.iter().map(TokenView::from_doc).collect()))
}

#[utoipa::path(
    delete,
    path = "/api/v1/auth/tokens/{id}",
    tag = "auth",
    params(("id" = String, Path)),
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn delete_token(
    State(app): State<App>,
    principal: Principal,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<StatusCode> {
    principal.require("tokens:write")?;
    let store = app.store();
    let tokens = store.documents(API_TOKENS);
    let record = store
        .bounded("reading an API token", tokens.find_one(doc! { "_id": &id }))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no API token {id}")))?;
    if record.get_str("owner").ok() != Some(principal.user.as_str()) {
        principal.require("users:write")?;
    }
    store
        .bounded(
            "deleting an API token",
            tokens.delete_one(doc! { "_id": &id }),
        )
        .await?;
    app.audit(
        &principal,
        "token.delete",
        &id,
        Some(&TokenView::from_doc(&record)),
        None::<&()>,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates the first admin once per cluster (`prexor-api bootstrap-admin`, `prexorctl setup`):
/// the password is returned to be shown once. A second call is refused, also after a crash
/// between the steps (the marker records how far it got).
pub async fn bootstrap_admin(store: &Store, username: &str) -> anyhow::Result<String> {
    prexor_domain::validate_name(username)
        .map_err(|e| anyhow::anyhow!("user name {username:?}: {e}"))?;
    let cluster = store.documents("cluster");
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
