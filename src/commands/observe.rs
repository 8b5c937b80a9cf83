//! Observability: `seal logs`, `seal top`, `seal cost`, `seal budget`,
//! `seal monitoring`.

use crate::client::Client;
use crate::output::{OutputFormat, emit, json_line, ms_opt, pct_f64, s, table, time_ms};
use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use futures::StreamExt;
use seal_api_types::observe::{BudgetAnswer, BudgetBody, BudgetStatus, Cost, Top};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::Duration;

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("whose").required(true).multiple(true).args(["function", "correlation"])))]
pub struct LogsArgs {
    /// Function name (optional with --correlation: then every function's
    /// records of that journey).
    function: Option<String>,
    /// Only records of invocations with this correlation id (the
    /// `x-request-id` an answer carries, or a `traceparent`'s trace id):
    /// with no function, a request followed through every function its
    /// events reached.
    #[arg(long, value_name = "ID")]
    correlation: Option<String>,
    /// Only this environment.
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Only this version.
    #[arg(long)]
    version: Option<u64>,
    /// Only invocations with this status: an exact one (200) or a class (5xx).
    #[arg(long, value_name = "STATUS")]
    status: Option<String>,
    /// Only records newer than this, e.g. 10m or 24h.
    #[arg(long, value_name = "DUR")]
    since: Option<String>,
    /// At most this many of the newest records (before following).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Keep the connection open and print new records as they arrive
    /// (until Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Only this environment.
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Time between frames.
    #[arg(long, value_parser = parse_interval, value_name = "DUR", default_value = "1s")]
    interval: u64,
    /// Stop after this many frames (default: until Ctrl-C).
    #[arg(long, short = 'n', value_name = "N")]
    iterations: Option<u64>,
}

#[derive(Args, Debug)]
pub struct CostArgs {
    /// Function name.
    function: String,
    /// How far back to count, e.g. 1h, 24h or 30d (hourly granularity).
    #[arg(long, value_name = "DUR", default_value = "24h")]
    since: String,
    /// Only this environment.
    #[arg(long, short = 'e')]
    env: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum BudgetCommand {
    /// Set (or replace) the GB-seconds budget of a function.
    ///
    /// The budget is counted over UTC calendar periods (a day or a month),
    /// all environments together, and the used fraction is exported as a
    /// metric. The first time the usage of a period reaches the budget, the
    /// server writes a budget_exceeded warning to the audit log and, with
    /// --webhook, POSTs a JSON notice to the URL. Nothing is throttled.
    Set(BudgetSetArgs),
    /// Remove the budget of a function.
    Delete(FunctionName),
}

#[derive(Args, Debug)]
pub struct BudgetSetArgs {
    /// Function name.
    function: String,
    /// GB-seconds allowed per period (memory in GB × seconds of execution).
    #[arg(long, value_name = "X")]
    gb_seconds: f64,
    /// The calendar period (UTC) the budget is counted over.
    #[arg(long, value_enum, default_value_t = Period::Month)]
    period: Period,
    /// An http:// URL notified (POST, JSON) when the budget is exceeded.
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

#[derive(Args, Debug)]
pub struct FunctionName {
    /// Function name.
    function: String,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("what").required(true).args(["grafana", "prometheus_rules"])))]
pub struct MonitoringArgs {
    /// Function name.
    function: String,
    /// A Grafana dashboard (JSON) of the function's metrics.
    #[arg(long)]
    grafana: bool,
    /// Prometheus alerting rules (YAML) for the function: errors, latency,
    /// cold starts, and its budget if it has one.
    #[arg(long)]
    prometheus_rules: bool,
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<std::path::PathBuf>,
}

/// `1s`, `500ms` → milliseconds, at least 1.
fn parse_interval(s: &str) -> Result<u64, String> {
    match super::deploy::parse_duration_ms(s)? {
        0 => Err(format!("invalid interval {s:?}: must be longer than 0")),
        ms => Ok(ms),
    }
}

// ---------------------------------------------------------------- logs

