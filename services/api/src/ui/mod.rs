//! The dashboard (docs/dashboard.md): server-rendered pages under `/ui/`, served by every api
//! replica (a load balancer needs no affinity), with htmx and its SSE extension for live parts.
//!
//! - Pages call the same internal functions and permission checks as the JSON handlers: a page
//!   shows only what its user may see and do, and the server refuses the rest anyway.
//! - Signing in goes through the REST login's path ([`crate::login::sign_in`]: rate limits,
//!   lockout, audit) and keeps the session in an `HttpOnly; SameSite=Strict` cookie scoped to
//!   `/ui` ([`session`]); the JSON API never reads that cookie.
//! - Every change made with the cookie passes a same-origin check and carries a CSRF token bound
//!   to the session ([`session::Guarded`]).
//! - Every answer carries a strict Content-Security-Policy (no inline scripts or styles), and the
//!   static files are embedded in the binary ([`assets`]).

mod access;
mod assets;
mod audit;
mod backups;
mod charts;
mod group_form;
mod groups;
mod instance;
mod instances;
mod layout;
mod login;
mod modules;
mod nodes;
mod overview;
mod session;
mod templates;
mod widgets;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post, put};

use crate::app::App;
use crate::error::ApiError;

/// How this replica's dashboard is reached.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The REST port speaks TLS: the session cookie is `Secure`.
    pub tls: bool,
    /// How the network's history is sampled (the overview's charts span what is kept).
    pub history: crate::network::HistorySettings,
}

/// The dashboard's policy: only this origin's own scripts, styles and connections; never framed;
/// forms post back to it alone.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; \
    base-uri 'none'; form-action 'self'";

/// The dashboard's routes; [`secured`] adds what every answer carries.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(overview::page))
        .route("/ui/overview/summary", get(overview::summary))
        .route("/ui/events", get(overview::events))
        // Fixed pages under /ui/groups/ and /ui/instances/ start with `_`, which no group or
        // instance name does.
        .route("/ui/groups", get(groups::list))
        .route("/ui/groups/_rows", get(groups::rows))
        .route(
            "/ui/groups/_new",
            get(group_form::new_form).post(group_form::create),
        )
        .route("/ui/groups/{name}", get(groups::detail))
        .route("/ui/groups/{name}/live", get(groups::live_rows))
        .route(
            "/ui/groups/{name}/edit",
            get(group_form::edit_form).post(group_form::update),
        )
        .route("/ui/groups/{name}/start", post(groups::start))
        .route(
            "/ui/deployments/{id}/{action}",
            post(groups::deployment_action),
        )
        .route("/ui/instances", get(instances::list))
        .route("/ui/instances/_rows", get(instances::rows))
        .route("/ui/instances/_bulk", post(instances::bulk))
        .route("/ui/instances/{id}", get(instance::page))
        .route("/ui/instances/{id}/console", get(instance::console))
        .route("/ui/instances/{id}/command", post(instance::command))
        .route("/ui/instances/{id}/{action}", post(instance::halt))
        .route("/ui/nodes", get(nodes::list))
        .route("/ui/nodes/_rows", get(nodes::rows))
        .route("/ui/nodes/_join-token", post(nodes::join_token))
        .route("/ui/nodes/{id}", get(nodes::detail))
        .route("/ui/nodes/{id}/live", get(nodes::live_rows))
        .route("/ui/nodes/{id}/{action}", post(nodes::action))
        .route("/ui/templates", get(templates::list))
        .route("/ui/templates/_rows", get(templates::rows))
        .route("/ui/templates/{name}", get(templates::detail))
        .route("/ui/templates/{name}/versions", get(templates::versions))
        .route("/ui/templates/{name}/rollback", post(templates::rollback))
        .route("/ui/templates/{name}/upload", put(templates::upload))
        .route("/ui/modules", get(modules::list))
        .route("/ui/modules/_rows", get(modules::rows))
        .route("/ui/modules/{name}", get(modules::detail))
        .route("/ui/modules/{name}/live", get(modules::live_part))
        .route("/ui/modules/{name}/{action}", post(modules::action))
        .merge(access::routes())
        .merge(audit::routes())
        .merge(backups::routes())
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/assets/{hash}/{name}", get(assets::serve))
        .route("/ui/{*rest}", get(not_found).post(not_found))
}

/// `router` (the dashboard's, with any layers of its own) with the security headers on every
/// answer and the replica's [`Settings`] for its handlers.
pub fn secured(router: Router<App>, settings: Settings) -> Router<App> {
    router
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::Extension(settings))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages show what one user may see: never kept by a browser or proxy (assets say otherwise).
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn not_found(uri: axum::http::Uri) -> UiError {
    UiError::refused(
        StatusCode::NOT_FOUND,
        format!("the dashboard has no page {}", uri.path()),
    )
}

/// Why the dashboard does not answer a request as asked.
#[derive(Debug)]
pub enum UiError {
    /// Not signed in, or no longer: to the sign-in page (how depends on who asked).
    SignIn {
        reason: String,
        asked_by: Asker,
        /// The replica speaks TLS (the cookie it clears was `Secure`).
        tls: bool,
    },
    /// A refusal or failure, shown with its status and what to do.
    Refused(StatusCode, String),
}

/// What kind of client made a request, which decides how it is sent to sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// A page load: redirected to the sign-in page.
    Page,
    /// An htmx request: told to load the sign-in page (`HX-Redirect`).
    Htmx,
    /// An event stream: 401 (it cannot follow a redirect to a page).
    Stream,
}

impl UiError {
    pub fn refused(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError::Refused(status, message.into())
    }

    pub fn forbidden(message: impl Into<String>) -> UiError {
        UiError::refused(StatusCode::FORBIDDEN, message)
    }
}

impl From<ApiError> for UiError {
    fn from(err: ApiError) -> UiError {
        UiError::Refused(err.status(), err.message().to_owned())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        match self {
            UiError::SignIn {
                reason,
                asked_by,
                tls,
            } => {
                let mut response = match asked_by {
                    Asker::Page => Redirect::to("/ui/login?ended=1").into_response(),
                    Asker::Htmx => {
                        let mut response = (StatusCode::UNAUTHORIZED, reason).into_response();
                        response
                            .headers_mut()
                            .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
                        response
                    }
                    Asker::Stream => (StatusCode::UNAUTHORIZED, reason).into_response(),
                };
                // A cookie that no longer signs anyone in goes.
                response
                    .headers_mut()
                    .insert(header::SET_COOKIE, session::clear_cookie(tls));
                response
            }
            UiError::Refused(status, message) => (
                status,
                Html(layout::problem(status, &message).into_string()),
            )
                .into_response(),
        }
    }
}

/// A rendered page.
pub fn html(markup: maud::Markup) -> Html<String> {
    Html(markup.into_string())
}
