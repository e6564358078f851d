//! The status counts (`{"counts":{"SUBMITTED":n,…},"total":n}`) kept true by the same
//! answers that move the orders: learned once from the MES, then each write that moves an
//! order from a known status to another takes one from the first and adds one to the
//! second (a create adds one to its status and the total), in the bytes the MES sent.
//!
//! A write whose previous status nobody knows (an order never seen, in history) makes the
//! counts unknown until they are learned again; so do a gap on the bus and a repair of the
//! audit. Unknown counts are not served: the ordinary read path answers.

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
    /// The MES's body, patched by every delta since it was learned; `None`: unknown.
    body: Option<Bytes>,
    /// The headers of an answer from it.
    headers: Option<HeaderMap>,
    /// Deltas applied (or that made the counts unknown) since start, this instance's and
    /// those from the bus: a body learned from the MES is taken only if none came while it
    /// was in flight (or, from the bus, shortly after: a write another instance made
    /// before the MES answered may be told a little later).
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

    /// The number of deltas so far: read before asking the MES for the counts, pass it to
    /// [`Counts::learn`].
    pub fn deltas(&self) -> (u64, u64) {
        self.lock().deltas
    }

    /// Applies a write's effect (`from_bus`: another instance's write).
    pub fn apply(&self, delta: CountDelta<'_>, from_bus: bool) {
        let mut s = self.lock();
        match from_bus {
            true => s.deltas.1 += 1,
            false => s.deltas.0 += 1,
        }
        let Some(body) = s.body.take() else { return };
        s.body = match delta {
            CountDelta::Moved { from, to } if from == to => Some(body),
            CountDelta::Moved { from, to } => patch(&body, from, -1).and_then(|b| patch(&b, to, 1)),
            CountDelta::Created { to } => patch(&body, to, 1).and_then(|b| patch(&b, "total", 1)),
            CountDelta::Unknown => None,
        };
    }

    /// Forgets the counts (a gap on the bus, a repair): unknown until learned again.
    pub fn forget(&self) {
        let mut s = self.lock();
        s.deltas.0 += 1;
        s.body = None;
    }

    /// Takes the MES's counts, asked after [`Counts::deltas`] said `issued` and answered
    /// once the writes sent meanwhile had settled; refused (false) if a delta came in
    /// between (the answer may or may not show it). Returns whether the held counts
    /// differed from the MES's (a repair), when they were known.
    pub fn learn(&self, body: Bytes, headers: HeaderMap, issued: (u64, u64)) -> Option<bool> {
        let mut s = self.lock();
        if s.deltas != issued {
            return None;
        }
        let differed = s.body.as_ref().is_some_and(|held| *held != body);
        s.body = Some(body);
        s.headers = Some(headers);
        Some(differed)
    }

    /// Whether the counts are known.
    pub fn known(&self) -> bool {
        self.lock().body.is_some()
    }

    /// The body and the headers of an answer, when known.
    pub fn served(&self) -> Option<(Bytes, HeaderMap)> {
        let s = self.lock();
        Some((s.body.clone()?, s.headers.clone()?))
    }
}

/// `body` with the number after `"key":` moved by `by`; `None` if the key is not there
/// once, or the number would go below zero.
fn patch(body: &[u8], key: &str, by: i64) -> Option<Bytes> {
    let needle = format!("\"{key}\":");
    let at = find_once(body, needle.as_bytes())? + needle.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let old: i64 = std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    let new = old.checked_add(by).filter(|n| *n >= 0)?;
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(new.to_string().as_bytes());
    out.extend_from_slice(&body[at + digits..]);
    Some(Bytes::from(out))
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

    fn learned() -> Counts {
        let c = Counts::default();
        assert_eq!(
            c.learn(Bytes::from_static(BODY), HeaderMap::new(), c.deltas()),
            Some(false)
        );
        c
    }

    fn body(c: &Counts) -> String {
        String::from_utf8(c.served().unwrap().0.to_vec()).unwrap()
    }

    #[test]
    fn a_move_takes_one_from_the_old_status_and_gives_it_to_the_new() {
        let c = learned();
        c.apply(
            CountDelta::Moved {
                from: "SHIPPED",
                to: "DELIVERED",
            },
            false,
        );
        assert_eq!(
            body(&c),
            r#"{"counts":{"SUBMITTED":3,"SHIPPED":9,"DELIVERED":1},"total":13}"#
        );
        c.apply(CountDelta::Created { to: "SUBMITTED" }, true);
        assert_eq!(
            body(&c),
            r#"{"counts":{"SUBMITTED":4,"SHIPPED":9,"DELIVERED":1},"total":14}"#
        );
    }

    #[test]
    fn what_cannot_be_followed_makes_the_counts_unknown_until_learned_again() {
        let c = learned();
        c.apply(CountDelta::Unknown, false);
        assert!(!c.known());
        let c = learned();
        c.apply(
            CountDelta::Moved {
                from: "NOWHERE",
                to: "SHIPPED",
            },
            false,
        );
        assert!(!c.known(), "a status the body does not have");
        let c = learned();
        c.apply(
            CountDelta::Moved {
                from: "DELIVERED",
                to: "SHIPPED",
            },
            false,
        );
        assert!(!c.known(), "below zero: the counts were wrong");
    }

    #[test]
    fn an_answer_a_delta_overtook_is_not_learned() {
        let c = Counts::default();
        let issued = c.deltas();
        c.apply(CountDelta::Created { to: "SUBMITTED" }, true);
        assert_eq!(
            c.learn(Bytes::from_static(BODY), HeaderMap::new(), issued),
            None
        );
        assert!(!c.known());
        let c = learned();
        let changed = br#"{"counts":{"SUBMITTED":4,"SHIPPED":10,"DELIVERED":0},"total":14}"#;
        let got = c.learn(Bytes::from_static(changed), HeaderMap::new(), c.deltas());
        assert_eq!(got, Some(true), "differed: a repair");
    }
}
