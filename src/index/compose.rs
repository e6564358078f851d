//! The list body: composing `{"items":[…],"page":P,"size":N,"total":T}` from a mirror page
//! byte for byte as the MES sends it, and reading a MES list body back into its items (as
//! the exact bytes received) and numbers. It owns the body's shape; it does not choose the
//! page (the mirror slices it) or apply the items (the scan does).

use bytes::Bytes;
use serde::de::IgnoredAny;

use super::mirror::Page;
use super::split;

/// The top-level field names of a list body, so a MES that calls them otherwise needs no
/// code change. Plain keys, not paths: composing writes them back at the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyShape {
    /// The array of items, newest first.
    pub items: String,
    /// The page number, echoed.
    pub page: String,
    /// The page size, echoed.
    pub size: String,
    /// How many items match across all pages.
    pub total: String,
}

impl Default for BodyShape {
    /// The legacy MES's (and the simulator's) names.
    fn default() -> Self {
        Self {
            items: "items".into(),
            page: "page".into(),
            size: "size".into(),
            total: "total".into(),
        }
    }
}

/// A list body as read from the MES: what a scan needs of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListBody {
    /// Each item's bytes, sliced out of the body (no copy, nothing re-serialized).
    pub items: Vec<Bytes>,
    /// The page number the MES echoed.
    pub page: usize,
    /// The page size the MES echoed.
    pub size: usize,
    /// The MES's count of matching items at the instant it answered.
    pub total: usize,
}

/// Why a body is not a list body; names the field, so a wrong [`BodyShape`] shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    /// Not valid JSON.
    #[error("list body is not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("list body is not a JSON object")]
    NotObject,
    /// A field of the shape is absent.
    #[error("list body has no field `{0}`")]
    Missing(String),
    /// A field of the shape has the wrong type.
    #[error("list body field `{field}` must be {expected}")]
    Mistyped {
        /// The configured field name.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
}

impl BodyShape {
    /// The body of page `number` of `size` made of `page`: exactly the bytes the MES sends
    /// for the same items (the simulator's `list_body`), items joined by `,`, no spaces.
    pub fn compose(&self, page: &Page, number: usize, size: usize) -> Bytes {
        let names = [&*self.items, &*self.page, &*self.size, &*self.total];
        compose_named(names, page, number, size)
    }

    /// Reads a list body; the items keep the body's own bytes. If a field appears twice the
    /// last one counts, as for serde_json.
    pub fn parse(&self, body: &Bytes) -> Result<ListBody, BodyError> {
        serde_json::from_slice::<IgnoredAny>(body)
            .map_err(|e| BodyError::NotJson(e.to_string()))?;
        let members = split::members(body).ok_or(BodyError::NotObject)?;
        let find = |field: &str| {
            members
                .iter()
                .rev()
                .find(|(key, _)| key == field)
                .map(|(_, range)| range.clone())
                .ok_or_else(|| BodyError::Missing(field.to_owned()))
        };
        let number = |field: &str| -> Result<usize, BodyError> {
            let range = find(field)?;
            serde_json::from_slice::<u64>(&body[range])
                .ok()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| mistyped(field, "an unsigned integer"))
        };
        let items = split::elements(body, find(&self.items)?)
            .ok_or_else(|| mistyped(&self.items, "an array"))?
            .into_iter()
            .map(|range| body.slice(range))
            .collect();
        Ok(ListBody {
            items,
            page: number(&self.page)?,
            size: number(&self.size)?,
            total: number(&self.total)?,
        })
    }
}

fn mistyped(field: &str, expected: &'static str) -> BodyError {
    BodyError::Mistyped {
        field: field.to_owned(),
        expected,
    }
}

/// [`BodyShape::compose`] with the default names: the MES's `list_body`.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mesgate::index::{Page, compose};
///
/// let page = Page { items: vec![Bytes::from_static(br#"{"id":2}"#)], total: 9 };
/// assert_eq!(&compose(&page, 3, 1)[..], br#"{"items":[{"id":2}],"page":3,"size":1,"total":9}"#);
/// ```
pub fn compose(page: &Page, number: usize, size: usize) -> Bytes {
    compose_named(["items", "page", "size", "total"], page, number, size)
}