pub async fn logs(args: LogsArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if let Some(f) = &args.function {
        super::deploy::check_names(f, args.env.as_deref())?;
    }
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(c) = &args.correlation {
        query.push(("correlation", c.clone()));
    }
    if let Some(env) = &args.env {
        query.push(("environment", env.clone()));
    }
    if let Some(v) = args.version {
        query.push(("version", v.to_string()));
    }
    if let Some(st) = &args.status {
        query.push(("status", st.clone()));
    }
    if let Some(since) = &args.since {
        query.push(("since", since.clone()));
    }
    query.push(("limit", args.limit.to_string()));
    if args.follow {
        query.push(("follow", "true".into()));
    }
    let path = match &args.function {
        Some(f) => format!("/v1/functions/{f}/logs"),
        None => "/v1/logs".to_owned(),
    };
    let req = client.request(reqwest::Method::GET, &path).query(&query);
    let resp = client.checked(req).await?;

    let stream = async {
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut printed = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| client.unreachable(e))?;
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if !print_log_line(&line, out)? {
                    return anyhow::Ok(printed);
                }
                printed += 1;
            }
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            print_log_line(&buf, out)?;
            printed += 1;
        }
        anyhow::Ok(printed)
    };
    let printed = tokio::select! {
        r = stream => r?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    if printed == 0 && out == OutputFormat::Text {
        match (&args.function, &args.correlation) {
            (Some(f), _) => eprintln!("no log records of {f} match"),
            (None, Some(c)) => eprintln!("no log records with correlation id {c} match"),
            (None, None) => {}
        }
    }
    Ok(())
}

/// Prints one NDJSON line; false when standard output is closed (e.g.
/// `seal logs -f | head`), which ends the command quietly.
fn print_log_line(raw: &[u8], out: OutputFormat) -> anyhow::Result<bool> {
    let raw = String::from_utf8_lossy(raw);
    let raw = raw.trim_end_matches(['\n', '\r']);
    if raw.trim().is_empty() {
        return Ok(true);
    }
    let text = match out {
        OutputFormat::Json => raw.to_owned(),
        OutputFormat::Text => match serde_json::from_str::<Value>(raw) {
            Ok(v) if v["kind"] == "notice" => {
                eprintln!("notice: {}", s(&v["message"]));
                return Ok(true);
            }
            Ok(v) => log_text(&v).unwrap_or_else(|| raw.to_owned()),
            Err(_) => raw.to_owned(),
        },
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to standard output"),
    }
}

/// A log record for humans, or `None` for a kind this client does not know.
///
/// `2026-11-22T12:00:00.123Z hello@2 production 200 1.23ms cold req=4bf9… GET /path`
/// `2026-11-22T12:00:00.120Z hello@2 production stderr req=4bf9… <message>`
pub fn log_text(v: &Value) -> Option<String> {
    let head = format!(
        "{} {}@{} {}",
        s(&v["ts"]),
        s(&v["function"]),
        s(&v["version"]),
        s(&v["environment"])
    );
    let req = short_id(&v["request_id"]);
    match v["kind"].as_str()? {
        "invocation" => {
            let mut line = format!("{head} {}", s(&v["status"]));
            match v["duration_ms"].as_f64() {
                Some(d) => line.push_str(&format!(" {d:.2}ms")),
                None => line.push_str(" -"),
            }
            if v["cold"].as_bool() == Some(true) {
                line.push_str(" cold");
            }
            line.push_str(&format!(" req={req} {} {}", s(&v["method"]), s(&v["path"])));
            if v["error"].is_object() {
                line.push_str(&format!(
                    " error={}: {}",
                    s(&v["error"]["kind"]),
                    s(&v["error"]["message"])
                ));
            }
            Some(line)
        }
        "guest" => Some(format!(
            "{head} {} req={req} {}",
            s(&v["stream"]),
            s(&v["message"]).trim_end_matches(['\n', '\r'])
        )),
        _ => None,
    }
}

/// The first 12 characters of a request id, `…` when cut.
fn short_id(v: &Value) -> String {
    let id = s(v);
    if id.chars().count() > 12 {
        format!("{}…", id.chars().take(12).collect::<String>())
    } else {
        id
    }
}

// ---------------------------------------------------------------- top

