//! `/ui/users`: the users with their roles, state, creation and last sign-in
//! ([`crate::users::users_page`]); a new user's form ([`crate::users::add_user`]); a user's page
//! ([`crate::users::show_user`]) to change its roles, disable or enable it, reset its password
//! ([`crate::users::change_user`]) or delete it ([`crate::users::remove_user`]).

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, Response};
use maud::{Markup, html};

use super::{
    Deleted, Fields, Problems, announce, announced, code_list, go_to, part, raw, role_boxes,
    role_names, value, values,
};
use crate::access::require_all_of;
use crate::app::App;
use crate::auth::Principal;
use crate::ui::groups::urlencode;
use crate::ui::session::{Guarded, Signed};
use crate::ui::widgets::{After, may, refusal, when};
use crate::ui::{UiError, html, layout};
use crate::users::{NewUser, UserChange, UserView, add_user, change_user, remove_user, show_user};

/// Users the list shows at once.
const PAGE: i64 = 100;

/// `GET /ui/users`.
pub async fn list(
    signed: Signed,
    Query(after): Query<After>,
    Query(note): Query<Deleted>,
) -> Result<Html<String>, UiError> {
    let (app, who) = (&signed.app, &signed.who);
    let rows = rows_part(app, who, &after).await?;
    let form = if may(who, "users:write") {
        let roles = role_names(app, who).await?;
        Some(new_form(&roles, &Fields::new(), &Problems::default(), None))
    } else {
        None
    };
    let content = html! {
        h1 { "Users" }
        @if let Some(name) = &note.deleted {
            p.ok #user-deleted role="status" { "User " strong { (name) } " deleted, with its API tokens." }
        }
        section.panel {
            div #user-rows hx-get=(after.rows_url("/ui/users/_rows")) hx-trigger="users-changed from:body"
                hx-target="this" { (rows) }
        }
        @if let Some(form) = form {
            section.panel #new-user-panel {
                h2 { "New user" }
                (form)
            }
        }
    };
    Ok(html(layout::page(&signed, "/ui/users", "Users", content)))
}

/// `GET /ui/users/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let users = crate::users::users_page(app, who, &after.page(PAGE)).await?;
    Ok(html! {
        table #users {
            thead { tr { th { "User" } th { "Roles" } th { "State" } th { "Created" } th { "Last sign-in" } } }
            tbody {
                @for user in &users.items {
                    tr.user data-user=(user.username) data-roles=(user.roles.join(",")) data-disabled=(user.disabled) {
                        td { a href={ "/ui/users/" (urlencode(&user.username)) } { (user.username) } }
                        td { (code_list(&user.roles)) }
                        td { (state(user)) }
                        td { (when(user.created_at_ms)) }
                        td { (last_login(user)) }
                    }
                }
            }
        }
        @if let Some(next) = &users.next_cursor {
            p { a href={ "/ui/users?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

fn state(user: &UserView) -> Markup {
    html! {
        @if user.disabled { span.badge.bad { "DISABLED" } } @else { span.badge.good { "ENABLED" } }
    }
}

fn last_login(user: &UserView) -> String {
    user.last_login_at_ms
        .map_or_else(|| "never".to_owned(), when)
}

/// The new user's form: `form` as last sent (never its password again), `problems` from the
/// API, `created` the user just made.
fn new_form(roles: &[String], form: &Fields, problems: &Problems, created: Option<&str>) -> Markup {
    html! {
        form.group-form #new-user-form hx-post="/ui/users/_new" hx-target="this" hx-swap="outerHTML" novalidate {
            @if let Some(name) = created {
                p.ok #user-created role="status" { "User " strong { (name) } " created." }
            }
            (problems.banner())
            div.row {
                (problems.field("username", "User name", html! {
                    input name="username" value=(value(form, "username")) autocomplete="off" required;
                }))
                (problems.field("password", "Password (at least 12 characters)", html! {
                    input type="password" name="password" autocomplete="new-password" required;
                }))
            }
            (problems.choices("roles", "Roles", role_boxes(roles, &values(form, "roles"))))
            p { button #create-user type="submit" { "Create user" } }
        }
    }
}

/// `POST /ui/users/_new`: the form again, blank with the new user named or with the API's
/// problems next to its fields.
pub async fn create(Guarded { signed, form }: Guarded<Fields>) -> Response {
    let (app, who) = (&signed.app, &signed.who);
    let roles = match role_names(app, who).await {
        Ok(roles) => roles,
        Err(err) => return refusal(err.status(), err.message()),
    };
    let new = NewUser {
        username: value(&form, "username").to_owned(),
        password: raw(&form, "password").to_owned(),
        roles: values(&form, "roles"),
    };
    match add_user(app, who, new).await {
        Ok(user) => {
            let blank = new_form(
                &roles,
                &Fields::new(),
                &Problems::default(),
                Some(&user.username),
            );
            announce(part(StatusCode::CREATED, blank), "users-changed")
        }
        Err(err) => part(
            err.status(),
            new_form(&roles, &form, &Problems::of(&err), None),
        ),
    }
}

/// `GET /ui/users/{name}`.
pub async fn detail(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let (app, who) = (&signed.app, &signed.who);
    let user = show_user(app, who, &name).await?;
    let path = format!("/ui/users/{}", urlencode(&name));
    let write = may(who, "users:write");
    let roles = if write {
        role_names(app, who).await?
    } else {
        Vec::new()
    };
    // Resetting another user's password needs users:* (one's own is changed with the current one).
    let reset = write && name != who.user && require_all_of(who, "users", "").is_ok();
    let content = html! {
        div.title { h1 { "User " span #user-name { (name) } } }
        div #user-result aria-live="polite" {}
        div #user-about hx-get={ (path) "/about" } hx-trigger="user-changed from:body" hx-target="this" {
            (about_part(&user))
        }
        @if write {
            section.panel #user-roles-panel {
                h2 { "Roles" }
                form #user-roles-form hx-post={ (path) "/roles" } hx-target="#user-result" {
                    p { (role_boxes(&roles, &user.roles)) }
                    p.note { "Saving ends the user's sessions, so the change applies at once." }
                    button #save-roles type="submit" { "Save roles" }
                }
            }
            section.panel #user-account-panel {
                h2 { "Account" }
                div.actions {
                    button #disable-user hx-post={ (path) "/disable" } hx-target="#user-result" { "Disable" }
                    button #enable-user hx-post={ (path) "/enable" } hx-target="#user-result" { "Enable" }
                    button.danger #delete-user hx-post={ (path) "/delete" } hx-target="#user-result"
                        hx-confirm={ "Delete user " (name) " and its API tokens?" } { "Delete" }
                }
                @if reset {
                    form.filters #reset-password-form hx-post={ (path) "/password" } hx-target="#user-result" {
                        label { "New password " input type="password" name="password" autocomplete="new-password"; }
                        button #reset-password type="submit" { "Reset password" }
                    }
                }
            }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/users",
        &format!("User {name}"),
        content,
    )))
}

