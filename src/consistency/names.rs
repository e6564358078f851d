//! Invalidation names: what an entry depends on and what a bump ends, typed.
//!
//! A cached entry depends on its families (`status:NEW`, `order:42`, `counts`), on each
//! family's group (`status:*`, ended by a write whose previous status is unknown), on its
//! route (a reload that changes the route's cache policy) and on everything (`*`: a purge,
//! a resubscription of the bus). This module says how they are spelled on the wire (Redis
//! keys, bus messages, purge requests) and nothing about when they are bumped.

use std::fmt;

use crate::family::group_of;

/// One invalidation name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Name {
    /// A family, e.g. `status:NEW`, `order:42`, `counts`.
    Family(String),
    /// Every family of a group, e.g. the group `status` (spelled `status:*`).
    Group(String),
    /// Every entry of one route (spelled `route:NAME`): a reload changed its policy.
    Route(String),
    /// Everything (spelled `*`).
    Global,
}

const ROUTE_PREFIX: &str = "route:";

impl Name {
    /// The family `f`.
    pub fn family(f: &str) -> Self {
        Name::Family(f.to_owned())
    }

    /// The group `g` (`status` for `status:*`).
    pub fn group(g: &str) -> Self {
        Name::Group(g.to_owned())
    }

    /// Reads the wire spelling back (bus messages, purge requests).
    pub fn parse(s: &str) -> Self {
        if s == "*" {
            Name::Global
        } else if let Some(g) = s.strip_suffix(":*") {
            Name::Group(g.to_owned())
        } else if let Some(r) = s.strip_prefix(ROUTE_PREFIX) {
            Name::Route(r.to_owned())
        } else {
            Name::Family(s.to_owned())
        }
    }

    /// The names an entry of `family` depends on: the family, its group (when it has
    /// one) and the global name.
    fn push_for(out: &mut Vec<Name>, family: &str) {
        let group = group_of(family);
        push_unique(out, Name::family(family));
        if group != family {
            push_unique(out, Name::group(group));
        }
        push_unique(out, Name::Global);
    }

    /// The names of a set of families, without duplicates, in a stable order; at least
    /// the global name.
    pub fn all_for(families: &[String]) -> Vec<Name> {
        let mut out = Vec::new();
        for f in families {
            Self::push_for(&mut out, f);
        }
        push_unique(&mut out, Name::Global);
        out
    }

    /// The family, when this is one (a fill hands only its families to a write).
    pub fn as_family(&self) -> Option<&str> {
        match self {
            Name::Family(f) => Some(f),
            _ => None,
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Family(s) => f.write_str(s),
            Name::Group(g) => write!(f, "{g}:*"),
            Name::Route(r) => write!(f, "{ROUTE_PREFIX}{r}"),
            Name::Global => f.write_str("*"),
        }
    }
}

/// Adds `item` to `items` unless it is there (name lists are short).
pub fn push_unique<T: PartialEq>(items: &mut Vec<T>, item: T) {
    if !items.contains(&item) {
        items.push(item);
    }
}

/// The wire spellings of `names`.
pub fn spelled(names: &[Name]) -> Vec<String> {
    names.iter().map(Name::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_family_group_and_global() {
        let s = |f: &[&str]| {
            let fams: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            spelled(&Name::all_for(&fams))
        };
        assert_eq!(s(&["status:A"]), ["status:A", "status:*", "*"]);
        assert_eq!(s(&["counts"]), ["counts", "*"]);
        assert_eq!(
            s(&["status:A", "status:B"]),
            ["status:A", "status:*", "*", "status:B"]
        );
        assert_eq!(s(&[]), ["*"]);
    }

    #[test]
    fn the_wire_spelling_reads_back() {
        for n in [
            Name::family("status:A"),
            Name::family("counts"),
            Name::group("status"),
            Name::Route("orders".into()),
            Name::Global,
        ] {
            assert_eq!(Name::parse(&n.to_string()), n);
        }
    }
}
