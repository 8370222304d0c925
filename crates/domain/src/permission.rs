//! Permission strings (`<resource>:read`, `<resource>:write`, `<resource>:*`, `*:read`, `*`):
//! how a grant covers a need. The API checks callers with it (docs/security.md); the RBAC matrix
//! test predicts with it what each caller may do.

/// Whether `granted` includes `needed` (a concrete `<resource>:<read|write>`).
pub fn permission_allows(granted: &[String], needed: &str) -> bool {
    let (resource, action) = needed.split_once(':').unwrap_or((needed, ""));
    granted.iter().any(|g| {
        g == "*"
            || g == needed
            || g.strip_suffix(":*") == Some(resource)
            || (g == "*:read" && action == "read")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_cover_needs() {
        let granted = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(permission_allows(&granted(&["*"]), "users:write"));
        assert!(permission_allows(&granted(&["groups:*"]), "groups:write"));
        assert!(permission_allows(&granted(&["*:read"]), "nodes:read"));
        assert!(!permission_allows(&granted(&["*:read"]), "nodes:write"));
        assert!(!permission_allows(
            &granted(&["groups:read"]),
            "groups:write"
        ));
    }
}
