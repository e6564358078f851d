//! One indexed row: an item of a list answer (or a write's answer) with the four fields the
//! index needs read out of it, and its bytes kept exactly as received. It owns the field
//! shape and the newest-first sort order; it does not decide whether a row is applied
//! (that is the mirror's version rule).

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

/// Where the index finds its four fields in an item: dotted paths into the JSON object
/// (`id`, `customer.id`), so a MES whose orders nest or rename them needs no code change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowShape {
    /// The entity's identity: an unsigned integer (the MES's order `id`).
    pub id: String,
    /// What the index partitions by: a string (the order's `status`).
    pub partition: String,
    /// What the MES sorts by, newest first: a string whose byte order is time order (the
    /// fixed-width ISO-8601 `created_at`), ties broken by `id`, newest (highest) first.
    pub sort: String,
    /// The entity's version: an unsigned integer the MES raises on every change, so two
    /// states of one order can be told apart wherever each came from.
    pub version: String,
}

impl Default for RowShape {
    /// The simulator's and the legacy MES's order shape.
    fn default() -> Self {
        Self {
            id: "id".into(),
            partition: "status".into(),
            sort: "created_at".into(),
            version: "version".into(),
        }
    }
}

/// Position of a row in a partition: ordered newest first, the MES's rule. The smallest key
/// is the newest order, so an ascending walk of an ordered set is a page walk.
///
/// Sort field descending (byte order, which is time order for the fixed-width timestamps the
/// MES sends), then id descending: exactly the simulator's `(created_ms, id)` walked in
/// reverse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SortKey {
    /// The sort field's text; shared, because the mirror keeps the key twice (in the
    /// partition's ordered set and beside the row, to find it again when the row moves).
    at: Arc<str>,
    id: u64,
}

impl SortKey {
    /// A key from the sort field's text and the id (tests and callers building rows by
    /// hand; parsing goes through [`Row::parse`]).
    pub fn new(at: &str, id: u64) -> Self {
        Self { at: at.into(), id }
    }

    /// The sort field's text, e.g. the `created_at` timestamp.
    pub fn at(&self) -> &str {
        &self.at
    }

    /// The id, the tie-breaker.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Ord for SortKey {
    /// Newest first: a greater sort field, then a greater id, orders *before*.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .as_bytes()
            .cmp(self.at.as_bytes())
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for SortKey {
    /// Total, see [`Ord`].
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One entity's state as some answer carried it: what the index needs to place it, and the
/// item's bytes, served back verbatim in composed pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The entity's id.
    pub id: u64,
    /// The partition (status) this state is in.
    pub partition: String,
    /// Where it sorts in its partition.
    pub sort: SortKey,
    /// The state's version: the mirror keeps the newest it has seen.
    pub version: u64,
    /// The item exactly as the MES sent it (never re-serialized: key order, number
    /// formatting and escapes stay the MES's own).
    pub json: Bytes,
}

/// Why an item could not be read as a row; names the field and its configured path, so a
/// wrong `RowShape` is found from the message alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RowError {
    /// The bytes are not JSON at all.
    #[error("item is not valid JSON: {0}")]
    NotJson(String),
    /// A field the shape names is absent (or a path segment is not an object).
    #[error("item has no {role} field `{path}`")]
    Missing {
        /// Which of the four fields: `id`, `partition`, `sort` or `version`.
        role: &'static str,
        /// The configured dotted path.
        path: String,
    },
    /// The field is there with the wrong JSON type.
    #[error("item's {role} field `{path}` must be {expected}, found {found}")]
    Mistyped {
        /// Which of the four fields.
        role: &'static str,
        /// The configured dotted path.
        path: String,
        /// What the index needs there.
        expected: &'static str,
        /// What the item has there (`a string`, `a negative number`, `null` …).
        found: &'static str,
    },
}

impl Row {
    /// Reads the four fields of `shape` out of one item and keeps `json` as is.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mesgate::index::{Row, RowShape};
    ///
    /// let item = Bytes::from_static(
    ///     br#"{"id":7,"status":"SHIPPED","created_at":"2026-01-01T00:00:00.000Z","version":3}"#,
    /// );
    /// let row = Row::parse(&RowShape::default(), item.clone()).unwrap();
    /// assert_eq!((row.id, row.partition.as_str(), row.version), (7, "SHIPPED", 3));
    /// assert_eq!(row.json, item);
    /// ```
    pub fn parse(shape: &RowShape, json: Bytes) -> Result<Row, RowError> {
        let value: Value =
            serde_json::from_slice(&json).map_err(|e| RowError::NotJson(e.to_string()))?;
        let id = unsigned(&value, "id", &shape.id)?;
        let partition = string(&value, "partition", &shape.partition)?.to_owned();
        let at = string(&value, "sort", &shape.sort)?;
        let version = unsigned(&value, "version", &shape.version)?;
        Ok(Row {
            id,
            partition,
            sort: SortKey::new(at, id),
            version,
            json,
        })
    }
}

/// The value at a dotted path: object keys only (an order's fields are not in arrays).
fn field<'v>(value: &'v Value, role: &'static str, path: &str) -> Result<&'v Value, RowError> {
    path.split('.')
        .try_fold(value, |v, segment| v.as_object()?.get(segment))
        .ok_or_else(|| RowError::Missing {
            role,
            path: path.to_owned(),
        })
}

