//! `seal verify-release`: a capture's requests replayed to a candidate
//! and to the version serving where they were captured, both run in one
//! environment with its config (outside every route: no gate, cost or
//! soak counts them), and their answers compared — status, headers, and
//! bodies (JSON structurally, leaf by JSON pointer). The baseline runs
//! twice first, so the fields that differ between two runs of the same
//! code (timestamps, ids) are learned per route and never counted
//! (Diffy's method). The verdict is signed by the server's own key as an
//! in-toto statement with an SLSA verification summary (VSA) predicate
//! about the candidate's digest and attached to it like provenance: the
//! evidence a pipeline's `--require-verification` reads. A later failed
//! verification in the same environment revokes an earlier pass.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use bytes::Bytes;
use http_body_util::BodyExt;
use seal_api_types::capture::CapturedRequest;
use seal_api_types::promotion::{Mismatch, RouteVerdict, VerifyRelease, VerifyReport};
use seal_state::VersionRecord;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The VSA predicate type.
pub const VSA: &str = "https://slsa.dev/verification_summary/v1";
/// Who attaches the server's own attestations.
pub const VERIFIER: &str = "seal (verify-release)";
/// Requests replayed unless told otherwise, and at most.
pub const DEFAULT_COUNT: u32 = 500;
pub const MAX_COUNT: u32 = 2_000;
/// The mismatch rate a pass allows unless told otherwise (percent); a
/// pipeline takes a pass as evidence only at this or stricter.
pub const DEFAULT_MAX_MISMATCH: f64 = 1.0;
/// Requests a pass must have replayed to be a pipeline's evidence.
pub const MIN_EVIDENCE_REQUESTS: u64 = 10;
/// An answer's body compared at most (a longer one is a failure).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Examples kept per difference.
const SHOWN: usize = 120;

/// Headers never compared: they differ by design between any two answers.
const VOLATILE_HEADERS: [&str; 9] = [
    "date",
    "x-request-id",
    "traceparent",
    "tracestate",
    "seal-version",
    "seal-digest",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// One answer, as compared.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub ms: f64,
}

/// `METHOD /path`, the query left out.
pub(crate) fn route_of(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or("/");
    format!("{method} {path}")
}

/// An answer as comparable fields: `status`, `header NAME`, and `body`
/// (not JSON: its digest and a preview) or `body POINTER` per JSON leaf.
/// Fields under an ignored pointer are left out.
pub(crate) fn fields(a: &Answer, ignore: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("status".to_owned(), a.status.to_string());
    for (name, value) in &a.headers {
        let name = name.to_ascii_lowercase();
        if VOLATILE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        out.entry(format!("header {name}"))
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    match serde_json::from_slice::<Value>(&a.body) {
        Ok(v) if !a.body.is_empty() => flatten(&v, String::new(), ignore, &mut out),
        _ => {
            if !a.body.is_empty() {
                let preview: String = String::from_utf8_lossy(&a.body).chars().take(80).collect();
                use sha2::Digest as _;
                let digest = hex::encode(sha2::Sha256::digest(&a.body));
                out.insert(
                    "body".to_owned(),
                    format!("{preview:?} (sha256:{})", &digest[..16]),
                );
            }
        }
    }
    out
}

fn ignored(pointer: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|i| {
        pointer == i
            || (pointer.starts_with(i.as_str()) && pointer[i.len()..].starts_with('/'))
            || i == "/"
    })
}

fn flatten(v: &Value, at: String, ignore: &[String], out: &mut BTreeMap<String, String>) {
    if ignored(&at, ignore) && !at.is_empty() {
        return;
    }
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                flatten(x, format!("{at}/{}", escape(k)), ignore, out);
            }
        }
        Value::Array(xs) if !xs.is_empty() => {
            for (i, x) in xs.iter().enumerate() {
                flatten(x, format!("{at}/{i}"), ignore, out);
            }
        }
        leaf => {
            let pointer = if at.is_empty() { "/".to_owned() } else { at };
            out.insert(format!("body {pointer}"), leaf.to_string());
        }
    }
}

