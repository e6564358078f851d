//! Path templates and the route table: which rule a request falls under, and the
//! canonical form of the parameters it captured.
//!
//! It does not decide what to do with a request (that is [`crate::gateway`]'s); it only
//! matches, and says whether a typed parameter was spelled canonically.

use std::borrow::Cow;
use std::sync::Arc;

use http::Method;

use crate::config::{CachePolicy, IndexRule, InvalidateRule};

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal the request's segment byte for byte.
    Literal(String),
    /// Matches any non-empty segment and captures it under this name, with its type.
    Param(String, ParamType),
}

/// What a path parameter holds, which decides its canonical spelling.
///
/// The MES parses ids: `/api/orders/077` is order 77 to it. Without a type, `077` and `77`
/// would be two cache identities and two family names for one order, and a write through
/// one spelling would leave the other's entries stale. A typed parameter has exactly one
/// spelling that mesgate caches under and names families with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// `{id}`: any non-empty segment, taken as written (the MES must not parse it).
    Text,
    /// `{id:u64}`: an unsigned integer; canonical is decimal digits without leading zeros.
    U64,
}

impl ParamType {
    /// Types a template may name after the `:`.
    pub const NAMES: &'static str = "u64";

    fn parse(s: &str) -> Option<Self> {
        match s {
            "u64" => Some(Self::U64),
            _ => None,
        }
    }

    /// The canonical spelling of `value`: borrowed when it is already canonical, owned
    /// when it is another spelling of one value (`077` is `77`), `None` when it is not a
    /// value of this type as far as mesgate can tell (`+77`, `7_7`, `x`: some parsers
    /// still read a number there, so no cache identity or family may be derived from it).
    pub fn canonical(self, value: &str) -> Option<Cow<'_, str>> {
        match self {
            Self::Text => Some(Cow::Borrowed(value)),
            Self::U64 => {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u64 = value.parse().ok()?;
                if value.len() == 1 || !value.starts_with('0') {
                    Some(Cow::Borrowed(value))
                } else {
                    Some(Cow::Owned(n.to_string()))
                }
            }
        }
    }
}

/// A request's path parameters, by name, in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Each parameter and its canonical value. A typed value with no canonical form is
    /// left out, so a placeholder naming it renders nothing (a write then ends the
    /// family's whole group: never less than needed).
    pub pairs: Vec<(String, String)>,
    /// A typed value was not spelled canonically (`077`, `+77`, `7_7`): the request is
    /// another spelling of some entity and must not get a cache identity of its own.
    pub aliased: bool,
}

/// A compiled path template such as `/api/orders/{id}`.
///
/// Parameters take whole segments; the segment count must match exactly, so
/// `/api/orders` and `/api/orders/` are different paths (as they are to most servers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

/// Why a path template was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Templates are absolute paths.
    #[error("must start with '/'")]
    NotAbsolute,
    /// A `{` or `}` that does not enclose a whole segment.
    #[error("segment {0:?}: a parameter must be a whole segment like {{id}}")]
    BadParam(String),
    /// Parameter names are identifiers, so placeholders can refer to them.
    #[error("parameter name {0:?} must be letters, digits or '_'")]
    BadName(String),
    /// A type after the `:` that mesgate does not know.
    #[error("parameter {{{0}}}: unknown type {1:?} (known: {known})", known = ParamType::NAMES)]
    BadType(String, String),
    /// Two parameters of one template with the same name.
    #[error("parameter {{{0}}} appears twice")]
    Duplicate(String),
    /// Query strings belong in the route's `query` list, not in the path.
    #[error("must not contain '?' or '#'")]
    HasQuery,
}

impl PathTemplate {
    /// Compiles a template, rejecting anything ambiguous.
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        if !source.starts_with('/') {
            return Err(TemplateError::NotAbsolute);
        }
        if source.contains(['?', '#']) {
            return Err(TemplateError::HasQuery);
        }
        let mut segments = Vec::new();
        for raw in source[1..].split('/') {
            segments.push(parse_segment(raw, &segments)?);
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    /// The template as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Number of literal segments: more literals is a more specific route.
    pub fn specificity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count()
    }

