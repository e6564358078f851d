//! The status index: per kept partition (status) an in-memory, newest-first index of the
//! orders, moved in place by the writes' answers, and list pages composed from it byte for
//! byte as the MES would send them. Pure and synchronous: it owns rows, the version rule,
//! page composition and the preload scan's bookkeeping; it does no I/O, holds no lock and
//! knows nothing of routes, tiers or the write path (its callers do).
//!
//! Layout: [`row`] (reading an item, the sort order), [`mirror`] (the partitions, the
//! version rule, tombstones, bounds, change counters), `ranked` (the ordered set with
//! positional access the pages are sliced from), [`compose`](mod@compose) (the list body
//! out of a page, and back), `split` (where each item lies inside a body, so it is kept
//! as received), [`scan`] (when a preload has made a partition exact); and [`service`],
//! the live index that does the I/O and holds the locks: preload, serve, apply.

pub mod compose;
pub mod mirror;
mod ranked;
pub mod row;
pub mod scan;
pub mod service;
mod split;

pub use compose::{BodyError, BodyShape, ListBody, compose};
pub use mirror::{Applied, Mirror, Page};
pub use row::{Row, RowError, RowShape, SortKey};
pub use scan::{Rescan, Scan, ScanError, ScanRequest, Verdict};
