//! Validation of the `[[route]]` rules: each route with its `cache`, `members` and
//! `invalidate` tables, then the checks across routes (clashes, families no cached
//! route has), into the [`RouteTable`].
//!
//! It owns every rejection of a route rule; the rest of the document is
//! [`validate`](super::validate)'s, and matching requests is [`crate::route`]'s.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::AnswerPath;
use super::parse::{parse_duration, parse_size};
use super::{
    CachePolicy, ConfigError, CredentialPolicy, InvalidateRule, Members, QueryParam, RawCache,
    RawInvalidate, RawMembers, RawRoute, invalid,
};
use crate::config::route::{ParamType, PathTemplate, Route, RouteTable};
use crate::family::{Source, Template};

pub(super) fn validate_routes(raw: Vec<RawRoute>) -> Result<RouteTable, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let at = format!("route[{i}]");
        let route = r.validate(&at)?;
        check_clashes(&at, &route, &routes)?;
        routes.push(route);
    }
    check_families_used(&routes)?;
    check_index_refs(&routes)?;
    Ok(RouteTable::new(routes))
}

fn check_clashes(at: &str, route: &Route, earlier: &[Route]) -> Result<(), ConfigError> {
    for (j, other) in earlier.iter().enumerate() {
        if other.name == route.name {
            return Err(invalid(
                format!("{at}.name"),
                format!("{:?} is already the name of route[{j}]", route.name),
            ));
        }
        let same_path = other.path.as_str() == route.path.as_str();
        if let Some(m) = route
            .methods
            .iter()
            .find(|m| same_path && other.methods.contains(m))
        {
            return Err(invalid(
                format!("{at}.path"),
                // The route's name is added to `route[j]` where the error leaves the config.
                format!(
                    "{m} {} is already handled by route[{j}]",
                    route.path.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Methods a cached route may serve: reads only.
const READ_METHODS: [Method; 2] = [Method::GET, Method::HEAD];

impl RawRoute {
    fn validate(self, at: &str) -> Result<Route, ConfigError> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid_name {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "{:?}: use lowercase letters, digits, '-' and '_'",
                    self.name
                ),
            ));
        }
        let path = PathTemplate::parse(&self.path)
            .map_err(|e| invalid(format!("{at}.path"), format!("{:?}: {e}", self.path)))?;
        let methods = validate_methods(at, &self.methods)?;
        if self.cache.is_some() && self.invalidate.is_some() {
            return Err(invalid(
                format!("{at}.invalidate"),
                "a route either caches reads or invalidates on writes, not both",
            ));
        }
        let invalidate = match self.invalidate {
            Some(i) => Some(Arc::new(i.validate(&format!("{at}.invalidate"), &path)?)),
            None => None,
        };
        let cache = match self.cache {
            Some(c) => {
                if let Some(m) = methods.iter().find(|m| !READ_METHODS.contains(m)) {
                    return Err(invalid(
                        format!("{at}.methods"),
                        format!(
                            "a cached route serves only GET and HEAD; give {m} a route of its own"
                        ),
                    ));
                }
                Some(Arc::new(c.validate(&format!("{at}.cache"), &path)?))
            }
            None => None,
        };
        let index = match (self.index, &cache) {
            (None, _) => None,
            (Some(_), Some(_)) if path.params().next().is_some() => {
                return Err(invalid(
                    format!("{at}.index"),
                    "an index serves one list: the route's path takes no parameters",
                ));
            }
            (Some(ix), Some(policy)) => {
                Some(Arc::new(ix.validate(&format!("{at}.index"), policy)?))
            }
            (Some(_), None) => {
                return Err(invalid(
                    format!("{at}.index"),
                    "an index serves a cached list route: add [route.cache]",
                ));
            }
        };
        let response_timeout = self
            .response_timeout
            .as_deref()
            .map(|t| parse_duration(&format!("{at}.response_timeout"), t))
            .transpose()?;
        let compute = match self.compute {
            Some(c) => {
                let others = cache.is_some() || invalidate.is_some();
                Some(Arc::new(c.validate(
                    &format!("{at}.compute"),
                    &methods,
                    others,
                )?))
            }
            None => None,
        };
        Ok(Route {
            name: Arc::new(self.name),
            methods,
            path,
            cache,
            invalidate,
            index,
            response_timeout,
            compute,
        })
    }
}

/// Methods a route may name. CONNECT is left out: it is never proxied.
const KNOWN_METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

fn validate_methods(at: &str, raw: &[String]) -> Result<Vec<Method>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("{at}.methods"),
            "must list at least one method",
        ));
    }
    let mut out: Vec<Method> = Vec::new();
    for (k, m) in raw.iter().enumerate() {
        let path = format!("{at}.methods[{k}]");
        let upper = m.to_ascii_uppercase();
        // Any token parses as an extension method, so a typo (`PACTH`) would make a
        // rule that never matches; only the methods of RFC 9110 and RFC 5789 are known.
        let method = Method::from_bytes(upper.as_bytes())
            .ok()
            .filter(|m| KNOWN_METHODS.contains(m))
            .ok_or_else(|| {
                invalid(
                    &path,
                    format!(
                        "{m:?} is not an HTTP method (one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE)"
                    ),
                )
            })?;
        if out.contains(&method) {
            return Err(invalid(&path, format!("{method} is listed twice")));
        }
        out.push(method);
    }
    Ok(out)
}