/// The fields where two answers differ (present in one only counts).
pub(crate) fn differing(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Compares every (request, baseline first run, baseline second run,
/// candidate) and builds the report's numbers (the caller fills in who
/// and what).
pub(crate) struct Comparison {
    pub noisy: BTreeSet<(String, String)>,
    pub routes: Vec<RouteVerdict>,
    pub requests: u64,
    pub mismatches: u64,
}

pub(crate) fn compare(
    runs: &[(CapturedRequest, Answer, Answer, Answer)],
    ignore: &[String],
) -> Comparison {
    let route = |r: &CapturedRequest| route_of(&r.method, &r.path);
    // Learned first, over every request of a route: what differs between
    // two runs of the baseline is noise.
    let mut noisy: BTreeSet<(String, String)> = BTreeSet::new();
    let mut cached = Vec::with_capacity(runs.len());
    for (req, a1, a2, c) in runs {
        let (f1, f2, fc) = (fields(a1, ignore), fields(a2, ignore), fields(c, ignore));
        for k in differing(&f1, &f2) {
            noisy.insert((route(req), k));
        }
        cached.push((req, f1, fc));
    }
    let mut by_route: BTreeMap<String, (u64, u64, BTreeMap<String, Mismatch>)> = BTreeMap::new();
    let mut mismatches = 0;
    for (req, f1, fc) in &cached {
        let r = route(req);
        let real: Vec<String> = differing(f1, fc)
            .into_iter()
            .filter(|k| !noisy.contains(&(r.clone(), k.clone())))
            .collect();
        let entry = by_route.entry(r).or_default();
        entry.0 += 1;
        if !real.is_empty() {
            entry.1 += 1;
            mismatches += 1;
        }
        for k in real {
            let shown = |v: Option<&String>| v.map(|v| v.chars().take(SHOWN).collect());
            entry
                .2
                .entry(k.clone())
                .and_modify(|m| m.count += 1)
                .or_insert_with(|| Mismatch {
                    field: k.clone(),
                    count: 1,
                    request: req.id,
                    baseline: shown(f1.get(&k)),
                    candidate: shown(fc.get(&k)),
                });
        }
    }
    let routes = by_route
        .into_iter()
        .map(|(route, (requests, mism, diffs))| RouteVerdict {
            route,
            requests,
            mismatches: mism,
            mismatch_percent: percent(mism, requests),
            differences: diffs.into_values().collect(),
        })
        .collect();
    Comparison {
        noisy,
        routes,
        requests: runs.len() as u64,
        mismatches,
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 100.0 / whole as f64 * 100.0).round() / 100.0
    }
}

fn quantile(xs: &mut [f64], q: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
    (xs[i.min(xs.len() - 1)] * 100.0).round() / 100.0
}

impl Control {
    /// Replays a capture to a candidate and the baseline, compares, and
    /// signs the verdict (see the module).
    pub async fn verify_release(
        &self,
        req: &VerifyRelease,
        actor: &str,
    ) -> ControlResult<VerifyReport> {
        let function = req.function.as_str();
        self.environment_must_exist(&req.environment).await?;
        self.environment_must_exist(&req.replay).await?;
        let candidate = self.version_or_404(function, req.version).await?;
        let count = req.count.unwrap_or(DEFAULT_COUNT);
        if count == 0 || count > MAX_COUNT {
            return Err(ControlError::bad_request(format!(
                "count {count}: replay 1 to {MAX_COUNT} requests"
            )));
        }
        let max_mismatch = req.max_mismatch_percent.unwrap_or(DEFAULT_MAX_MISMATCH);
        if !(0.0..=100.0).contains(&max_mismatch) {
            return Err(ControlError::bad_request(format!(
                "max mismatch {max_mismatch}%: give 0% to 100%"
            )));
        }
        if req.environment == req.replay {
            return Err(ControlError::bad_request(format!(
                "a verification replays another environment's traffic in this one: --env {} --replay {} compares {} with itself",
                req.environment, req.replay, req.environment
            )));
        }
        for p in &req.ignore {
            if p == "/" {
                return Err(ControlError::bad_request(
                    "ignore \"/\" would ignore every body: name the fields (/meta/generated_at)",
                ));
            }
            if !p.starts_with('/') {
                return Err(ControlError::bad_request(format!(
                    "ignore {p:?} is not a JSON pointer (they start with '/': /meta/generated_at)"
                )));
            }
        }
        let baseline = {
            let route = self.state.route(&req.replay, function).await?;
            let serving = route
                .and_then(|r| r.weights.iter().max_by_key(|w| w.weight).map(|w| w.version))
                .ok_or_else(|| {
                    ControlError::conflict(format!(
                        "{function} serves nothing in {}: there is no baseline to compare with",
                        req.replay
                    ))
                })?;
            self.version_or_404(function, serving).await?
        };
        if baseline.digest == candidate.digest {
            return Err(ControlError::conflict(format!(
                "{function}@{} is what serves {} already: there is nothing to compare it with",
                candidate.version, req.replay
            )));
        }
        let captured = self.state.captured(&req.replay, function, count).await?;
        if captured.is_empty() {
            return Err(ControlError::conflict(format!(
                "no captured requests of {function} in {}: `seal capture start {function} --env {} --rate 5%` first",
                req.replay, req.replay
            )));
        }
        // Both must be allowed to run where they run (and are loaded so).
        let (cand_fn, _) = self
            .load_for_route(&candidate, &req.environment, "verify-release", actor)
            .await?;
        let (base_fn, _) = self
            .load_for_route(&baseline, &req.environment, "verify-release", actor)
            .await?;
        let backend = |v: &VersionRecord, f: Arc<seal_runtime::Function>| {
            Arc::new(self.serving.replay_backend(
                &req.environment,
                function,
                v.version,
                &v.digest,
                f,
                req.deny_outbound,
            ))
        };
        let (base_b, cand_b) = (backend(&baseline, base_fn), backend(&candidate, cand_fn));
        let mut runs = Vec::with_capacity(captured.len());
        for r in captured {
            // The baseline's second run after the candidate's: a field
            // that moves with time (a timestamp) then differs between the
            // baseline's runs whenever it differs for the candidate.
            let a1 = self.replay_one(&base_b, &r).await;
            let c = self.replay_one(&cand_b, &r).await;
            let a2 = self.replay_one(&base_b, &r).await;
            runs.push((r, a1, a2, c));
        }
        let compared = compare(&runs, &req.ignore);
        let errors = |pick: fn(&(CapturedRequest, Answer, Answer, Answer)) -> &Answer| {
            runs.iter().filter(|x| pick(x).status >= 500).count() as u64
        };
        let (baseline_errors, candidate_errors) = (errors(|x| &x.1), errors(|x| &x.3));
        let mut base_ms: Vec<f64> = runs.iter().map(|x| x.1.ms).collect();
        let mut cand_ms: Vec<f64> = runs.iter().map(|x| x.3.ms).collect();
        let mismatch_percent = percent(compared.mismatches, compared.requests);
        let more_errors = candidate_errors > baseline_errors;
        let passed = mismatch_percent <= max_mismatch && !more_errors;
        let verdict = if passed {
            format!(
                "passed: {mismatch_percent}% of {} requests differ beyond the noise (at most {max_mismatch}%), {candidate_errors} errors (baseline {baseline_errors})",
                compared.requests
            )
        } else if more_errors {
            format!("failed: {candidate_errors} errors against the baseline's {baseline_errors}")
        } else {
            let worst = compared
                .routes
                .iter()
                .filter(|r| r.mismatches > 0)
                .map(|r| format!("{} ({}%)", r.route, r.mismatch_percent))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "failed: {mismatch_percent}% of {} requests differ beyond the noise (at most {max_mismatch}%): {worst}",
                compared.requests
            )
        };
        let mut report = VerifyReport {
            function: function.to_owned(),
            version: candidate.version,
            digest: candidate.digest.clone(),
            environment: req.environment.clone(),
            replay: req.replay.clone(),
            baseline_version: baseline.version,
            baseline_digest: baseline.digest.clone(),
            requests: compared.requests,
            mismatches: compared.mismatches,
            mismatch_percent,
            max_mismatch_percent: max_mismatch,
            noisy: compared
                .noisy
                .iter()
                .map(|(route, field)| format!("{route}: {field}"))
                .collect(),
            routes: compared.routes,
            baseline_errors,
            candidate_errors,
            baseline_p50_ms: quantile(&mut base_ms, 0.5),
            candidate_p50_ms: quantile(&mut cand_ms, 0.5),
            baseline_p95_ms: quantile(&mut base_ms, 0.95),
            candidate_p95_ms: quantile(&mut cand_ms, 0.95),
            deny_outbound: req.deny_outbound,
            passed,
            verdict,
            attestation: None,
        };
        // A verdict that cannot be recorded is said (and audited), not
        // lost with the work that made it.
        match self
            .attest_verification(&candidate, &report, &req.ignore)
            .await
        {
            Ok(referrer) => report.attestation = Some(referrer),
            Err(e) => {
                tracing::warn!(error = %e, function, version = candidate.version, "cannot attach the verification summary");
                report.verdict.push_str(&format!(
                    "; the signed summary could not be attached ({}), so it is no evidence",
                    e.public_message()
                ));
            }
        }
        let _ = self
            .state
            .audit(seal_state::NewAudit {
                actor,
                action: "verify-release",
                object: &format!("{}/{function}", req.environment),
                digest: Some(&candidate.digest),
                outcome: if passed { "passed" } else { "failed" },
                detail: json!({
                    "version": candidate.version,
                    "replay": req.replay,
                    "baseline": baseline.version,
                    "requests": report.requests,
                    "mismatch_percent": report.mismatch_percent,
                    "attestation": report.attestation,
                }),
            })
            .await;
        tracing::info!(function, version = candidate.version, environment = %req.environment, replay = %req.replay, passed, requests = report.requests, mismatch_percent, "release verified");
        Ok(report)
    }

    /// One captured request to one backend, its answer read whole.
    async fn replay_one(
        &self,
        backend: &Arc<seal_serving::Backend>,
        r: &CapturedRequest,
    ) -> Answer {
        let started = std::time::Instant::now();
        let mut builder = http::Request::builder()
            .method(r.method.as_str())
            .uri(r.path.as_str());
        for (name, value) in &r.headers {
            // The body sent is the captured one (maybe cut): its length is
            // the body's own.
            if name.eq_ignore_ascii_case("content-length") {
                continue;
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        let req = match builder.body(http_body_util::Full::new(Bytes::from(r.body.clone()))) {
            Ok(req) => req,
            Err(e) => {
                return Answer {
                    status: 400,
                    headers: Vec::new(),
                    body: format!("the captured request cannot be rebuilt: {e}").into_bytes(),
                    ms: 0.0,
                };
            }
        };
        let invoked = self
            .serving
            .invoke(backend, req, started, seal_serving::Traffic::Unjudged)
            .await;
        let answer = match invoked.result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp
                    .headers()
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect();
                let body = match http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes().to_vec(),
                    Err(e) => format!("the body failed (or passed {MAX_ANSWER_BYTES} bytes): {e}")
                        .into_bytes(),
                };
                (status, headers, body)
            }
            Err(e) => (e.status(), Vec::new(), e.kind().as_bytes().to_vec()),
        };
        Answer {
            status: answer.0,
            headers: answer.1,
            body: answer.2,
            ms: started.elapsed().as_secs_f64() * 1e3,
        }
    }

    /// The VSA statements about `v` signed by this server's key (any
    /// other key, or none, is not the server's word).
    async fn server_summaries(&self, v: &VersionRecord) -> ControlResult<Vec<Value>> {
        Ok(self
            .server_summary_records(v)
            .await?
            .into_iter()
            .map(|(_, st)| st)
            .collect())
    }

    /// [`Self::server_summaries`] with the attestation each came in.
    async fn server_summary_records(
        &self,
        v: &VersionRecord,
    ) -> ControlResult<Vec<(seal_state::AttestationRecord, Value)>> {
        let key = self.server_key.public_key();
        Ok(self
            .trust
            .envelopes(&v.digest)
            .await?
            .into_iter()
            .filter(|(_, e)| e.verify(std::slice::from_ref(&key)).is_ok())
            .filter_map(|(rec, e)| Some((rec, e.statement().ok()?)))
            .filter(|(_, st)| st["predicateType"] == VSA)
            .collect())
    }

    /// Removes the server's summaries about `v` that a later one of the
    /// same kind supersedes (see [`summary_kind`]): what the pipeline
    /// reads is unchanged, and the server's own attestations stay bounded
    /// by the kinds there are, so they need no share of the artifact's
    /// attestation limit and a revoking failure always finds room.
    async fn prune_summaries(&self, v: &VersionRecord) {
        let summaries = match self.server_summary_records(v).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, function = %v.function, version = v.version, "cannot list the server's summaries to prune them");
                return;
            }
        };
        let mut latest: BTreeMap<String, (String, String)> = BTreeMap::new();
        let mut superseded = Vec::new();
        for (rec, st) in &summaries {
            let Some(kind) = summary_kind(st) else {
                continue;
            };
            let at = summary_time(st);
            match latest.get(&kind) {
                Some((t, _)) if *t >= at => superseded.push(rec.referrer.clone()),
                _ => {
                    if let Some((_, older)) = latest.insert(kind, (at, rec.referrer.clone())) {
                        superseded.push(older);
                    }
                }
            }
        }
        for referrer in superseded {
            if let Err(e) = self
                .trust
                .remove_attestation(&v.function, v.version, &referrer, VERIFIER)
                .await
            {
                tracing::warn!(error = %e, function = %v.function, version = v.version, referrer, "cannot remove a superseded summary");
            }
        }
    }

    /// Signs a verification summary about `v` (`predicate` completed with
    /// the statement's common fields) and attaches it; its referrer.
    async fn attach_summary(
        &self,
        v: &VersionRecord,
        verifier: &str,
        policy_uri: String,
        passed: bool,
        detail: (&str, Value),
    ) -> ControlResult<String> {
        let hex = v.digest.strip_prefix("sha256:").unwrap_or(&v.digest);
        let mut predicate = json!({
            "verifier": {"id": verifier, "version": {"seal": env!("CARGO_PKG_VERSION")}},
            "timeVerified": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "resourceUri": format!("seal:function/{}@{}", v.function, v.version),
            "policy": {"uri": policy_uri},
            "verificationResult": if passed { "PASSED" } else { "FAILED" },
            "verifiedLevels": [],
            "slsaVersion": "1.0",
        });
        predicate[detail.0] = detail.1;
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{"name": format!("{}@{}", v.function, v.version), "digest": {"sha256": hex}}],
            "predicateType": VSA,
            "predicate": predicate,
        });
        let envelope = seal_trust::Envelope::sign(&statement, &self.server_key);
        let referrer = self
            .trust
            .attach_attestation(&v.function, v.version, &envelope.to_json(), VERIFIER)
            .await?
            .referrer;
        self.prune_summaries(v).await;
        Ok(referrer)
    }

    /// Signs the verdict as an in-toto statement with a VSA predicate about
    /// the candidate and attaches it; its referrer digest.
    async fn attest_verification(
        &self,
        candidate: &VersionRecord,
        report: &VerifyReport,
        ignore: &[String],
    ) -> ControlResult<String> {
        self.attach_summary(
            candidate,
            "https://seal.dev/verify-release",
            format!(
                "seal:verify-release?environment={}&replay={}&max_mismatch_percent={}",
                report.environment, report.replay, report.max_mismatch_percent
            ),
            report.passed,
            (
                "sealVerification",
                json!({
                    "environment": report.environment,
                    "replay": report.replay,
                    "baseline": {"version": report.baseline_version, "digest": report.baseline_digest},
                    "requests": report.requests,
                    "mismatch_percent": report.mismatch_percent,
                    "candidate_errors": report.candidate_errors,
                    "baseline_errors": report.baseline_errors,
                    "deny_outbound": report.deny_outbound,
                    "max_mismatch_percent": report.max_mismatch_percent,
                    "ignore": ignore,
                    "verdict": report.verdict,
                }),
            ),
        )
        .await
    }

    /// Records a completed soak of `v` in `env` as a summary signed by
    /// the server (once per environment).
    pub(crate) async fn attest_soak(
        &self,
        v: &VersionRecord,
        env: &str,
        served_ms: u64,
        soak_ms: u64,
        invocations: u64,
    ) -> ControlResult<()> {
        if self
            .server_summaries(v)
            .await?
            .iter()
            .any(|st| st["predicate"]["sealSoak"]["environment"] == env)
        {
            return Ok(());
        }
        self.attach_summary(
            v,
            "https://seal.dev/soak",
            format!("seal:soak?environment={env}&soak_ms={soak_ms}"),
            true,
            (
                "sealSoak",
                json!({
                    "environment": env,
                    "served_ms": served_ms,
                    "required_ms": soak_ms,
                    "invocations": invocations,
                }),
            ),
        )
        .await?;
        Ok(())
    }

    /// The server's own public key (`seal trust server-key`).
    pub fn server_key(&self) -> seal_api_types::promotion::ServerKey {
        let public = self.server_key.public_key();
        seal_api_types::promotion::ServerKey {
            keyid: public.keyid().to_owned(),
            pem: public.to_pem(),
        }
    }

    /// The latest verification of `v` in `env` of `replay`'s traffic,
    /// signed by this server's key: (passed, when, its verdict). What
    /// counts as evidence: signed by this server (any other key, or none,
    /// is not), against a baseline other than the candidate, with the
    /// default threshold or a stricter one, no ignored fields, and at
    /// least [`MIN_EVIDENCE_REQUESTS`] requests (or every one captured).
    pub(crate) async fn last_verification(
        &self,
        env: &str,
        replay: &str,
        v: &VersionRecord,
    ) -> ControlResult<Option<(bool, String, String)>> {
        let mut latest: Option<(bool, String, String)> = None;
        for statement in self.server_summaries(v).await? {
            let p = &statement["predicate"];
            let sv = &p["sealVerification"];
            if statement["predicateType"] != VSA
                || sv["environment"] != env
                || sv["replay"] != replay
                || sv["baseline"]["digest"] == v.digest.as_str()
            {
                continue;
            }
            let passed_as_evidence = strict_enough(sv);
            let at = summary_time(&statement);
            // A pass with looser settings is reported, never evidence; a
            // failure always counts (it revokes).
            let passed = p["verificationResult"] == "PASSED";
            if passed && !passed_as_evidence {
                continue;
            }
            let verdict = p["sealVerification"]["verdict"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if latest.as_ref().is_none_or(|(_, t, _)| at > *t) {
                latest = Some((passed, at, verdict));
            }
        }
        Ok(latest)
    }
}

