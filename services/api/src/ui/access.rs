//! Who may do what: `/ui/users` ([`users`]), `/ui/roles` ([`roles`]) and `/ui/tokens`
//! ([`tokens`]). Each page calls the functions the REST handlers call (`crate::users`,
//! `crate::auth`), with their permission checks; forms show the API's validation next to the
//! fields it names. What the pieces here share: reading a form whose checkboxes repeat a name,
//! showing its problems, the checkboxes of roles and of permissions.

mod roles;
mod tokens;
mod users;

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};

use crate::app::App;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::paging::PageRequest;
use crate::permissions::{BUILTIN_ROLES, RESOURCES};
use crate::ui::widgets::outcome;

pub fn routes() -> Router<App> {
    // Fixed pages start with `_`, which no user or role name does.
    Router::new()
        .route("/ui/users", get(users::list))
        .route("/ui/users/_rows", get(users::rows))
        .route("/ui/users/_new", post(users::create))
        .route("/ui/users/{name}", get(users::detail))
        .route("/ui/users/{name}/about", get(users::about))
        .route("/ui/users/{name}/{action}", post(users::action))
        .route("/ui/roles", get(roles::list))
        .route("/ui/roles/_rows", get(roles::rows))
        .route("/ui/roles/_new", post(roles::create))
        .route("/ui/roles/{name}", get(roles::detail))
        .route("/ui/roles/{name}/{action}", post(roles::action))
        .route("/ui/tokens", get(tokens::list))
        .route("/ui/tokens/_rows", get(tokens::rows))
        .route("/ui/tokens/_new", post(tokens::create))
        .route("/ui/tokens/{id}/revoke", post(tokens::revoke))
}

/// A list's query after something on it was deleted from its own page (which then went back to
/// the list): what to say.
#[derive(serde::Deserialize)]
pub struct Deleted {
    deleted: Option<String>,
}

/// A form as sent: every (name, value) pair, so that a name ticked in several checkboxes
/// (roles, permissions) keeps all its values.
pub type Fields = Vec<(String, String)>;

/// The first value of `name` in `form` as sent ("" without one): a password.
fn raw<'a>(form: &'a Fields, name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The first value of `name` in `form`, trimmed ("" without one).
fn value<'a>(form: &'a Fields, name: &str) -> &'a str {
    raw(form, name).trim()
}

