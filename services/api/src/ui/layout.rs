//! What every dashboard page is made of: the head (stylesheet, htmx, its SSE extension, all
//! from `/ui/assets/`), the navigation and the signed-in user with the sign-out button.

use axum::http::StatusCode;
use maud::{DOCTYPE, Markup, html};

use super::assets::{HTMX, SSE, STYLE, asset};
use super::session::{CSRF_FIELD, Signed};

/// A page of the navigation: its title, where it is, and what its user must hold to read it
/// (`None`: anyone signed in). Pages are listed here once they exist.
struct NavPage {
    title: &'static str,
    href: &'static str,
    needs: Option<&'static str>,
}

const NAVIGATION: &[NavPage] = &[
    NavPage {
        title: "Overview",
        href: "/ui/",
        needs: None,
    },
    NavPage {
        title: "Groups",
        href: "/ui/groups",
        needs: Some("groups:read"),
    },
    NavPage {
        title: "Instances",
        href: "/ui/instances",
        needs: Some("instances:read"),
    },
    NavPage {
        title: "Nodes",
        href: "/ui/nodes",
        needs: Some("nodes:read"),
    },
    NavPage {
        title: "Templates",
        href: "/ui/templates",
        needs: Some("templates:read"),
    },
    NavPage {
        title: "Modules",
        href: "/ui/modules",
        needs: Some("modules:read"),
    },
    NavPage {
        title: "Users",
        href: "/ui/users",
        needs: Some("users:read"),
    },
    NavPage {
        title: "Roles",
        href: "/ui/roles",
        needs: Some("roles:read"),
    },
    NavPage {
        title: "API tokens",
        href: "/ui/tokens",
        needs: Some("tokens:read"),
    },
    NavPage {
        title: "Audit",
        href: "/ui/audit",
        needs: Some("audit:read"),
    },
    NavPage {
        title: "Backups",
        href: "/ui/backups",
        needs: Some("backups:read"),
    },
];

/// htmx without what the policy forbids: no inline indicator styles, no `eval`, no scripts in
/// swapped content; a refused action's answer (4xx, 5xx) is shown like a done one's.
const HTMX_CONFIG: &str = r#"{"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false,"responseHandling":[{"code":"204","swap":false},{"code":"[2345]..","swap":true}]}"#;

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="htmx-config" content=(HTMX_CONFIG);
            title { (title) " · PrexorCloud" }
            link rel="stylesheet" href=(asset(STYLE).url());
            script src=(asset(HTMX).url()) defer {}
            script src=(asset(SSE).url()) defer {}
        }
    }
}

/// A page of the signed-in user: `current` is its navigation entry's `href`. Every htmx request
/// from it carries the session's CSRF token.
pub fn page(signed: &Signed, current: &str, title: &str, content: Markup) -> Markup {
    let csrf_header = format!(r#"{{"X-CSRF-Token":"{}"}}"#, signed.csrf);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body hx-headers=(csrf_header) {
                header.top {
                    a.brand href="/ui/" { "PrexorCloud" }
                    nav {
                        @for entry in NAVIGATION {
                            @if entry.needs.is_none_or(|p| signed.who.require(p).is_ok()) {
                                @if entry.href == current {
                                    a href=(entry.href) aria-current="page" { (entry.title) }
                                } @else {
                                    a href=(entry.href) { (entry.title) }
                                }
                            }
                        }
                    }
                    div.who {
                        span #signed-in-user { (signed.who.user) }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name=(CSRF_FIELD) value=(signed.csrf);
                            button.quiet #sign-out type="submit" { "Sign out" }
                        }
                    }
                }
                main { (content) }
            }
        }
    }
}

/// A page without a signed-in user (sign-in, errors).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { main { (content) } }
        }
    }
}

/// What a refused or failed request shows.
pub fn problem(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    bare(
        title,
        html! {
            section.panel {
                h1 { (status.as_u16()) " " (title) }
                p.error role="alert" { (message) }
                p { a href="/ui/" { "Back to the overview" } }
            }
        },
    )
}
