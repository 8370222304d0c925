//! `/ui/roles`: the built-in and custom roles with their permissions
//! ([`crate::users::roles_page`]); a new role's form ([`crate::users::add_role`]); a role's page
//! ([`crate::users::show_role`]): read-only for a built-in role, else its permissions and
//! description to change ([`crate::users::change_role`]) and a delete, refused while any user
//! holds it ([`crate::users::remove_role`]).

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, Response};
use maud::{Markup, html};

use super::{
    Deleted, Fields, Problems, announce, code_list, go_to, part, permission_grid, value, values,
};
use crate::app::App;
use crate::auth::Principal;
use crate::ui::groups::urlencode;
use crate::ui::session::{Guarded, Signed};
use crate::ui::widgets::{After, may, outcome, refusal};
use crate::ui::{UiError, html, layout};
use crate::users::{RoleBody, RoleView, add_role, change_role, remove_role, roles_page, show_role};

/// Roles the list shows at once.
const PAGE: i64 = 100;

/// `GET /ui/roles`.
pub async fn list(
    signed: Signed,
    Query(after): Query<After>,
    Query(note): Query<Deleted>,
) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after).await?;
    let content = html! {
        h1 { "Roles" }
        @if let Some(name) = &note.deleted {
            p.ok #role-deleted role="status" { "Role " strong { (name) } " deleted." }
        }
        section.panel {
            p.note { "Built-in roles (admin, operator, viewer) cannot be changed; a user is given roles on its page under Users." }
            div #role-rows hx-get=(after.rows_url("/ui/roles/_rows")) hx-trigger="roles-changed from:body"
                hx-target="this" { (rows) }
        }
        @if may(who, "roles:write") {
            section.panel #new-role-panel {
                h2 { "New role" }
                (new_form(&Fields::new(), &Problems::default(), None))
            }
        }
    };
    Ok(html(layout::page(&signed, "/ui/roles", "Roles", content)))
}

/// `GET /ui/roles/_rows`: the list's table, as the page reloads it.
pub async fn rows(signed: Signed, Query(after): Query<After>) -> Result<Html<String>, UiError> {
    Ok(html(rows_part(&signed.app, &signed.who, &after).await?))
}

async fn rows_part(app: &App, who: &Principal, after: &After) -> Result<Markup, UiError> {
    let roles = roles_page(app, who, &after.page(PAGE)).await?;
    Ok(html! {
        table #roles {
            thead { tr { th { "Role" } th { "Kind" } th { "Permissions" } th { "Description" } } }
            tbody {
                @for role in &roles.items {
                    tr.role data-role=(role.name) data-builtin=(role.builtin) {
                        td { a href={ "/ui/roles/" (urlencode(&role.name)) } { (role.name) } }
                        td { (kind(role)) }
                        td { (code_list(&role.permissions)) }
                        td { (role.description) }
                    }
                }
            }
        }
        @if let Some(next) = &roles.next_cursor {
            p { a href={ "/ui/roles?after=" (urlencode(next)) } { "Next page" } }
        }
    })
}

fn kind(role: &RoleView) -> Markup {
    html! {
        @if role.builtin { span.badge { "BUILT-IN" } } @else { span.badge.good { "CUSTOM" } }
    }
}

/// The new role's form: `form` as last sent, `problems` from the API, `created` the role just
/// made.
fn new_form(form: &Fields, problems: &Problems, created: Option<&str>) -> Markup {
    html! {
        form.group-form #new-role-form hx-post="/ui/roles/_new" hx-target="this" hx-swap="outerHTML" novalidate {
            @if let Some(name) = created {
                p.ok #role-created role="status" { "Role " strong { (name) } " created." }
            }
            (problems.banner())
            div.row {
                (problems.field("name", "Name", html! { input name="name" value=(value(form, "name")) required; }))
                (problems.field("description", "Description", html! {
                    input name="description" value=(value(form, "description"));
                }))
            }
            (problems.choices("permissions", "Permissions", permission_grid(&values(form, "permissions"))))
            p { button #create-role type="submit" { "Create role" } }
        }
    }
}

/// The role `form` describes (`name`: none when editing; the role's name is in the path).
fn body(form: &Fields, name: Option<String>) -> RoleBody {
    RoleBody {
        name,
        permissions: values(form, "permissions"),
        description: value(form, "description").to_owned(),
    }
}

/// `POST /ui/roles/_new`: the form again, blank with the new role named or with the API's
/// problems next to its fields.
pub async fn create(Guarded { signed, form }: Guarded<Fields>) -> Response {
    let name = Some(value(&form, "name").to_owned()).filter(|n| !n.is_empty());
    match add_role(&signed.app, &signed.who, body(&form, name)).await {
        Ok(role) => {
            let blank = new_form(&Fields::new(), &Problems::default(), Some(&role.name));
            announce(part(StatusCode::CREATED, blank), "roles-changed")
        }
        Err(err) => part(err.status(), new_form(&form, &Problems::of(&err), None)),
    }
}

/// `GET /ui/roles/{name}`.
pub async fn detail(signed: Signed, Path(name): Path<String>) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let role = show_role(&signed.app, who, &name).await?;
    let path = format!("/ui/roles/{}", urlencode(&name));
    let content = html! {
        div.title { h1 { "Role " span #role-name { (name) } } (kind(&role)) }
        div #role-result aria-live="polite" {}
        @if role.builtin || !may(who, "roles:write") {
            section.panel #role-about {
                dl.spec {
                    dt { "Permissions" } dd #role-permissions { (code_list(&role.permissions)) }
                    @if !role.description.is_empty() { dt { "Description" } dd { (role.description) } }
                }
                @if role.builtin { p.note #role-read-only { "A built-in role: it cannot be changed or deleted." } }
            }
        } @else {
            section.panel {
                form #role-form hx-post={ (path) "/save" } hx-target="#role-result" {
                    p { label { "Description " input name="description" value=(role.description) size="40"; } }
                    (permission_grid(&role.permissions))
                    p.note { "Saving applies at once to every user holding the role." }
                    div.actions {
                        button #save-role type="submit" { "Save" }
                        button.danger #delete-role type="button" hx-post={ (path) "/delete" } hx-target="#role-result"
                            hx-confirm={ "Delete role " (name) "?" } { "Delete" }
                    }
                }
            }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/roles",
        &format!("Role {name}"),
        content,
    )))
}

/// `POST /ui/roles/{name}/{action}`: `save` (the form's permissions and description) or
/// `delete`, as `PUT` / `DELETE /api/v1/roles/{name}` do.
pub async fn action(
    Path((name, action)): Path<(String, String)>,
    Guarded { signed, form }: Guarded<Fields>,
) -> Response {
    let (app, who) = (&signed.app, &signed.who);
    match action.as_str() {
        "save" => {
            let saved = change_role(app, who, &name, body(&form, None)).await;
            outcome(saved.map(|role| {
                format!(
                    "role {name} saved: {}",
                    if role.permissions.is_empty() {
                        "no permissions".to_owned()
                    } else {
                        role.permissions.join(", ")
                    }
                )
            }))
        }
        "delete" => match remove_role(app, who, &name).await {
            Ok(_) => go_to(&format!("/ui/roles?deleted={}", urlencode(&name))),
            Err(err) => refusal(err.status(), err.message()),
        },
        other => refusal(
            StatusCode::NOT_FOUND,
            &format!("a role has no action {other:?}: save or delete"),
        ),
    }
}
