//! Gates: judging a candidate's window of live telemetry, alone and
//! against the baseline's window of the same moment.
//!
//! Every gate answers pass, fail or inconclusive, with its numbers:
//! - **fail** only when the breach is statistically certain: a one-sided
//!   test rejects "the candidate is within the threshold" at level α.
//!   While a step runs the controller checks every tick with a strict α
//!   ([`ALPHA_EARLY`]) so peeking many times does not fail a healthy
//!   version by luck; at the end of a step it uses [`ALPHA`].
//! - **pass** only at the end of a step, with at least `min_requests`
//!   (both versions, for relative gates) and the measured value within
//!   the threshold.
//! - **inconclusive** otherwise: too little traffic, or over the threshold
//!   but not certainly.
//!
//! Tests: exact binomial tail for an absolute error rate and for "share of
//! requests slower than T" (a latency quantile); Agresti–Caffo adjusted
//! two-proportion z-test for an error-rate increase; Mann–Whitney U (with
//! tie correction, on the histogram buckets) for a latency increase.

use seal_serving::Snapshot;
use seal_serving::telemetry::{BUCKETS, bucket_high, bucket_low};
use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Normal};

/// Level of the end-of-step judgement.
pub const ALPHA: f64 = 0.05;
/// Level of the every-tick check: a breach must be very certain to roll
/// back before the step ends.
pub const ALPHA_EARLY: f64 = 0.001;

pub use seal_api_types::rollout::{
    Evaluation, GateResult, Gates, LatencyLimit, Verdict, WindowSummary,
};

/// A window's numbers as they appear in events and status.
fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The queue gate: fails when the oldest pending event of the function's
/// subscriptions (`oldest`: trigger and age) is older than `limit_ms`,
/// passes otherwise (it never holds a step back: a queue that keeps up
/// says nothing about the candidate's requests).
pub fn queue_age(limit_ms: u64, oldest: Option<(String, u64)>, candidate: &Snapshot) -> GateResult {
    let (verdict, measured, detail) = match oldest {
        Some((trigger, age)) if age > limit_ms => (
            Verdict::Fail,
            secs(age),
            format!(
                "the oldest pending event of {trigger} has waited {}",
                secs(age)
            ),
        ),
        Some((trigger, age)) => (
            Verdict::Pass,
            secs(age),
            format!(
                "the oldest pending event of {trigger} has waited {}",
                secs(age)
            ),
        ),
        None => (Verdict::Pass, "0.0 s".into(), "no pending event".into()),
    };
    GateResult {
        gate: "queue_age".into(),
        threshold: format!("≤ {}", secs(limit_ms)),
        verdict,
        measured,
        detail,
        candidate: summary_of(candidate),
        baseline: None,
    }
}

pub fn summary_of(w: &Snapshot) -> WindowSummary {
    let ms = |q| w.quantile_us(q).map(|us| us as f64 / 1000.0);
    WindowSummary {
        requests: w.requests,
        errors: w.errors,
        error_rate: w.error_rate(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
    }
}

pub fn percent(x: f64) -> String {
    let p = x * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{p:.0}%")
    } else {
        format!("{p:.2}%")
    }
}

pub fn quantile_name(q: f64) -> String {
    let p = q * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("p{p:.0}")
    } else {
        format!("p{p}")
    }
}

/// Describing and judging gates.
pub trait Judge {
    /// The gates as the plan lists them.
    fn describe(&self) -> Vec<(String, String)>;
    /// Judges a candidate's window, alone and against the baseline's.
    fn evaluate(
        &self,
        candidate: &Snapshot,
        baseline: Option<&Snapshot>,
        step_over: bool,
    ) -> Evaluation;
}

impl Judge for Gates {
    /// The gates as the plan lists them.
    fn describe(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(r) = self.max_error_rate {
            out.push(("error_rate".into(), format!("≤ {}", percent(r))));
        }
        if let Some(l) = self.max_latency {
            out.push((
                format!("latency_{}", quantile_name(l.quantile)),
                format!("≤ {} ms", l.ms),
            ));
        }
        if let Some(d) = self.max_error_rate_increase {
            out.push((
                "error_rate_increase".into(),
                format!("≤ baseline + {}", percent(d)),
            ));
        }
        if let Some(d) = self.max_latency_increase {
            out.push((
                "latency_increase".into(),
                format!("median ≤ baseline × {:.2}", 1.0 + d),
            ));
        }
        if let Some(ms) = self.max_queue_age_ms {
            out.push((
                "queue_age".into(),
                format!("oldest pending event ≤ {}", secs(ms)),
            ));
        }
        out
    }

