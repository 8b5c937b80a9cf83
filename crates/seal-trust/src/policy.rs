//! Per-environment trust policy and its evaluation.

use crate::dsse::{Envelope, SigCheck};
use crate::keys::PublicKey;
use crate::provenance::{SLSA_PROVENANCE_V1, STATEMENT_TYPE};
use crate::{Result, TrustError, short_id};
use seal_artifact::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What an environment demands of an artifact before it may be deployed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Policy {
    /// Deploys need a DSSE envelope signed by one of `trusted_keys`.
    pub require_signature: bool,
    pub trusted_keys: Vec<TrustedKey>,
    /// Field (see [`requirement_path`]) -> exact required value, or `None`:
    /// must be present and non-empty. Checked on the provenance of an
    /// envelope signed by a trusted key about this artifact.
    pub required_provenance: BTreeMap<String, Option<String>>,
}

/// A trusted public key as stored with a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TrustedKey {
    pub keyid: String,
    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    pub pem: String,
}

impl TrustedKey {
    /// The key, checked: its PEM must parse and hash to the stored key id.
    pub fn public_key(&self) -> Result<PublicKey> {
        let key = PublicKey::from_pem(&self.pem)?;
        if key.keyid() != self.keyid {
            return Err(TrustError::Key(format!(
                "stored key id {} does not match its PEM, which is {}",
                short_id(&self.keyid),
                short_id(key.keyid())
            )));
        }
        Ok(key)
    }
}

impl From<&PublicKey> for TrustedKey {
    fn from(key: &PublicKey) -> Self {
        Self {
            keyid: key.keyid().to_owned(),
            pem: key.to_pem(),
        }
    }
}

impl Policy {
    /// Nothing required and no key trusted: the policy of an environment
    /// nobody has configured.
    pub fn is_empty(&self) -> bool {
        !self.require_signature
            && self.trusted_keys.is_empty()
            && self.required_provenance.is_empty()
    }

    /// Whether the policy can refuse anything.
    pub fn is_enforcing(&self) -> bool {
        self.require_signature || !self.required_provenance.is_empty()
    }
}

/// Parses `source=git+https://x` (exact value) or `commit` (presence only),
/// as given to `seal policy set --require-provenance`. Whitespace around the
/// name and the value is ignored.
pub fn parse_requirement(s: &str) -> Result<(String, Option<String>)> {
    let err = |why: &str| TrustError::Requirement(s.to_owned(), why.to_owned());
    let (name, value) = match s.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim())),
        None => (s.trim(), None),
    };
    if name.is_empty() {
        return Err(err(
            "expected FIELD or FIELD=VALUE, e.g. source=git+https://example.org/team/hello",
        ));
    }
    let valid_segment = |seg: &str| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if !name.split('.').all(valid_segment) {
        return Err(err(
            "the field must be a short name (source, commit, project, buildCommand, builder, \
             buildType) or a dotted path inside the predicate of letters, digits, `_` and `-`",
        ));
    }
    match value {
        Some("") => Err(err(&format!(
            "empty value; write `{name}` alone to require that it is present"
        ))),
        v => Ok((name.to_owned(), v.map(str::to_owned))),
    }
}

/// Where a requirement's field lives, as a dotted path inside the SLSA
/// predicate: `source`, `commit`, `project`, `buildCommand` ->
/// `buildDefinition.externalParameters.<name>`; `builder` ->
/// `runDetails.builder.id`; `buildType` -> `buildDefinition.buildType`;
/// anything else is already a dotted path (array elements by index).
pub fn requirement_path(name: &str) -> String {
    match name {
        "source" | "commit" | "project" | "buildCommand" => {
            format!("buildDefinition.externalParameters.{name}")
        }
        "builder" => "runDetails.builder.id".to_owned(),
        "buildType" => "buildDefinition.buildType".to_owned(),
        other => other.to_owned(),
    }
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    })
}

