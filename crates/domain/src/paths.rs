//! Paths relative to a server's directory, as plans, config rules and captures name them.

use std::path::{Component, Path};

use crate::FieldProblem;

/// Paths one capture (save to template) may name.
pub const MAX_CAPTURE_PATHS: usize = 64;
/// The longest path a capture may name.
const MAX_CAPTURE_PATH_LEN: usize = 1024;

/// Whether `path` stays inside the directory it is relative to: not absolute, and made of plain
/// names and `.` only (no `..`).
pub fn stays_inside(path: &str) -> bool {
    let path = Path::new(path);
    !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The first problem with the paths of a capture (save to template), naming its field
/// (`paths`, `paths[i]`): 1 to [`MAX_CAPTURE_PATHS`] of them, each naming something inside the
/// instance directory. The api checks them before it asks the node, the node again before it
/// packs anything.
pub fn capture_paths_problem(paths: &[String]) -> Option<FieldProblem> {
    if paths.is_empty() || paths.len() > MAX_CAPTURE_PATHS {
        return Some(FieldProblem {
            field: "paths".into(),
            message: format!(
                "name 1 to {MAX_CAPTURE_PATHS} paths ({} given)",
                paths.len()
            ),
        });
    }
    paths.iter().enumerate().find_map(|(i, path)| {
        let names_something = Path::new(path)
            .components()
            .any(|c| matches!(c, Component::Normal(_)));
        let fine = path.len() <= MAX_CAPTURE_PATH_LEN && stays_inside(path) && names_something;
        (!fine).then(|| FieldProblem {
            field: format!("paths[{i}]"),
            message: format!(
                "{path:?} must be relative to the instance directory, inside it, without \"..\""
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_stays_inside_without_a_root_or_dot_dot() {
        for inside in ["world", "./plugins/x.yml", "a/./b", "."] {
            assert!(stays_inside(inside), "{inside}");
        }
        for outside in ["/etc/passwd", "../x", "world/../../x"] {
            assert!(!stays_inside(outside), "{outside}");
        }
    }

    #[test]
    fn capture_paths_name_something_inside_and_their_field() {
        let field = |paths: &[&str]| {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            capture_paths_problem(&paths).map(|p| p.field)
        };
        assert_eq!(field(&["world", "./plugins/x.yml"]), None);
        assert_eq!(field(&[]).as_deref(), Some("paths"));
        assert_eq!(field(&["world", "../etc"]).as_deref(), Some("paths[1]"));
        for bad in ["", "/etc/passwd", "."] {
            assert_eq!(field(&[bad]).as_deref(), Some("paths[0]"), "{bad:?}");
        }
        let long = "a/".repeat(600);
        assert_eq!(field(&[long.as_str()]).as_deref(), Some("paths[0]"));
        let problem = capture_paths_problem(&["../x".to_string()]).unwrap();
        assert!(problem.message.contains("\"../x\""), "{}", problem.message);
    }
}