    /// Judges the candidate's window (and the baseline's, same interval).
    /// `step_over`: the step's interval has elapsed, so a pass is possible
    /// and the end-of-step α applies.
    fn evaluate(
        &self,
        candidate: &Snapshot,
        baseline: Option<&Snapshot>,
        step_over: bool,
    ) -> Evaluation {
        let alpha = if step_over { ALPHA } else { ALPHA_EARLY };
        let min = self.min_requests.unwrap_or(0);
        let c_sum = summary_of(candidate);
        let b_sum = baseline.map(summary_of);
        let enough_c = candidate.requests >= min && candidate.requests > 0;
        let mut results = Vec::new();
        let mut push = |gate: String, threshold: String, verdict, measured, detail| {
            results.push(GateResult {
                gate,
                threshold,
                verdict,
                measured,
                detail,
                candidate: c_sum.clone(),
                baseline: b_sum.clone(),
            })
        };
        let judge = |p_breach: Option<f64>, within: bool, enough: bool| {
            if p_breach.is_some_and(|p| p < alpha) {
                Verdict::Fail
            } else if step_over && enough && within {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            }
        };

        if let Some(max) = self.max_error_rate {
            let (n, x) = (candidate.requests, candidate.errors);
            let p = binomial_tail(n, x, max);
            let verdict = judge(p, candidate.error_rate() <= max, enough_c);
            push(
                "error_rate".into(),
                format!("≤ {}", percent(max)),
                verdict,
                format!("{} ({x}/{n})", percent(candidate.error_rate())),
                format!("P(≥{x} errors | rate {}) = {}", percent(max), fmt_p(p)),
            );
        }

        if let Some(limit) = self.max_latency {
            let limit_us = (limit.ms * 1000.0) as u64;
            let n = candidate.samples();
            let slow = candidate.slower_than_us(limit_us);
            let allowed = 1.0 - limit.quantile;
            let p = binomial_tail(n, slow, allowed);
            let q_ms = candidate
                .quantile_us(limit.quantile)
                .map(|us| us as f64 / 1000.0);
            let within = q_ms.is_some_and(|v| v <= limit.ms);
            let verdict = judge(p, within, enough_c);
            push(
                format!("latency_{}", quantile_name(limit.quantile)),
                format!("≤ {} ms", limit.ms),
                verdict,
                match q_ms {
                    Some(v) => format!("{v:.1} ms"),
                    None => "no requests".into(),
                },
                format!(
                    "{slow}/{n} slower than {} ms (allowed {}); P = {}",
                    limit.ms,
                    percent(allowed),
                    fmt_p(p)
                ),
            );
        }

        if let Some(delta) = self.max_error_rate_increase {
            match baseline {
                Some(b) => {
                    let enough = enough_c && b.requests >= min && b.requests > 0;
                    let p = two_proportion_excess(
                        candidate.errors,
                        candidate.requests,
                        b.errors,
                        b.requests,
                        delta,
                    );
                    let diff = candidate.error_rate() - b.error_rate();
                    let verdict = judge(p, diff <= delta + 1e-12, enough);
                    push(
                        "error_rate_increase".into(),
                        format!("≤ baseline + {}", percent(delta)),
                        verdict,
                        format!(
                            "{} vs baseline {} ({:+.2} pp)",
                            percent(candidate.error_rate()),
                            percent(b.error_rate()),
                            diff * 100.0
                        ),
                        format!("two-proportion test P = {}", fmt_p(p)),
                    );
                }
                None => push(
                    "error_rate_increase".into(),
                    format!("≤ baseline + {}", percent(delta)),
                    Verdict::Pass,
                    "no baseline traffic".into(),
                    "skipped: the baseline serves no traffic in this phase".into(),
                ),
            }
        }

        if let Some(delta) = self.max_latency_increase {
            match baseline {
                Some(b) => {
                    let enough = enough_c && b.samples() >= min && b.samples() > 0;
                    let p = mann_whitney_slower(candidate, b, 1.0 + delta);
                    let (mc, mb) = (candidate.quantile_us(0.5), b.quantile_us(0.5));
                    let within = match (mc, mb) {
                        (Some(c), Some(b)) => c as f64 <= b as f64 * (1.0 + delta),
                        _ => false,
                    };
                    // Significant but within the threshold in the middle
                    // is not a breach.
                    let p_breach = if within { None } else { p };
                    let verdict = judge(p_breach, within, enough);
                    let ms = |v: Option<u64>| {
                        v.map_or("-".into(), |us| format!("{:.1} ms", us as f64 / 1000.0))
                    };
                    push(
                        "latency_increase".into(),
                        format!("median ≤ baseline × {:.2}", 1.0 + delta),
                        verdict,
                        format!("median {} vs baseline {}", ms(mc), ms(mb)),
                        format!("Mann-Whitney U P = {}", fmt_p(p)),
                    );
                }
                None => push(
                    "latency_increase".into(),
                    format!("median ≤ baseline × {:.2}", 1.0 + delta),
                    Verdict::Pass,
                    "no baseline traffic".into(),
                    "skipped: the baseline serves no traffic in this phase".into(),
                ),
            }
        }

        // Requests the server refused for lack of capacity never reached
        // the version: a window made mostly of them says nothing about it.
        let refused = candidate.overloaded;
        let attempts = candidate.requests + refused;
        if refused > 0 && refused * 2 >= attempts {
            push(
                "capacity".into(),
                "< 50% of requests refused (overloaded)".into(),
                Verdict::Inconclusive,
                format!("{refused} of {attempts} refused"),
                "the server was at capacity: too little of the version's traffic was served to judge it"
                    .into(),
            );
        }

        if self.is_empty() {
            // Time-based steps: nothing to judge but traffic.
            let verdict = if step_over && candidate.requests >= min {
                Verdict::Pass
            } else {
                Verdict::Inconclusive
            };
            push(
                "min_requests".into(),
                format!("≥ {min} requests"),
                verdict,
                format!("{} requests", candidate.requests),
                String::new(),
            );
        } else if !enough_c {
            for r in &mut results {
                if r.verdict == Verdict::Inconclusive && r.detail.is_empty() {
                    r.detail = format!("fewer than {min} requests");
                }
            }
        }

        let verdict = if results.iter().any(|r| r.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if results.iter().all(|r| r.verdict == Verdict::Pass) {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        };
        Evaluation {
            verdict,
            results,
            nodes: None,
        }
    }
}

fn fmt_p(p: Option<f64>) -> String {
    match p {
        Some(p) if p < 0.0001 => "<0.0001".into(),
        Some(p) => format!("{p:.4}"),
        None => "n/a".into(),
    }
}

/// P(X ≥ x) for X ~ Binomial(n, p0): how surprising `x` bad outcomes in
/// `n` are if the true rate were exactly the threshold. `None` without data.
pub fn binomial_tail(n: u64, x: u64, p0: f64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    if x == 0 {
        return Some(1.0);
    }
    if p0 <= 0.0 {
        return Some(0.0);
    }
    if p0 >= 1.0 {
        return Some(1.0);
    }
    let b = Binomial::new(p0, n).ok()?;
    // sf(k) = P(X > k), so P(X ≥ x) = sf(x − 1).
    Some(b.sf(x - 1))
}

/// One-sided p-value for "candidate error rate exceeds baseline's by more
/// than `delta`", Agresti–Caffo adjusted (one success and one failure
/// added to each group) so zero-error windows still have a variance.
pub fn two_proportion_excess(xc: u64, nc: u64, xb: u64, nb: u64, delta: f64) -> Option<f64> {
    if nc == 0 || nb == 0 {
        return None;
    }
    let pc = (xc as f64 + 1.0) / (nc as f64 + 2.0);
    let pb = (xb as f64 + 1.0) / (nb as f64 + 2.0);
    let se = (pc * (1.0 - pc) / (nc as f64 + 2.0) + pb * (1.0 - pb) / (nb as f64 + 2.0)).sqrt();
    if se <= 0.0 {
        return None;
    }
    let z = (pc - pb - delta) / se;
    Some(1.0 - standard_normal().cdf(z))
}

/// One-sided Mann–Whitney U p-value for "the candidate's latencies tend to
/// be larger than the baseline's scaled by `factor`". Each bucket counts
/// as its midpoint; equal values are ties (midranks, tie-corrected
/// variance), normal approximation with continuity correction.
pub fn mann_whitney_slower(c: &Snapshot, b: &Snapshot, factor: f64) -> Option<f64> {
    let (nc, nb) = (c.samples() as f64, b.samples() as f64);
    if nc == 0.0 || nb == 0.0 {
        return None;
    }
    let mid = |i: usize| (bucket_low(i) as f64 + bucket_high(i) as f64) / 2.0;
    // (value, candidate count, baseline count), sorted by value.
    let mut points: Vec<(f64, f64, f64)> = Vec::with_capacity(2 * BUCKETS);
    for (i, &n) in c.latency.iter().enumerate() {
        if n > 0 {
            points.push((mid(i), n as f64, 0.0));
        }
    }
    for (i, &n) in b.latency.iter().enumerate() {
        if n > 0 {
            points.push((mid(i) * factor, 0.0, n as f64));
        }
    }
    points.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut u = 0.0; // candidate observations above baseline ones (+½ per tie)
    let mut baseline_below = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < points.len() {
        let (value, mut cc, mut bc) = points[i];
        let mut j = i + 1;
        while j < points.len() && points[j].0 == value {
            cc += points[j].1;
            bc += points[j].2;
            j += 1;
        }
        u += cc * (baseline_below + 0.5 * bc);
        baseline_below += bc;
        let t = cc + bc;
        tie_term += t * t * t - t;
        i = j;
    }
    let n = nc + nb;
    let mean = nc * nb / 2.0;
    let var = nc * nb / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)).max(1.0));
    if var <= 0.0 {
        return Some(if u > mean { 0.0 } else { 1.0 });
    }
    let z = (u - mean - 0.5) / var.sqrt();
    Some(1.0 - standard_normal().cdf(z))
}