/// A value from a statement as text: strings as they are, anything else as
/// compact JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Untrusted text made safe for a one-line message: control characters
/// escaped, length bounded.
fn shown(s: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = if s.chars().any(char::is_control) {
        s.escape_debug().collect()
    } else {
        s.to_owned()
    };
    if out.chars().count() > MAX {
        out = out.chars().take(MAX).collect();
        out.push('…');
    }
    out
}

fn string_at(root: &Value, path: &str) -> Option<String> {
    present(lookup(root, path)).map(text)
}

/// The statement's `_type`, checked.
fn check_type(st: &Value) -> Result<(), String> {
    match st.get("_type").and_then(Value::as_str) {
        Some(STATEMENT_TYPE) => Ok(()),
        Some(other) => Err(format!(
            "the signed statement has _type {}, expected {STATEMENT_TYPE}",
            shown(other)
        )),
        None => Err(format!(
            "the signed payload is not an in-toto statement (no _type {STATEMENT_TYPE})"
        )),
    }
}

/// Whether one of the statement's subjects is `subject`.
fn check_subject(st: &Value, subject: &Digest) -> Result<(), String> {
    let hexes: Vec<&str> = st
        .get("subject")
        .and_then(Value::as_array)
        .map(|subjects| {
            subjects
                .iter()
                .filter_map(|s| s.pointer("/digest/sha256").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if hexes.iter().any(|h| *h == subject.hex()) {
        return Ok(());
    }
    match hexes.first() {
        Some(other) => Err(format!(
            "the signed statement is about sha256:{}, not this artifact {subject}",
            shown(other)
        )),
        None => Err(format!(
            "the signed statement names no sha256 subject, not this artifact {subject}"
        )),
    }
}

/// SLSA Provenance v1 shape: predicateType and every required field. The
/// first problem is the most fundamental.
fn slsa_problems(st: &Value) -> Vec<String> {
    match st.get("predicateType").and_then(Value::as_str) {
        Some(SLSA_PROVENANCE_V1) => {}
        Some(other) => {
            return vec![format!(
                "the signed statement's predicateType is {}, not SLSA provenance v1 ({SLSA_PROVENANCE_V1})",
                shown(other)
            )];
        }
        None => {
            return vec![format!(
                "the signed statement has no predicateType, expected {SLSA_PROVENANCE_V1}"
            )];
        }
    }
    let predicate = st.get("predicate").unwrap_or(&Value::Null);
    let mut problems = Vec::new();
    for field in ["buildDefinition.buildType", "runDetails.builder.id"] {
        if lookup(predicate, field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push(format!(
                "provenance lacks {field}, required by SLSA provenance v1"
            ));
        }
    }
    if !lookup(predicate, "buildDefinition.externalParameters").is_some_and(Value::is_object) {
        problems.push(
            "provenance lacks buildDefinition.externalParameters, required by SLSA provenance v1"
                .to_owned(),
        );
    }
    problems
}

/// Whether an environment's required provenance holds; `Ok` gives report lines.
fn check_required(
    predicate: &Value,
    required: &BTreeMap<String, Option<String>>,
    environment: &str,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for (name, want) in required {
        let path = requirement_path(name);
        let Some(value) = present(lookup(predicate, &path)) else {
            return Err(format!(
                "provenance lacks {path}, required by {environment}"
            ));
        };
        let got = text(value);
        match want {
            Some(want) if got != *want => {
                return Err(format!(
                    "provenance {name} is {}, {environment} requires {want}",
                    shown(&got)
                ));
            }
            Some(want) => lines.push(format!("provenance {name}: ok, {want}")),
            None => lines.push(format!("provenance {name}: ok, present ({})", shown(&got))),
        }
    }
    Ok(lines)
}

/// The outcome of [`evaluate`]: who signed, what the verified provenance says,
/// and the checks made, one human line each.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Key id of the trusted key whose signature was accepted.
    pub signed_by: Option<String>,
    /// The predicate of the accepted (verified, subject-matching) statement.
    pub provenance: Option<Value>,
    /// e.g. `signature: ok, key sha256:ab12…`.
    pub checks: Vec<String>,
}

/// An envelope that passed every check.
struct Accepted {
    keyid: String,
    predicate: Value,
    checks: Vec<String>,
}

/// Why an envelope did not pass; a higher rank got further through the checks.
struct Failure {
    rank: u8,
    reason: String,
}

fn trusts(environment: &str, keys: &[PublicKey]) -> String {
    if keys.is_empty() {
        format!("{environment} trusts no keys")
    } else {
        let ids: Vec<String> = keys.iter().map(|k| short_id(k.keyid())).collect();
        format!("{environment} trusts {}", ids.join(", "))
    }
}

fn not_signed(policy: &Policy, environment: &str) -> String {
    if policy.require_signature {
        format!("not signed: {environment} requires a signature by a trusted key")
    } else {
        let names: Vec<&str> = policy
            .required_provenance
            .keys()
            .map(String::as_str)
            .collect();
        format!(
            "not signed: {environment} requires provenance ({}) signed by a trusted key",
            names.join(", ")
        )
    }
}

fn judge(
    policy: &Policy,
    environment: &str,
    subject: &Digest,
    keys: &[PublicKey],
    envelope: &Envelope,
) -> Result<Accepted, Failure> {
    let fail = |rank, reason| Failure { rank, reason };
    let keyid = match envelope.check(keys) {
        SigCheck::Verified(keyid) => keyid,
        SigCheck::Unsigned => return Err(fail(0, not_signed(policy, environment))),
        SigCheck::Untrusted(keyid) => {
            return Err(fail(
                1,
                format!(
                    "signed by untrusted key {} ({})",
                    short_id(&keyid),
                    trusts(environment, keys)
                ),
            ));
        }
        SigCheck::Invalid(keyid) => {
            return Err(fail(
                2,
                format!("signature does not verify with key {}", short_id(&keyid)),
            ));
        }
    };
    let statement = envelope.statement().map_err(|e| {
        fail(
            3,
            format!("the signed envelope does not hold an in-toto statement ({e})"),
        )
    })?;
    check_type(&statement).map_err(|r| fail(3, r))?;
    check_subject(&statement, subject).map_err(|r| fail(4, r))?;
    if let Some(problem) = slsa_problems(&statement).into_iter().next() {
        return Err(fail(5, problem));
    }
    let predicate = statement.get("predicate").cloned().unwrap_or(Value::Null);
    let required = check_required(&predicate, &policy.required_provenance, environment)
        .map_err(|r| fail(6, r))?;

    let mut checks = vec![
        format!("signature: ok, key {}", short_id(&keyid)),
        format!("subject: ok, {subject}"),
        format!(
            "provenance: SLSA v1, buildType {}, builder {}",
            shown(&string_at(&predicate, "buildDefinition.buildType").unwrap_or_default()),
            shown(&string_at(&predicate, "runDetails.builder.id").unwrap_or_default()),
        ),
    ];
    checks.extend(required);
    Ok(Accepted {
        keyid,
        predicate,
        checks,
    })
}

/// Evaluates a policy for the artifact `subject` against the envelopes
/// attached to it.
///
/// An envelope counts only if its signature verifies with a trusted key, its
/// statement is an in-toto Statement v1 about `subject`, its predicate is SLSA
/// Provenance v1 with every required field, and it meets the required
/// provenance. The first such envelope is accepted. A policy that requires
/// nothing ([`Policy::is_enforcing`] false) never refuses; its verdict still
/// reports what the envelopes showed. Otherwise, when no envelope counts, the
/// refusal is the reason of the envelope that got furthest through the checks
/// ([`TrustError::Refused`]).
pub fn evaluate(
    policy: &Policy,
    environment: &str,
    subject: &Digest,
    envelopes: &[Envelope],
) -> Result<Verdict> {
    let mut keys = Vec::with_capacity(policy.trusted_keys.len());
    let mut checks = Vec::new();
    for trusted in &policy.trusted_keys {
        match trusted.public_key() {
            Ok(key) => keys.push(key),
            Err(e) if policy.is_enforcing() => {
                return Err(TrustError::Refused(format!(
                    "trusted key {} of {environment} is unusable: {e}",
                    short_id(&trusted.keyid)
                )));
            }
            Err(e) => checks.push(format!(
                "trusted key {} ignored: {e}",
                short_id(&trusted.keyid)
            )),
        }
    }

    let mut best: Option<Failure> = None;
    for envelope in envelopes {
        match judge(policy, environment, subject, &keys, envelope) {
            Ok(accepted) => {
                if !policy.is_enforcing() {
                    checks.push(format!("policy: {environment} requires nothing"));
                }
                checks.extend(accepted.checks);
                return Ok(Verdict {
                    signed_by: Some(accepted.keyid),
                    provenance: Some(accepted.predicate),
                    checks,
                });
            }
            Err(f) => {
                if best.as_ref().is_none_or(|b| f.rank > b.rank) {
                    best = Some(f);
                }
            }
        }
    }

    if policy.is_enforcing() {
        let reason = best.map_or_else(|| not_signed(policy, environment), |f| f.reason);
        return Err(TrustError::Refused(reason));
    }
    checks.push(format!("policy: {environment} requires nothing"));
    checks.push(match best {
        None => "signature: none (unsigned)".to_owned(),
        Some(f) => format!("signature: not accepted, {}", f.reason),
    });
    Ok(Verdict {
        signed_by: None,
        provenance: None,
        checks,
    })
}

/// What `seal verify` reports about one envelope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvelopeReport {
    /// The verified key id, or the key id the first signature claims.
    pub keyid: String,
    /// `ok` (verifies with a given key), `untrusted` (signed by another key),
    /// `invalid` (names a given key but does not verify, or no signature at
    /// all), `unverified` (no key given).
    pub signature: String,
    /// One of the statement's subjects is the artifact.
    pub subject_matches: bool,
    /// Problems with the statement as in-toto / SLSA provenance v1.
    pub provenance_errors: Vec<String>,
    pub source: Option<String>,
    pub commit: Option<String>,
    pub builder: Option<String>,
    pub build_type: Option<String>,
    /// For an SLSA verification summary (VSA) rather than provenance: its
    /// result, where and when (`PASSED in staging at …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<String>,
}

/// The predicate type of an SLSA verification summary.
pub const VSA_PREDICATE: &str = "https://slsa.dev/verification_summary/v1";

/// Verification for `seal verify` without a policy: each envelope checked
/// against `keys` (none given: `unverified`), for subject match and for the
/// required SLSA fields. Never fails and never panics: garbage gives a
/// report full of errors.
pub fn inspect(
    subject: &Digest,
    envelopes: &[Envelope],
    keys: &[PublicKey],
) -> Vec<EnvelopeReport> {
    envelopes
        .iter()
        .map(|envelope| {
            let (keyid, signature) = if keys.is_empty() {
                let claimed = envelope.claimed_keyid().to_owned();
                let sig = if envelope.signatures.is_empty() {
                    "invalid"
                } else {
                    "unverified"
                };
                (claimed, sig)
            } else {
                match envelope.check(keys) {
                    SigCheck::Verified(k) => (k, "ok"),
                    SigCheck::Untrusted(k) => (k, "untrusted"),
                    SigCheck::Invalid(k) => (k, "invalid"),
                    SigCheck::Unsigned => (String::new(), "invalid"),
                }
            };
            let mut report = EnvelopeReport {
                keyid,
                signature: signature.to_owned(),
                subject_matches: false,
                provenance_errors: Vec::new(),
                source: None,
                commit: None,
                builder: None,
                build_type: None,
                verification: None,
            };
            let statement = match envelope.statement() {
                Ok(st) => st,
                Err(e) => {
                    report.provenance_errors.push(e.to_string());
                    return report;
                }
            };
            if let Err(e) = check_type(&statement) {
                report.provenance_errors.push(e);
            }
            report.subject_matches = check_subject(&statement, subject).is_ok();
            if statement["predicateType"] == VSA_PREDICATE {
                // A verification summary is not provenance: said as what
                // it is, with no provenance errors.
                let p = &statement["predicate"];
                let text = |v: &Value| v.as_str().map(shown).unwrap_or_else(|| "?".into());
                let (what, env) = if p["sealSoak"].is_object() {
                    ("soak", &p["sealSoak"]["environment"])
                } else {
                    ("verification", &p["sealVerification"]["environment"])
                };
                report.verification = Some(format!(
                    "{what} {} in {} at {} by {}",
                    text(&p["verificationResult"]),
                    text(env),
                    text(&p["timeVerified"]),
                    text(&p["verifier"]["id"]),
                ));
                return report;
            }
            report.provenance_errors.extend(slsa_problems(&statement));
            let predicate = statement.get("predicate").unwrap_or(&Value::Null);
            let field =
                |name: &str| string_at(predicate, &requirement_path(name)).map(|s| shown(&s));
            report.source = field("source");
            report.commit = field("commit");
            report.builder = field("builder");
            report.build_type = field("buildType");
            report
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::provenance::{BUILD_TYPE, BuildInfo, statement};
    use seal_artifact::sha256_digest;
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    const ENV: &str = "production";
    const SOURCE: &str = "git+https://example.org/team/hello";

    fn info(subject: &Digest) -> BuildInfo {
        BuildInfo {
            function: "hello".into(),
            subject: subject.clone(),
            build_type: BUILD_TYPE.into(),
            source: Some(SOURCE.into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            build_command: Some("cargo component build --release".into()),
            project: Some(".".into()),
            resolved_dependencies: vec![],
            builder_id: "https://seal.dev/builder/seal-cli@0.1.0".into(),
            started_on: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            finished_on: UNIX_EPOCH + Duration::from_secs(1_700_000_060),
        }
    }

    struct Fixture {
        key: SigningKey,
        subject: Digest,
        policy: Policy,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate();
        let policy = Policy {
            require_signature: true,
            trusted_keys: vec![TrustedKey::from(&key.public_key())],
            required_provenance: BTreeMap::from([
                ("source".to_owned(), Some(SOURCE.to_owned())),
                ("commit".to_owned(), None),
            ]),
        };
        Fixture {
            key,
            subject: sha256_digest(b"the artifact manifest"),
            policy,
        }
    }

    fn refusal(r: Result<Verdict>) -> String {
        match r {
            Err(TrustError::Refused(reason)) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn passes_when_all_good() {
        let f = fixture();
        let env = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        let v = evaluate(&f.policy, ENV, &f.subject, &[env]).unwrap();
        assert_eq!(v.signed_by.as_deref(), Some(f.key.keyid()));
        let p = v.provenance.unwrap();
        assert_eq!(p["buildDefinition"]["externalParameters"]["source"], SOURCE);
        assert_eq!(
            v.checks[0],
            format!("signature: ok, key {}", short_id(f.key.keyid()))
        );
        assert!(
            v.checks
                .iter()
                .any(|c| c == &format!("provenance source: ok, {SOURCE}"))
        );
        assert!(
            v.checks
                .iter()
                .any(|c| c.starts_with("provenance commit: ok, present"))
        );
    }

    #[test]
    fn empty_policy_passes_with_no_envelopes() {
        let f = fixture();
        let policy = Policy::default();
        assert!(policy.is_empty());
        let v = evaluate(&policy, ENV, &f.subject, &[]).unwrap();
        assert_eq!(v.signed_by, None);
        assert_eq!(v.provenance, None);
        assert!(
            v.checks
                .contains(&"policy: production requires nothing".to_owned())
        );
        assert!(v.checks.contains(&"signature: none (unsigned)".to_owned()));
        // Even an untrusted signature does not refuse under a policy requiring nothing.
        let stranger = SigningKey::generate();
        let env = Envelope::sign(&statement(&info(&f.subject)), &stranger);
        let v = evaluate(&policy, ENV, &f.subject, &[env]).unwrap();
        assert_eq!(v.signed_by, None);
        assert!(
            v.checks
                .iter()
                .any(|c| c.contains("signed by untrusted key")),
            "{:?}",
            v.checks
        );
    }

    #[test]
    fn no_envelope_with_require_signature_is_refused() {
        let f = fixture();
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[])),
            "not signed: production requires a signature by a trusted key"
        );
        let mut unsigned = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        unsigned.signatures.clear();
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[unsigned])),
            "not signed: production requires a signature by a trusted key"
        );
        // Provenance required without require_signature still needs a signed envelope.
        let policy = Policy {
            require_signature: false,
            ..f.policy.clone()
        };
        assert_eq!(
            refusal(evaluate(&policy, "staging", &f.subject, &[])),
            "not signed: staging requires provenance (commit, source) signed by a trusted key"
        );
    }

    #[test]
    fn untrusted_key_is_refused() {
        let f = fixture();
        let stranger = SigningKey::generate();
        let env = Envelope::sign(&statement(&info(&f.subject)), &stranger);
        assert_eq!(
            refusal(evaluate(
                &f.policy,
                ENV,
                &f.subject,
                std::slice::from_ref(&env)
            )),
            format!(
                "signed by untrusted key sha256:{}… (production trusts sha256:{}…)",
                &stranger.keyid()[7..19],
                &f.key.keyid()[7..19]
            )
        );
        let none_trusted = Policy {
            trusted_keys: vec![],
            ..f.policy.clone()
        };
        assert_eq!(
            refusal(evaluate(&none_trusted, ENV, &f.subject, &[env])),
            format!(
                "signed by untrusted key {} (production trusts no keys)",
                short_id(stranger.keyid())
            )
        );
    }

    #[test]
    fn trusted_signature_over_another_digest_is_refused() {
        let f = fixture();
        let other = sha256_digest(b"another artifact");
        let env = Envelope::sign(&statement(&info(&other)), &f.key);
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            format!(
                "the signed statement is about {other}, not this artifact {}",
                f.subject
            )
        );
    }

    #[test]
    fn missing_required_field_is_refused() {
        let f = fixture();
        let mut i = info(&f.subject);
        i.source = None;
        let env = Envelope::sign(&statement(&i), &f.key);
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            "provenance lacks buildDefinition.externalParameters.source, required by production"
        );
    }

    #[test]
    fn missing_builder_id_is_refused_even_without_requirements() {
        let f = fixture();
        let policy = Policy {
            required_provenance: BTreeMap::new(),
            ..f.policy.clone()
        };
        let mut st = statement(&info(&f.subject));
        st["predicate"]["runDetails"]["builder"]
            .as_object_mut()
            .unwrap()
            .remove("id");
        let env = Envelope::sign(&st, &f.key);
        assert_eq!(
            refusal(evaluate(&policy, ENV, &f.subject, &[env])),
            "provenance lacks runDetails.builder.id, required by SLSA provenance v1"
        );
        let mut st = statement(&info(&f.subject));
        st["predicate"]["buildDefinition"]
            .as_object_mut()
            .unwrap()
            .remove("buildType");
        let env = Envelope::sign(&st, &f.key);
        assert_eq!(
            refusal(evaluate(&policy, ENV, &f.subject, &[env])),
            "provenance lacks buildDefinition.buildType, required by SLSA provenance v1"
        );
    }

    #[test]
    fn wrong_statement_or_predicate_type_is_refused() {
        let f = fixture();
        let mut st = statement(&info(&f.subject));
        st["predicateType"] = json!("https://example.com/other");
        let env = Envelope::sign(&st, &f.key);
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            "the signed statement's predicateType is https://example.com/other, not SLSA \
             provenance v1 (https://slsa.dev/provenance/v1)"
        );
        let mut st = statement(&info(&f.subject));
        st["_type"] = json!("https://in-toto.io/Statement/v0.1");
        let env = Envelope::sign(&st, &f.key);
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            "the signed statement has _type https://in-toto.io/Statement/v0.1, expected \
             https://in-toto.io/Statement/v1"
        );
    }

    #[test]
    fn wrong_source_value_is_refused() {
        let f = fixture();
        let mut i = info(&f.subject);
        i.source = Some("git+https://a.example/x".into());
        let env = Envelope::sign(&statement(&i), &f.key);
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            "provenance source is git+https://a.example/x, production requires \
             git+https://example.org/team/hello"
        );
    }

    #[test]
    fn tampered_payload_under_trusted_keyid_is_refused() {
        let f = fixture();
        let mut env = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        let text = String::from_utf8(env.payload.clone()).unwrap();
        env.payload = text.replace("example.org", "evil.example").into_bytes();
        assert_eq!(
            refusal(evaluate(&f.policy, ENV, &f.subject, &[env])),
            format!(
                "signature does not verify with key {}",
                short_id(f.key.keyid())
            )
        );
    }

    #[test]
    fn most_specific_reason_wins_and_a_good_envelope_passes_among_bad_ones() {
        let f = fixture();
        let stranger = Envelope::sign(&statement(&info(&f.subject)), &SigningKey::generate());
        let other = sha256_digest(b"other");
        let wrong_subject = Envelope::sign(&statement(&info(&other)), &f.key);
        let reason = refusal(evaluate(
            &f.policy,
            ENV,
            &f.subject,
            &[stranger.clone(), wrong_subject.clone()],
        ));
        assert!(
            reason.starts_with("the signed statement is about"),
            "{reason}"
        );
        let good = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        let v = evaluate(&f.policy, ENV, &f.subject, &[stranger, wrong_subject, good]).unwrap();
        assert_eq!(v.signed_by.as_deref(), Some(f.key.keyid()));
    }

    #[test]
    fn corrupt_trusted_key_fails_closed() {
        let f = fixture();
        let mut policy = f.policy.clone();
        policy.trusted_keys[0].keyid = sha256_digest(b"x").to_string();
        let env = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        let reason = refusal(evaluate(&policy, ENV, &f.subject, &[env]));
        assert!(reason.starts_with("trusted key sha256:"), "{reason}");
        assert!(reason.contains("does not match its PEM"), "{reason}");
    }

    #[test]
    fn requirements_parse_and_resolve() {
        assert_eq!(
            parse_requirement("source=git+https://x/y?a=b").unwrap(),
            ("source".into(), Some("git+https://x/y?a=b".into()))
        );
        assert_eq!(
            parse_requirement(" commit ").unwrap(),
            ("commit".into(), None)
        );
        assert_eq!(
            parse_requirement("runDetails.metadata.startedOn").unwrap(),
            ("runDetails.metadata.startedOn".into(), None)
        );
        for bad in ["", "=x", "source=", "a..b", "a b", ".x"] {
            assert!(parse_requirement(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_requirement("source=")
                .unwrap_err()
                .to_string()
                .contains("write `source` alone")
        );
        assert_eq!(
            requirement_path("source"),
            "buildDefinition.externalParameters.source"
        );
        assert_eq!(
            requirement_path("buildCommand"),
            "buildDefinition.externalParameters.buildCommand"
        );
        assert_eq!(requirement_path("builder"), "runDetails.builder.id");
        assert_eq!(requirement_path("buildType"), "buildDefinition.buildType");
        assert_eq!(requirement_path("a.b"), "a.b");
    }

    #[test]
    fn dotted_and_short_requirements_are_checked() {
        let f = fixture();
        let mut policy = f.policy.clone();
        policy.required_provenance = BTreeMap::from([
            (
                "builder".to_owned(),
                Some("https://seal.dev/builder/seal-cli@0.1.0".to_owned()),
            ),
            ("buildType".to_owned(), Some(BUILD_TYPE.to_owned())),
            (
                "runDetails.metadata.startedOn".to_owned(),
                Some("2023-11-14T22:13:20Z".to_owned()),
            ),
        ]);
        let env = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        evaluate(&policy, ENV, &f.subject, std::slice::from_ref(&env)).unwrap();
        policy
            .required_provenance
            .insert("runDetails.byproducts".into(), None);
        assert_eq!(
            refusal(evaluate(&policy, ENV, &f.subject, &[env])),
            "provenance lacks runDetails.byproducts, required by production"
        );
    }

    #[test]
    fn policy_serde_round_trips_and_tolerates_missing_fields() {
        let f = fixture();
        let json = serde_json::to_string(&f.policy).unwrap();
        let back: Policy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.policy);
        let partial: Policy = serde_json::from_str(r#"{"require_signature": true}"#).unwrap();
        assert!(partial.require_signature && partial.trusted_keys.is_empty());
        assert!(!partial.is_empty());
    }

    #[test]
    fn inspect_reports_each_envelope() {
        let f = fixture();
        let good = Envelope::sign(&statement(&info(&f.subject)), &f.key);
        let stranger = Envelope::sign(&statement(&info(&f.subject)), &SigningKey::generate());
        let mut tampered = good.clone();
        tampered.payload.push(b' ');
        let garbage = Envelope {
            payload_type: "x".into(),
            payload: b"\xff\x00".to_vec(),
            signatures: vec![],
        };
        let keys = [f.key.public_key()];
        let r = inspect(
            &f.subject,
            &[good.clone(), stranger, tampered, garbage],
            &keys,
        );
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].signature, "ok");
        assert_eq!(r[0].keyid, f.key.keyid());
        assert!(r[0].subject_matches);
        assert!(
            r[0].provenance_errors.is_empty(),
            "{:?}",
            r[0].provenance_errors
        );
        assert_eq!(r[0].source.as_deref(), Some(SOURCE));
        assert_eq!(
            r[0].builder.as_deref(),
            Some("https://seal.dev/builder/seal-cli@0.1.0")
        );
        assert_eq!(r[0].build_type.as_deref(), Some(BUILD_TYPE));
        assert!(r[0].commit.is_some());
        assert_eq!(r[1].signature, "untrusted");
        assert_eq!(r[2].signature, "invalid");
        assert_eq!(r[3].signature, "invalid");
        assert!(!r[3].subject_matches);
        assert!(!r[3].provenance_errors.is_empty());

        let unverified = inspect(&sha256_digest(b"other"), &[good], &[]);
        assert_eq!(unverified[0].signature, "unverified");
        assert_eq!(unverified[0].keyid, f.key.keyid());
        assert!(!unverified[0].subject_matches);
        let json = serde_json::to_value(&unverified[0]).unwrap();
        assert_eq!(json["signature"], "unverified");
    }

    #[test]
    fn inspect_reports_missing_slsa_fields() {
        let f = fixture();
        let st = json!({"_type": STATEMENT_TYPE, "subject": [{"name": "x", "digest": {"sha256": f.subject.hex()}}],
                        "predicateType": SLSA_PROVENANCE_V1, "predicate": {}});
        let env = Envelope::sign(&st, &f.key);
        let r = inspect(&f.subject, &[env], &[f.key.public_key()]);
        assert!(r[0].subject_matches);
        assert_eq!(
            r[0].provenance_errors,
            vec![
                "provenance lacks buildDefinition.buildType, required by SLSA provenance v1",
                "provenance lacks runDetails.builder.id, required by SLSA provenance v1",
                "provenance lacks buildDefinition.externalParameters, required by SLSA provenance v1",
            ]
        );
    }
}
