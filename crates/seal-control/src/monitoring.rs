//! Generated monitoring for a function: a Grafana dashboard (per-version
//! panels, deployment annotations) and Prometheus alert rules (error rate,
//! p99, cold-start rate, budget), both over the series `/metrics` exposes.
//!
//! Written under `<data-dir>/monitoring/<function>/` whenever one of the
//! function's deployments ends, and printed by `seal monitoring`.
//!
//! The rules are YAML written by hand: every string is emitted as a JSON
//! string, which is a valid YAML double-quoted scalar, so no value can
//! break the document; `promtool check rules` is run on it in the tests.

use seal_state::Budget;
use serde_json::{Value, json};
use std::path::Path;

/// Alert thresholds of the generated rules.
pub const ERROR_RATE: f64 = 0.05;
pub const P99_SECONDS: f64 = 1.0;
pub const COLD_START_RATE: f64 = 0.10;
/// How long the oldest pending event of a subscription may wait.
pub const QUEUE_AGE_SECONDS: u64 = 300;

fn sel(function: &str) -> String {
    format!("function=\"{function}\",environment=~\"$environment\"")
}

fn timeseries(
    id: u32,
    title: &str,
    unit: &str,
    grid: (u32, u32, u32, u32),
    targets: Value,
) -> Value {
    json!({
        "id": id,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"x": grid.0, "y": grid.1, "w": grid.2, "h": grid.3},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]}},
        "targets": targets,
    })
}

fn target(expr: String, legend: &str) -> Value {
    json!({
        "refId": "A",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
    })
}

/// The Grafana dashboard (schema 39) for one function.
pub fn grafana_dashboard(function: &str) -> String {
    serde_json::to_string_pretty(&dashboard(function)).unwrap_or_default()
}