fn standard_normal() -> Normal {
    Normal::standard()
}

#[cfg(test)]
mod tests {
    use super::*;
    use seal_serving::VersionStats;
    use std::time::Duration;

    fn window(n: u64, errors: u64, ms: impl Fn(u64) -> f64) -> Snapshot {
        let s = VersionStats::default();
        for i in 0..n {
            s.record(
                Duration::from_secs_f64(ms(i) / 1000.0),
                i < errors,
                seal_serving::Traffic::Judged,
            );
        }
        s.snapshot()
    }

    fn gates(f: impl FnOnce(&mut Gates)) -> Gates {
        let mut g = Gates {
            min_requests: Some(50),
            ..Gates::default()
        };
        f(&mut g);
        g
    }

    #[test]
    fn the_queue_gate_fails_only_past_its_limit() {
        let w = window(10, 0, |_| 1.0);
        let over = queue_age(60_000, Some(("billing-orders".into(), 75_000)), &w);
        assert_eq!(over.verdict, Verdict::Fail);
        assert_eq!(over.measured, "75.0 s");
        assert!(over.detail.contains("billing-orders"), "{}", over.detail);
        let within = queue_age(60_000, Some(("billing-orders".into(), 60_000)), &w);
        assert_eq!(within.verdict, Verdict::Pass);
        assert_eq!(queue_age(60_000, None, &w).verdict, Verdict::Pass);
        // Not a request gate: alone, steps stay time-based.
        let g = gates(|g| g.max_queue_age_ms = Some(60_000));
        assert!(g.is_empty());
        assert_eq!(g.describe()[0].0, "queue_age");
    }

