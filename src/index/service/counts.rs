//! The status counts (`{"counts":{"SUBMITTED":n,…},"total":n}`) kept true by the same
//! answers that move the orders. A ready partition's count is the mirror's own (exact, like
//! its pages); the others' (history, or statuses still loading) are learned from the MES and
//! moved by each write that takes an order out of or into them; the total is their sum.
//!
//! A write whose previous status nobody knows (an order never seen, in history) makes the
//! counts unknown until they are learned again; so do a gap on the bus and a repair of the
//! audit. A learned answer is taken only if no write touched a status the mirror does not
//! count while it was in flight (the answer may or may not show it). Unknown counts are not
//! served: the ordinary read path answers.

use std::sync::Mutex;

use bytes::Bytes;
use http::HeaderMap;

/// The counts of one index.
#[derive(Default)]
pub struct Counts {
    // A std Mutex: a patch of a few bytes, never held across `.await`.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The MES's body, its numbers for statuses the mirror does not count moved by every
    /// delta since it was learned; `None`: unknown.
    body: Option<Bytes>,
    /// The headers of an answer from it.
    headers: Option<HeaderMap>,
    /// Deltas that touched a status the mirror does not count (or made the counts unknown)
    /// since start, this instance's and those from the bus: a body learned from the MES is
    /// taken only if none came while it was in flight (or, from the bus, shortly after: a
    /// write another instance made before the MES answered may be told a little later).
    deltas: (u64, u64),
}

/// What a write did to the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountDelta<'a> {
    /// An order moved from a known status to another.
    Moved {
        /// Its previous status.
        from: &'a str,
        /// Its new status.
        to: &'a str,
    },
    /// A new order.
    Created {
        /// Its status.
        to: &'a str,
    },
    /// Something changed that the counts cannot follow (an order never seen changed).
    Unknown,
}

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deltas so far: read before asking the MES for the counts, pass to
    /// [`Counts::learn`].
    pub fn deltas(&self) -> (u64, u64) {
        self.lock().deltas
    }

    /// Applies a write's effect (`from_bus`: another instance's write); `counted` says
    /// which statuses the mirror counts itself (ready partitions).
    pub fn apply(&self, delta: CountDelta<'_>, from_bus: bool, counted: impl Fn(&str) -> bool) {
        let mut s = self.lock();
        let mut moves: Vec<(&str, i64)> = Vec::new();
        match delta {
            CountDelta::Moved { from, to } if from == to => {}
            CountDelta::Moved { from, to } => moves.extend([(from, -1), (to, 1)]),
            CountDelta::Created { to } => moves.push((to, 1)),
            CountDelta::Unknown => {
                s.deltas.0 += 1;
                s.body = None;
                return;
            }
        }
        moves.retain(|(status, _)| !counted(status));
        if moves.is_empty() {
            return;
        }
        match from_bus {
            true => s.deltas.1 += 1,
            false => s.deltas.0 += 1,
        }
        let Some(mut body) = s.body.take() else {
            return;
        };
        for (status, by) in moves {
            let Some(patched) = shift(&body, status, by) else {
                return;
            };
            body = patched;
        }
        s.body = Some(body);
    }

    /// Forgets the counts (a gap on the bus, a repair): unknown until learned again.
    pub fn forget(&self) {
        let mut s = self.lock();
        s.deltas.0 += 1;
        s.body = None;
    }

    /// Takes the MES's counts, asked after [`Counts::deltas`] said `issued` and answered
    /// once the writes sent meanwhile had settled; refused (`None`) if a delta that matters
    /// came in between, or if the body is not a flat counts object whose total is the sum.
    /// `Some(true)`: the counts held differed from the MES's (a repair).
    pub fn learn(
        &self,
        body: Bytes,
        headers: HeaderMap,
        issued: (u64, u64),
        counted: impl Fn(&str) -> Option<usize>,
    ) -> Option<bool> {
        let (pairs, total) = parse(&body)?;
        if pairs.iter().map(|(_, n)| n).sum::<u64>() != total {
            return None;
        }
        let mut s = self.lock();
        if s.deltas != issued {
            return None;
        }
        let differed = match (&s.body, &s.headers) {
            (Some(held), Some(h)) => compose(held, h, &counted)
                .is_some_and(|(ours, _)| ours != compose_raw(&body, &counted).unwrap_or_default()),
            _ => false,
        };
        s.body = Some(body);
        s.headers = Some(headers);
        Some(differed)
    }

    /// Whether the counts are known.
    pub fn known(&self) -> bool {
        self.lock().body.is_some()
    }

    /// The body (the mirror's counts for the statuses it counts) and the headers of an
    /// answer, when known.
    pub fn served(&self, counted: impl Fn(&str) -> Option<usize>) -> Option<(Bytes, HeaderMap)> {
        let s = self.lock();
        compose(s.body.as_ref()?, s.headers.as_ref()?, &counted)
    }
}

fn compose(
    body: &Bytes,
    headers: &HeaderMap,
    counted: &impl Fn(&str) -> Option<usize>,
) -> Option<(Bytes, HeaderMap)> {
    Some((compose_raw(body, counted)?, headers.clone()))
}

/// `body` with each counted status's number replaced by the mirror's, and the total by the
/// sum.
fn compose_raw(body: &Bytes, counted: &impl Fn(&str) -> Option<usize>) -> Option<Bytes> {
    let (pairs, _) = parse(body)?;
    let mut out = body.clone();
    let mut total = 0u64;
    for (status, n) in pairs {
        let n = counted(&status).map_or(n, |len| len as u64);
        total += n;
        out = set(&out, &status, n)?;
    }
    set(&out, "total", total)
}

