/// Why a name (group, node, workflow scope, replica id) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; at most 63 are allowed")]
    TooLong(usize),
    #[error(
        "contains {0:?}; use lowercase letters, digits, '-' and '_' only, starting with a letter or digit"
    )]
    BadCharacter(char),
}

/// Validates a name used in lease keys, document ids and URLs: 1–63 characters of `[a-z0-9_-]`,
/// starting with a letter or digit. Keeping ':' out is what makes lease keys unambiguous.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    let len = name.chars().count();
    if len > 63 {
        return Err(NameError::TooLong(len));
    }
    if !first.is_ascii_lowercase() && !first.is_ascii_digit() {
        return Err(NameError::BadCharacter(first));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        Some(bad) => Err(NameError::BadCharacter(bad)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_names() {
        for name in ["lobby", "survival-2", "node_1", "0abc"] {
            assert_eq!(validate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_bad_names_with_the_reason() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("Lobby"), Err(NameError::BadCharacter('L')));
        assert_eq!(validate_name("a:b"), Err(NameError::BadCharacter(':')));
        assert_eq!(validate_name("-a"), Err(NameError::BadCharacter('-')));
        assert_eq!(validate_name(&"a".repeat(64)), Err(NameError::TooLong(64)));
    }
}
