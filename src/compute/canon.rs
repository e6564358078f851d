//! The key of a computation: the canonical form of the named fields of a JSON body, plus
//! the route's name and configured version, digested with SHA-256.
//!
//! The rule (see `docs/price-cache.md`): field order and whitespace do not matter; a
//! string is compared by its characters (escapes resolved); a number is compared by
//! value within its JSON kind: an integer literal (`7`) is its exact integer, a
//! literal with a fraction or exponent (`7.0`, `7.00`, `70e-1`) is an IEEE double.
//! `7` and `7.0` are different keys: a MES that parses an integer field rejects `7.0`,
//! so a result computed for `7` must never answer `7.0`. Missing fields, `null`, arrays
//! and objects make no key (the request is forwarded untouched).

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::config::ComputeRule;

/// Why a body makes no key (the request is then forwarded untouched and not cached).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoKey {
    /// The body is not a JSON object.
    #[error("the body is not a JSON object")]
    NotObject,
    /// A key field is absent (or a path through it is not an object).
    #[error("key field {0} is missing")]
    Missing(String),
    /// A key field is `null`, an array or an object.
    #[error("key field {0} is not a string, number or boolean")]
    Mistyped(String),
}

/// The canonical form of the key fields of `body` under `rule`, one line per field in
/// the rule's order: `path=value`. Exposed for tests and the admin purge.
pub fn canonical(rule: &ComputeRule, body: &[u8]) -> Result<String, NoKey> {
    let value: Value = serde_json::from_slice(body).map_err(|_| NoKey::NotObject)?;
    let Value::Object(top) = value else {
        return Err(NoKey::NotObject);
    };
    let mut out = String::new();
    for path in &rule.key {
        let name = path.join(".");
        let v = lookup(&top, path).ok_or_else(|| NoKey::Missing(name.clone()))?;
        let scalar = scalar(v).ok_or_else(|| NoKey::Mistyped(name.clone()))?;
        out.push_str(&name);
        out.push('=');
        out.push_str(&scalar);
        out.push('\n');
    }
    Ok(out)
}

/// The key of `body` on the route `route`: hex SHA-256 of the route, the version and the
/// canonical fields (each part length-prefixed, so no two inputs can run together).
pub fn key(route: &str, rule: &ComputeRule, body: &[u8]) -> Result<String, NoKey> {
    let canonical = canonical(rule, body)?;
    let mut h = Sha256::new();
    for part in ["mesgate-compute-v1", route, &rule.version, &canonical] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

fn lookup<'a>(top: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = top.get(first)?;
    for seg in rest {
        v = v.as_object()?.get(seg)?;
    }
    Some(v)
}

/// A scalar's canonical spelling, tagged with its kind; `None` for the rest.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("s:{}", Value::String(s.clone()))),
        Value::Bool(b) => Some(format!("b:{b}")),
        Value::Number(n) => Some(number(n)),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

fn number(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return format!("i:{i}");
    }
    if let Some(u) = n.as_u64() {
        return format!("i:{u}");
    }
    // A fraction or an exponent: a double, spelled by Rust's shortest round-trip form.
    let f = n.as_f64().unwrap_or(f64::NAN);
    // -0.0 and 0.0 are one value.
    let f = if f == 0.0 { 0.0 } else { f };
    format!("f:{f:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rule(fields: &[&str]) -> ComputeRule {
        ComputeRule {
            key: fields
                .iter()
                .map(|f| f.split('.').map(str::to_owned).collect())
                .collect(),
            version: "v1".into(),
            ttl: Duration::from_secs(60),
            statuses: vec![http::StatusCode::OK],
            lease: Duration::from_secs(15),
            max_body: 1 << 16,
        }
    }

    fn k(body: &str) -> String {
        key(
            "price",
            &rule(&["model_hash", "material", "quantity"]),
            body.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn field_order_whitespace_escapes_and_other_fields_do_not_matter() {
        let a = k(r#"{"model_hash":"ab","material":"Steel","quantity":7}"#);
        let b = k(
            "{ \"quantity\" : 7,\n \"material\":\"St\\u0065el\", \"model_hash\": \"ab\", \"note\": 1 }",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn numbers_are_equal_by_value_within_their_kind() {
        let int = k(r#"{"model_hash":"ab","material":"S","quantity":7}"#);
        let float = k(r#"{"model_hash":"ab","material":"S","quantity":7.0}"#);
        assert_ne!(int, float, "7 and 7.0 are different keys");
        assert_eq!(
            float,
            k(r#"{"model_hash":"ab","material":"S","quantity":7.00}"#)
        );
        assert_eq!(
            float,
            k(r#"{"model_hash":"ab","material":"S","quantity":70e-1}"#)
        );
        assert_eq!(
            k(r#"{"model_hash":"ab","material":"S","quantity":-0.0}"#),
            k(r#"{"model_hash":"ab","material":"S","quantity":0.0}"#)
        );
        assert_ne!(
            int,
            k(r#"{"model_hash":"ab","material":"S","quantity":"7"}"#)
        );
    }

    #[test]
    fn values_route_and_version_all_change_the_key() {
        let body = r#"{"model_hash":"ab","material":"S","quantity":7}"#;
        let r = rule(&["model_hash", "material", "quantity"]);
        let base = key("price", &r, body.as_bytes()).unwrap();
        assert_ne!(
            base,
            k(r#"{"model_hash":"ab","material":"S","quantity":8}"#)
        );
        assert_ne!(base, key("other", &r, body.as_bytes()).unwrap());
        let v2 = ComputeRule {
            version: "v2".into(),
            ..r
        };
        assert_ne!(base, key("price", &v2, body.as_bytes()).unwrap());
    }

    #[test]
    fn missing_or_mistyped_fields_and_non_objects_make_no_key() {
        let r = rule(&["model_hash", "part.material"]);
        let cases = [
            ("[1]", NoKey::NotObject),
            ("not json", NoKey::NotObject),
            (
                r#"{"part":{"material":"S"}}"#,
                NoKey::Missing("model_hash".into()),
            ),
            (
                r#"{"model_hash":"a","part":"S"}"#,
                NoKey::Missing("part.material".into()),
            ),
            (
                r#"{"model_hash":null,"part":{"material":"S"}}"#,
                NoKey::Mistyped("model_hash".into()),
            ),
            (
                r#"{"model_hash":[1],"part":{"material":"S"}}"#,
                NoKey::Mistyped("model_hash".into()),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(canonical(&r, body.as_bytes()), Err(want), "{body}");
        }
        let ok = canonical(&r, br#"{"model_hash":"a","part":{"material":"S"}}"#).unwrap();
        assert_eq!(ok, "model_hash=s:\"a\"\npart.material=s:\"S\"\n");
    }
}
