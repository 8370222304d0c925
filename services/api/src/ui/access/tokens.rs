//! `/ui/tokens`: the signed-in user's API tokens, or with `users:read` another user's or all
//! (`?owner=`), as `GET /api/v1/auth/tokens` lists them ([`crate::auth::tokens_page`]); a new
//! token ([`crate::auth::new_token`]: name, permissions, expiry), shown this once; revoking one
//! ([`crate::auth::revoke_token`]).

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{Html, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Fields, announce, announced, choices, code_list, part, permission_grid, value, values,
};
use crate::app::App;
use crate::auth::{NewToken, Principal, new_token, revoke_token, tokens_page};
use crate::ui::groups::urlencode;
use crate::ui::session::{Guarded, Signed};
use crate::ui::widgets::{After, may, refusal, when};
use crate::ui::{UiError, html, layout};

/// Tokens the list shows at once.
const PAGE: i64 = 100;

/// Whose tokens the list shows: none or empty, the signed-in user's.
#[derive(Deserialize)]
pub struct Owner {
    owner: Option<String>,
}

impl Owner {
    fn name(&self) -> Option<&str> {
        self.owner
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty())
    }

    /// `url` asking for the same owner's tokens after `after` (a cursor, if any).
    fn url(&self, url: &str, after: Option<&str>) -> String {
        let mut query = Vec::new();
        if let Some(owner) = self.name() {
            query.push(format!("owner={}", urlencode(owner)));
        }
        if let Some(after) = after {
            query.push(format!("after={}", urlencode(after)));
        }
        if query.is_empty() {
            url.to_owned()
        } else {
            format!("{url}?{}", query.join("&"))
        }
    }
}

/// `GET /ui/tokens`.
pub async fn list(
    signed: Signed,
    Query(after): Query<After>,
    Query(owner): Query<Owner>,
) -> Result<Html<String>, UiError> {
    let who = &signed.who;
    let rows = rows_part(&signed.app, who, &after, &owner).await?;
    let page = after.page(PAGE);
    let content = html! {
        h1 { "API tokens" }
        @if may(who, "users:read") {
            form.filters #token-owner-form method="get" action="/ui/tokens" {
                label { "Owner " input name="owner" value=(owner.name().unwrap_or_default())
                    placeholder="you; a user name, or all"; }
                button type="submit" { "Show" }
            }
        }
        section.panel {
            div #token-rows hx-get=(owner.url("/ui/tokens/_rows", page.after.as_deref()))
                hx-trigger="tokens-changed from:body" hx-target="this" { (rows) }
            div #token-action-result aria-live="polite" {}
        }
        @if may(who, "tokens:write") {
            section.panel #new-token-panel {
                h2 { "New API token" }
                p.note { "For scripts and prexorctl: sent as " code { "Authorization: Bearer pxt_…" } ". It may do at most what you may, and never outlives its expiry." }
                form.group-form #new-token-form hx-post="/ui/tokens/_new" hx-target="#token-result" {
                    div.row {
                        div.field { label { "Name " input name="name" required maxlength="100" placeholder="ci-deploy"; } }
                        div.field { label { "Expires in (e.g. 30d, 12h; empty: never) " input name="expiresIn" placeholder="30d"; } }
                    }
                    div.field { (choices("Permissions (none ticked: everything you hold)", permission_grid(&[]))) }
                    p { button #create-token type="submit" { "Create token" } }
                }
                div #token-result aria-live="polite" {}
            }
        }
    };
    Ok(html(layout::page(
        &signed,
        "/ui/tokens",
        "API tokens",
        content,
    )))
}

/// `GET /ui/tokens/_rows`: the list's table, as the page reloads it.
pub async fn rows(
    signed: Signed,
    Query(after): Query<After>,
    Query(owner): Query<Owner>,
) -> Result<Html<String>, UiError> {
    Ok(html(
        rows_part(&signed.app, &signed.who, &after, &owner).await?,
    ))
}

async fn rows_part(
    app: &App,
    who: &Principal,
    after: &After,
    owner: &Owner,
) -> Result<Markup, UiError> {
    let tokens = tokens_page(app, who, owner.name(), &after.page(PAGE)).await?;
    let write = may(who, "tokens:write");
    let never = || "never".to_owned();
    Ok(html! {
        @if tokens.items.is_empty() {
            p.note #no-tokens { "No API tokens." }
        } @else {
            table #tokens {
                thead { tr {
                    th { "Name" } th { "Id" } th { "Owner" } th { "Permissions" } th { "Created" }
                    th { "Expires" } th { "Last used" } th {}
                } }
                tbody {
                    @for token in &tokens.items {
                        tr.token data-token=(token.id) data-name=(token.name) data-owner=(token.owner) {
                            td { (token.name) }
                            td.mono { (token.id) }
                            td { (token.owner) }
                            td { (code_list(&token.permissions)) }
                            td { (when(token.created_at_ms)) }
                            td { (token.expires_at_ms.map_or_else(never, when)) }
                            td { (token.last_used_at_ms.map_or_else(never, when)) }
                            td.actions {
                                @if write && (token.owner == who.user || may(who, "users:write")) {
                                    button.small.danger.revoke hx-post={ "/ui/tokens/" (urlencode(&token.id)) "/revoke" }
                                        hx-target="#token-action-result"
                                        hx-confirm={ "Revoke API token " (token.name) " (" (token.id) ")? Whatever uses it is refused from now on." } {
                                        "Revoke"
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &tokens.next_cursor {
            p { a href=(owner.url("/ui/tokens", Some(next))) { "Next page" } }
        }
    })
}

/// `POST /ui/tokens/_new`: the new token, shown this once, or the refusal.
pub async fn create(Guarded { signed, form }: Guarded<Fields>) -> Response {
    let permissions = values(&form, "permissions");
    let expires_in = Some(value(&form, "expiresIn").to_owned()).filter(|e| !e.is_empty());
    let new = NewToken {
        name: value(&form, "name").to_owned(),
        permissions: (!permissions.is_empty()).then_some(permissions),
        expires_in,
    };
    match new_token(&signed.app, &signed.who, new).await {
        Err(err) => refusal(err.status(), err.message()),
        Ok(created) => {
            let view = &created.view;
            let expires = view.expires_at_ms.map_or_else(
                || "it never expires".to_owned(),
                |ms| format!("valid until {}", when(ms)),
            );
            let shown = html! {
                div.ok #token-shown role="status" {
                    p { "API token " strong { (view.name) } " (" span.mono { (view.id) } "), " (expires) ":" }
                    p { code.token #token-secret { (created.token) } }
                    p.warn { strong { "Copy it now:" } " it is shown only this once and cannot be read again (create a new one if it is lost)." }
                    p.note { "Permissions: " (code_list(&view.permissions)) }
                }
            };
            announce(part(StatusCode::CREATED, shown), "tokens-changed")
        }
    }
}

/// `POST /ui/tokens/{id}/revoke`.
pub async fn revoke(Path(id): Path<String>, Guarded { signed, .. }: Guarded<Fields>) -> Response {
    let revoked = revoke_token(&signed.app, &signed.who, &id).await;
    announced(
        revoked.map(|_| format!("API token {id} revoked")),
        "tokens-changed",
    )
}
