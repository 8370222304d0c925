//! Signing in and out (docs/security.md, "Sign-in"). Login is rate limited per user name and per
//! client address (an IPv6 client by its /64; behind a trusted proxy, the address it forwards);
//! a failure is counted *before* the password is verified, so parallel guesses cannot get past
//! the lockout; passwords are verified a few at a time per replica (argon2 costs ~19 MiB each),
//! the rest answered 503 quickly; every login, failure, lockout and logout is audited.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mongodb::bson::doc;
use prexor_domain::now_ms;
use prexor_model::access::{USERS, UserRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::app::App;
use crate::auth::{Caller, Credential, Principal, revoked_key, user_permissions, verify_password};
use crate::error::{ApiError, ApiResult, ErrorCode, Json};

/// Consecutive failed logins of one user that lock the account, and for how long.
pub const LOCKOUT_AFTER: i64 = 5;
pub const LOCKOUT_FOR: Duration = Duration::from_secs(15 * 60);
/// Login attempts allowed per user name and per client address in one window.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
pub const LOGINS_PER_USER: i64 = 10;
pub const LOGINS_PER_ADDRESS: i64 = 30;
/// Password verifications running at once on one replica, and how long a login waits for one.
const VERIFYING_AT_ONCE: usize = 2;
const VERIFY_WAIT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<App> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
}

/// The replica's share of password verifications.
pub struct Verifications(Semaphore);

impl Default for Verifications {
    fn default() -> Self {
        Verifications(Semaphore::new(VERIFYING_AT_ONCE))
    }
}

/// Networks whose connections are proxies forwarding clients (`api.trustedProxies`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// From `address` or `address/prefix` entries, each checked by the configuration reader.
    pub fn new(networks: &[prexor_config::IpNetwork]) -> TrustedProxies {
        TrustedProxies(networks.iter().map(|n| (n.address, n.prefix)).collect())
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.0
            .iter()
            .any(|(net, prefix)| in_network(ip, *net, *prefix))
    }
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// The client's address: the TCP peer, or — when the peer is a trusted proxy — the nearest
/// address in `X-Forwarded-For` that is not a trusted proxy itself.
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<App> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let Some(peer) = peer.filter(|p| app.trusted_proxies.contains(*p)) else {
            return Ok(ClientAddr(peer));
        };
        let forwarded: Vec<IpAddr> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        let client = forwarded
            .into_iter()
            .rev()
            .find(|a| !app.trusted_proxies.contains(*a))
            .unwrap_or(peer);
        Ok(ClientAddr(Some(client)))
    }
}

/// The rate-limit bucket of an address: an IPv4 address, or an IPv6 client's /64 (one
/// subscriber usually holds a whole /64).
fn address_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A sign-in: a user name and its password.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    pub username: String,
    pub password: String,
}

/// A new session.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    /// The bearer token of every later request.
    pub token: String,
    pub expires_at_ms: i64,
    pub user: String,
    pub permissions: Vec<String>,
}

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth",
    responses(
        (status = 200, body = Session),
        (status = 429, description = "rate limited or locked out", body = crate::error::ErrorBody),
        (status = 503, description = "too many sign-ins being checked at once; retry", body = crate::error::ErrorBody),
    )
)]
async fn login(
    State(app): State<App>,
    ClientAddr(addr): ClientAddr,
    Json(login): Json<Login>,
) -> ApiResult<Json<Session>> {
    sign_in(&app, addr, login).await.map(Json)
}

