//! Byte ranges inside a JSON document already validated by serde_json: the members of the
//! top-level object and the elements of an array, so list items can be kept as the exact
//! bytes the MES sent (serde_json without `raw_value` cannot hand them out). It owns only
//! the lexical walk; it does not validate (the caller does, first) or interpret values.

use std::ops::Range;

/// A position in the document; every step returns `None` on anything unexpected, which on
/// validated input only happens if the caller passed the wrong range.
struct Cursor<'a> {
    json: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.json.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.json.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string starting at the cursor, quotes included.
    fn string(&mut self) -> Option<Range<usize>> {
        let start = self.at;
        (*self.json.get(self.at)? == b'"').then_some(())?;
        self.at += 1;
        loop {
            match *self.json.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(start..self.at);
                }
                _ => self.at += 1,
            }
        }
    }

    /// Any value: its range, without surrounding whitespace.
    fn value(&mut self) -> Option<Range<usize>> {
        let start = match self.peek()? {
            b'"' => return self.string(),
            b'{' | b'[' => self.at,
            _ => return Some(self.scalar()),
        };
        let mut depth = 0usize;
        loop {
            match *self.json.get(self.at)? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        self.at += 1;
                        return Some(start..self.at);
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
    }

    /// A number, `true`, `false` or `null`: up to the next delimiter.
    fn scalar(&mut self) -> Range<usize> {
        let start = self.at;
        while let Some(b) = self.json.get(self.at) {
            if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.at += 1;
        }
        start..self.at
    }

    /// After an element: `,` (more follow, true) or `close` (the end, false).
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        let b = self.peek()?;
        self.at += 1;
        match b {
            b',' => Some(true),
            b if b == close => Some(false),
            _ => None,
        }
    }
}

/// The top-level object's members in document order: the key's decoded text and the range
/// of its value. `None` if the document is not an object.
pub(super) fn members(json: &[u8]) -> Option<Vec<(String, Range<usize>)>> {
    let mut c = Cursor { json, at: 0 };
    c.eat(b'{')?;
    let mut out = Vec::new();
    if c.peek()? == b'}' {
        return Some(out);
    }
    loop {
        c.skip_ws();
        let key = c.string()?;
        let key: String = serde_json::from_slice(json.get(key)?).ok()?;
        c.eat(b':')?;
        out.push((key, c.value()?));
        if !c.next_or_close(b'}')? {
            return Some(out);
        }
    }
}

/// The ranges of the elements of the array at `range`; `None` if it is not an array.
pub(super) fn elements(json: &[u8], range: Range<usize>) -> Option<Vec<Range<usize>>> {
    let mut c = Cursor {
        json: json.get(..range.end)?,
        at: range.start,
    };
    c.eat(b'[')?;
    let mut out = Vec::new();
    if c.peek()? == b']' {
        return Some(out);
    }
    loop {
        out.push(c.value()?);
        if !c.next_or_close(b']')? {
            return Some(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(json: &'a str, ranges: &[Range<usize>]) -> Vec<&'a str> {
        ranges.iter().map(|r| &json[r.clone()]).collect()
    }

    #[test]
    fn members_and_elements_of_awkward_but_valid_json() {
        let json = r#" { "a" : [ {"x":"]}\"\\"} , [1,[2]] ,"s,]" , -1.5e3,true , null,{} ] , "b\u0041":7 ,"c":{"d":[]}} "#;
        let m = members(json.as_bytes()).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "bA", "c"]);
        assert_eq!(&json[m[1].1.clone()], "7");
        assert_eq!(&json[m[2].1.clone()], r#"{"d":[]}"#);
        let items = elements(json.as_bytes(), m[0].1.clone()).unwrap();
        assert_eq!(
            texts(json, &items),
            [
                r#"{"x":"]}\"\\"}"#,
                "[1,[2]]",
                r#""s,]""#,
                "-1.5e3",
                "true",
                "null",
                "{}"
            ]
        );
    }

    #[test]
    fn empty_containers_and_wrong_kinds() {
        assert_eq!(members(b"{}"), Some(vec![]));
        assert_eq!(members(b" [1] "), None);
        assert_eq!(members(b"3"), None);
        let json = br#"{"a":[ ],"b":"[1]"}"#;
        let m = members(json).unwrap();
        assert_eq!(elements(json, m[0].1.clone()), Some(vec![]));
        assert_eq!(
            elements(json, m[1].1.clone()),
            None,
            "a string, not an array"
        );
    }

    #[test]
    fn every_element_range_round_trips_through_serde_json() {
        let value = serde_json::json!({
            "items": [{"id": 1, "n": "ORD-\"1\""}, {"id": 2, "nested": {"k": [1, 2, {"z": null}]}}, 3.25, "x"],
            "total": 2
        });
        let json = serde_json::to_vec_pretty(&value).unwrap();
        let m = members(&json).unwrap();
        let items = elements(&json, m[0].1.clone()).unwrap();
        let parsed: Vec<serde_json::Value> = items
            .iter()
            .map(|r| serde_json::from_slice(&json[r.clone()]).unwrap())
            .collect();
        assert_eq!(serde_json::Value::Array(parsed), value["items"]);
    }
}
