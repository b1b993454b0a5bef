//! Sizes and durations as people type them: "64MiB", "500ms", "1d".

use std::time::Duration;

/// Parses "1024", "64KiB", "64MiB", "1GiB", "10MB", "1GB" into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?} must be a number with an optional unit, like 64MiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    Ok((n * mult) as u64)
}

/// Parses "500ms", "10s", "5m", "2h", "1d", "1w" (and humantime's longer forms).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("duration {s:?}: {e}; write it like 500ms, 10s, 5m, 2h or 1d"))
}

/// Parses a duration and returns whole seconds.
pub fn parse_secs(s: &str) -> Result<i64, String> {
    parse_duration(s).map(|d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_secs("1d"), Ok(86_400));
        assert_eq!(parse_secs("90m"), Ok(5_400));
        assert!(parse_duration("soon").is_err());
    }
}