    /// Names of the parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.typed_params().map(|(n, _)| n)
    }

    /// The parameters with their types, in order.
    pub fn typed_params(&self) -> impl Iterator<Item = (&str, ParamType)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n, t) => Some((n.as_str(), *t)),
            Segment::Literal(_) => None,
        })
    }

    /// The parameters [`matches`](Self::matches) captured, named and in canonical form.
    pub fn resolve(&self, captured: &[&str]) -> Params {
        let mut out = Params::default();
        for ((name, ty), value) in self.typed_params().zip(captured) {
            let canonical = ty.canonical(value);
            out.aliased |= !matches!(canonical, Some(Cow::Borrowed(_)));
            if let Some(v) = canonical {
                out.pairs.push((name.to_owned(), v.into_owned()));
            }
        }
        out
    }

    /// Matches a request path, returning the captured parameters in template order.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let rest = path.strip_prefix('/')?;
        let mut captured = Vec::new();
        let mut parts = rest.split('/');
        for seg in &self.segments {
            let part = parts.next()?;
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(..) if part.is_empty() => return None,
                Segment::Param(..) => captured.push(part),
            }
        }
        parts.next().is_none().then_some(captured)
    }
}

fn parse_segment(raw: &str, seen: &[Segment]) -> Result<Segment, TemplateError> {
    let Some(inner) = raw.strip_prefix('{').and_then(|r| r.strip_suffix('}')) else {
        if raw.contains(['{', '}']) {
            return Err(TemplateError::BadParam(raw.to_owned()));
        }
        return Ok(Segment::Literal(raw.to_owned()));
    };
    let (name, ty) = match inner.split_once(':') {
        Some((n, t)) => {
            let ty = ParamType::parse(t)
                .ok_or_else(|| TemplateError::BadType(n.to_owned(), t.to_owned()))?;
            (n, ty)
        }
        None => (inner, ParamType::Text),
    };
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    if seen
        .iter()
        .any(|s| matches!(s, Segment::Param(n, _) if n == name))
    {
        return Err(TemplateError::Duplicate(name.to_owned()));
    }
    Ok(Segment::Param(name.to_owned(), ty))
}

/// One rule of the route table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name from the config; the only route label metrics and logs use (an `Arc<String>`
    /// so a metric label is a reference count, not an allocation, per request).
    pub name: Arc<String>,
    /// Methods this rule applies to.
    pub methods: Vec<Method>,
    /// The compiled path template.
    pub path: PathTemplate,
    /// How reads are cached; `None` means forward untouched.
    pub cache: Option<Arc<CachePolicy>>,
    /// What a successful write invalidates; `None` means nothing.
    pub invalidate: Option<Arc<InvalidateRule>>,
    /// The status index serving this list route; `None` means the ordinary read path.
    pub index: Option<Arc<IndexRule>>,
    /// Wait for the MES's response headers on this route, over `timeouts.response_header`.
    pub response_timeout: Option<std::time::Duration>,
    /// The computation this POST route is; `None` means the other paths decide.
    pub compute: Option<Arc<crate::config::ComputeRule>>,
}

/// A matched route with the captured path parameters.
#[derive(Debug)]
pub struct RouteMatch<'r, 'p> {
    /// The rule that matched.
    pub route: &'r Route,
    /// Its position in [`RouteTable::routes`].
    pub index: usize,
    /// Captured parameters, in template order.
    pub params: Vec<&'p str>,
}

