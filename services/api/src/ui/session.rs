//! The dashboard's session: the REST login's session token kept in a cookie, and what a change
//! made with it must show.
//!
//! - The cookie is `HttpOnly` (no page script reads it), `SameSite=Strict`, scoped to `/ui`
//!   (the JSON API, Bearer-only, never sees it), and `Secure` when the REST port speaks TLS.
//! - A change (any method but GET and HEAD) must come from a page of this origin: the browser's
//!   `Sec-Fetch-Site` says `same-origin` and its `Origin` names this host, and it must carry the
//!   session's CSRF token (an HMAC of the session id under the cluster's session key, so every
//!   replica checks it; [`crate::auth::SessionKeys::binding`]) as the `csrf` form field or the
//!   `X-CSRF-Token` header. SameSite alone does not cover this: another port of the same host is
//!   the same site.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{Asker, Settings, UiError};
use crate::app::App;
use crate::auth::{Credential, Principal};

/// The session cookie's name.
pub const COOKIE: &str = "prexor_session";
/// The header htmx sends the CSRF token in (from the page's `hx-headers`).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field a plain form sends it in.
pub const CSRF_FIELD: &str = "csrf";
/// A dashboard form is small; larger bodies are refused.
const FORM_LIMIT: usize = 64 * 1024;

/// `Set-Cookie` for a new session `token` that expires in `max_age_secs`.
pub fn cookie(token: &str, max_age_secs: i64, tls: bool) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age_secs.max(0)
    ))
    .expect("a session token is a valid header value")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(tls: bool) -> HeaderValue {
    cookie("", 0, tls)
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

fn settings(parts: &Parts) -> Settings {
    parts
        .extensions
        .get::<Settings>()
        .copied()
        .expect("the dashboard's routes carry their Settings (ui::secured)")
}

/// Who made the request, as far as being sent to sign in goes.
fn asker(headers: &HeaderMap) -> Asker {
    let accepts_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if accepts_stream {
        Asker::Stream
    } else if headers.contains_key("hx-request") {
        Asker::Htmx
    } else {
        Asker::Page
    }
}

/// A request of a signed-in dashboard user (else: sent to sign in).
pub struct Signed {
    pub app: App,
    pub who: Principal,
    /// The session's CSRF token, for the page's forms and htmx requests.
    pub csrf: String,
    session_id: String,
    pub settings: Settings,
}

impl FromRequestParts<App> for Signed {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let settings = settings(parts);
        let sign_in = |reason: &str| UiError::SignIn {
            reason: reason.to_owned(),
            asked_by: asker(&parts.headers),
            tls: settings.tls,
        };
        let Some(token) = session_token(&parts.headers) else {
            return Err(sign_in("sign in to use the dashboard"));
        };
        let who = match crate::auth::resolve(app, token).await {
            Ok(who) => who,
            Err(err) if err.is_unauthorized() => return Err(sign_in(err.message())),
            Err(err) => return Err(err.into()),
        };
        let Credential::Session { id, .. } = &who.credential else {
            return Err(sign_in(
                "the dashboard signs in with a session, not an API token",
            ));
        };
        let session_id = id.clone();
        Ok(Signed {
            app: app.clone(),
            csrf: app.sessions.binding(&session_id),
            who,
            session_id,
            settings,
        })
    }
}

/// 403 unless the request comes from a page of this dashboard's own origin: `Sec-Fetch-Site`
/// (when the browser sends it) is `same-origin`, `Origin` (when sent) names this host, and at
/// least one of them is there.
pub fn same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), UiError> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let site = text("sec-fetch-site");
    let origin = text("origin");
    if let Some(site) = site
        && site != "same-origin"
    {
        return Err(UiError::forbidden(format!(
            "cross-origin request refused: the browser says it comes from a {site} page (Sec-Fetch-Site); use the dashboard's own pages"
        )));
    }
    if let Some(origin) = origin {
        let host = text("host").or_else(|| uri.authority().map(|a| a.as_str()));
        let from = origin.split_once("://").map(|(_, authority)| authority);
        let same =
            matches!((from, host), (Some(from), Some(host)) if from.eq_ignore_ascii_case(host));
        if !same {
            return Err(UiError::forbidden(format!(
                "cross-origin request refused: it comes from {origin}, not from this dashboard ({})",
                host.unwrap_or("unknown host")
            )));
        }
    }
    if site.is_none() && origin.is_none() {
        return Err(UiError::forbidden(
            "request refused: it carries neither an Origin nor a Sec-Fetch-Site header; the dashboard takes changes from its own pages in a browser (scripts use the REST API)",
        ));
    }
    Ok(())
}

