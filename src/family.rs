//! Family templates: `status:{query.status|all}`, `order:{path.id}`, rendered per request.
//!
//! A family names a set of cached entries that one write can make wrong. Families group
//! by the text before the first `:` (`status:*` is every status family). This module
//! parses, validates and renders templates; it does not invalidate anything.

use serde_json::Value;

/// Where a placeholder takes its value from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A path parameter of the route (`{path.id}`).
    Path,
    /// A normalized query parameter, defaults applied (`{query.status}`).
    Query,
    /// A field of the write request's JSON body (`{request.status}`).
    Request,
    /// A field of the JSON answer (`{response.status}`).
    Response,
    /// A field of one member of a list body (`{item.status}`).
    Item,
}

impl Source {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "path" => Self::Path,
            "query" => Self::Query,
            "request" => Self::Request,
            "response" => Self::Response,
            "item" => Self::Item,
            _ => return None,
        })
    }

    /// The name used in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Query => "query",
            Self::Request => "request",
            Self::Response => "response",
            Self::Item => "item",
        }
    }
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text as written.
    Literal(String),
    /// `{source.field.sub|default}`.
    Placeholder {
        /// Where the value comes from.
        source: Source,
        /// Field name (`id`) or dotted path into JSON (`customer.id`).
        field: String,
        /// Value when the field is absent.
        default: Option<String>,
    },
}

/// A compiled family template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// Why a template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without `}` or the reverse.
    #[error("unbalanced braces")]
    Unbalanced,
    /// Not `source.field`.
    #[error(
        "unknown placeholder {{{0}}} (want {{path.x}}, {{query.x}}, {{request.x}}, {{response.x}} or {{item.x}})"
    )]
    Unknown(String),
    /// A source this kind of rule cannot see.
    #[error("placeholder {{{0}}} is not available here (allowed: {1})")]
    NotHere(String, String),
    /// Empty template.
    #[error("must not be empty")]
    Empty,
    /// Characters that would break keys or the bus.
    #[error("literal text may use letters, digits and ':_-.' only")]
    BadChar,
}

impl Template {
    /// Parses a template, allowing only the given sources.
    pub fn parse(text: &str, allowed: &[Source]) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            push_literal(&mut parts, &rest[..open])?;
            let close = rest[open..].find('}').ok_or(TemplateError::Unbalanced)? + open;
            parts.push(parse_placeholder(&rest[open + 1..close], allowed)?);
            rest = &rest[close + 1..];
        }
        push_literal(&mut parts, rest)?;
        Ok(Self {
            source: text.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The group: literal text before the first `:` (`status` for `status:{query.status}`).
    pub fn group(&self) -> String {
        let mut lit = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => lit.push_str(l),
                Part::Placeholder { .. } => break,
            }
        }
        group_of(&lit).to_owned()
    }

    /// The placeholders.
    pub fn placeholders(&self) -> impl Iterator<Item = (Source, &str, Option<&str>)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder {
                source,
                field,
                default,
            } => Some((*source, field.as_str(), default.as_deref())),
            Part::Literal(_) => None,
        })
    }

    /// Renders with `lookup`; `None` when a placeholder without default has no value.
    pub fn render(&self, lookup: &dyn Fn(Source, &str) -> Option<String>) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::Placeholder {
                    source,
                    field,
                    default,
                } => {
                    let v = lookup(*source, field).or_else(|| default.clone())?;
                    out.push_str(&v);
                }
            }
        }
        Some(out)
    }
}

fn push_literal(parts: &mut Vec<Part>, lit: &str) -> Result<(), TemplateError> {
    if lit.contains('}') {
        return Err(TemplateError::Unbalanced);
    }
    if !lit
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":_-.".contains(c))
    {
        return Err(TemplateError::BadChar);
    }
    if !lit.is_empty() {
        parts.push(Part::Literal(lit.to_owned()));
    }
    Ok(())
}

fn parse_placeholder(inner: &str, allowed: &[Source]) -> Result<Part, TemplateError> {
    let (spec, default) = match inner.split_once('|') {
        Some((s, d)) => (s, Some(d.to_owned())),
        None => (inner, None),
    };
    let unknown = || TemplateError::Unknown(inner.to_owned());
    let (src, field) = spec.split_once('.').ok_or_else(unknown)?;
    let source = Source::parse(src).ok_or_else(unknown)?;
    if field.is_empty() || field.contains(['{', ' ']) {
        return Err(unknown());
    }
    if !allowed.contains(&source) {
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        return Err(TemplateError::NotHere(inner.to_owned(), names.join(", ")));
    }
    Ok(Part::Placeholder {
        source,
        field: field.to_owned(),
        default,
    })
}

/// The group of a rendered family name.
pub fn group_of(family: &str) -> &str {
    family.split(':').next().unwrap_or(family)
}

/// A JSON field by dotted path, as text (strings as-is, numbers and booleans printed).
pub fn json_field(value: &Value, dotted: &str) -> Option<String> {
    let mut v = value;
    for seg in dotted.split('.') {
        v = match v {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Source] = &[
        Source::Path,
        Source::Query,
        Source::Request,
        Source::Response,
        Source::Item,
    ];

    #[test]
    fn renders_with_defaults_and_sources() {
        let t = Template::parse("status:{query.status|all}", ALL).unwrap();
        assert_eq!(t.group(), "status");
        let none = |_: Source, _: &str| None;
        assert_eq!(t.render(&none).as_deref(), Some("status:all"));
        let some =
            |s: Source, f: &str| (s == Source::Query && f == "status").then(|| "NEW".to_owned());
        assert_eq!(t.render(&some).as_deref(), Some("status:NEW"));
        let strict = Template::parse("order:{path.id}", ALL).unwrap();
        assert_eq!(strict.render(&none), None);
        assert_eq!(Template::parse("counts", ALL).unwrap().group(), "counts");
    }

    #[test]
    fn rejects_unknown_and_misplaced_placeholders() {
        assert!(matches!(
            Template::parse("status:{body.stauts}", ALL),
            Err(TemplateError::Unknown(_))
        ));
        assert!(matches!(
            Template::parse("status:{request.status}", &[Source::Path]),
            Err(TemplateError::NotHere(..))
        ));
        assert_eq!(
            Template::parse("a:{path.id", ALL),
            Err(TemplateError::Unbalanced)
        );
        assert_eq!(Template::parse("a b", ALL), Err(TemplateError::BadChar));
        assert_eq!(Template::parse("", ALL), Err(TemplateError::Empty));
    }

    #[test]
    fn json_fields_by_dotted_path() {
        let v: Value = serde_json::json!({"id": 7, "status": "A", "c": {"n": true}});
        assert_eq!(json_field(&v, "id").as_deref(), Some("7"));
        assert_eq!(json_field(&v, "status").as_deref(), Some("A"));
        assert_eq!(json_field(&v, "c.n").as_deref(), Some("true"));
        assert_eq!(json_field(&v, "c"), None);
        assert_eq!(json_field(&v, "missing"), None);
    }
}