/// Statuses RFC 9110 calls cacheable by default, minus 206 (we do not cache ranges).
const STORABLE_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

impl RawCache {
    fn validate(self, at: &str, path: &PathTemplate) -> Result<CachePolicy, ConfigError> {
        let ttl_l1 = parse_duration(&format!("{at}.ttl_l1"), &self.ttl_l1)?;
        let ttl_l2 = parse_duration(&format!("{at}.ttl_l2"), &self.ttl_l2)?;
        if ttl_l1.is_zero() && ttl_l2.is_zero() {
            return Err(invalid(
                format!("{at}.ttl_l1"),
                "ttl_l1 and ttl_l2 are both 0: nothing would be cached; remove [cache] to forward",
            ));
        }
        let max_body = parse_size(&format!("{at}.max_body"), &self.max_body)?;
        if max_body == 0 || max_body > 64 << 20 {
            return Err(invalid(
                format!("{at}.max_body"),
                "must be between 1 byte and 64MiB",
            ));
        }
        let vary = validate_vary(at, &self.vary, self.credentials)?;
        let query = validate_query(at, &self.query)?;
        let families = validate_entry_families(at, &self.families, path, &query)?;
        let members = self
            .members
            .map(|m| m.validate(&format!("{at}.members")))
            .transpose()?;
        Ok(CachePolicy {
            families,
            members,
            query,
            unknown_query: self.unknown_query,
            vary,
            ttl_l1,
            ttl_l2,
            stale_if_error: parse_duration(&format!("{at}.stale_if_error"), &self.stale_if_error)?,
            max_body: max_body as usize,
            credentials: self.credentials,
            statuses: validate_statuses(at, &self.statuses)?,
        })
    }
}

fn validate_query(at: &str, raw: &[String]) -> Result<Vec<QueryParam>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (k, item) in raw.iter().enumerate() {
        let path = format!("{at}.query[{k}]");
        let (name, default) = match item.split_once('=') {
            Some((n, d)) => (n.trim(), Some(d.trim().to_owned())),
            None => (item.trim(), None),
        };
        if name.is_empty() || name.contains(['&', '#', ' ']) {
            return Err(invalid(
                &path,
                format!("{item:?}: want \"name\" or \"name=default\""),
            ));
        }
        if !seen.insert(name.to_owned()) {
            return Err(invalid(
                &path,
                format!("parameter {name:?} is listed twice"),
            ));
        }
        out.push(QueryParam {
            name: name.to_owned(),
            default,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn validate_vary(
    at: &str,
    raw: &[String],
    credentials: CredentialPolicy,
) -> Result<Vec<HeaderName>, ConfigError> {
    let mut out: Vec<HeaderName> = Vec::with_capacity(raw.len());
    for (k, h) in raw.iter().enumerate() {
        let path = format!("{at}.vary[{k}]");
        let name = HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid(&path, format!("{h:?} is not a header name")))?;
        if name == http::header::AUTHORIZATION || name == http::header::COOKIE {
            let hint = match credentials {
                CredentialPolicy::Bypass => "set credentials = \"per_credential\" instead",
                CredentialPolicy::PerCredential => {
                    "credentials = \"per_credential\" already keys on it"
                }
            };
            return Err(invalid(
                &path,
                format!("{name} cannot be a vary header: {hint}"),
            ));
        }
        if out.contains(&name) {
            return Err(invalid(&path, format!("{name} is listed twice")));
        }
        out.push(name);
    }
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(out)
}

fn validate_statuses(at: &str, raw: &[u16]) -> Result<Vec<StatusCode>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            format!("{at}.statuses"),
            "must list at least one status",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(k, &s)| {
            if !STORABLE_STATUSES.contains(&s) {
                return Err(invalid(
                    format!("{at}.statuses[{k}]"),
                    format!("{s} is not cacheable (allowed: {STORABLE_STATUSES:?})"),
                ));
            }
            StatusCode::from_u16(s)
                .map_err(|_| invalid(format!("{at}.statuses[{k}]"), "bad status"))
        })
        .collect()
}

fn template(path: &str, text: &str, allowed: &[Source]) -> Result<Template, ConfigError> {
    Template::parse(text, allowed).map_err(|e| invalid(path, format!("{text:?}: {e}")))
}