/// The `"counts"` object's pairs and the `"total"`, for a flat body of non-negative
/// integers; `None` for anything else.
fn parse(body: &[u8]) -> Option<(Vec<(String, u64)>, u64)> {
    let text = std::str::from_utf8(body).ok()?;
    let inner = text.split_once("\"counts\":{")?.1;
    let (inner, rest) = inner.split_once('}')?;
    let mut pairs = Vec::new();
    for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once(':')?;
        let k = k.trim().strip_prefix('"')?.strip_suffix('"')?;
        pairs.push((k.to_owned(), v.trim().parse().ok()?));
    }
    let total = rest.split_once("\"total\":")?.1;
    let digits: String = total.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((pairs, digits.parse().ok()?))
}

/// `body` with the number after `"key":` moved by `by`; `None` if the key is not there
/// once, or the number would go below zero.
fn shift(body: &[u8], key: &str, by: i64) -> Option<Bytes> {
    let (at, digits) = number_at(body, key)?;
    let old: i64 = std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    let new = old.checked_add(by).filter(|n| *n >= 0)?;
    Some(splice(body, at, digits, new as u64))
}

/// `body` with the number after `"key":` set to `n`.
fn set(body: &[u8], key: &str, n: u64) -> Option<Bytes> {
    let (at, digits) = number_at(body, key)?;
    Some(splice(body, at, digits, n))
}

fn number_at(body: &[u8], key: &str) -> Option<(usize, usize)> {
    let needle = format!("\"{key}\":");
    let at = find_once(body, needle.as_bytes())? + needle.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    (digits > 0).then_some((at, digits))
}

fn splice(body: &[u8], at: usize, digits: usize, n: u64) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(&body[at + digits..]);
    Bytes::from(out)
}

fn find_once(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut found = hay
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle);
    let (first, _) = found.next()?;
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"counts":{"SUBMITTED":3,"SHIPPED":10,"DELIVERED":0},"total":13}"#;

    /// The mirror counts SUBMITTED (ready, 3 held); SHIPPED and DELIVERED are history.
    fn mirror(status: &str) -> Option<usize> {
        (status == "SUBMITTED").then_some(3)
    }

    fn counted(status: &str) -> bool {
        mirror(status).is_some()
    }

    fn learned() -> Counts {
        let c = Counts::default();
        let got = c.learn(
            Bytes::from_static(BODY),
            HeaderMap::new(),
            c.deltas(),
            mirror,
        );
        assert_eq!(got, Some(false));
        c
    }

    fn body(c: &Counts, mirror: impl Fn(&str) -> Option<usize>) -> String {
        String::from_utf8(c.served(mirror).unwrap().0.to_vec()).unwrap()
    }

    #[test]
    fn counted_statuses_come_from_the_mirror_the_others_move_with_the_writes() {
        let c = learned();
        assert_eq!(body(&c, mirror), std::str::from_utf8(BODY).unwrap());
        c.apply(
            CountDelta::Moved {
                from: "SHIPPED",
                to: "DELIVERED",
            },
            false,
            counted,
        );
        assert_eq!(
            body(&c, mirror),
            r#"{"counts":{"SUBMITTED":3,"SHIPPED":9,"DELIVERED":1},"total":13}"#
        );
        // A create in a counted status: the mirror holds it (4 now), the total follows.
        c.apply(CountDelta::Created { to: "SUBMITTED" }, true, counted);
        assert_eq!(
            body(&c, |s| (s == "SUBMITTED").then_some(4)),
            r#"{"counts":{"SUBMITTED":4,"SHIPPED":9,"DELIVERED":1},"total":14}"#
        );
    }

    #[test]
    fn what_cannot_be_followed_makes_the_counts_unknown_until_learned_again() {
        let c = learned();
        c.apply(CountDelta::Unknown, false, counted);
        assert!(!c.known());
        let c = learned();
        let moved = CountDelta::Moved {
            from: "NOWHERE",
            to: "SHIPPED",
        };
        c.apply(moved, false, counted);
        assert!(!c.known(), "a status the body does not have");
        let c = learned();
        let moved = CountDelta::Moved {
            from: "DELIVERED",
            to: "SHIPPED",
        };
        c.apply(moved, false, counted);
        assert!(!c.known(), "below zero: the counts were wrong");
    }

    #[test]
    fn an_answer_a_delta_on_history_overtook_is_not_learned_one_on_counted_statuses_is() {
        let c = Counts::default();
        let issued = c.deltas();
        c.apply(CountDelta::Created { to: "SUBMITTED" }, true, counted);
        let got = c.learn(Bytes::from_static(BODY), HeaderMap::new(), issued, mirror);
        assert_eq!(got, Some(false), "the mirror counts SUBMITTED itself");
        let c = Counts::default();
        let issued = c.deltas();
        c.apply(CountDelta::Created { to: "SHIPPED" }, true, counted);
        let got = c.learn(Bytes::from_static(BODY), HeaderMap::new(), issued, mirror);
        assert_eq!(got, None, "SHIPPED moved while the answer was in flight");
        let c = learned();
        let changed = br#"{"counts":{"SUBMITTED":3,"SHIPPED":11,"DELIVERED":0},"total":14}"#;
        let got = c.learn(
            Bytes::from_static(changed),
            HeaderMap::new(),
            c.deltas(),
            mirror,
        );
        assert_eq!(got, Some(true), "differed: a repair");
        let bad = br#"{"counts":{"SUBMITTED":3},"total":4}"#;
        assert_eq!(
            c.learn(
                Bytes::from_static(bad),
                HeaderMap::new(),
                c.deltas(),
                mirror
            ),
            None
        );
    }
}
