//! Permissions (`<resource>:read`, `<resource>:write`, `<resource>:*`, `*:read`, `*`) and the
//! built-in roles. Custom roles are stored in MongoDB (`roles`) and checked against the same
//! vocabulary.

pub use prexor_domain::permission_allows as allows;

/// Everything a permission can name: first the six the network is made of ([`NETWORK`]).
pub const RESOURCES: &[&str] = &[
    "groups",
    "instances",
    "nodes",
    "templates",
    "deployments",
    "modules",
    "users",
    "roles",
    "tokens",
    "audit",
    "system",
    "events",
    "backups",
];

/// What `operator` runs: groups, instances, nodes, templates, deployments and modules.
const NETWORK: &[&str] = RESOURCES.split_at(6).0;

/// The built-in roles: `admin` may do everything; `operator` runs the network (groups,
/// instances, nodes, templates, deployments, modules) and reads the audit log; `viewer` reads it.
pub fn builtin(role: &str) -> Option<Vec<String>> {
    let read = |resources: &[&str]| -> Vec<String> {
        resources
            .iter()
            .map(|r| format!("{r}:read"))
            .chain(["system:read".to_owned(), "events:read".to_owned()])
            .collect()
    };
    match role {
        "admin" => Some(vec!["*".to_owned()]),
        "operator" => {
            let mut granted = read(NETWORK);
            granted.extend(NETWORK.iter().map(|r| format!("{r}:write")));
            granted.push("audit:read".to_owned());
            granted.push("tokens:write".to_owned());
            granted.push("tokens:read".to_owned());
            Some(granted)
        }
        "viewer" => Some(read(NETWORK)),
        _ => None,
    }
}

pub const BUILTIN_ROLES: &[&str] = &["admin", "operator", "viewer"];

/// `METHOD "path" => "permission",` rows as `(method, path, permission)` triples.
macro_rules! routes {
    ($($method:ident $path:literal => $needed:literal,)*) => {
        &[$((stringify!($method), $path, $needed)),*]
    };
}

/// What each operation asks of its caller, as documented (`x-permission` in the OpenAPI
/// document) and checked by the RBAC matrix test (`tests/tests/rbac.rs`): one or more
/// permissions (all needed, comma-separated), `signed-in` (any session or API token),
/// `instance` (an instance token, for the plugin in a game server) or `none`.
pub const ROUTES: &[(&str, &str, &str)] = routes! {
    GET "/api/v1/system/info" => "none",
    GET "/api/v1/system/ca" => "none",
    GET "/api/v1/system/status" => "system:read",
    POST "/api/v1/auth/login" => "none",
    POST "/api/v1/auth/logout" => "signed-in",
    GET "/api/v1/auth/me" => "signed-in",
    POST "/api/v1/auth/password" => "signed-in",
    // Another user's tokens also need users:read (listing) or users:write (revoking).
    GET "/api/v1/auth/tokens" => "tokens:read",
    POST "/api/v1/auth/tokens" => "tokens:write",
    DELETE "/api/v1/auth/tokens/{id}" => "tokens:write",
    GET "/api/v1/users" => "users:read",
    POST "/api/v1/users" => "users:write",
    // Anyone signed in reads their own user.
    GET "/api/v1/users/{name}" => "users:read",
    // Resetting another user's password needs users:* (docs/security.md).
    PATCH "/api/v1/users/{name}" => "users:write",
    DELETE "/api/v1/users/{name}" => "users:write",
    GET "/api/v1/roles" => "roles:read",
    POST "/api/v1/roles" => "roles:write",
    GET "/api/v1/roles/{name}" => "roles:read",
    PUT "/api/v1/roles/{name}" => "roles:write",
    DELETE "/api/v1/roles/{name}" => "roles:write",
    GET "/api/v1/audit" => "audit:read",
    GET "/api/v1/backups" => "backups:read",
    POST "/api/v1/backups" => "backups:write",
    GET "/api/v1/backups/{id}" => "backups:read",
    DELETE "/api/v1/backups/{id}" => "backups:write",
    GET "/api/v1/backups/{id}/archive" => "backups:read",
    PUT "/api/v1/backups/{id}/archive" => "backups:write",
    POST "/api/v1/backups/{id}/verify" => "backups:read",
    POST "/api/v1/backups/{id}/restore" => "backups:write",
    GET "/api/v1/groups" => "groups:read",
    POST "/api/v1/groups" => "groups:write",
    GET "/api/v1/groups/{name}" => "groups:read",
    PUT "/api/v1/groups/{name}" => "groups:write",
    DELETE "/api/v1/groups/{name}" => "groups:write",
    GET "/api/v1/groups/{name}/explain" => "groups:read",
    POST "/api/v1/groups/{name}/instances" => "instances:write",
    GET "/api/v1/groups/{name}/deployments" => "deployments:read",
    POST "/api/v1/groups/{name}/deployments" => "deployments:write,groups:write",
    GET "/api/v1/deployments/{id}" => "deployments:read",
    POST "/api/v1/deployments/{id}/pause" => "deployments:write",
    POST "/api/v1/deployments/{id}/resume" => "deployments:write",
    POST "/api/v1/deployments/{id}/rollback" => "deployments:write,groups:write",
    GET "/api/v1/instances" => "instances:read",
    GET "/api/v1/instances/{id}" => "instances:read",
    GET "/api/v1/instances/{id}/crashes" => "instances:read",
    GET "/api/v1/instances/{id}/console" => "instances:read",
    POST "/api/v1/instances/{id}/command" => "instances:write",
    POST "/api/v1/instances/{id}/save-to-template" => "templates:write,instances:read",
    POST "/api/v1/instances/{id}/stop" => "instances:write",
    POST "/api/v1/instances/{id}/kill" => "instances:write",
    GET "/api/v1/nodes" => "nodes:read",
    GET "/api/v1/nodes/{id}" => "nodes:read",
    DELETE "/api/v1/nodes/{id}" => "nodes:write",
    POST "/api/v1/nodes/{id}/cordon" => "nodes:write",
    POST "/api/v1/nodes/{id}/uncordon" => "nodes:write",
    POST "/api/v1/nodes/{id}/join-token" => "nodes:write",
    POST "/api/v1/nodes/{id}/cert-issue" => "nodes:write",
    GET "/api/v1/nodes/{id}/drain" => "nodes:read",
    POST "/api/v1/nodes/{id}/drain" => "nodes:write",
    POST "/api/v1/nodes/{id}/undrain" => "nodes:write",
    GET "/api/v1/templates" => "templates:read",
    GET "/api/v1/templates/{name}" => "templates:read",
    PUT "/api/v1/templates/{name}" => "templates:write",
    DELETE "/api/v1/templates/{name}" => "templates:write",
    POST "/api/v1/templates/{name}/rollback" => "templates:write",
    GET "/api/v1/templates/{name}/versions/{version}/content" => "templates:read",
    GET "/api/v1/modules" => "modules:read",
    GET "/api/v1/modules/mutation" => "modules:read",
    GET "/api/v1/modules/{name}" => "modules:read",
    DELETE "/api/v1/modules/{name}" => "modules:write",
    PUT "/api/v1/modules/{name}/versions/{version}" => "modules:write",
    POST "/api/v1/modules/{name}/install" => "modules:write",
    POST "/api/v1/modules/{name}/upgrade" => "modules:write",
    POST "/api/v1/modules/{name}/uninstall" => "modules:write",
    GET "/api/v1/events" => "events:read",
    POST "/api/v1/workload/ready" => "instance",
    POST "/api/v1/workload/players" => "instance",
    PUT "/api/v1/workload/players" => "instance",
    POST "/api/v1/workload/metrics" => "instance",
};