/// A change by a signed-in user, from this origin, with the session's CSRF token; `form` is
/// the request's form body (`application/x-www-form-urlencoded`).
pub struct Guarded<T> {
    pub signed: Signed,
    pub form: T,
}

/// A form with no fields but the CSRF token.
#[derive(Deserialize)]
pub struct NoFields {}

#[derive(Deserialize)]
struct CsrfField {
    csrf: Option<String>,
}

impl<T: DeserializeOwned> FromRequest<App> for Guarded<T> {
    type Rejection = UiError;

    async fn from_request(request: Request, app: &App) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        same_origin(&parts.headers, &parts.uri)?;
        let signed = Signed::from_request_parts(&mut parts, app).await?;
        let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.map_err(|_| {
            UiError::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is larger than {FORM_LIMIT} bytes"),
            )
        })?;
        let presented = csrf_header(&parts.headers).or_else(|| {
            serde_urlencoded::from_bytes::<CsrfField>(&bytes)
                .ok()
                .and_then(|f| f.csrf)
        });
        check_csrf(app, &signed, presented)?;
        let form = serde_urlencoded::from_bytes(&bytes).map_err(|e| {
            UiError::refused(
                StatusCode::BAD_REQUEST,
                format!("the form is not valid: {e}"),
            )
        })?;
        Ok(Guarded { signed, form })
    }
}

/// The CSRF token in the `X-CSRF-Token` header.
fn csrf_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Refused unless `presented` is `signed`'s session's CSRF token.
fn check_csrf(app: &App, signed: &Signed, presented: Option<String>) -> Result<(), UiError> {
    let Some(presented) = presented.filter(|t| !t.is_empty()) else {
        return Err(UiError::forbidden(format!(
            "request refused: it carries no CSRF token (the {CSRF_FIELD:?} form field or the X-CSRF-Token header); reload the page and try again"
        )));
    };
    if !app.sessions.is_binding(&signed.session_id, &presented) {
        return Err(UiError::forbidden(
            "request refused: its CSRF token does not belong to this session; reload the page and try again",
        ));
    }
    Ok(())
}

/// A change whose body is a file streamed on as it arrives (an upload), not a form: from this
/// origin, by a signed-in user, with the session's CSRF token in the `X-CSRF-Token` header.
pub struct GuardedUpload {
    pub signed: Signed,
    pub headers: HeaderMap,
    pub body: axum::body::Body,
}

impl FromRequest<App> for GuardedUpload {
    type Rejection = UiError;

    async fn from_request(request: Request, app: &App) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        same_origin(&parts.headers, &parts.uri)?;
        let signed = Signed::from_request_parts(&mut parts, app).await?;
        check_csrf(app, &signed, csrf_header(&parts.headers))?;
        Ok(GuardedUpload {
            signed,
            headers: parts.headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let map = headers(&[("cookie", "a=1; prexor_session=tok.en; b=2")]);
        assert_eq!(session_token(&map), Some("tok.en"));
        assert_eq!(
            session_token(&headers(&[("cookie", "prexor_session=")])),
            None
        );
        assert_eq!(session_token(&headers(&[("cookie", "other=x")])), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_scoped_to_the_dashboard() {
        let plain = cookie("t", 60, false);
        assert_eq!(
            plain.to_str().unwrap(),
            "prexor_session=t; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        assert!(
            cookie("t", 60, true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        assert!(clear_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn only_same_origin_requests_pass() {
        let uri: Uri = "/ui/logout".parse().unwrap();
        let host = ("host", "127.0.0.1:8080");
        let ok = headers(&[
            host,
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(same_origin(&ok, &uri).is_ok());
        assert!(same_origin(&headers(&[host, ("origin", "http://127.0.0.1:8080")]), &uri).is_ok());
        for refused in [
            headers(&[host, ("origin", "http://127.0.0.1:8081")]),
            headers(&[host, ("origin", "http://evil.example")]),
            headers(&[host, ("origin", "null")]),
            headers(&[host, ("sec-fetch-site", "same-site")]),
            headers(&[host, ("sec-fetch-site", "cross-site")]),
            headers(&[
                host,
                ("origin", "http://127.0.0.1:8081"),
                ("sec-fetch-site", "same-origin"),
            ]),
            headers(&[host]),
        ] {
            assert!(
                matches!(
                    same_origin(&refused, &uri),
                    Err(UiError::Refused(StatusCode::FORBIDDEN, _))
                ),
                "{refused:?}"
            );
        }
    }
}