/// Every non-empty value of `name` in `form`, in order.
fn values(form: &Fields, name: &str) -> Vec<String> {
    form.iter()
        .filter(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Why a form was refused: the API's message, and each field it names.
#[derive(Default)]
struct Problems {
    message: Option<String>,
    fields: Vec<(String, String)>,
}

impl Problems {
    fn of(err: &ApiError) -> Problems {
        Problems {
            message: Some(err.message().to_owned()),
            fields: err.field_problems(),
        }
    }

    /// What the form says above its fields.
    fn banner(&self) -> Markup {
        html! {
            @if let Some(message) = &self.message {
                p.error.form-error role="alert" { (message) }
            }
        }
    }

    /// Field `name` labelled `label` around `input`, with its problems under it.
    fn field(&self, name: &str, label: &str, input: Markup) -> Markup {
        self.around(name, html! { label { (label) (input) } })
    }

    /// Checkboxes `boxes` named `name` under `legend`, with their problems under them.
    fn choices(&self, name: &str, legend: &str, boxes: Markup) -> Markup {
        self.around(name, choices(legend, boxes))
    }

    fn around(&self, name: &str, inner: Markup) -> Markup {
        let errors: Vec<&str> = self
            .fields
            .iter()
            .filter(|(field, _)| field == name)
            .map(|(_, message)| message.as_str())
            .collect();
        html! {
            div.field.invalid[!errors.is_empty()] data-field=(name) {
                (inner)
                @for error in errors { p.field-error { (error) } }
            }
        }
    }
}

/// Checkboxes `boxes` under `legend`.
fn choices(legend: &str, boxes: Markup) -> Markup {
    html! { fieldset.choices { legend { (legend) } (boxes) } }
}

/// A page part answered with `status`.
fn part(status: StatusCode, markup: Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

/// `response` telling the page that `event` happened (`HX-Trigger`): the lists that follow it
/// reload.
fn announce(mut response: Response, event: &'static str) -> Response {
    response
        .headers_mut()
        .insert("hx-trigger", HeaderValue::from_static(event));
    response
}

/// An action's result line ([`outcome`]); when done, the page is told `event` happened.
fn announced(result: ApiResult<String>, event: &'static str) -> Response {
    let done = result.is_ok();
    let response = outcome(result);
    if done {
        announce(response, event)
    } else {
        response
    }
}

/// `response` sending the page to `url` (`HX-Redirect`), as after deleting what it showed.
fn go_to(url: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if let Ok(value) = HeaderValue::from_str(url) {
        response.headers_mut().insert("hx-redirect", value);
    }
    response
}

/// The roles `who` can pick from: the built-in ones, and the custom ones with `roles:read`
/// (as `GET /api/v1/roles` lists them).
async fn role_names(app: &App, who: &Principal) -> ApiResult<Vec<String>> {
    if who.require("roles:read").is_err() {
        return Ok(BUILTIN_ROLES.iter().map(|r| (*r).to_owned()).collect());
    }
    let page = PageRequest {
        limit: crate::paging::MAX_LIMIT,
        after: None,
    };
    let roles = crate::users::roles_page(app, who, &page).await?;
    Ok(roles.items.into_iter().map(|r| r.name).collect())
}

/// A checkbox `roles` for each of `names`, ticked for those in `ticked` (and for a ticked role
/// not among `names`, so that saving keeps it).
fn role_boxes(names: &[String], ticked: &[String]) -> Markup {
    let extra = ticked.iter().filter(|t| !names.contains(t));
    html! {
        span.checks {
            @for name in names.iter().chain(extra) {
                label.check {
                    input type="checkbox" name="roles" value=(name) checked[ticked.contains(name)];
                    " " (name)
                }
            }
        }
    }
}

/// Checkboxes `permissions` for every permission there is (each resource's read, write and `*`;
/// `*:read`; `*`), ticked for those in `ticked`.
fn permission_grid(ticked: &[String]) -> Markup {
    let tick = |p: &str| ticked.iter().any(|t| t == p);
    let check = |p: String| {
        html! {
            label.check { input type="checkbox" name="permissions" value=(p) checked[tick(&p)]; " " code { (p) } }
        }
    };
    html! {
        table.permissions {
            thead { tr { th { "Resource" } th { "Read" } th { "Write" } th { "Both (:*)" } } }
            tbody {
                tr { td { "everything" } td { (check("*:read".into())) } td {} td { (check("*".into())) } }
                @for resource in RESOURCES {
                    tr data-resource=(resource) {
                        td { (resource) }
                        @for action in ["read", "write", "*"] {
                            td { (check(format!("{resource}:{action}"))) }
                        }
                    }
                }
            }
        }
    }
}

/// `list` as code, or "none".
fn code_list(list: &[String]) -> Markup {
    html! {
        @if list.is_empty() { span.muted { "none" } }
        @for (i, item) in list.iter().enumerate() {
            @if i > 0 { " " }
            code { (item) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_checkboxes_keep_every_value() {
        let form: Fields =
            serde_urlencoded::from_str("name=+ops+&roles=viewer&roles=&roles=ops").unwrap();
        assert_eq!(value(&form, "name"), "ops");
        assert_eq!(value(&form, "missing"), "");
        assert_eq!(values(&form, "roles"), ["viewer", "ops"]);
    }

    #[test]
    fn the_grid_offers_only_valid_permissions_and_ticks_those_held() {
        let grid = permission_grid(&["groups:read".to_owned(), "*".to_owned()]).into_string();
        let offered: Vec<&str> = grid
            .split(r#"name="permissions" value=""#)
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        assert_eq!(offered.len(), 2 + 3 * RESOURCES.len());
        let valid = |p: &&str| crate::permissions::validate(p).is_ok();
        assert!(offered.iter().all(valid), "{offered:?}");
        assert_eq!(grid.matches("checked").count(), 2);
    }
}
