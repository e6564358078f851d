//! The scalar parsers every section uses: durations and byte sizes, each error naming
//! its field path. Nothing here knows which section it parses.

use std::time::Duration;

use super::{ConfigError, RawSize, invalid};

/// The longest duration any field takes: a year. No timeout, TTL or period of mesgate
/// needs more, and much longer ones overflow when added to a clock reading (a panic at
/// start, or every fill failing after a reload).
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a humantime duration of at most `MAX_DURATION`, naming the field on error.
pub fn parse_duration(path: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            path,
            format!("bad duration {value:?}: {e} (try \"250ms\", \"5s\")"),
        )
    })?;
    if d > MAX_DURATION {
        return Err(invalid(
            path,
            format!("{value:?} is longer than the most any duration may be, 366 days"),
        ));
    }
    Ok(d)
}

/// Parses a byte size, naming the field on error.
pub fn parse_size(path: &str, value: &RawSize) -> Result<u64, ConfigError> {
    let text = match value {
        RawSize::Bytes(n) => return Ok(*n),
        RawSize::Text(t) => t.trim(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => {
            return Err(invalid(
                path,
                format!("bad size {text:?}: unknown unit (try \"1MiB\")"),
            ));
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| invalid(path, format!("bad size {text:?}: not a number")))
}
