//! Numbers and times formatted for people: cores, bytes in binary units, dollars with two
//! decimals, percentages. Times are sent as UTC in a `<time datetime>` element and shown in
//! the reader's time zone by `tally.js`.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{Markup, html};

/// CPU in cores: `2.5 cores`, `250 m` below one core, `–` when unknown.
pub fn cores(value: Option<f64>) -> String {
    match value {
        None => "–".to_string(),
        Some(v) if !v.is_finite() => "–".to_string(),
        Some(v) if v.abs() < 1.0 && v != 0.0 => format!("{:.0} m", v * 1000.0),
        Some(v) => format!("{v:.2} cores"),
    }
}

/// Bytes in binary units: `512 MiB`, `1.50 GiB`.
pub fn bytes(value: Option<f64>) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return "–".to_string();
    };
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut scaled = v;
    let mut unit = 0;
    while scaled.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 || scaled.abs() >= 100.0 {
        format!("{scaled:.0} {}", UNITS[unit])
    } else {
        format!("{scaled:.2} {}", UNITS[unit])
    }
}

/// US dollars with two decimals and thousands separators: `$1,234.50`.
pub fn usd(value: Option<f64>) -> String {
    let Some(v) = value.filter(|v| v.is_finite()) else {
        return "–".to_string();
    };
    let cents = (v.abs() * 100.0).round() as u64;
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if v < 0.0 && cents > 0 { "-" } else { "" };
    format!("{sign}${grouped}.{:02}", cents % 100)
}

/// A fraction as a percentage: `42 %`.
pub fn percent(value: Option<f64>) -> String {
    match value.filter(|v| v.is_finite()) {
        None => "–".to_string(),
        Some(v) => format!("{:.0} %", v * 100.0),
    }
}

/// A count with thousands separators.
pub fn count(value: u64) -> String {
    usd(Some(value as f64))
        .trim_start_matches('$')
        .trim_end_matches(".00")
        .to_string()
}

/// A time the browser shows in the reader's zone; without JavaScript it reads as UTC.
pub fn time(value: DateTime<Utc>) -> Markup {
    html! {
        time datetime=(value.to_rfc3339_opts(SecondsFormat::Secs, true)) {
            (value.format("%Y-%m-%d %H:%M UTC"))
        }
    }
}

/// Parses the RFC 3339 text the JSON answers carry.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Percent-encodes a path segment or query value (everything but unreserved characters).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, leaving out empty values.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_people_write_them() {
        assert_eq!(cores(Some(2.5)), "2.50 cores");
        assert_eq!(cores(Some(0.25)), "250 m");
        assert_eq!(cores(None), "–");
        assert_eq!(bytes(Some(512.0 * 1024.0 * 1024.0)), "512 MiB");
        assert_eq!(bytes(Some(1.5 * 1024.0 * 1024.0 * 1024.0)), "1.50 GiB");
        assert_eq!(bytes(Some(900.0)), "900 B");
        assert_eq!(usd(Some(1234.5)), "$1,234.50");
        assert_eq!(usd(Some(0.004)), "$0.00");
        assert_eq!(usd(Some(-20.0)), "-$20.00");
        assert_eq!(usd(Some(1_000_000.0)), "$1,000,000.00");
        assert_eq!(percent(Some(0.421)), "42 %");
        assert_eq!(count(30_000), "30,000");
    }
}
