/// A connection URI fit for logs and status pages: any `user:password@` is replaced by `***@`.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}{tail}", &authority[at + 1..]),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_credentials_only() {
        assert_eq!(
            redact_uri("mongodb://admin:s3cr@t@db1:27017,db2/?replicaSet=rs0"),
            "mongodb://***@db1:27017,db2/?replicaSet=rs0"
        );
        assert_eq!(
            redact_uri("redis://:pw@valkey:6379/0"),
            "redis://***@valkey:6379/0"
        );
        assert_eq!(redact_uri("redis://valkey:6379"), "redis://valkey:6379");
        assert_eq!(
            redact_uri("mongodb://db/?authSource=a@b"),
            "mongodb://db/?authSource=a@b"
        );
    }
}
