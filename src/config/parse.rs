//! The scalar parsers every section uses: durations and byte sizes, each error naming
//! its field path. Nothing here knows which section it parses.

use std::time::Duration;

use super::{ConfigError, RawSize, invalid};

/// Parses a humantime duration, naming the field on error.
pub fn parse_duration(path: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        invalid(
            path,
            format!("bad duration {value:?}: {e} (try \"250ms\", \"5s\")"),
        )
    })
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