fn validate_entry_families(
    at: &str,
    raw: &[String],
    path: &PathTemplate,
    query: &[QueryParam],
) -> Result<Vec<Template>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (k, text) in raw.iter().enumerate() {
        let here = format!("{at}.families[{k}]");
        let t = template(&here, text, &[Source::Path, Source::Query])?;
        for (source, field, default) in t.placeholders() {
            check_entry_placeholder(&here, source, field, default, path, query)?;
        }
        out.push(t);
    }
    Ok(out)
}

fn check_entry_placeholder(
    here: &str,
    source: Source,
    field: &str,
    default: Option<&str>,
    path: &PathTemplate,
    query: &[QueryParam],
) -> Result<(), ConfigError> {
    match source {
        Source::Path => check_path_placeholder(here, field, default, path),
        Source::Query => match query.iter().find(|q| q.name == field) {
            None => Err(invalid(
                here,
                format!("unknown placeholder {{query.{field}}}: not in this route's query list"),
            )),
            Some(q) if q.default.is_none() && default.is_none() => Err(invalid(
                here,
                format!(
                    "{{query.{field}}} may be absent: give it a default, e.g. {{query.{field}|all}}"
                ),
            )),
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

impl RawMembers {
    fn validate(self, at: &str) -> Result<Members, ConfigError> {
        let entity = template(&format!("{at}.entity"), &self.entity, &[Source::Item])?;
        let member_of = self
            .member_of
            .iter()
            .enumerate()
            .map(|(k, t)| template(&format!("{at}.member_of[{k}]"), t, &[Source::Item]))
            .collect::<Result<_, _>>()?;
        Ok(Members {
            items: self.items,
            entity,
            member_of,
        })
    }
}

/// A `{path.x}` placeholder names a parameter of the route's path. A typed one takes no
/// default: a value with no canonical spelling must leave the placeholder unrendered
/// (a write then ends the whole group), not stand in for some entity.
fn check_path_placeholder(
    here: &str,
    field: &str,
    default: Option<&str>,
    path: &PathTemplate,
) -> Result<(), ConfigError> {
    match path.typed_params().find(|(p, _)| *p == field) {
        None => Err(invalid(
            here,
            format!("unknown placeholder {{path.{field}}}: the path has no {{{field}}}"),
        )),
        Some((_, ParamType::Text)) => Ok(()),
        Some(_) if default.is_some() => Err(invalid(
            here,
            format!(
                "{{path.{field}|...}}: a typed path parameter takes no default; write {{path.{field}}}"
            ),
        )),
        Some(_) => Ok(()),
    }
}

const WRITE_SOURCES: &[Source] = &[Source::Path, Source::Request, Source::Response];

fn write_template(here: &str, text: &str, path: &PathTemplate) -> Result<Template, ConfigError> {
    let t = template(here, text, WRITE_SOURCES)?;
    for (source, field, default) in t.placeholders() {
        if source == Source::Path {
            check_path_placeholder(here, field, default, path)?;
        }
    }
    Ok(t)
}

/// `/a/{path.id}`: a template per segment.
fn answer_path(at: &str, text: &str, path: &PathTemplate) -> Result<AnswerPath, ConfigError> {
    let Some(rest) = text.strip_prefix('/') else {
        return Err(invalid(
            at,
            format!("{text:?}: must be a path starting with '/'"),
        ));
    };
    let segments = rest
        .split('/')
        .map(|seg| write_template(at, seg, path))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AnswerPath { segments })
}

impl RawInvalidate {
    fn validate(self, at: &str, path: &PathTemplate) -> Result<InvalidateRule, ConfigError> {
        let families = self
            .families
            .iter()
            .enumerate()
            .map(|(k, text)| write_template(&format!("{at}.families[{k}]"), text, path))
            .collect::<Result<Vec<_>, _>>()?;
        let entity = self
            .entity
            .as_deref()
            .map(|text| write_template(&format!("{at}.entity"), text, path))
            .transpose()?;
        if families.is_empty() && entity.is_none() {
            return Err(invalid(
                at,
                "lists no families and no entity: nothing would be invalidated",
            ));
        }
        let statuses = self
            .statuses
            .iter()
            .enumerate()
            .map(|(k, &c)| {
                StatusCode::from_u16(c).map_err(|_| {
                    invalid(
                        format!("{at}.statuses[{k}]"),
                        format!("{c} is not a status"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(InvalidateRule {
            families,
            entity,
            fallback: self.fallback,
            statuses,
            max_body: parse_size(&format!("{at}.max_body"), &self.max_body)? as usize,
            refresh: match &self.refresh {
                None => Duration::ZERO,
                Some(v) => {
                    let at = format!("{at}.refresh");
                    let d = parse_duration(&at, v)?;
                    if d > Duration::from_secs(10) {
                        return Err(invalid(
                            at,
                            "a write waits this long at most before it is answered: keep it under 10s (e.g. \"250ms\")",
                        ));
                    }
                    d
                }
            },
            index: self.index.map(Arc::new),
            represents: self
                .represents
                .as_deref()
                .map(|text| answer_path(&format!("{at}.represents"), text, path))
                .transpose()?,
            async_: self.async_,
        })
    }
}

/// A write may only name families (by group) that some cached route's entries belong to,
/// so a typo cannot silently invalidate nothing.
/// A write's `index` names a route that has one; an index's `counts` a cached route with
/// no path parameter.
fn check_index_refs(routes: &[Route]) -> Result<(), ConfigError> {
    for (i, r) in routes.iter().enumerate() {
        if let Some(counts) = r.index.as_ref().and_then(|ix| ix.counts.as_ref()) {
            let fits = routes.iter().any(|o| {
                o.name.as_str() == counts && o.cache.is_some() && o.path.params().next().is_none()
            });
            if !fits {
                return Err(invalid(
                    format!("route[{i}].index.counts"),
                    format!("{counts:?}: no cached route of that name with a literal path"),
                ));
            }
        }
        if let Some(w) = r.invalidate.as_ref().filter(|w| w.index.is_none()) {
            check_index_not_bypassed(i, w, routes)?;
        }
        let Some(name) = r.invalidate.as_ref().and_then(|w| w.index.as_ref()) else {
            continue;
        };
        if !routes.iter().any(|o| o.name == *name && o.index.is_some()) {
            return Err(invalid(
                format!("route[{i}].invalidate.index"),
                format!("{name:?}: no route of that name has a [route.index]"),
            ));
        }
    }
    Ok(())
}

/// A write that makes an indexed route's answers wrong (it ends one of that route's family
/// groups, or changes the kind of entity its pages list) must name the index: the index
/// is kept true only by the answers of the writes that name it, and would otherwise keep
/// serving what such a write changed (until an audit finds it).
fn check_index_not_bypassed(
    i: usize,
    write: &super::InvalidateRule,
    routes: &[Route],
) -> Result<(), ConfigError> {
    let ends: HashSet<String> = write
        .families
        .iter()
        .map(Template::group)
        .chain(write.fallback.iter().cloned())
        .collect();
    let entity = write.entity.as_ref().map(Template::group);
    for indexed in routes.iter().filter(|o| o.index.is_some()) {
        let Some(cache) = &indexed.cache else {
            continue;
        };
        let shared = cache
            .families
            .iter()
            .map(Template::group)
            .find(|g| ends.contains(g));
        let lists = cache
            .members
            .as_ref()
            .map(|m| m.entity.group())
            .filter(|g| entity.as_ref() == Some(g));
        let Some(why) = shared
            .map(|g| format!("it ends family group {g:?}"))
            .or(lists.map(|g| format!("it changes {g:?} entities")))
        else {
            continue;
        };
        return Err(invalid(
            format!("route[{i}].invalidate.index"),
            format!(
                "missing: {why}, which route {:?} serves from its index; add index = {:?} \
                 so this write's answers move the index (without it the index would keep \
                 serving what the write changed)",
                indexed.name.as_str(),
                indexed.name.as_str()
            ),
        ));
    }
    Ok(())
}

fn check_families_used(routes: &[Route]) -> Result<(), ConfigError> {
    let mut groups: HashSet<String> = HashSet::new();
    let mut entity_groups: HashSet<String> = HashSet::new();
    for c in routes.iter().filter_map(|r| r.cache.as_ref()) {
        groups.extend(c.families.iter().map(Template::group));
        if let Some(m) = &c.members {
            groups.extend(m.member_of.iter().map(Template::group));
            entity_groups.insert(m.entity.group());
        }
    }
    for (i, r) in routes.iter().enumerate() {
        let Some(rule) = &r.invalidate else { continue };
        let at = format!("route[{i}].invalidate");
        for (k, t) in rule.families.iter().enumerate() {
            if !groups.contains(&t.group()) {
                let msg = format!(
                    "{:?}: no cached route has a family in group {:?}",
                    t.as_str(),
                    t.group()
                );
                return Err(invalid(format!("{at}.families[{k}]"), msg));
            }
        }
        for (k, g) in rule.fallback.iter().enumerate() {
            if !groups.contains(g) {
                let msg = format!("no cached route has a family in group {g:?}");
                return Err(invalid(format!("{at}.fallback[{k}]"), msg));
            }
        }
        if let Some(e) = &rule.entity
            && !entity_groups.contains(&e.group())
        {
            let msg = format!(
                "{:?}: no cached route reads members of that kind",
                e.as_str()
            );
            return Err(invalid(format!("{at}.entity"), msg));
        }
    }
    Ok(())
}
