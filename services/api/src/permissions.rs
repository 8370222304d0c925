//! Permissions (`<resource>:read`, `<resource>:write`, `<resource>:*`, `*:read`, `*`) and the
//! built-in roles. Custom roles are stored in MongoDB (`roles`) and checked against the same
//! vocabulary.

/// Everything a permission can name.
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

/// The built-in roles: `admin` may do everything; `operator` runs the network (groups,
/// instances, nodes, templates, deployments, modules) and reads the audit log; `viewer` reads it.
pub fn builtin(role: &str) -> Option<Vec<String>> {
    const RUN: &[&str] = &[
        "groups",
        "instances",
        "nodes",
        "templates",
        "deployments",
        "modules",
    ];
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
            let mut granted = read(RUN);
            granted.extend(RUN.iter().map(|r| format!("{r}:write")));
            granted.push("audit:read".to_owned());
            granted.push("tokens:write".to_owned());
            granted.push("tokens:read".to_owned());
            Some(granted)
        }
        "viewer" => Some(read(RUN)),
        _ => None,
    }
}

pub const BUILTIN_ROLES: &[&str] = &["admin", "operator", "viewer"];

/// Whether `granted` includes `needed` (a concrete `<resource>:<read|write>`).
pub fn allows(granted: &[String], needed: &str) -> bool {
    let (resource, action) = needed.split_once(':').unwrap_or((needed, ""));
    granted.iter().any(|g| {
        g == "*"
            || g == needed
            || g.strip_suffix(":*") == Some(resource)
            || (g == "*:read" && action == "read")
    })
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