/// Signs `login` in from the client address `addr`: rate limits, lockout, password check and
/// audit, the same for the REST login and the dashboard's sign-in form.
pub(crate) async fn sign_in(app: &App, addr: Option<IpAddr>, login: Login) -> ApiResult<Session> {
    let ephemeral = &app.service.ephemeral;
    let user_key = URL_SAFE_NO_PAD.encode(login.username.as_bytes());
    if let Some(addr) = addr {
        let bucket = address_bucket(addr);
        count_attempt(
            app,
            &format!("login:addr:{bucket}"),
            LOGINS_PER_ADDRESS,
            || format!("too many login attempts from {bucket}; wait a minute"),
        )
        .await?;
    }
    let locked = |left: Duration| {
        ApiError::too_many(
            ErrorCode::LockedOut,
            format!(
                "user {:?} is locked for {} s after {LOCKOUT_AFTER} failed logins",
                login.username,
                left.as_secs().max(1)
            ),
            left.as_secs(),
        )
    };
    if let Some(left) = ephemeral
        .remaining(&format!("login:locked:{user_key}"))
        .await?
    {
        return Err(locked(left));
    }
    count_attempt(
        app,
        &format!("login:user:{user_key}"),
        LOGINS_PER_USER,
        || {
            format!(
                "too many login attempts for user {:?}; wait a minute",
                login.username
            )
        },
    )
    .await?;
    let _permit = tokio::time::timeout(VERIFY_WAIT, app.verifications.0.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::unavailable(
                "too many sign-ins are being checked on this replica; retry in a second",
            )
            .retry_after(1)
        })?;
    // Counted as a failure until the password proves otherwise: however many guesses run in
    // parallel, at most LOCKOUT_AFTER of them are ever checked.
    let failures = ephemeral
        .incr_window(&format!("login:failed:{user_key}"), LOCKOUT_FOR)
        .await?;
    if failures > LOCKOUT_AFTER {
        lock(app, &login.username, &user_key).await?;
        return Err(locked(LOCKOUT_FOR));
    }
    let user: Option<UserRecord> = app.record(USERS, &login.username).await?;
    // Unknown users cost a hash verification too, so timing does not tell which names exist.
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.as_str())
        .filter(|h| !h.is_empty())
        .unwrap_or("$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE")
        .to_owned();
    let valid = verify_password(login.password, hash).await && user.is_some();
    let user = match user {
        Some(user) if valid => user,
        _ => {
            if failures >= LOCKOUT_AFTER {
                lock(app, &login.username, &user_key).await?;
            }
            app.audit_as(
                &login.username,
                "login",
                "auth.login-failed",
                &login.username,
            )
            .await;
            return Err(ApiError::unauthorized("invalid user name or password"));
        }
    };
    ephemeral
        .delete(&format!("login:failed:{user_key}"))
        .await?;
    if user.disabled {
        return Err(ApiError::unauthorized(format!(
            "user {:?} is disabled",
            login.username
        )));
    }
    let (token, expires_at_ms) = crate::auth::sign_session(app, &user)?;
    let last_login = doc! { "$set": { "lastLoginAtMs": now_ms() } };
    let _ = app
        .update_by_id(USERS, "recording the login", &login.username, last_login)
        .await;
    app.audit_as(&login.username, "login", "auth.login", &login.username)
        .await;
    Ok(Session {
        token,
        expires_at_ms,
        permissions: user_permissions(app, &user).await?,
        user: login.username,
    })
}

/// Counts a login attempt under `key` in the current [`LOGIN_WINDOW`]: 429 `too_many()` past
/// `limit`.
async fn count_attempt(
    app: &App,
    key: &str,
    limit: i64,
    too_many: impl FnOnce() -> String,
) -> ApiResult<()> {
    let attempts = app.service.ephemeral.incr_window(key, LOGIN_WINDOW).await?;
    if attempts > limit {
        return Err(ApiError::too_many(
            ErrorCode::RateLimited,
            too_many(),
            LOGIN_WINDOW.as_secs(),
        ));
    }
    Ok(())
}

/// Locks the account for [`LOCKOUT_FOR`] (and starts its failure count over).
async fn lock(app: &App, user: &str, user_key: &str) -> ApiResult<()> {
    let ephemeral = &app.service.ephemeral;
    ephemeral
        .set_for(&format!("login:locked:{user_key}"), LOCKOUT_FOR)
        .await?;
    ephemeral
        .delete(&format!("login:failed:{user_key}"))
        .await?;
    tracing::warn!(user, "account locked after repeated failed logins");
    app.audit_as(user, "login", "auth.lockout", user).await;
    Ok(())
}

#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204))
)]
async fn logout(Caller(app, principal): Caller) -> ApiResult<StatusCode> {
    sign_out(&app, &principal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends the session `principal` signed in with, on every replica: its id is marked revoked in
/// Valkey until it would have expired, and every replica's caller cache is cleared.
pub(crate) async fn sign_out(app: &App, principal: &Principal) -> ApiResult<()> {
    let Credential::Session {
        id,
        expires_at_secs,
        ..
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
    app.access_changed(&principal.user).await;
    app.audit::<(), ()>(principal, "auth.logout", &principal.user, None, None)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_64_and_networks_match_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(c));
        assert_eq!(address_bucket("10.1.2.3".parse().unwrap()), "10.1.2.3");
        let net: IpAddr = "10.0.0.0".parse().unwrap();
        assert!(in_network("10.200.3.4".parse().unwrap(), net, 8));
        assert!(!in_network("11.0.0.1".parse().unwrap(), net, 8));
        assert!(in_network(
            "10.0.0.7".parse().unwrap(),
            "10.0.0.7".parse().unwrap(),
            32
        ));
        assert!(in_network(a, "2001:db8::".parse().unwrap(), 32));
        assert!(
            !in_network(a, net, 0),
            "an IPv6 address is in no IPv4 network"
        );
    }
}
