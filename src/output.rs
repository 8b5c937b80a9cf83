//! Human or JSON output for every client command.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Prints `value` as pretty JSON, or calls `text` to print it for humans.
pub fn emit(format: OutputFormat, value: &Value, text: impl FnOnce(&Value)) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        ),
        OutputFormat::Text => text(value),
    }
}

/// `1732270000000` → `2024-11-22T10:06:40.000Z`.
pub fn time(ms: &Value) -> String {
    match ms.as_i64() {
        Some(ms) if ms > 0 => humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
        )
        .to_string(),
        _ => "-".into(),
    }
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

/// A fraction as a percentage: `0.01` → `1%`, `0.005` → `0.5%`, `null` → `-`.
pub fn pct(fraction: &Value) -> String {
    match fraction.as_f64() {
        Some(f) => pct_f64(f),
        None => "-".into(),
    }
}

/// `0.01` → `1%`; at most two decimals, never a misleading `0%` for a
/// nonzero rate.
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

/// Milliseconds for humans: `12.3` → `12 ms`, `1.25` → `1.3 ms`, `null` → `-`.
pub fn ms(v: &Value) -> String {
    match v.as_f64() {
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