fn unsigned(value: &Value, role: &'static str, path: &str) -> Result<u64, RowError> {
    let v = field(value, role, path)?;
    v.as_u64()
        .ok_or_else(|| mistyped(role, path, "an unsigned integer", v))
}

fn string<'v>(value: &'v Value, role: &'static str, path: &str) -> Result<&'v str, RowError> {
    let v = field(value, role, path)?;
    v.as_str()
        .ok_or_else(|| mistyped(role, path, "a string", v))
}

fn mistyped(role: &'static str, path: &str, expected: &'static str, found: &Value) -> RowError {
    RowError::Mistyped {
        role,
        path: path.to_owned(),
        expected,
        found: type_name(found),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "a number",
        Value::Number(n) if n.is_i64() => "a negative number",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, status: &str, at: &str, version: u64) -> Bytes {
        Bytes::from(format!(
            r#"{{"id":{id},"number":"ORD-{id:06}","status":"{status}","created_at":"{at}","version":{version}}}"#
        ))
    }

    #[test]
    fn parses_the_four_fields_and_keeps_the_bytes() {
        // Odd spacing and key order survive: the bytes are never re-serialized.
        let json = Bytes::from_static(
            br#"{ "version" : 4, "status":"SHIPPED","id":12,"created_at":"2026-01-01T00:00:00.000Z","price":1.50}"#,
        );
        let row = Row::parse(&RowShape::default(), json.clone()).unwrap();
        assert_eq!(row.id, 12);
        assert_eq!(row.partition, "SHIPPED");
        assert_eq!(row.version, 4);
        assert_eq!(row.sort, SortKey::new("2026-01-01T00:00:00.000Z", 12));
        assert_eq!(row.json, json);
    }

    #[test]
    fn dotted_paths_reach_nested_fields() {
        let shape = RowShape {
            id: "order.id".into(),
            partition: "state.name".into(),
            sort: "order.created".into(),
            version: "meta.rev".into(),
        };
        let json = Bytes::from_static(
            br#"{"order":{"id":5,"created":"2026"},"state":{"name":"X"},"meta":{"rev":2}}"#,
        );
        let row = Row::parse(&shape, json).unwrap();
        assert_eq!((row.id, row.partition.as_str(), row.version), (5, "X", 2));
        assert_eq!(row.sort.at(), "2026");
    }

    #[test]
    fn errors_name_the_field_and_what_is_wrong() {
        let shape = RowShape::default();
        let cases: [(&[u8], &str); 8] = [
            (b"{", "item is not valid JSON"),
            (
                br#"{"status":"A","created_at":"t","version":1}"#,
                "item has no id field `id`",
            ),
            (
                br#"{"id":"7","status":"A","created_at":"t","version":1}"#,
                "item's id field `id` must be an unsigned integer, found a string",
            ),
            (
                br#"{"id":-7,"status":"A","created_at":"t","version":1}"#,
                "item's id field `id` must be an unsigned integer, found a negative number",
            ),
            (
                br#"{"id":7,"status":null,"created_at":"t","version":1}"#,
                "item's partition field `status` must be a string, found null",
            ),
            (
                br#"{"id":7,"status":"A","created_at":1767225600000,"version":1}"#,
                "item's sort field `created_at` must be a string, found a number",
            ),
            (
                br#"{"id":7,"status":"A","created_at":"t","version":1.5}"#,
                "item's version field `version` must be an unsigned integer, found a fractional number",
            ),
            (b"[1,2]", "item has no id field `id`"),
        ];
        for (json, message) in cases {
            let err = Row::parse(&shape, Bytes::copy_from_slice(json)).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
        let nested = RowShape {
            id: "a.b".into(),
            ..RowShape::default()
        };
        let err = Row::parse(&nested, Bytes::from_static(br#"{"a":3}"#)).unwrap_err();
        assert_eq!(err.to_string(), "item has no id field `a.b`");
    }

    #[test]
    fn newest_first_with_ties_broken_by_the_higher_id() {
        let t1 = "2026-01-01T00:00:00.000Z";
        let t2 = "2026-01-01T00:00:00.001Z";
        let mut keys = [
            SortKey::new(t1, 3),
            SortKey::new(t2, 1),
            SortKey::new(t1, 10),
            SortKey::new(t2, 2),
            SortKey::new(t1, 9),
        ];
        keys.sort();
        let order: Vec<(&str, u64)> = keys.iter().map(|k| (k.at(), k.id())).collect();
        assert_eq!(
            order,
            vec![(t2, 2), (t2, 1), (t1, 10), (t1, 9), (t1, 3)],
            "created_at descending, then id descending"
        );
    }

    #[test]
    fn sort_order_is_the_simulators_created_ms_then_id_walked_in_reverse() {
        // The simulator sorts `(created_ms, id)` ascending and walks it backwards. With
        // many ties on the millisecond, both orders must agree.
        let mut sim: Vec<(u64, u64)> = (1..=60u64).map(|id| (id % 7 * 1000, id)).collect();
        sim.sort();
        let sim_order: Vec<u64> = sim.iter().rev().map(|&(_, id)| id).collect();
        let mut rows: Vec<Row> = (1..=60u64)
            .map(|id| {
                let at = format!("2026-01-01T00:00:{:02}.000Z", id % 7);
                Row::parse(&RowShape::default(), item(id, "A", &at, 1)).unwrap()
            })
            .collect();
        rows.sort_by(|a, b| a.sort.cmp(&b.sort));
        let ours: Vec<u64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(ours, sim_order);
    }
}