    #[test]
    fn a_window_the_server_mostly_refused_is_inconclusive_not_a_pass() {
        let g = gates(|g| g.max_error_rate = Some(0.01));
        let healthy = window(100, 0, |_| 1.0);
        assert_eq!(g.evaluate(&healthy, None, true).verdict, Verdict::Pass);
        // The same 100 served requests among 1,000 refused ones.
        let crowded = Snapshot {
            overloaded: 900,
            ..healthy.clone()
        };
        let e = g.evaluate(&crowded, None, true);
        assert_eq!(e.verdict, Verdict::Inconclusive, "{e:?}");
        let capacity = e.results.iter().find(|r| r.gate == "capacity").unwrap();
        assert_eq!(capacity.measured, "900 of 1000 refused");
        // A few refusals do not hide a healthy window...
        let few = Snapshot {
            overloaded: 10,
            ..healthy
        };
        assert_eq!(g.evaluate(&few, None, true).verdict, Verdict::Pass);
        // ...and refusals never hide the errors that were served.
        let failing = Snapshot {
            overloaded: 900,
            ..window(100, 50, |_| 1.0)
        };
        assert_eq!(g.evaluate(&failing, None, true).verdict, Verdict::Fail);
    }

    #[test]
    fn binomial_tail_matches_hand_values() {
        // 1 error in 2 at 1%: 1 − 0.99² = 0.0199.
        assert!((binomial_tail(2, 1, 0.01).unwrap() - 0.0199).abs() < 1e-6);
        // 3 of 3 at 1%: 1e-6.
        assert!((binomial_tail(3, 3, 0.01).unwrap() - 1e-6).abs() < 1e-9);
        assert_eq!(binomial_tail(10, 0, 0.01), Some(1.0));
        assert_eq!(binomial_tail(0, 0, 0.01), None);
    }

