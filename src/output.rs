//! Human or JSON output for every client command.

use seal_api_types::records::WeightedVersion;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Display;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Prints `value` as pretty JSON, or calls `text` to print it for humans.
pub fn emit<T: Serialize + ?Sized>(format: OutputFormat, value: &T, text: impl FnOnce(&T)) {
    match format {
        OutputFormat::Json => match serde_json::to_string_pretty(value) {
            Ok(json) => println!("{json}"),
            // Only a map with non-string keys fails; no answer has one.
            Err(e) => eprintln!("error: cannot print the answer as JSON: {e}"),
        },
        OutputFormat::Text => text(value),
    }
}

/// `value` as one line of JSON (`--output json` of commands that print a
/// frame per refresh).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<String> {
    Ok(serde_json::to_string(value)?)
}

/// `1732270000000` → `2024-11-22T10:06:40.000Z`.
pub fn time(ms: &Value) -> String {
    time_opt(ms.as_i64())
}

/// [`time`] of a number: `-` unless after the epoch.
pub fn time_ms(ms: i64) -> String {
    if ms > 0 {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
        )
        .to_string()
    } else {
        "-".into()
    }
}

/// [`time`] of an optional number: `-` when absent.
pub fn time_opt(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), time_ms)
}

/// `[{"version":1,"weight":90},{"version":2,"weight":10}]` → `1=90% 2=10%`.
pub fn weights(w: &Value) -> String {
    match w.as_array() {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|i| format!("{}={}%", i["version"], i["weight"]))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "-".into(),
    }
}

/// [`weights`] of typed weights: `1=90% 2=10%`, `-` when empty.
pub fn weights_of(w: &[WeightedVersion]) -> String {
    if w.is_empty() {
        return "-".into();
    }
    w.iter()
        .map(|i| format!("{}={}%", i.version, i.weight))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`weights_of`] of optional weights: `-` when absent.
pub fn weights_opt(w: Option<&[WeightedVersion]>) -> String {
    w.map_or_else(|| "-".into(), weights_of)
}

/// An optional value as [`s`] prints it: the value, or `-`.
pub fn opt<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A plain left-aligned table.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// A JSON string without quotes, or `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A fraction as a percentage: `0.01` → `1%`, `0.005` → `0.5%`; at most
/// two decimals, never a misleading `0%` for a nonzero rate.
pub fn pct_f64(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p == 0.0 {
        return "0%".into();
    }
    let text = format!("{p:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" || text == "-0" {
        return "<0.01%".into();
    }
    format!("{text}%")
}

/// Milliseconds for humans: `12.3` → `12 ms`, `1.5` → `1.5 ms`, none → `-`.
pub fn ms_opt(v: Option<f64>) -> String {
    match v {
        Some(m) if m < 10.0 => format!("{m:.1} ms"),
        Some(m) => format!("{m:.0} ms"),
        None => "-".into(),
    }
}

/// A duration in milliseconds, humantime-formatted: `90000` → `1m 30s`,
/// `null` → `-`.
pub fn duration_ms(v: &Value) -> String {
    match v.as_u64() {
        Some(0) => "0s".into(),
        Some(ms) => humantime::format_duration(std::time::Duration::from_millis(ms)).to_string(),
        None => "-".into(),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_helpers_print_what_the_value_helpers_print() {
        let w = json!([{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]);
        let typed: Vec<WeightedVersion> = serde_json::from_value(w.clone()).unwrap();
        assert_eq!(weights_of(&typed), weights(&w));
        assert_eq!(weights_of(&typed), "1=90% 2=10%");
        assert_eq!(weights_of(&[]), weights(&json!([])));
        assert_eq!(weights_opt(None), weights(&Value::Null));
        assert_eq!(weights_opt(Some(&typed)), "1=90% 2=10%");

        for ms in [0, -5, 1732270000000] {
            assert_eq!(time_ms(ms), time(&json!(ms)));
        }
        assert_eq!(time_ms(1732270000000), "2024-11-22T10:06:40.000Z");
        assert_eq!(time_opt(None), time(&Value::Null));

        assert_eq!(opt(Some(7u64)), s(&json!(7)));
        assert_eq!(opt(None::<u64>), s(&Value::Null));
        assert_eq!(opt(Some("sha256:ab")), s(&json!("sha256:ab")));

        assert_eq!(ms_opt(Some(1.5)), "1.5 ms");
        assert_eq!(ms_opt(Some(12.3)), "12 ms");
        assert_eq!(ms_opt(None), "-");
    }
}
