//! Who is calling: JWT sessions (HS256, signing key shared by every replica through MongoDB,
//! logout revocations in Valkey) and API tokens (`pxt_<id>_<secret>`, stored as a SHA-256 hash,
//! scoped permissions, expiry, last use). Passwords are argon2id hashes. Login is rate limited
//! per user name and per client address, and repeated failures lock the account for a while;
//! both counters live in Valkey, so they hold across replicas.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts, State};
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
const SECRETS: &str = "cluster_secrets";

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Consecutive failed logins of one user that lock the account, and for how long.
pub const LOCKOUT_AFTER: i64 = 5;
pub const LOCKOUT_FOR: Duration = Duration::from_secs(15 * 60);
/// Login attempts allowed per user name and per client address in one window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
pub const LOGINS_PER_USER: i64 = 10;
pub const LOGINS_PER_ADDRESS: i64 = 30;
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
        let secrets = store.documents(SECRETS);
        let mut fresh = [0u8; 64];
        rand::rng().fill_bytes(&mut fresh);
        let inserted = store
            .bounded(
                "creating the session signing key",
                secrets.update_one(
                    doc! { "_id": "session-hs256" },
                    doc! { "$setOnInsert": { "key": URL_SAFE_NO_PAD.encode(fresh), "createdAtMs": now_ms() } },
                ).upsert(true),
            )
            .await;
        if let Err(err) = inserted
            && !err.is_duplicate_key()
        {
            return Err(err);
        }
        let record = store
            .bounded(
                "reading the session signing key",
                secrets.find_one(doc! { "_id": "session-hs256" }),
            )
            .await?
            .unwrap_or_default();
        let key = record
            .get_str("key")
            .ok()
            .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
            .filter(|k| k.len() >= 32)
            .unwrap_or_else(|| fresh.to_vec());
        Ok(SessionKeys {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
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
    Session { id: String, expires_at_secs: u64 },
    Token { id: String },
}

/// An authenticated caller and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
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
                Credential::Token { id } => format!("API token {id} of user {:?}", self.user),
            };
            Err(ApiError::forbidden(format!(
                "{via} lacks the permission {needed:?}"
            )))
        }
    }

    pub fn via(&self) -> String {
        match &self.credential {
            Credential::Session { .. } => "session".to_owned(),
            Credential::Token { id } => format!("token:{id}"),
        }
    }
}

fn revoked_key(session_id: &str) -> String {
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
    if app
        .service
        .ephemeral
        .remaining(&revoked_key(&claims.jti))
        .await?
        .is_some()
    {
        return Err(ApiError::unauthorized(
            "the session was logged out; sign in again",
        ));
    }
    let user = active_user(app, &claims.sub).await?;
    if user.get_i64("sessionsValidAfterMs").unwrap_or(0) > claims.iat_ms {
        return Err(ApiError::unauthorized(
            "the session was ended by a password or role change; sign in again",
        ));
    }
    Ok(Principal {
        permissions: user_permissions(app.store(), &user).await?,
        user: claims.sub,
        credential: Credential::Session {
            id: claims.jti,
            expires_at_secs: claims.exp,
        },
    })
}

