//! Passwords (argon2id PHC strings, verified off the async threads), random secrets, and
//! changing one's own password.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mongodb::bson::doc;
use prexor_domain::now_ms;
use prexor_model::access::USERS;
use rand::RngCore;
use serde::Deserialize;

use super::principal::{Caller, active_user};
use crate::error::{ApiError, ApiResult, Json};

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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PasswordChange {
    current_password: String,
    new_password: String,
}

#[utoipa::path(
    post, path = "/api/v1/auth/password", tag = "auth",
    responses((status = 204))
)]
pub(super) async fn change_password(
    Caller(app, principal): Caller,
    Json(change): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    if let Some(problem) = password_problem(&change.new_password) {
        return Err(ApiError::field("newPassword", problem));
    }
    let user = active_user(&app, &principal.user).await?;
    if !verify_password(change.current_password, user.password_hash).await {
        return Err(ApiError::field(
            "currentPassword",
            "is not the current password",
        ));
    }
    let hash = hash_password(change.new_password).await?;
    app.update_by_id(
        USERS,
        "changing a password",
        &principal.user,
        doc! { "$set": { "passwordHash": hash, "sessionsValidAfterMs": now_ms() } },
    )
    .await?;
    app.access_changed(&principal.user).await;
    app.audit::<(), ()>(&principal, "user.password", &principal.user, None, None)
        .await;
    Ok(StatusCode::NO_CONTENT)
}
