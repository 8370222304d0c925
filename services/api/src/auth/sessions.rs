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
    /// Derived from the signing key for values bound to a session ([`SessionKeys::binding`]),
    /// so that no such value is ever a signature a session token could carry.
    binding: Vec<u8>,
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What the binding key is derived for.
const BINDING_PURPOSE: &[u8] = b"prexor session binding v1";

impl SessionKeys {
    /// Reads the cluster's signing key, creating it if this is the first replica ever.
    pub async fn load(store: &Store) -> Result<SessionKeys, prexor_store::StoreError> {
        let key =
            crate::app::cluster_secret(store, "session-hs256", "the session signing key").await?;
        Ok(SessionKeys::from_secret(&key))
    }

    fn from_secret(key: &[u8]) -> SessionKeys {
        SessionKeys {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            binding: mac(key, BINDING_PURPOSE),
        }
    }

    /// A value bound to the session `session_id` (HMAC-SHA256, URL-safe base64): the same on
    /// every replica, and not computable without the cluster's session key. The dashboard's CSRF
    /// token.
    pub fn binding(&self, session_id: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(mac(&self.binding, session_id.as_bytes()))
    }

    /// Whether `presented` is [`SessionKeys::binding`] of `session_id` (compared in constant
    /// time).
    pub fn is_binding(&self, session_id: &str, presented: &str) -> bool {
        use base64::Engine;
        use hmac::Mac;
        let Ok(presented) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(presented)
        else {
            return false;
        };
        let mut expected = HmacSha256::new_from_slice(&self.binding).expect("HMAC takes any key");
        expected.update(session_id.as_bytes());
        expected.verify_slice(&presented).is_ok()
    }
}

fn mac(key: &[u8], message: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_holds_for_its_session_and_key_only() {
        let keys = SessionKeys::from_secret(&[7u8; 64]);
        let token = keys.binding("session-a");
        assert_eq!(
            token,
            SessionKeys::from_secret(&[7u8; 64]).binding("session-a")
        );
        assert!(keys.is_binding("session-a", &token));
        assert!(!keys.is_binding("session-b", &token), "another session");
        assert!(!SessionKeys::from_secret(&[8u8; 64]).is_binding("session-a", &token));
        assert!(!keys.is_binding("session-a", ""));
        assert!(!keys.is_binding("session-a", "not base64!"));
    }
}
