//! Who is calling: JWT sessions ([`sessions`]) and API tokens ([`tokens`]), both bound to the
//! user's id and resolved into a [`Principal`] ([`principal`]); passwords ([`passwords`]); the
//! first admin ([`bootstrap`]). Signing in and out is [`crate::login`].

mod bootstrap;
mod cache;
mod passwords;
mod principal;
mod sessions;
mod tokens;

use axum::Router;
use axum::routing::{delete, get, post};
use serde::Serialize;

use crate::app::App;
use crate::error::Json;

pub use bootstrap::bootstrap_admin;
pub use cache::{ACCESS_CHANGED, CallerCache};
pub(crate) use passwords::verify_password;
pub use passwords::{hash_password, password_problem};
pub use principal::{Caller, Credential, Principal, resolve, until_lapsed, user_permissions};
pub use sessions::SessionKeys;
pub(crate) use sessions::{revoked_key, sign_session};
// What the REST handlers and the dashboard's tokens page share.
pub(crate) use tokens::{NewToken, new_token, revoke_token, tokens_page};
// The operations' OpenAPI descriptions, for `crate::openapi`.
pub use passwords::__path_change_password;
pub use tokens::{__path_create_token, __path_delete_token, __path_list_tokens};

pub fn routes() -> Router<App> {
    Router::new()
        .route("/auth/me", get(me))
        .route("/auth/password", post(passwords::change_password))
        .route(
            "/auth/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/auth/tokens/{id}", delete(tokens::delete_token))
}

/// The caller as the api sees it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct Me {
    user: String,
    /// `session` or `token:<id>`.
    via: String,
    /// What it may do (a token's: what it was scoped to, as far as its owner still holds it).
    permissions: Vec<String>,
}

#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    responses((status = 200, body = Me))
)]
async fn me(principal: Principal) -> Json<Me> {
    Json(Me {
        via: principal.via(),
        user: principal.user,
        permissions: principal.permissions,
    })
}