/// The documented permission of `method path` (`path` as in the OpenAPI document).
pub fn route_permission(method: &str, path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(m, p, _)| *m == method && *p == path)
        .map(|(_, _, needed)| *needed)
}

/// Whether every permission of `requested` is within `granted` (a token or role can never
/// exceed what its creator holds).
pub fn within(requested: &[String], granted: &[String]) -> Result<(), String> {
    for permission in requested {
        let covered = match permission.as_str() {
            "*" => granted.iter().any(|g| g == "*"),
            "*:read" => RESOURCES
                .iter()
                .all(|r| allows(granted, &format!("{r}:read"))),
            p if p.ends_with(":*") => {
                let resource = &p[..p.len() - 2];
                allows(granted, &format!("{resource}:read"))
                    && allows(granted, &format!("{resource}:write"))
            }
            p => allows(granted, p),
        };
        if !covered {
            return Err(format!("{permission:?} is more than you hold"));
        }
    }
    Ok(())
}

/// Checks the shape of a permission string.
pub fn validate(permission: &str) -> Result<(), String> {
    if permission == "*" || permission == "*:read" {
        return Ok(());
    }
    let Some((resource, action)) = permission.split_once(':') else {
        return Err(format!(
            "{permission:?} is not a permission; use <resource>:read, <resource>:write, <resource>:*, *:read or *"
        ));
    };
    if !RESOURCES.contains(&resource) {
        return Err(format!(
            "{permission:?}: unknown resource {resource:?} (one of {})",
            RESOURCES.join(", ")
        ));
    }
    if !matches!(action, "read" | "write" | "*") {
        return Err(format!(
            "{permission:?}: unknown action {action:?} (read, write or *)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn built_in_roles_grant_what_they_say() {
        assert_eq!(
            NETWORK,
            [
                "groups",
                "instances",
                "nodes",
                "templates",
                "deployments",
                "modules"
            ]
        );
        let viewer = builtin("viewer").unwrap();
        assert!(allows(&viewer, "groups:read"));
        assert!(!allows(&viewer, "groups:write"));
        assert!(!allows(&viewer, "users:read"));
        let operator = builtin("operator").unwrap();
        assert!(allows(&operator, "nodes:write"));
        assert!(!allows(&operator, "users:write"));
        assert!(allows(&builtin("admin").unwrap(), "roles:write"));
    }

    #[test]
    fn scoped_grants_cannot_be_exceeded() {
        let operator = builtin("operator").unwrap();
        assert!(within(&owned(&["groups:*", "nodes:read"]), &operator).is_ok());
        assert!(within(&owned(&["users:read"]), &operator).is_err());
        assert!(within(&owned(&["*"]), &operator).is_err());
        assert!(within(&owned(&["*:read"]), &operator).is_err());
        assert!(within(&owned(&["*:read"]), &owned(&["*"])).is_ok());
    }

    #[test]
    fn permission_strings_are_checked() {
        assert!(validate("groups:write").is_ok());
        assert!(validate("*:read").is_ok());
        assert!(validate("groups").unwrap_err().contains("not a permission"));
        assert!(
            validate("planets:read")
                .unwrap_err()
                .contains("unknown resource")
        );
        assert!(
            validate("groups:delete")
                .unwrap_err()
                .contains("unknown action")
        );
    }
}
