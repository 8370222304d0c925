//! A placement's variables as its node gets them: the persisted plan holds each variable as the
//! group declared it (a secret only as where its value comes from), and the values are read
//! here, when the plan is dispatched, on this scheduler's host (docs/scheduling.md, "Variables
//! and secrets"). A secret's value goes into the start command to the instance's node and
//! nowhere else: not into MongoDB, a log line or an error.

use std::collections::BTreeMap;
use std::io::Read;

use mongodb::bson::Document;
use prexor_domain::variables::{MAX_SECRET_BYTES, SecretSource};
use prexor_domain::{Variable, VariableType};

/// The values of the variables persisted in `plan`, secrets read from their sources; why not,
/// naming the variable and its source (never a value).
pub(super) fn resolve(plan: &Document) -> Result<BTreeMap<String, String>, String> {
    let Ok(declared) = plan.get_document("variables") else {
        return Ok(BTreeMap::new());
    };
    let mut values = BTreeMap::new();
    for (name, stored) in declared {
        let variable: Variable = mongodb::bson::from_bson(stored.clone())
            .map_err(|e| format!("variable {name} cannot be read: {e}"))?;
        let value = if variable.kind == VariableType::Secret {
            let from = variable.from.as_deref().unwrap_or_default();
            read_secret(from).map_err(|e| format!("secret {name} ({from}): {e}"))?
        } else {
            variable
                .plain_value()
                .ok_or_else(|| format!("variable {name} has no value"))?
        };
        values.insert(name.clone(), value);
    }
    Ok(values)
}

/// A secret's value from `from` (one trailing line break dropped, as files end with one).
fn read_secret(from: &str) -> Result<String, String> {
    let value = match SecretSource::parse(from)? {
        SecretSource::Env(name) => std::env::var(name)
            .map_err(|_| format!("{name} is not set in the environment of this scheduler"))?,
        SecretSource::File(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| format!("cannot open it on this scheduler's host: {e}"))?;
            let mut text = String::new();
            file.take(MAX_SECRET_BYTES + 1)
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read it as text: {e}"))?;
            if text.len() as u64 > MAX_SECRET_BYTES {
                return Err(format!("it is larger than {MAX_SECRET_BYTES} bytes"));
            }
            text
        }
    };
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value);
    if value.is_empty() {
        return Err("it is empty".to_owned());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn values_and_secrets_are_read_and_a_missing_secret_is_named_without_a_value() {
        let file = std::env::temp_dir().join(format!("prexor-secret-{}", std::process::id()));
        std::fs::write(&file, "s3cret-from-file\n").unwrap();
        let plan = doc! { "variables": {
            "MOTD": { "type": "string", "value": "Hello" },
            "SLOTS": { "type": "int", "value": 20_i64 },
            "FILE": { "type": "secret", "from": format!("file://{}", file.display()) },
        } };
        let values = resolve(&plan).unwrap();
        assert_eq!(values["MOTD"], "Hello");
        assert_eq!(values["SLOTS"], "20");
        assert_eq!(values["FILE"], "s3cret-from-file");
        let missing = doc! { "variables": {
            "RCON": { "type": "secret", "from": "env://PREXOR_TEST_SURELY_UNSET_VARIABLE" },
        } };
        let err = resolve(&missing).unwrap_err();
        assert_eq!(
            err,
            "secret RCON (env://PREXOR_TEST_SURELY_UNSET_VARIABLE): PREXOR_TEST_SURELY_UNSET_VARIABLE is not set in the environment of this scheduler"
        );
        assert!(resolve(&doc! {}).unwrap().is_empty());
        std::fs::remove_file(file).unwrap();
    }
}