pub async fn top(args: TopArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    if let Some(env) = &args.env {
        super::deploy::check_names("x", Some(env))?;
    }
    let path = match &args.env {
        Some(env) => format!("/v1/top?environment={env}"),
        None => "/v1/top".to_owned(),
    };
    let clear = out == OutputFormat::Text && std::io::stdout().is_terminal();
    let frames = async {
        let mut frame = 0u64;
        loop {
            let v: Top = client.get_as(&path).await?;
            match out {
                OutputFormat::Json => println!("{}", json_line(&v)?),
                OutputFormat::Text => {
                    if clear {
                        print!("\x1b[2J\x1b[H");
                    }
                    print_top(&v);
                }
            }
            frame += 1;
            if args.iterations.is_some_and(|n| frame >= n) {
                return anyhow::Ok(());
            }
            if out == OutputFormat::Text && !clear {
                println!();
            }
            tokio::time::sleep(Duration::from_millis(args.interval)).await;
        }
    };
    tokio::select! {
        r = frames => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// One `GET /v1/top` answer for humans.
pub fn print_top(v: &Top) {
    println!(
        "seal top — {} — window {:.0}s",
        time_ms(v.at),
        v.window_seconds
    );
    let rows = top_rows(v);
    if rows.is_empty() {
        println!("no routed versions");
        return;
    }
    table(
        &[
            "FUNCTION", "ENV", "VERSION", "WEIGHT", "REQ/S", "ERRORS", "ERR%", "P50", "P99", "COLD",
        ],
        rows,
    );
}

/// The rows of one `seal top` frame.
fn top_rows(v: &Top) -> Vec<Vec<String>> {
    v.rows
        .iter()
        .map(|r| {
            vec![
                r.function.clone(),
                r.environment.clone(),
                r.version.to_string(),
                format!("{}%", r.weight),
                format!("{:.1}", r.rps),
                r.errors.to_string(),
                pct_f64(r.error_rate),
                ms_opt(r.p50_ms),
                ms_opt(r.p99_ms),
                format!("{} ({})", r.cold_starts, r.total_cold_starts),
            ]
        })
        .collect()
}

// ---------------------------------------------------------------- cost

pub async fn cost(args: CostArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, args.env.as_deref())?;
    let mut query = vec![("since", args.since.clone())];
    if let Some(env) = &args.env {
        query.push(("environment", env.clone()));
    }
    let path = format!("/v1/functions/{}/cost", args.function);
    let req = client.request(reqwest::Method::GET, &path).query(&query);
    let v: Cost = client.send_as(req, "GET", &path).await?;
    emit(out, &v, print_cost);
    Ok(())
}

/// A `GET /v1/functions/{fn}/cost` answer for humans.
pub fn print_cost(v: &Cost) {
    let rows = cost_rows(v);
    if rows.is_empty() {
        println!("no invocations of {} in this period", v.function);
    } else {
        table(
            &[
                "ENV",
                "VERSION",
                "INVOCATIONS",
                "GB-SECONDS",
                "GB-S/INVOCATION",
                "DIGEST",
            ],
            rows,
        );
    }
    println!(
        "total since {}: {} invocations, {} GB-s",
        time_ms(v.since),
        v.total.invocations,
        gb_f64(v.total.gb_seconds)
    );
    println!("{}", budget_line(v.budget.as_ref(), &v.function));
}

/// The rows of `seal cost`: one per environment and version.
fn cost_rows(v: &Cost) -> Vec<Vec<String>> {
    v.versions
        .iter()
        .map(|x| {
            vec![
                x.environment.clone(),
                x.version.to_string(),
                x.invocations.to_string(),
                gb_f64(x.gb_seconds),
                gb_f64(x.gb_seconds_per_invocation),
                x.digest
                    .as_deref()
                    .map(|d| d.chars().take(19).collect())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// `budget: 12.5 of 100 GB-s this month (12.5%)`,
/// `budget: EXCEEDED 120 of 100 GB-s this day (120.0%)`, or how to set one.
pub fn budget_line(b: Option<&BudgetStatus>, function: &str) -> String {
    let Some(b) = b else {
        return format!("no budget (set one with `seal budget set {function} --gb-seconds N`)");
    };
    let mut line = format!(
        "budget: {}{} of {} GB-s this {} ({:.1}%)",
        if b.exceeded { "EXCEEDED " } else { "" },
        gb_f64(b.used_gb_seconds),
        gb_f64(b.gb_seconds),
        b.period,
        b.ratio * 100.0
    );
    if let Some(url) = &b.webhook {
        line.push_str(&format!(", webhook {url}"));
    }
    line
}

/// GB-seconds, small numbers: six significant digits, no trailing zeros.
/// `0.000123456789` → `0.000123457`, `12.5` → `12.5`, `100` → `100`.
pub fn gb_f64(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    let decimals = (5 - magnitude).clamp(0, 15) as usize;
    let text = format!("{x:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

// ---------------------------------------------------------------- budget

pub async fn budget(cmd: BudgetCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        BudgetCommand::Set(args) => {
            super::deploy::check_names(&args.function, None)?;
            let body = BudgetBody {
                gb_seconds: args.gb_seconds,
                period: Some(args.period.as_str().to_owned()),
                webhook: args.webhook.clone(),
            };
            let v: BudgetAnswer = client
                .put_as(&format!("/v1/functions/{}/budget", args.function), &body)
                .await?;
            emit(out, &v, |v| {
                let b = &v.budget;
                let mut line = format!(
                    "budget for {}: {} GB-s per {}",
                    args.function,
                    gb_f64(b.gb_seconds),
                    b.period
                );
                if let Some(url) = &b.webhook {
                    line.push_str(&format!(", webhook {url}"));
                }
                println!("{line}");
            });
        }
        BudgetCommand::Delete(args) => {
            super::deploy::check_names(&args.function, None)?;
            let req = client.request(
                reqwest::Method::DELETE,
                &format!("/v1/functions/{}/budget", args.function),
            );
            // 204, no body.
            client.checked(req).await?;
            let v = json!({"function": args.function, "deleted": true});
            emit(out, &v, |_| {
                println!("budget for {} removed", args.function);
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- monitoring

pub async fn monitoring(
    args: MonitoringArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    super::deploy::check_names(&args.function, None)?;
    let function = &args.function;
    // (file content, what `--output json` prints without --out)
    let (content, json_value) = if args.grafana {
        let v = client
            .get(&format!("/v1/functions/{function}/monitoring/grafana"))
            .await?;
        let pretty = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
        (format!("{pretty}\n"), v)
    } else {
        let req = client.request(
            reqwest::Method::GET,
            &format!("/v1/functions/{function}/monitoring/prometheus-rules"),
        );
        let text = client
            .checked(req)
            .await?
            .text()
            .await
            .map_err(|e| client.unreachable(e))?;
        let v = json!({"function": function, "rules_yaml": text});
        (text, v)
    };
    match &args.out {
        Some(path) => {
            std::fs::write(path, &content)
                .with_context(|| format!("cannot write {}", path.display()))?;
            let v = json!({"function": function, "wrote": path.display().to_string()});
            emit(out, &v, |_| println!("wrote {}", path.display()));
        }
        None => match out {
            OutputFormat::Json => emit(out, &json_value, |_| {}),
            OutputFormat::Text => {
                print!("{content}");
                if !content.ends_with('\n') {
                    println!();
                }
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_records_read_as_lines() {
        let inv = json!({"ts": "2026-11-22T12:00:00.123Z", "seq": 4, "kind": "invocation",
            "function": "hello", "environment": "production", "version": 2,
            "request_id": "4bf92f3577b34da6a3ce929d0e0e4736", "method": "GET", "path": "/path",
            "status": 200, "duration_ms": 1.234, "cold": true});
        assert_eq!(
            log_text(&inv).as_deref(),
            Some(
                "2026-11-22T12:00:00.123Z hello@2 production 200 1.23ms cold req=4bf92f3577b3… GET /path"
            )
        );
        let guest = json!({"ts": "2026-11-22T12:00:00.120Z", "seq": 3, "kind": "guest",
            "function": "hello", "environment": "production", "version": 2,
            "request_id": "abc", "stream": "stderr", "message": "oops\n"});
        assert_eq!(
            log_text(&guest).as_deref(),
            Some("2026-11-22T12:00:00.120Z hello@2 production stderr req=abc oops")
        );
        assert_eq!(log_text(&json!({"kind": "other"})), None);
    }

    #[test]
    fn gb_seconds_keep_six_significant_digits() {
        assert_eq!(gb_f64(0.000123456789), "0.000123457");
        assert_eq!(gb_f64(12.5), "12.5");
        assert_eq!(gb_f64(100.0), "100");
        assert_eq!(gb_f64(0.0), "0");
        assert_eq!(gb_f64(1234567.0), "1234567");
    }

    #[test]
    fn budget_lines() {
        let b: BudgetStatus = serde_json::from_value(json!({"gb_seconds": 100.0,
            "period": "month", "period_start": 1730419200000i64, "used_gb_seconds": 12.5,
            "ratio": 0.125, "exceeded": false, "webhook": null}))
        .unwrap();
        assert_eq!(
            budget_line(Some(&b), "hello"),
            "budget: 12.5 of 100 GB-s this month (12.5%)"
        );
        let b: BudgetStatus = serde_json::from_value(json!({"gb_seconds": 100.0,
            "period": "day", "period_start": 1732233600000i64, "used_gb_seconds": 120.0,
            "ratio": 1.2, "exceeded": true, "webhook": "http://127.0.0.1:9/hook"}))
        .unwrap();
        assert_eq!(
            budget_line(Some(&b), "hello"),
            "budget: EXCEEDED 120 of 100 GB-s this day (120.0%), webhook http://127.0.0.1:9/hook"
        );
        assert_eq!(
            budget_line(None, "hello"),
            "no budget (set one with `seal budget set hello --gb-seconds N`)"
        );
    }

    #[test]
    fn top_and_cost_rows_read_the_typed_answers() {
        let top: Top =
            serde_json::from_value(json!({"at": 1732270000000i64, "window_seconds": 10.0,
            "rows": [
                {"function": "hello", "environment": "production", "version": 2,
                 "digest": "sha256:aa", "weight": 90, "rps": 1.25, "requests": 12, "errors": 3,
                 "error_rate": 0.25, "p50_ms": 1.25, "p99_ms": 12.3, "cold_starts": 1,
                 "total_requests": 40, "total_cold_starts": 2, "gb_seconds": 0.5},
                {"function": "hello", "environment": "production", "version": 1,
                 "digest": "sha256:bb", "weight": 10, "rps": 0.0, "requests": 0, "errors": 0,
                 "error_rate": 0.0, "p50_ms": null, "p99_ms": null, "cold_starts": 0,
                 "total_requests": 0, "total_cold_starts": 0, "gb_seconds": 0.0}
            ]}))
            .unwrap();
        assert_eq!(
            top_rows(&top),
            [
                vec![
                    "hello",
                    "production",
                    "2",
                    "90%",
                    "1.2",
                    "3",
                    "25%",
                    "1.2 ms",
                    "12 ms",
                    "1 (2)"
                ],
                vec![
                    "hello",
                    "production",
                    "1",
                    "10%",
                    "0.0",
                    "0",
                    "0%",
                    "-",
                    "-",
                    "0 (0)"
                ],
            ]
        );

        let cost: Cost = serde_json::from_value(json!({"function": "hello",
            "since": 1732183600000i64, "until": 1732270000000i64, "granularity": "hour",
            "versions": [
                {"environment": "production", "version": 2,
                 "digest": "sha256:0123456789abcdef0123", "invocations": 4,
                 "gb_seconds": 0.000493827156, "gb_seconds_per_invocation": 0.000123456789}
            ],
            "total": {"invocations": 4, "gb_seconds": 0.000493827156},
            "budget": null}))
        .unwrap();
        assert_eq!(
            cost_rows(&cost),
            [vec![
                "production",
                "2",
                "4",
                "0.000493827",
                "0.000123457",
                "sha256:0123456789ab"
            ]]
        );
    }
}