/// The compiled route table.
///
/// Among matching routes the one with the most literal segments wins, then the one
/// written first, so `/api/orders/status-counts` beats `/api/orders/{id}` whatever the
/// order in the file.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds a table; the routes are sorted by specificity once, here.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.path.specificity()));
        Self { routes }
    }

    /// Finds the rule for a request.
    pub fn find<'r, 'p>(&'r self, method: &Method, path: &'p str) -> Option<RouteMatch<'r, 'p>> {
        self.routes.iter().enumerate().find_map(|(index, route)| {
            if !route.methods.contains(method) {
                return None;
            }
            let params = route.path.matches(path)?;
            Some(RouteMatch {
                route,
                index,
                params,
            })
        })
    }

    /// All routes, most specific first.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> PathTemplate {
        PathTemplate::parse(s).unwrap()
    }

    #[test]
    fn literal_and_param_segments_match() {
        let tpl = t("/api/orders/{id}");
        assert_eq!(tpl.matches("/api/orders/42"), Some(vec!["42"]));
        assert_eq!(tpl.matches("/api/orders"), None);
        assert_eq!(tpl.matches("/api/orders/"), None);
        assert_eq!(tpl.matches("/api/orders/42/status"), None);
        assert_eq!(tpl.matches("/api/order/42"), None);
    }

    #[test]
    fn root_and_exact_paths() {
        assert_eq!(t("/").matches("/"), Some(vec![]));
        assert_eq!(t("/api/orders").matches("/api/orders"), Some(vec![]));
        assert_eq!(t("/api/orders").matches("/api/orders/"), None);
    }

    #[test]
    fn bad_templates_are_rejected_with_reason() {
        assert_eq!(PathTemplate::parse("api"), Err(TemplateError::NotAbsolute));
        assert!(matches!(
            PathTemplate::parse("/a/x{id}"),
            Err(TemplateError::BadParam(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a/{i-d}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            PathTemplate::parse("/a/{}"),
            Err(TemplateError::BadName(_))
        ));
        assert_eq!(
            PathTemplate::parse("/{id}/{id}"),
            Err(TemplateError::Duplicate("id".into()))
        );
        assert_eq!(PathTemplate::parse("/a?b"), Err(TemplateError::HasQuery));
    }

    #[test]
    fn typed_parameters_resolve_to_one_spelling() {
        let tpl = t("/api/orders/{id:u64}/lines/{line}");
        assert_eq!(tpl.as_str(), "/api/orders/{id:u64}/lines/{line}");
        assert_eq!(tpl.params().collect::<Vec<_>>(), ["id", "line"]);
        let canonical = tpl.resolve(&["77", "007"]);
        assert!(
            !canonical.aliased,
            "an untyped parameter is taken as written"
        );
        assert_eq!(
            canonical.pairs,
            [("id".into(), "77".into()), ("line".into(), "007".into())]
        );
        let zero = tpl.resolve(&["0", "a"]);
        assert!(!zero.aliased);
        let padded = tpl.resolve(&["077", "a"]);
        assert!(padded.aliased);
        assert_eq!(padded.pairs[0], ("id".into(), "77".into()));
        for odd in ["+77", "7_7", " 77", "-1", "x", "18446744073709551616"] {
            let r = tpl.resolve(&[odd, "a"]);
            assert!(r.aliased, "{odd}");
            assert_eq!(r.pairs, [("line".into(), "a".into())], "{odd}: no value");
        }
    }

    #[test]
    fn unknown_parameter_types_are_rejected() {
        assert_eq!(
            PathTemplate::parse("/a/{id:float}"),
            Err(TemplateError::BadType("id".into(), "float".into()))
        );
        assert!(matches!(
            PathTemplate::parse("/a/{:u64}"),
            Err(TemplateError::BadName(_))
        ));
        assert_eq!(
            PathTemplate::parse("/{id:u64}/{id}"),
            Err(TemplateError::Duplicate("id".into()))
        );
    }

    fn route(name: &str, path: &str) -> Route {
        Route {
            name: Arc::new(name.to_owned()),
            methods: vec![Method::GET],
            path: t(path),
            cache: None,
            invalidate: None,
            index: None,
            response_timeout: None,
            compute: None,
        }
    }

    #[test]
    fn more_literal_segments_win_whatever_the_order() {
        let table = RouteTable::new(vec![
            route("detail", "/api/orders/{id}"),
            route("counts", "/api/orders/status-counts"),
        ]);
        let m = table
            .find(&Method::GET, "/api/orders/status-counts")
            .unwrap();
        assert_eq!(m.route.name.as_str(), "counts");
        let m = table.find(&Method::GET, "/api/orders/7").unwrap();
        assert_eq!(m.route.name.as_str(), "detail");
        assert!(table.find(&Method::POST, "/api/orders/7").is_none());
    }
}
