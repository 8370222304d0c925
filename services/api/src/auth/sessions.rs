//! Login sessions: JWTs (HS256) under a signing key every replica shares through MongoDB, bound
//! to the user's id; logging out revokes one in Valkey, a password or role change ends them all
//! (`sessionsValidAfterMs`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use prexor_domain::now_ms;
use prexor_model::access::UserRecord;
use prexor_store::Store;
use serde::{Deserialize, Serialize};

use super::principal::{Credential, Principal, active_user, user_permissions};
use crate::app::App;
use crate::error::{ApiError, ApiResult};

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

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

/// A new session for `user`: the signed token and when it expires (ms).
pub(crate) fn sign_session(app: &App, user: &UserRecord) -> ApiResult<(String, i64)> {
    let now = prexor_domain::now_secs().max(0) as u64;
    let claims = Claims {
        sub: user.name.clone(),
        uid: user.id().to_owned(),
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

/// The Valkey key that marks a session logged out.
pub(crate) fn revoked_key(session_id: &str) -> String {
    format!("session:revoked:{session_id}")
}

/// The caller behind a session token.
pub(super) async fn authenticate(app: &App, jwt: &str) -> ApiResult<Principal> {
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
    principal(
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
pub(super) async fn principal(
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
    if user_id.is_empty() || record.id() != user_id {
        return Err(ApiError::unauthorized(format!(
            "the session belongs to an earlier user {user:?}; sign in again"
        )));
    }
    if record.sessions_valid_after_ms.unwrap_or(0) > issued_at_ms {
        return Err(ApiError::unauthorized(
            "the session was ended by a password or role change; sign in again",
        ));
    }
    Ok(Principal {
        permissions: user_permissions(app, &record).await?,
        user: user.to_owned(),
        user_id: user_id.to_owned(),
        credential: Credential::Session {
            id: session_id.to_owned(),
            expires_at_secs,
            issued_at_ms,
        },
    })
}
