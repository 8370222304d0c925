//! `/ui/login` and `/ui/logout`: the REST login's path ([`crate::login::sign_in`]: the same rate
//! limits, lockout and audit) with the session kept in a cookie; signing out revokes the session
//! on every replica ([`crate::login::sign_out`]).

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout;
use super::session::{self, Guarded, NoFields, Signed};
use super::{Settings, UiError, html};
use crate::app::App;
use crate::login::{ClientAddr, Login, sign_in, sign_out};

#[derive(Deserialize)]
pub struct FormQuery {
    /// Set when a page sent its user here because the session ended.
    ended: Option<String>,
}

/// `GET /ui/login`: the sign-in form (the overview for who is signed in already).
pub async fn form(
    State(app): State<App>,
    mut parts: Parts,
    Query(query): Query<FormQuery>,
) -> Response {
    if Signed::from_request_parts(&mut parts, &app).await.is_ok() {
        return Redirect::to("/ui/").into_response();
    }
    let note = query
        .ended
        .is_some()
        .then_some("Your session ended or you are not signed in; sign in to go on.");
    html(sign_in_page("", None, note)).into_response()
}

fn sign_in_page(user: &str, problem: Option<&str>, note: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            form.login method="post" action="/ui/login" {
                h1 { "Sign in to PrexorCloud" }
                @if let Some(problem) = problem {
                    p.error #sign-in-error role="alert" { (problem) }
                } @else if let Some(note) = note {
                    p.note { (note) }
                }
                label { "User name"
                    input name="username" autocomplete="username" required autofocus value=(user);
                }
                label { "Password"
                    input name="password" type="password" autocomplete="current-password" required;
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `POST /ui/login`: signs in (from this origin only, so no other page can sign a browser into
/// an account of its choosing) and sets the session cookie; the form again with the reason when
/// the login path refuses.
pub async fn submit(
    State(app): State<App>,
    axum::Extension(settings): axum::Extension<Settings>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    uri: Uri,
    form: Result<axum::Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, UiError> {
    session::same_origin(&headers, &uri)?;
    let refused = |status: StatusCode, user: &str, problem: &str| {
        (status, html(sign_in_page(user, Some(problem), None))).into_response()
    };
    let Ok(axum::Form(form)) = form else {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            "",
            "send the sign-in form: a user name and a password",
        ));
    };
    if form.username.is_empty() || form.password.is_empty() {
        return Ok(refused(
            StatusCode::BAD_REQUEST,
            &form.username,
            "enter both your user name and your password",
        ));
    }
    let user = form.username.clone();
    let login = Login {
        username: form.username,
        password: form.password,
    };
    match sign_in(&app, addr, login).await {
        Ok(session) => {
            let left_secs = (session.expires_at_ms - prexor_domain::now_ms()) / 1000;
            let mut response = Redirect::to("/ui/").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::cookie(&session.token, left_secs, settings.tls),
            );
            Ok(response)
        }
        Err(err) => {
            let mut response = refused(err.status(), &user, err.message());
            if let Some(secs) = err.retry_after_secs() {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.into());
            }
            Ok(response)
        }
    }
}

/// `POST /ui/logout`: ends the session on every replica and removes the cookie.
pub async fn logout(guarded: Guarded<NoFields>) -> Result<Response, UiError> {
    let Guarded {
        signed: Signed {
            app, who, settings, ..
        },
        form: NoFields {},
    } = guarded;
    sign_out(&app, &who).await?;
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(settings.tls));
    Ok(response)
}