fn dashboard(function: &str) -> Value {
    let s = sel(function);
    let by_version = |expr: String| json!([target(expr, "v{{version}}")]);
    let r = "[$__rate_interval]";
    let mut panels = vec![
        timeseries(
            1,
            "Requests per second by version",
            "reqps",
            (0, 0, 12, 8),
            by_version(format!(
                "sum by (version) (rate(seal_invocations_total{{{s}}}{r}))"
            )),
        ),
        timeseries(
            2,
            "Error rate by version",
            "percentunit",
            (12, 0, 12, 8),
            by_version(format!(
                "sum by (version) (rate(seal_invocation_errors_total{{{s}}}{r})) / sum by (version) (rate(seal_invocations_total{{{s}}}{r}))"
            )),
        ),
        timeseries(
            3,
            "p99 latency by version",
            "s",
            (0, 8, 12, 8),
            by_version(format!(
                "histogram_quantile(0.99, sum by (version, le) (rate(seal_invocation_duration_seconds_bucket{{{s}}}{r})))"
            )),
        ),
        timeseries(
            4,
            "Traffic weight by version",
            "percent",
            (12, 8, 12, 8),
            by_version(format!("sum by (version) (seal_route_weight{{{s}}})")),
        ),
        timeseries(
            5,
            "Errors by kind",
            "reqps",
            (0, 16, 12, 8),
            json!([target(
                format!(
                    "sum by (version, kind) (rate(seal_invocation_errors_total{{{s}}}{r})) > 0"
                ),
                "v{{version}} {{kind}}"
            )]),
        ),
        timeseries(
            6,
            "Cold starts and instantiation p99",
            "s",
            (12, 16, 12, 8),
            json!([
                target(
                    format!("sum by (version) (seal_cold_start_phase_seconds{{{s}}})"),
                    "v{{version}} last cold start"
                ),
                target(
                    format!(
                        "histogram_quantile(0.99, sum by (version, le) (rate(seal_instantiation_duration_seconds_bucket{{{s}}}{r})))"
                    ),
                    "v{{version}} instantiation p99"
                ),
            ]),
        ),
        timeseries(
            7,
            "Cost (GB-seconds per hour) by version",
            "none",
            (0, 24, 12, 8),
            by_version(format!(
                "sum by (version) (increase(seal_cost_gigabyte_seconds_total{{{s}}}[1h]))"
            )),
        ),
        timeseries(
            8,
            "Guest memory p99 by version",
            "bytes",
            (12, 24, 12, 8),
            by_version(format!(
                "histogram_quantile(0.99, sum by (version, le) (rate(seal_guest_memory_peak_bytes_bucket{{{s}}}{r})))"
            )),
        ),
        json!({
            "id": 9,
            "type": "table",
            "title": "Versions and artifact digests",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": 0, "y": 32, "w": 24, "h": 6},
            "targets": [{
                "refId": "A",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": format!("max by (version, digest) (seal_version_info{{function=\"{function}\"}})"),
                "format": "table",
                "instant": true,
            }],
        }),
    ];
    // Events: the function's queue subscriptions and cron triggers.
    let by_trigger = |expr: String| json!([target(expr, "{{trigger}}")]);
    panels.push(timeseries(
        13,
        "Queue depth by subscription",
        "none",
        (0, 38, 12, 8),
        by_trigger(format!("sum by (trigger) (seal_queue_depth{{{s}}})")),
    ));
    panels.push(timeseries(
        14,
        "Oldest pending event by subscription",
        "s",
        (12, 38, 12, 8),
        by_trigger(format!(
            "max by (trigger) (seal_queue_oldest_age_seconds{{{s}}})"
        )),
    ));
    panels.push(timeseries(
        15,
        "Event deliveries by outcome",
        "ops",
        (0, 46, 12, 8),
        json!([target(
            format!("sum by (trigger, outcome) (rate(seal_event_deliveries_total{{{s}}}{r}))"),
            "{{trigger}} {{outcome}}"
        )]),
    ));
    panels.push(timeseries(
        16,
        "Enqueue to handled p99, and cron firing delay p99",
        "s",
        (12, 46, 12, 8),
        json!([
            target(
                format!("histogram_quantile(0.99, sum by (trigger, le) (rate(seal_event_latency_seconds_bucket{{{s}}}{r})))"),
                "{{trigger}} enqueue → handled"
            ),
            target(
                format!("histogram_quantile(0.99, sum by (trigger, le) (rate(seal_cron_delay_seconds_bucket{{{s}}}{r})))"),
                "{{trigger}} cron delay"
            ),
        ]),
    ));
    // One row per version ($version repeats), with that version's own panels.
    let v = format!("{s},version=~\"$version\"");
    panels.push(json!({
        "id": 10,
        "type": "row",
        "title": "Version $version",
        "repeat": "version",
        "collapsed": false,
        "gridPos": {"x": 0, "y": 54, "w": 24, "h": 1},
        "panels": [],
    }));
    panels.push(timeseries(
        11,
        "v$version requests and errors per second",
        "reqps",
        (0, 55, 12, 8),
        json!([
            target(
                format!("sum(rate(seal_invocations_total{{{v}}}{r}))"),
                "requests"
            ),
            target(
                format!("sum(rate(seal_invocation_errors_total{{{v}}}{r}))"),
                "errors"
            ),
        ]),
    ));
    panels.push(timeseries(
        12,
        "v$version latency",
        "s",
        (12, 55, 12, 8),
        json!([
            target(format!("histogram_quantile(0.5, sum by (le) (rate(seal_invocation_duration_seconds_bucket{{{v}}}{r})))"), "p50"),
            target(format!("histogram_quantile(0.99, sum by (le) (rate(seal_invocation_duration_seconds_bucket{{{v}}}{r})))"), "p99"),
        ]),
    ));
    let annotation = |name: &str, expr: String, title: &str, color: &str| {
        json!({
            "name": name,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "enable": true,
            "iconColor": color,
            "expr": expr,
            "step": "15s",
            "titleFormat": title,
            "textFormat": "{{environment}}",
        })
    };
    json!({
        "title": format!("Seal: {function}"),
        "uid": format!("seal-{function}"),
        "tags": ["seal", function],
        "schemaVersion": 39,
        "version": 1,
        "editable": true,
        "refresh": "10s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {
                "name": "environment", "type": "query", "label": "Environment",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": format!("label_values(seal_invocations_total{{function=\"{function}\"}}, environment)"),
                "refresh": 2, "includeAll": true, "multi": true,
                "current": {"text": "All", "value": "$__all"},
            },
            {
                "name": "version", "type": "query", "label": "Version",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": format!("label_values(seal_invocations_total{{function=\"{function}\"}}, version)"),
                "refresh": 2, "includeAll": true, "multi": true, "sort": 3,
                "current": {"text": "All", "value": "$__all"},
            },
        ]},
        "annotations": {"list": [
            annotation(
                "Deployments",
                format!("changes(seal_deployments_total{{function=\"{function}\"}}[1m]) > 0"),
                "deployment {{outcome}} ({{strategy}})",
                "purple",
            ),
            annotation(
                "Traffic moves",
                format!("changes(seal_route_weight{{function=\"{function}\"}}[1m]) > 0"),
                "v{{version}} weight changed",
                "blue",
            ),
            annotation(
                "Rollbacks",
                format!("changes(seal_rollbacks_total{{function=\"{function}\"}}[1m]) > 0"),
                "rollback ({{trigger}})",
                "red",
            ),
        ]},
        "panels": panels,
    })
}

struct Rule {
    alert: &'static str,
    expr: String,
    for_: &'static str,
    severity: &'static str,
    summary: String,
    description: String,
}

/// Prometheus alerting rules for one function, as YAML.
pub fn prometheus_rules(function: &str, budget: Option<&Budget>) -> String {
    let f = format!("function=\"{function}\"");
    let w = "[5m]";
    let mut rules = vec![
        Rule {
            alert: "SealHighErrorRate",
            expr: format!(
                "(sum by (environment, version) (rate(seal_invocation_errors_total{{{f}}}{w})) / sum by (environment, version) (rate(seal_invocations_total{{{f}}}{w}))) > {ERROR_RATE}"
            ),
            for_: "5m",
            severity: "page",
            summary: format!("{function}: error rate above {}%", ERROR_RATE * 100.0),
            description: format!(
                "Version {{{{ $labels.version }}}} of {function} in {{{{ $labels.environment }}}} fails {{{{ $value | humanizePercentage }}}} of its invocations. `seal logs {function} --version {{{{ $labels.version }}}} --status 5xx` shows them; `seal rollback {function}` restores the previous version."
            ),
        },
        Rule {
            alert: "SealHighLatencyP99",
            expr: format!(
                "histogram_quantile(0.99, sum by (environment, version, le) (rate(seal_invocation_duration_seconds_bucket{{{f}}}{w}))) > {P99_SECONDS}"
            ),
            for_: "10m",
            severity: "ticket",
            summary: format!("{function}: p99 latency above {P99_SECONDS} s"),
            description: format!(
                "Version {{{{ $labels.version }}}} of {function} in {{{{ $labels.environment }}}} answers 1% of requests in more than {{{{ $value | humanizeDuration }}}}."
            ),
        },
        Rule {
            alert: "SealHighColdStartRate",
            expr: format!(
                "(sum by (environment, version) (rate(seal_cold_starts_total{{{f}}}[15m])) / sum by (environment, version) (rate(seal_invocations_total{{{f}}}[15m]))) > {COLD_START_RATE}"
            ),
            for_: "15m",
            severity: "ticket",
            summary: format!(
                "{function}: more than {}% cold starts",
                COLD_START_RATE * 100.0
            ),
            description: format!(
                "Version {{{{ $labels.version }}}} of {function} in {{{{ $labels.environment }}}} starts cold on {{{{ $value | humanizePercentage }}}} of invocations: the server keeps reloading it."
            ),
        },
    ];
    rules.extend([
        Rule {
            alert: "SealQueueBacklogAging",
            expr: format!(
                "max by (environment, trigger) (seal_queue_oldest_age_seconds{{{f}}}) > {QUEUE_AGE_SECONDS}"
            ),
            for_: "5m",
            severity: "page",
            summary: format!("{function}: events wait more than {QUEUE_AGE_SECONDS} s"),
            description: format!(
                "The oldest pending event of {{{{ $labels.trigger }}}} ({function} in {{{{ $labels.environment }}}}) has waited {{{{ $value | humanizeDuration }}}}: the function is failing, slow or throttled. `seal dlq list` and `seal logs {function} --status 5xx` show why."
            ),
        },
        Rule {
            alert: "SealEventsDeadLettered",
            expr: format!(
                "sum by (environment, trigger) (increase(seal_event_deliveries_total{{{f},outcome=\"dead_lettered\"}}[15m])) > 0"
            ),
            for_: "0m",
            severity: "ticket",
            summary: format!("{function}: events dead-lettered"),
            description: format!(
                "{{{{ $value }}}} events of {{{{ $labels.trigger }}}} ({function} in {{{{ $labels.environment }}}}) were dead-lettered in 15 minutes. `seal dlq list` shows each reason; `seal dlq redrive` sends them again once fixed."
            ),
        },
        Rule {
            alert: "SealCronTicksFailing",
            expr: format!(
                "sum by (environment, trigger) (increase(seal_cron_runs_total{{{f},status=~\"failed|missed\"}}[1h])) > 0"
            ),
            for_: "0m",
            severity: "ticket",
            summary: format!("{function}: cron ticks failed or missed"),
            description: format!(
                "{{{{ $value }}}} ticks of {{{{ $labels.trigger }}}} ({function} in {{{{ $labels.environment }}}}) failed or were missed in the last hour. `seal trigger runs {{{{ $labels.trigger }}}}` shows them."
            ),
        },
    ]);
    rules.push(Rule {
        alert: "SealDrifted",
        expr: format!("max by (environment) (seal_drift_differences{{{f}}}) > 0"),
        for_: "15m",
        severity: "ticket",
        summary: format!("{function}: differs from the release file last applied"),
        description: format!(
            "{function} in {{{{ $labels.environment }}}} has differed from the release file last applied in {{{{ $value }}}} fields for 15 minutes. `seal status {function}` says which and why; `seal apply -f FILE` (or `--self-heal`) puts them back."
        ),
    });
    if let Some(b) = budget {
        rules.push(Rule {
            alert: "SealBudgetExceeded",
            expr: format!("max(seal_budget_usage_ratio{{{f}}}) >= 1"),
            for_: "0m",
            severity: "ticket",
            summary: format!(
                "{function}: {} GB-s {} budget exceeded",
                b.gb_seconds, b.period
            ),
            description: format!(
                "{function} has used {{{{ $value | humanizePercentage }}}} of its {} GB-second budget for this {}. `seal cost {function}` shows the versions.",
                b.gb_seconds, b.period
            ),
        });
        rules.push(Rule {
            alert: "SealBudgetNearlyExceeded",
            expr: format!("max(seal_budget_usage_ratio{{{f}}}) >= 0.8"),
            for_: "0m",
            severity: "info",
            summary: format!("{function}: 80% of the {} budget used", b.period),
            description: format!(
                "{function} has used {{{{ $value | humanizePercentage }}}} of its {} GB-second budget for this {}.",
                b.gb_seconds, b.period
            ),
        });
    }
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut out = format!(
        "# Generated by Seal for function {function}: alert rules over Seal's /metrics.\n# Regenerate with `seal monitoring {function} --prometheus-rules`.\ngroups:\n  - name: {}\n    rules:\n",
        q(&format!("seal-{function}"))
    );
    for r in rules {
        out.push_str(&format!(
            "      - alert: {}\n        expr: {}\n        for: {}\n        labels:\n          severity: {}\n          function: {}\n        annotations:\n          summary: {}\n          description: {}\n",
            r.alert,
            q(&r.expr),
            r.for_,
            r.severity,
            q(function),
            q(&r.summary),
            q(&r.description),
        ));
    }
    out
}

/// Prometheus alerting rules about environments rather than one
/// function (an environment's own settings drifting), as YAML.
pub fn environment_rules() -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let expr = "max by (environment) (seal_environment_drift_differences) > 0";
    let summary = "{{ $labels.environment }}: its protection, trust policy or queues differ from the release file last applied";
    let description = "{{ $labels.environment }}'s own settings have differed from the release file last applied in {{ $value }} fields for 15 minutes. `seal drift` says which and why; an admin's `seal apply -f FILE` puts protection and policy back (self-heal never does).";
    format!(
        "# Generated by Seal: alert rules about environments over Seal's /metrics.\ngroups:\n  - name: \"seal-environments\"\n    rules:\n      - alert: SealEnvironmentDrifted\n        expr: {}\n        for: 15m\n        labels:\n          severity: ticket\n        annotations:\n          summary: {}\n          description: {}\n",
        q(expr),
        q(summary),
        q(description)
    )
}

/// Writes `rules.yml` about environments under `dir/_environments/` (no
/// function's name starts with `_`).
pub fn write_environment_rules(dir: &Path) -> std::io::Result<()> {
    let dir = dir.join("_environments");
    std::fs::create_dir_all(&dir)?;
    write_atomic(&dir.join("rules.yml"), environment_rules().as_bytes())
}

/// Writes `dashboard.json` and `rules.yml` under `dir/<function>/`, each
/// replaced atomically.
pub fn write_files(dir: &Path, function: &str, budget: Option<&Budget>) -> std::io::Result<()> {
    let dir = dir.join(function);
    std::fs::create_dir_all(&dir)?;
    let dashboard = grafana_dashboard(function).into_bytes();
    write_atomic(&dir.join("dashboard.json"), &dashboard)?;
    write_atomic(
        &dir.join("rules.yml"),
        prometheus_rules(function, budget).as_bytes(),
    )
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_names_the_function_in_every_query() {
        let d = dashboard("hello");
        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 10);
        for p in panels.iter().filter(|p| p["type"] != "row") {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                assert!(expr.contains("function=\"hello\""), "{expr}");
            }
        }
        assert_eq!(d["annotations"]["list"].as_array().unwrap().len(), 3);
        assert!(panels.iter().any(|p| p["repeat"] == "version"));
        let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
        assert!(
            titles.contains(&"Queue depth by subscription"),
            "{titles:?}"
        );
        assert!(
            titles.contains(&"Oldest pending event by subscription"),
            "{titles:?}"
        );
        let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    }

    #[test]
    fn rules_add_budget_alerts_only_with_a_budget() {
        let plain = prometheus_rules("hello", None);
        assert_eq!(plain.matches("- alert:").count(), 7);
        for alert in [
            "SealQueueBacklogAging",
            "SealEventsDeadLettered",
            "SealCronTicksFailing",
        ] {
            assert!(plain.contains(alert), "{plain}");
        }
        assert!(
            plain.contains("seal_queue_oldest_age_seconds{function=\\\"hello\\\"}"),
            "{plain}"
        );
        let budget = Budget {
            function: "hello".into(),
            gb_seconds: 10.0,
            period: "day".into(),
            webhook: None,
            alerted_period: None,
            updated_by: "t".into(),
            updated_at: 0,
        };
        let with = prometheus_rules("hello", Some(&budget));
        assert_eq!(with.matches("- alert:").count(), 9);
        assert!(with.contains("seal_budget_usage_ratio{function=\\\"hello\\\"}"));
    }
}