/// Whether a verification's settings make its pass evidence: the default
/// threshold or a stricter one, no ignored fields, at least
/// [`MIN_EVIDENCE_REQUESTS`] requests.
fn strict_enough(sv: &Value) -> bool {
    sv["max_mismatch_percent"]
        .as_f64()
        .is_some_and(|m| m <= DEFAULT_MAX_MISMATCH)
        && sv["ignore"].as_array().is_some_and(Vec::is_empty)
        && sv["requests"]
            .as_u64()
            .is_some_and(|n| n >= MIN_EVIDENCE_REQUESTS)
}

/// When a summary was made (RFC 3339 in UTC, so it sorts as text).
fn summary_time(statement: &Value) -> String {
    statement["predicate"]["timeVerified"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// What a server summary stands for; of each kind only the latest
/// matters: a soak per environment; per environment and replayed
/// environment, the verification that decides evidence (a failure, or a
/// pass strict enough) and, apart, a looser pass (reported, never
/// evidence, so it cannot displace the deciding one).
fn summary_kind(statement: &Value) -> Option<String> {
    let p = &statement["predicate"];
    if let Some(env) = p["sealSoak"]["environment"].as_str() {
        return Some(format!("soak {env}"));
    }
    let sv = &p["sealVerification"];
    let (env, replay) = (sv["environment"].as_str()?, sv["replay"].as_str()?);
    let deciding = p["verificationResult"] != "PASSED" || strict_enough(sv);
    Some(format!(
        "verification {env} {replay} {}",
        if deciding { "deciding" } else { "loose" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_superseded_only_by_a_later_one_of_its_kind() {
        let summary = |result: &str, env: &str, max: f64, ignore: Value| {
            json!({"predicate": {
                "verificationResult": result,
                "sealVerification": {"environment": env, "replay": "production",
                    "max_mismatch_percent": max, "ignore": ignore, "requests": 50}}})
        };
        let strict_pass = summary_kind(&summary("PASSED", "staging", 1.0, json!([])));
        let fail = summary_kind(&summary("FAILED", "staging", 50.0, json!(["/x"])));
        let loose_pass = summary_kind(&summary("PASSED", "staging", 50.0, json!([])));
        let ignoring_pass = summary_kind(&summary("PASSED", "staging", 1.0, json!(["/x"])));
        // A failure revokes a strict pass, whatever its own settings.
        assert_eq!(strict_pass, fail);
        // A looser pass is its own kind: it never displaces the deciding one.
        assert_ne!(strict_pass, loose_pass);
        assert_eq!(loose_pass, ignoring_pass);
        assert_ne!(
            strict_pass,
            summary_kind(&summary("PASSED", "qa", 1.0, json!([])))
        );
        assert_eq!(
            summary_kind(&json!({"predicate": {"sealSoak": {"environment": "staging"}}})),
            Some("soak staging".into())
        );
        assert_eq!(summary_kind(&json!({"predicate": {}})), None);
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("date".into(), "now".into()),
            ],
            body: body.as_bytes().to_vec(),
            ms: 1.0,
        }
    }

    fn request(id: u64, path: &str) -> CapturedRequest {
        CapturedRequest {
            id,
            environment: "production".into(),
            function: "shop".into(),
            version: 1,
            at: 0,
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            body_truncated: false,
            status: 200,
            response_digest: String::new(),
            response_bytes: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn json_bodies_are_compared_leaf_by_leaf_and_ignored_pointers_are_not() {
        let f = fields(
            &answer(
                200,
                r#"{"a": {"b/c": 1, "d": [true, null]}, "meta": {"at": 5}}"#,
            ),
            &["/meta".to_owned()],
        );
        assert_eq!(f["status"], "200");
        assert_eq!(f["header content-type"], "application/json");
        assert!(!f.contains_key("header date"), "volatile");
        assert_eq!(f["body /a/b~1c"], "1");
        assert_eq!(f["body /a/d/0"], "true");
        assert_eq!(f["body /a/d/1"], "null");
        assert!(!f.keys().any(|k| k.contains("/meta")), "{f:?}");
        let text = fields(&answer(200, "hello"), &[]);
        assert!(text["body"].starts_with("\"hello\" (sha256:"), "{text:?}");
    }

    #[test]
    fn noise_is_learned_per_route_and_only_real_differences_count() {
        let runs = vec![
            // /price: the id is noise (differs between baseline runs); the
            // candidate's price differs for real.
            (
                request(1, "/price?x=1"),
                answer(200, r#"{"price": 10, "id": "a"}"#),
                answer(200, r#"{"price": 10, "id": "b"}"#),
                answer(200, r#"{"price": 12, "id": "c"}"#),
            ),
            (
                request(2, "/price?x=2"),
                answer(200, r#"{"price": 10, "id": "d"}"#),
                answer(200, r#"{"price": 10, "id": "e"}"#),
                answer(200, r#"{"price": 12, "id": "f"}"#),
            ),
            // /hello: the same everywhere but for its own noise.
            (
                request(3, "/hello"),
                answer(200, r#"{"greeting": "hi", "id": "g"}"#),
                answer(200, r#"{"greeting": "hi", "id": "h"}"#),
                answer(200, r#"{"greeting": "hi", "id": "i"}"#),
            ),
            (
                request(4, "/hello"),
                answer(200, r#"{"greeting": "hi", "id": "j"}"#),
                answer(200, r#"{"greeting": "hi", "id": "k"}"#),
                answer(500, r#"{"greeting": "hi", "id": "l"}"#),
            ),
        ];
        let c = compare(&runs, &[]);
        assert_eq!((c.requests, c.mismatches), (4, 3));
        assert!(c.noisy.contains(&("GET /price".into(), "body /id".into())));
        assert!(c.noisy.contains(&("GET /hello".into(), "body /id".into())));
        let price = c.routes.iter().find(|r| r.route == "GET /price").unwrap();
        assert_eq!((price.requests, price.mismatches), (2, 2));
        assert_eq!(price.mismatch_percent, 100.0);
        assert_eq!(price.differences.len(), 1, "{price:?}");
        let d = &price.differences[0];
        assert_eq!(d.field, "body /price");
        assert_eq!(d.count, 2);
        assert_eq!(d.request, 1);
        assert_eq!(
            (d.baseline.as_deref(), d.candidate.as_deref()),
            (Some("10"), Some("12"))
        );
        let hello = c.routes.iter().find(|r| r.route == "GET /hello").unwrap();
        assert_eq!((hello.requests, hello.mismatches), (2, 1));
        assert_eq!(hello.differences[0].field, "status");
        // Ignoring the price leaves only the 500.
        let c = compare(&runs, &["/price".to_owned()]);
        assert_eq!(c.mismatches, 1);
    }
}