async fn authenticate_token(app: &App, token: &str) -> ApiResult<Principal> {
    let invalid = || ApiError::unauthorized("the API token is not valid (unknown or deleted)");
    let (id, secret) = token.split_once('_').ok_or_else(invalid)?;
    let store = app.store();
    let record = store
        .bounded(
            "reading an API token",
            store.documents(API_TOKENS).find_one(doc! { "_id": id }),
        )
        .await?
        .ok_or_else(invalid)?;
    if record.get_str("hash").ok() != Some(sha256_hex(secret.as_bytes()).as_str()) {
        return Err(invalid());
    }
    let now = now_ms();
    if let Ok(expires) = record.get_i64("expiresAtMs")
        && expires <= now
    {
        return Err(ApiError::unauthorized(format!(
            "the API token {id} has expired; create a new one"
        )));
    }
    let owner = record.get_str("owner").unwrap_or_default().to_owned();
    let user = active_user(app, &owner).await?;
    let held = user_permissions(store, &user).await?;
    let scoped: Vec<String> = string_list(&record, "permissions");
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
        permissions,
        credential: Credential::Token { id: id.to_owned() },
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
    let roles = string_list(user, "roles");
    let mut granted = Vec::new();
    let mut custom = Vec::new();
    for role in &roles {
        match permissions::builtin(role) {
            Some(list) => granted.extend(list),
            None => custom.push(role.clone()),
        }
    }
    if !custom.is_empty() {
        for role in store
            .find_all(ROLES, "reading roles", doc! { "_id": { "$in": custom } })
            .await?
        {
            granted.extend(string_list(&role, "permissions"));
        }
    }
    granted.sort();
    granted.dedup();
    Ok(granted)
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

async fn verify_password(password: String, hash: String) -> bool {
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
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/auth/password", post(change_password))
        .route("/auth/tokens", get(list_tokens).post(create_token))
        .route("/auth/tokens/{id}", delete(delete_token))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    token: String,
    expires_at_ms: i64,
    user: String,
    permissions: Vec<String>,
}

/// The client's address (the peer of the TCP connection).
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = Login,
    responses((status = 200, description = "done", body = serde_json::Value), (status = "default", description = "an error", body = crate::error::ErrorBody))
)]
async fn login(
    State(app): State<App>,
    ClientAddr(addr): ClientAddr,
    Body(login): Body<Login>,
) -> ApiResult<Json<Session>> {
    let ephemeral = &app.service.ephemeral;
    let user_key = URL_SAFE_NO_PAD.encode(login.username.as_bytes());
    if let Some(addr) = addr {
        let attempts = ephemeral
            .incr_window(&format!("login:addr:{addr}"), LOGIN_WINDOW)
            .await?;
        if attempts > LOGINS_PER_ADDRESS {
            return Err(ApiError::too_many(
                "RATE_LIMITED",
                format!("too many login attempts from {addr}; wait a minute"),
                LOGIN_WINDOW.as_secs(),
            ));
        }
    }
    if let Some(left) = ephemeral
        .remaining(&format!("login:locked:{user_key}"))
        .await?
    {
        return Err(ApiError::too_many(
            "LOCKED_OUT",
            format!(
                "user {:?} is locked for {} s after {LOCKOUT_AFTER} failed logins",
                login.username,
                left.as_secs().max(1)
            ),
            left.as_secs(),
        ));
    }
    let attempts = ephemeral
        .incr_window(&format!("login:user:{user_key}"), LOGIN_WINDOW)
        .await?;
    if attempts > LOGINS_PER_USER {
        return Err(ApiError::too_many(
            "RATE_LIMITED",
            format!(
                "too many login attempts for user {:?}; wait a minute",
                login.username
            ),
            LOGIN_WINDOW.as_secs(),
        ));
    }
    let store = app.store();
    let user = store
        .bounded(
            "reading a user",
            store
                .documents(USERS)
                .find_one(doc! { "_id": &login.username }),
        )
        .await?;
    // Unknown users cost a hash verification too, so timing does not tell which names exist.
    let hash = user
        .as_ref()
        .and_then(|u| u.get_str("passwordHash").ok())
        .unwrap_or("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE")
        .to_owned();
    let valid = verify_password(login.password, hash).await && user.is_some();
    let user = match user {
        Some(user) if valid => user,
        _ => {
            let failures = ephemeral
                .incr_window(&format!("login:failed:{user_key}"), LOCKOUT_FOR)
                .await?;
            if failures >= LOCKOUT_AFTER {
                ephemeral
                    .set_for(&format!("login:locked:{user_key}"), LOCKOUT_FOR)
                    .await?;
                ephemeral
                    .delete(&format!("login:failed:{user_key}"))
                    .await?;
                tracing::warn!(user = %login.username, "account locked after repeated failed logins");
            }
            return Err(ApiError::unauthorized("invalid user name or password"));
        }
    };
    if user.get_bool("disabled").unwrap_or(false) {
        return Err(ApiError::unauthorized(format!(
            "user {:?} is disabled",
            login.username
        )));
    }
    ephemeral
        .delete(&format!("login:failed:{user_key}"))
        .await?;
    let now = prexor_domain::now_secs().max(0) as u64;
    let claims = Claims {
        sub: login.username.clone(),
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
    let _ = store
        .bounded(
            "recording the login",
            store.documents(USERS).update_one(
                doc! { "_id": &login.username },
                doc! { "$set": { "lastLoginAtMs": now_ms() } },
            ),
        )
        .await;
    Ok(Json(Session {
        token,
        expires_at_ms: (claims.exp * 1000) as i64,
        permissions: user_permissions(store, &user).await?,
        user: login.username,
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses((status = 204, description = "done"), (status = "default", description = "an error", body = crate::error::ErrorBody)),
    security(("bearer" = []))
)]
async fn logout(State(app): State<App>, principal: Principal) -> ApiResult<StatusCode> {
    let Credential::Session {
        id,
        expires_at_secs,
    } = &principal.credential
    else {
        return Err(ApiError::bad_request(
            "an API token cannot log out; delete it with DELETE /api/v1/auth/tokens/{id}",
        ));
    };
    let left = expires_at_secs.saturating_sub(prexor_domain::now_secs().max(0) as u64) + 10;
    app.service
        .ephemeral
        .set_for(&revoked_key(id), Duration::from_secs(left))
        .await?;
    Ok(StatusCode::NO_CONTENT)
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
    let expires_at_ms = match &new.expires_in {
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
                    doc! { "$set": {
                        "passwordHash": hash,
                        "roles": ["admin"],
                        "disabled": false,
                        "createdAtMs": now_ms(),
                    } },
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
