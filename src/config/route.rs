//! Path templates and the route table: which rule a request falls under.
//!
//! It does not decide what to do with a request (that is [`crate::proxy`]); it only matches.

use std::sync::Arc;

use http::Method;

use crate::config::{CachePolicy, IndexRule, InvalidateRule};

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal the request's segment byte for byte.
    Literal(String),
    /// Matches any non-empty segment and captures it under this name.
    Param(String),
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
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
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
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(_) => captured.push(part),
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
    let valid = !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(TemplateError::BadName(inner.to_owned()));
    }
    if seen.contains(&Segment::Param(inner.to_owned())) {
        return Err(TemplateError::Duplicate(inner.to_owned()));
    }
    Ok(Segment::Param(inner.to_owned()))
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

    fn route(name: &str, path: &str) -> Route {
        Route {
            name: Arc::new(name.to_owned()),
            methods: vec![Method::GET],
            path: t(path),
            cache: None,
            invalidate: None,
            index: None,
            response_timeout: None,
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