    #[test]
    fn an_always_failing_candidate_fails_within_a_few_requests() {
        let g = gates(|g| g.max_error_rate = Some(0.01));
        // Two failures could be luck at the strict every-tick level...
        let e = g.evaluate(&window(1, 1, |_| 1.0), None, false);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        // ...a handful cannot, long before min_requests.
        let e = g.evaluate(&window(5, 5, |_| 1.0), None, false);
        assert_eq!(e.verdict, Verdict::Fail, "{e:?}");
        assert_eq!(e.failed().unwrap().gate, "error_rate");
        assert_eq!(e.failed().unwrap().measured, "100% (5/5)");
    }

    #[test]
    fn a_healthy_candidate_passes_only_at_the_end_of_the_step_with_enough_traffic() {
        let g = gates(|g| {
            g.max_error_rate = Some(0.05);
            g.max_latency = Some(LatencyLimit {
                quantile: 0.99,
                ms: 200.0,
            });
        });
        let healthy = window(100, 1, |i| 1.0 + (i % 10) as f64);
        assert_eq!(
            g.evaluate(&healthy, None, false).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(g.evaluate(&healthy, None, true).verdict, Verdict::Pass);
        // Low traffic: inconclusive, neither pass nor fail.
        let few = window(10, 0, |_| 2.0);
        let e = g.evaluate(&few, None, true);
        assert_eq!(e.verdict, Verdict::Inconclusive);
        assert!(e.results[0].detail.contains("P("), "{e:?}");
    }

    #[test]
    fn a_slow_candidate_fails_the_latency_gate() {
        let g = gates(|g| {
            g.max_latency = Some(LatencyLimit {
                quantile: 0.99,
                ms: 200.0,
            })
        });
        let slow = window(8, 0, |_| 300.0);
        let e = g.evaluate(&slow, None, false);
        assert_eq!(e.verdict, Verdict::Fail, "{e:?}");
        assert_eq!(e.failed().unwrap().gate, "latency_p99");
    }

    #[test]
    fn error_rate_increase_is_judged_against_the_baseline() {
        let g = gates(|g| g.max_error_rate_increase = Some(0.01));
        let base = window(1000, 10, |_| 5.0); // 1%
        let same = window(200, 2, |_| 5.0); // 1%
        assert_eq!(g.evaluate(&same, Some(&base), true).verdict, Verdict::Pass);
        let worse = window(200, 40, |_| 5.0); // 20%
        let e = g.evaluate(&worse, Some(&base), false);
        assert_eq!(e.verdict, Verdict::Fail, "{e:?}");
        // 3% vs 1% on little traffic: over the threshold, not certain.
        let unsure = window(60, 2, |_| 5.0);
        assert_eq!(
            g.evaluate(&unsure, Some(&base), true).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn latency_increase_uses_mann_whitney() {
        let g = gates(|g| g.max_latency_increase = Some(0.2));
        let base = window(500, 0, |i| 10.0 + (i % 5) as f64);
        let similar = window(100, 0, |i| 10.0 + (i % 5) as f64);
        assert_eq!(
            g.evaluate(&similar, Some(&base), true).verdict,
            Verdict::Pass
        );
        let slower = window(100, 0, |i| 30.0 + (i % 5) as f64);
        let e = g.evaluate(&slower, Some(&base), false);
        assert_eq!(e.verdict, Verdict::Fail, "{e:?}");
        let p = mann_whitney_slower(&similar, &base, 1.2).unwrap();
        assert!(p > 0.5, "{p}");
    }

    #[test]
    fn no_gates_means_time_and_traffic_only() {
        let g = gates(|_| {});
        assert_eq!(
            g.evaluate(&window(60, 60, |_| 1.0), None, true).verdict,
            Verdict::Pass
        );
        assert_eq!(
            g.evaluate(&window(10, 0, |_| 1.0), None, true).verdict,
            Verdict::Inconclusive
        );
    }
}
