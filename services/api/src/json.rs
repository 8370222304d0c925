//! Stored documents as API JSON: `_id` becomes `id`, numbers stay numbers, object ids are hex,
//! and internal bookkeeping fields (`_fence`, ...) are left out.

use mongodb::bson::Bson;
use serde_json::{Map, Value};

/// A top-level record: `_id` is renamed to `id`.
#[cfg(test)]
pub fn record(doc: mongodb::bson::Document) -> Value {
    let mut out = Map::new();
    for (key, value) in doc {
        let key = match key.as_str() {
            "_id" => "id".to_owned(),
            k if k.starts_with('_') => continue,
            _ => key,
        };
        out.insert(key, value_of(value));
    }
    Value::Object(out)
}

pub fn value_of(value: Bson) -> Value {
    match value {
        Bson::Double(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(value_of).collect()),
        Bson::Document(doc) => Value::Object(
            doc.into_iter()
                .map(|(k, v)| (k, value_of(v)))
                .collect::<Map<String, Value>>(),
        ),
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Int32(n) => Value::from(n),
        Bson::Int64(n) => Value::from(n),
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::DateTime(at) => Value::from(at.timestamp_millis()),
        other => other.into_relaxed_extjson(),
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;
    use mongodb::bson::oid::ObjectId;

    use super::*;

    #[test]
    fn ids_are_renamed_and_numbers_kept() {
        let oid = ObjectId::new();
        let json = record(
            doc! { "_id": oid, "_fence": 1, "n": 5_i64, "nested": { "_id": "x", "ok": true } },
        );
        assert!(json.get("_fence").is_none());
        assert_eq!(json["id"], oid.to_hex());
        assert_eq!(json["n"], 5);
        assert_eq!(json["nested"]["_id"], "x");
        assert_eq!(json["nested"]["ok"], true);
    }
}