fn compose_named(names: [&str; 4], page: &Page, number: usize, size: usize) -> Bytes {
    let [items, page_name, size_name, total] = names;
    let items_len: usize = page.items.iter().map(Bytes::len).sum();
    let names_len: usize = names.iter().map(|n| n.len()).sum();
    let mut out = Vec::with_capacity(items_len + page.items.len() + names_len + 80);
    out.push(b'{');
    push_key(&mut out, items);
    out.push(b'[');
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]");
    for (name, value) in [(page_name, number), (size_name, size), (total, page.total)] {
        out.push(b',');
        push_key(&mut out, name);
        out.extend_from_slice(value.to_string().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

/// `"name":`, the name escaped as JSON requires (a configured name may hold anything).
fn push_key(out: &mut Vec<u8>, name: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(items: &[&'static str], total: usize) -> Page {
        Page {
            items: items
                .iter()
                .map(|s| Bytes::from_static(s.as_bytes()))
                .collect(),
            total,
        }
    }

    #[test]
    fn composes_the_mes_bytes() {
        let p = page(&[r#"{"id":2,"s":"a"}"#, r#"{"id":1}"#], 9);
        assert_eq!(
            &compose(&p, 1, 2)[..],
            br#"{"items":[{"id":2,"s":"a"},{"id":1}],"page":1,"size":2,"total":9}"#
        );
        assert_eq!(
            &compose(&page(&[], 0), 4, 200)[..],
            br#"{"items":[],"page":4,"size":200,"total":0}"#
        );
        assert_eq!(
            BodyShape::default().compose(&p, 1, 2),
            compose(&p, 1, 2),
            "the default shape is the free function"
        );
    }

    #[test]
    fn configured_names_are_written_and_escaped() {
        let shape = BodyShape {
            items: "rows".into(),
            page: "p".into(),
            size: "n".into(),
            total: "count\"all".into(),
        };
        let body = shape.compose(&page(&["1"], 1), 1, 5);
        assert_eq!(&body[..], br#"{"rows":[1],"p":1,"n":5,"count\"all":1}"#);
        let back = shape.parse(&body).unwrap();
        assert_eq!((back.items.len(), back.total), (1, 1));
    }

    #[test]
    fn parse_keeps_item_bytes_and_round_trips() {
        let body = Bytes::from_static(
            br#"{"items":[{"id":2,"price":1.50,"s":"x\u00e9"},{"id":1}],"page":3,"size":2,"total":7}"#,
        );
        let list = BodyShape::default().parse(&body).unwrap();
        assert_eq!(
            &list.items[0][..],
            br#"{"id":2,"price":1.50,"s":"x\u00e9"}"#
        );
        assert_eq!((list.page, list.size, list.total), (3, 2, 7));
        let p = Page {
            items: list.items.clone(),
            total: list.total,
        };
        assert_eq!(compose(&p, list.page, list.size), body);
        // Other fields, other order, whitespace: still read.
        let loose = Bytes::from_static(
            br#" { "total" : 1 , "extra":{"items":5}, "size":1,"page":1,"items" : [ {"id":1} ] } "#,
        );
        let list = BodyShape::default().parse(&loose).unwrap();
        assert_eq!(list.items, [Bytes::from_static(br#"{"id":1}"#)]);
    }

    #[test]
    fn parse_errors_name_the_field() {
        let shape = BodyShape::default();
        let cases: [(&[u8], &str); 6] = [
            (b"{\"items\":[", "list body is not valid JSON"),
            (b"[]", "list body is not a JSON object"),
            (
                br#"{"page":1,"size":1,"total":1}"#,
                "list body has no field `items`",
            ),
            (
                br#"{"items":{},"page":1,"size":1,"total":1}"#,
                "list body field `items` must be an array",
            ),
            (
                br#"{"items":[],"page":1,"size":1}"#,
                "list body has no field `total`",
            ),
            (
                br#"{"items":[],"page":1,"size":-1,"total":1}"#,
                "list body field `size` must be an unsigned integer",
            ),
        ];
        for (body, message) in cases {
            let err = shape.parse(&Bytes::copy_from_slice(body)).unwrap_err();
            assert!(err.to_string().starts_with(message), "{err}");
        }
    }
}