/// `GET /ui/users/{name}/about`: the user's part of its page, as the page reloads it.
pub async fn about(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let user = show_user(&signed.app, &signed.who, &name).await?;
    Ok(html(about_part(&user)))
}

fn about_part(user: &UserView) -> Markup {
    html! {
        section.panel {
            dl.spec {
                dt { "Roles" } dd #user-roles data-roles=(user.roles.join(",")) { (code_list(&user.roles)) }
                dt { "State" } dd #user-state data-disabled=(user.disabled) { (state(user)) }
                dt { "Created" } dd { (when(user.created_at_ms)) }
                dt { "Last sign-in" } dd { (last_login(user)) }
            }
        }
    }
}

/// `POST /ui/users/{name}/{action}`: `roles` (the ticked ones), `disable`, `enable`,
/// `password` (a new one) or `delete`, each as `PATCH` / `DELETE /api/v1/users/{name}` does it.
pub async fn action(
    Path((name, action)): Path<(String, String)>,
    Guarded { signed, form }: Guarded<Fields>,
) -> Response {
    let (app, who) = (&signed.app, &signed.who);
    let mut change = UserChange {
        password: None,
        roles: None,
        disabled: None,
    };
    let done = match action.as_str() {
        "delete" => {
            return match remove_user(app, who, &name).await {
                Ok(()) => go_to(&format!("/ui/users?deleted={}", urlencode(&name))),
                Err(err) => refusal(err.status(), err.message()),
            };
        }
        "roles" => {
            let roles = values(&form, "roles");
            let said = format!("roles of user {name} saved: {}", roles.join(", "));
            change.roles = Some(roles);
            said
        }
        "disable" | "enable" => {
            change.disabled = Some(action == "disable");
            format!("user {name} {action}d")
        }
        "password" => {
            change.password = Some(raw(&form, "password").to_owned());
            format!("password of user {name} reset")
        }
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                &format!(
                    "a user has no action {other:?}: roles, disable, enable, password or delete"
                ),
            );
        }
    };
    let result = change_user(app, who, &name, change).await;
    announced(
        result.map(|_| format!("{done}; the user's sessions ended")),
        "user-changed",
    )
}
