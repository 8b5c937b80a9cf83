//! Supply-chain trust in the deploy engine: attestations attached to
//! versions, per-environment policy checked whenever a version is about to
//! serve (deploy, rollback, progressive candidate, and every load at
//! start), `verify`, and the permission gate.
//!
//! Attestations are DSSE envelopes (in-toto Statement v1, SLSA provenance
//! v1) stored in the OCI layout as referrer manifests whose `subject` is the
//! artifact manifest; the state store indexes them by subject digest. The
//! cryptography and the policy rules are `seal-trust`'s; this module reads
//! the stored pieces and decides.

use crate::catalog::Catalog;
use crate::error::{ControlError, ControlResult};
use crate::lookup;
use crate::protection::Protection;
use seal_artifact::capabilities::PermissionDiff;
use seal_artifact::contracts::ContractDiff;
use seal_artifact::{Digest, SealManifest};
use seal_oci::{ArtifactStore, IndexEntry};
use seal_state::{AttestationRecord, NewAudit, StateStore, VersionRecord, now_ms};
use seal_trust::{Envelope, EnvelopeReport, Policy, PublicKey, TrustedKey};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a deploy changes in what the function may do: the diff against
/// the version it replaces (`from_version`, none on a first deploy).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PermissionChange {
    #[serde(flatten)]
    pub diff: PermissionDiff,
    pub from_version: Option<u64>,
}

/// What the event contracts change from the version a deploy replaces
/// (`from_version`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ContractChanges {
    #[serde(flatten)]
    pub diff: ContractDiff,
    pub from_version: u64,
}

/// An admin's explicit approvals a deploy may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Approvals {
    /// The candidate may do more than the version it replaces.
    pub new_permissions: bool,
    /// The candidate breaks the event contracts of the version it replaces.
    pub breaking_contract: bool,
    /// A release file may change an environment's protection and trust
    /// policy (the caller is an admin).
    pub environment_settings: bool,
    /// The candidate may serve without the evidence the environment's
    /// pipeline asks for (audited with what lacked).
    pub missing_evidence: bool,
}

/// What the release gates found: the permission and contract diffs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseChecks {
    pub permissions: Option<PermissionChange>,
    pub contracts: Option<ContractChanges>,
}

/// An environment's policy, who set it and when (none: never set).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    pub environment: String,
    pub policy: Policy,
    pub updated_at: Option<i64>,
    pub updated_by: Option<String>,
}

/// An attestation attached to a version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attached {
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// The OCI referrer manifest that points at the artifact.
    pub referrer: String,
    pub keyid: String,
}

/// The attestations of a version, each with its envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttestationList {
    pub attestations: Vec<AttestationView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttestationView {
    pub referrer: String,
    pub envelope_digest: String,
    pub keyid: Option<String>,
    pub created_at: i64,
    pub actor: String,
    pub envelope: Envelope,
}

/// What `verify` found: the artifact's blobs, each attestation, the keys
/// asked about, and the environment's policy verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub function: String,
    pub version: u64,
    pub digest: String,
    /// Every part below is ok.
    pub ok: bool,
    pub artifact: Check,
    pub attestations: Vec<EnvelopeReport>,
    /// Present when keys were given: whether one of them signed a good
    /// provenance about this artifact.
    pub keys: Option<KeysCheck>,
    pub policy: PolicyVerdict,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeysCheck {
    pub ok: bool,
    pub keyids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyVerdict {
    pub environment: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub checks: Vec<String>,
}

/// Largest envelope accepted (a provenance with a big Cargo.lock is ~100 KB).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// Signatures per envelope and attestations per artifact: each is tried on
/// every policy check, under the deploy lock.
pub const MAX_SIGNATURES: usize = 8;
pub const MAX_ATTESTATIONS: usize = 64;
/// Attestations one actor (token) may attach to one version: one
/// deployer's junk cannot take the slots of the real provenance.
pub const MAX_ATTESTATIONS_PER_ACTOR: usize = 8;

/// Attestations, policies, `verify` and the permission gate, built from
/// the state and artifact ports and the catalog's verified reads. The
/// deploy engine asks it before any route names a version.
pub struct TrustService {
    state: Arc<dyn StateStore>,
    oci: Arc<dyn ArtifactStore>,
    catalog: Arc<Catalog>,
    /// Which environments' widenings need an admin.
    protection: Arc<Protection>,
    /// The server's own public key: its verification summaries are
    /// checked against it by `verify`.
    server_public: Option<PublicKey>,
}

impl TrustService {
    /// Checks the server's own summaries against `key` in `verify`.
    pub fn with_server_key(mut self, key: PublicKey) -> Self {
        self.server_public = Some(key);
        self
    }

    pub fn new(
        state: Arc<dyn StateStore>,
        oci: Arc<dyn ArtifactStore>,
        catalog: Arc<Catalog>,
        protection: Arc<Protection>,
    ) -> Self {
        Self {
            state,
            oci,
            catalog,
            protection,
            server_public: None,
        }
    }

    /// The policy of an environment (empty when none was set).
    pub async fn policy(&self, environment: &str) -> ControlResult<Policy> {
        Ok(match self.state.policy(environment).await? {
            Some((p, _, _)) => serde_json::from_value(p).map_err(ControlError::internal)?,
            None => Policy::default(),
        })
    }

    /// Replaces an environment's policy. Trusted keys arrive as PEM and are
    /// stored with their key ids; required fields are checked for syntax.
    pub async fn set_policy(
        &self,
        environment: &str,
        require_signature: bool,
        trusted_keys: &[String],
        required_provenance: BTreeMap<String, Option<String>>,
        actor: &str,
    ) -> ControlResult<PolicyView> {
        lookup::environment_must_exist(&*self.state, environment).await?;
        let policy = build_policy(require_signature, trusted_keys, required_provenance)?;
        let value = serde_json::to_value(&policy).map_err(ControlError::internal)?;
        self.state.set_policy(environment, &value, actor).await?;
        self.policy_view(environment).await
    }

    /// Puts back a policy read before (its keys as they were stored).
    pub(crate) async fn restore_policy(
        &self,
        environment: &str,
        policy: &Policy,
        actor: &str,
    ) -> ControlResult<()> {
        let value = serde_json::to_value(policy).map_err(ControlError::internal)?;
        self.state.set_policy(environment, &value, actor).await?;
        Ok(())
    }

    pub async fn policy_view(&self, environment: &str) -> ControlResult<PolicyView> {
        let (policy, updated_at, updated_by) = match self.state.policy(environment).await? {
            Some((p, at, by)) => (
                serde_json::from_value(p).map_err(ControlError::internal)?,
                Some(at),
                Some(by),
            ),
            None => (Policy::default(), None, None),
        };
        Ok(PolicyView {
            environment: environment.to_owned(),
            policy,
            updated_at,
            updated_by,
        })
    }

    /// The envelopes attached to an artifact, each read back from the
    /// artifact store through its digest (a damaged blob is refused).
    pub(crate) async fn envelopes(
        &self,
        subject: &str,
    ) -> ControlResult<Vec<(AttestationRecord, Envelope)>> {
        let mut out = Vec::new();
        for rec in self.state.attestations(subject).await? {
            let digest = Digest::parse(&rec.envelope).map_err(ControlError::internal)?;
            let oci = self.oci.clone();
            let bytes = tokio::task::spawn_blocking(move || oci.read_blob(&digest))
                .await
                .map_err(ControlError::internal)??;
            let envelope = Envelope::from_json(&bytes).map_err(ControlError::internal)?;
            out.push((rec, envelope));
        }
        Ok(out)
    }

    /// The source and commit an artifact's SLSA provenance names (the
    /// first provenance statement attached; its signature is what `seal
    /// verify` and the policy check, not this).
    pub(crate) async fn provenance(
        &self,
        subject: &str,
    ) -> ControlResult<(Option<String>, Option<String>)> {
        for (_, envelope) in self.envelopes(subject).await? {
            let Ok(statement) = envelope.statement() else {
                continue;
            };
            if statement.get("predicateType").and_then(|t| t.as_str())
                != Some(seal_trust::SLSA_PROVENANCE_V1)
            {
                continue;
            }
            let field = |name: &str| {
                statement
                    .pointer(&format!(
                        "/predicate/buildDefinition/externalParameters/{name}"
                    ))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            return Ok((field("source"), field("commit")));
        }
        Ok((None, None))
    }

    async fn envelope_list(&self, subject: &str) -> ControlResult<Vec<Envelope>> {
        Ok(self
            .envelopes(subject)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// Checks a version against an environment's policy. `Ok` carries the
    /// lines saying what was checked; a refusal is a 403 with the exact
    /// reason.
    pub(crate) async fn check_policy(
        &self,
        v: &VersionRecord,
        env: &str,
    ) -> ControlResult<Vec<String>> {
        let policy = self.policy(env).await?;
        self.check_policy_with(v, env, &policy).await
    }

    /// [`Self::check_policy`] against a given policy (one a release file
    /// is about to set).
    pub(crate) async fn check_policy_with(
        &self,
        v: &VersionRecord,
        env: &str,
        policy: &Policy,
    ) -> ControlResult<Vec<String>> {
        if policy.is_empty() {
            return Ok(vec![format!("policy: {env} has none")]);
        }
        let subject = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let envelopes = self.envelope_list(&v.digest).await?;
        match seal_trust::evaluate(policy, env, &subject, &envelopes) {
            Ok(verdict) => Ok(verdict.checks),
            Err(e) => Err(ControlError::PolicyRefused(format!(
                "{}@{} refused by {env}'s policy: {}",
                v.function,
                v.version,
                refusal(&e)
            ))),
        }
    }

    /// Attaches a signed attestation to a version: the envelope must parse
    /// and its statement must be about this artifact. Signatures are judged
    /// later, against the policy of wherever the version is deployed.
    pub async fn attach_attestation(
        &self,
        function: &str,
        version: u64,
        body: &[u8],
        actor: &str,
    ) -> ControlResult<Attached> {
        let v = lookup::version_must_exist(&*self.state, function, version).await?;
        if body.len() > MAX_ENVELOPE_BYTES {
            return Err(ControlError::TooLarge(format!(
                "the envelope is {} bytes; the limit is {MAX_ENVELOPE_BYTES}",
                body.len()
            )));
        }
        let envelope = Envelope::from_json(body)
            .map_err(|e| ControlError::bad_request(format!("invalid DSSE envelope: {e}")))?;
        let statement = envelope
            .statement()
            .map_err(|e| ControlError::bad_request(format!("invalid attestation: {e}")))?;
        let subject = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let about: Vec<String> = statement["subject"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["digest"]["sha256"].as_str())
            .map(|h| format!("sha256:{h}"))
            .collect();
        if !about.contains(&v.digest) {
            let claimed = about.first().cloned().unwrap_or_else(|| "nothing".into());
            return Err(ControlError::Artifact {
                code: "subject_mismatch",
                message: format!(
                    "the signed statement is about {claimed}, not {function}@{version} ({})",
                    v.digest
                ),
            });
        }
        let Some(first) = envelope.signatures.first() else {
            return Err(ControlError::bad_request("the envelope has no signature"));
        };
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(ControlError::bad_request(format!(
                "the envelope has {} signatures; the limit is {MAX_SIGNATURES}",
                envelope.signatures.len()
            )));
        }
        let existing = self.state.attestations(&v.digest).await?;
        // The server's own verification summaries are not one user's junk.
        if actor != crate::verify::VERIFIER
            && existing.iter().filter(|a| a.actor == actor).count() >= MAX_ATTESTATIONS_PER_ACTOR
        {
            return Err(ControlError::conflict(format!(
                "{actor} has already attached {MAX_ATTESTATIONS_PER_ACTOR} attestations to {function}@{version}, the limit per actor"
            )));
        }
        // Nor do they take users' slots: the server keeps only its latest
        // summary of each kind (verify.rs), so its own are bounded apart.
        if actor != crate::verify::VERIFIER
            && existing
                .iter()
                .filter(|a| a.actor != crate::verify::VERIFIER)
                .count()
                >= MAX_ATTESTATIONS
        {
            return Err(ControlError::conflict(format!(
                "{function}@{version} already has {MAX_ATTESTATIONS} attestations, the limit"
            )));
        }
        let keyid = first.keyid.clone();
        // Store the envelope and its referrer manifest as OCI blobs, and
        // list the referrer next to the artifact (index.json, or the
        // registry's referrers).
        let oci = self.oci.clone();
        let bytes = envelope.to_json();
        // (In one blocking call: on a registry, listing is a request too.)
        let (referrer, envelope_digest) = {
            let subject = subject.clone();
            let keyid = keyid.clone();
            let subject_digest = v.digest.clone();
            let function = function.to_owned();
            tokio::task::spawn_blocking(move || -> ControlResult<(Digest, Digest)> {
                let manifest_size = oci.read_blob(&subject)?.len() as u64;
                let env_digest = oci.put_blob(&bytes)?;
                oci.put_blob(seal_trust::EMPTY_CONFIG)?;
                let manifest = seal_trust::referrer_manifest(
                    &subject,
                    manifest_size,
                    &env_digest,
                    bytes.len() as u64,
                    &keyid,
                )
                .map_err(ControlError::internal)?;
                let referrer = oci.put_blob(&manifest)?;
                oci.add_manifest(IndexEntry {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: referrer.clone(),
                    size: manifest.len() as u64,
                    annotations: BTreeMap::from([
                        (seal_oci::ANNOTATION_SUBJECT.to_owned(), subject_digest),
                        (seal_oci::ANNOTATION_FUNCTION.to_owned(), function),
                    ]),
                })?;
                Ok((referrer, env_digest))
            })
            .await
            .map_err(ControlError::internal)??
        };
        self.state
            .add_attestation(
                &AttestationRecord {
                    subject: v.digest.clone(),
                    referrer: referrer.to_string(),
                    envelope: envelope_digest.to_string(),
                    keyid: Some(keyid.clone()),
                    created_at: now_ms(),
                    actor: actor.to_owned(),
                },
                &format!("{function}@{version}"),
            )
            .await?;
        Ok(Attached {
            function: function.to_owned(),
            version,
            digest: v.digest,
            referrer: referrer.to_string(),
            keyid,
        })
    }

    /// An admin's removal of one attestation (junk that fills a version's
    /// slots, or a statement withdrawn): unlisted from the artifact store,
    /// then out of the index with its audit entry, so a failure between the
    /// two leaves the index row and a retry finishes the job. The next
    /// policy check no longer sees it.
    pub async fn remove_attestation(
        &self,
        function: &str,
        version: u64,
        referrer: &str,
        actor: &str,
    ) -> ControlResult<()> {
        let v = lookup::version_must_exist(&*self.state, function, version).await?;
        let digest = Digest::parse(referrer).map_err(|e| {
            ControlError::bad_request(format!("invalid referrer digest {referrer:?}: {e}"))
        })?;
        let subject = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let indexed = self
            .state
            .attestations(&v.digest)
            .await?
            .iter()
            .any(|a| a.referrer == digest.as_str());
        let oci = self.oci.clone();
        let unlisted = {
            let digest = digest.clone();
            tokio::task::spawn_blocking(move || -> ControlResult<bool> {
                // Only a referrer of this very artifact is unlisted.
                if !oci.referrers(&subject)?.iter().any(|e| e.digest == digest) {
                    return Ok(false);
                }
                Ok(oci.remove_manifest(&digest)?)
            })
            .await
            .map_err(ControlError::internal)??
        };
        let removed = indexed
            && self
                .state
                .remove_attestation(
                    &v.digest,
                    digest.as_str(),
                    &format!("{function}@{version}"),
                    actor,
                )
                .await?;
        if !removed && !unlisted {
            return Err(ControlError::NotFound(format!(
                "{function}@{version} has no attestation {referrer}"
            )));
        }
        Ok(())
    }

    pub async fn list_attestations(
        &self,
        function: &str,
        version: u64,
    ) -> ControlResult<AttestationList> {
        let v = lookup::version_must_exist(&*self.state, function, version).await?;
        let attestations = self
            .envelopes(&v.digest)
            .await?
            .into_iter()
            .map(|(r, envelope)| AttestationView {
                referrer: r.referrer,
                envelope_digest: r.envelope,
                keyid: r.keyid,
                created_at: r.created_at,
                actor: r.actor,
                envelope,
            })
            .collect();
        Ok(AttestationList { attestations })
    }

    /// `seal verify`: the artifact's blobs re-hashed, every attestation
    /// checked against the given keys and the environment's trusted keys,
    /// and the environment's policy verdict.
    pub async fn verify_version(
        &self,
        function: &str,
        version: u64,
        environment: Option<&str>,
        keys: &[String],
    ) -> ControlResult<VerifyReport> {
        let v = lookup::version_must_exist(&*self.state, function, version).await?;
        let env = environment
            .unwrap_or(self.protection.default_environment())
            .to_owned();
        let mut given = Vec::new();
        for pem in keys {
            given.push(
                PublicKey::from_pem(pem)
                    .map_err(|e| ControlError::bad_request(format!("key: {e}")))?,
            );
        }
        let subject = Digest::parse(&v.digest).map_err(ControlError::internal)?;
        let artifact = match self.verified_artifact(&subject).await {
            Ok(()) => Check {
                ok: true,
                error: None,
            },
            Err(e) => Check {
                ok: false,
                error: Some(e.public_message()),
            },
        };
        let policy = self.policy(&env).await?;
        let mut all_keys = given.clone();
        all_keys.extend(
            policy
                .trusted_keys
                .iter()
                .filter_map(|k| k.public_key().ok()),
        );
        // The server's own summaries (a passed verification) are checked
        // against its key.
        if let Some(k) = &self.server_public {
            all_keys.push(k.clone());
        }
        let envelopes = self.envelope_list(&v.digest).await?;
        let reports = seal_trust::inspect(&subject, &envelopes, &all_keys);
        let verdict = match seal_trust::evaluate(&policy, &env, &subject, &envelopes) {
            Ok(v) => PolicyVerdict {
                environment: env,
                ok: true,
                reason: None,
                checks: v.checks,
            },
            Err(e) => PolicyVerdict {
                environment: env,
                ok: false,
                reason: Some(refusal(&e)),
                checks: Vec::new(),
            },
        };
        let keys_ok = given.is_empty()
            || reports.iter().any(|r| {
                r.signature == "ok"
                    && r.subject_matches
                    && r.provenance_errors.is_empty()
                    && given.iter().any(|k| k.keyid() == r.keyid)
            });
        Ok(VerifyReport {
            function: function.to_owned(),
            version,
            ok: artifact.ok && verdict.ok && keys_ok,
            digest: v.digest,
            artifact,
            attestations: reports,
            keys: (!given.is_empty()).then(|| KeysCheck {
                ok: keys_ok,
                keyids: given.iter().map(|k| k.keyid().to_owned()).collect(),
            }),
            policy: verdict,
        })
    }

    /// The manifest of the version serving the route now (the heaviest
    /// weight), and its number; none when nothing serves there yet.
    async fn serving_manifest(
        &self,
        env: &str,
        function: &str,
    ) -> ControlResult<Option<(u64, SealManifest)>> {
        let Some(route) = self.state.route(env, function).await? else {
            return Ok(None);
        };
        let Some(w) = route.weights.iter().max_by_key(|w| w.weight) else {
            return Ok(None);
        };
        match self.state.version(function, w.version).await? {
            Some(v) => Ok(Some((v.version, manifest_of(&v)?))),
            None => Ok(None),
        }
    }

    /// What a candidate may do that the version serving the route now may
    /// not, and that version. When nothing serves there yet, the candidate
    /// is compared with itself without outbound hosts and queues: a first
    /// deploy that reaches the network or publishes events is a widening
    /// too (config keys only read
    /// the environment's own settings; memory and timeout are bounded by
    /// the server).
    pub(crate) async fn permission_diff(
        &self,
        env: &str,
        candidate: &VersionRecord,
    ) -> ControlResult<(Option<u64>, PermissionDiff)> {
        let new = manifest_of(candidate)?;
        Ok(
            match self.serving_manifest(env, &candidate.function).await? {
                Some((from, current)) => (Some(from), PermissionDiff::between(&current, &new)),
                None => {
                    let mut none = new.clone();
                    none.capabilities.outbound_hosts.clear();
                    none.capabilities.queues.clear();
                    (None, PermissionDiff::between(&none, &new))
                }
            },
        )
    }

    /// The gates of a deploy on what the candidate asks and promises:
    /// its permissions ([`Self::check_permissions`]) and its event
    /// contracts ([`Self::check_contracts`]).
    pub(crate) async fn check_release(
        &self,
        env: &str,
        candidate: &VersionRecord,
        approvals: Approvals,
        actor: &str,
    ) -> ControlResult<ReleaseChecks> {
        let permissions = self
            .check_permissions(env, candidate, approvals.new_permissions, actor)
            .await?;
        let contracts = self
            .check_contracts(env, candidate, approvals.breaking_contract, actor)
            .await?;
        Ok(ReleaseChecks {
            permissions,
            contracts,
        })
    }

    /// The permission gate of a deploy: a widening in the protected
    /// environment, or outbound access to any host (`*`) in any
    /// environment, needs the admin's explicit approval. Refusals are
    /// audited. Returns the diff for the answer.
    pub(crate) async fn check_permissions(
        &self,
        env: &str,
        candidate: &VersionRecord,
        approved: bool,
        actor: &str,
    ) -> ControlResult<Option<PermissionChange>> {
        let (from, diff) = self.permission_diff(env, candidate).await?;
        if from.is_none() && diff.is_empty() {
            return Ok(None);
        }
        // Any host at all is an open proxy wherever it serves: it needs an
        // admin in every environment, not only the protected one.
        let any_host = diff.added_hosts.iter().any(|h| h == "*");
        if diff.widens && (self.protection.is_protected(env) || any_host) && !approved {
            let than = match from {
                Some(n) => format!("{}@{n}", candidate.function),
                None => "nothing (its first deploy here)".to_owned(),
            };
            let message = format!(
                "{}@{} asks for more than {than} in {env}: {}; an admin must approve it",
                candidate.function,
                candidate.version,
                diff.lines()
                    .into_iter()
                    .filter(|l| l.starts_with('+'))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = self
                .state
                .audit(NewAudit {
                    actor,
                    action: "deploy",
                    object: &format!("{env}/{}", candidate.function),
                    digest: Some(&candidate.digest),
                    outcome: "refused",
                    detail: json!({"version": candidate.version, "error": message, "permissions": diff}),
                })
                .await;
            return Err(ControlError::PermissionsWidened(message));
        }
        Ok(Some(PermissionChange {
            diff,
            from_version: from,
        }))
    }

    /// The contract gate: a candidate that removes an event type it
    /// consumed or produced, or makes a consumed schema stricter, breaks
    /// the producers or consumers of the version it replaces. In the
    /// protected environment that needs an admin's explicit approval;
    /// refusals and approvals are audited. Returns the diff for the answer
    /// (none when nothing serves yet or nothing changes).
    pub(crate) async fn check_contracts(
        &self,
        env: &str,
        candidate: &VersionRecord,
        approved: bool,
        actor: &str,
    ) -> ControlResult<Option<ContractChanges>> {
        let Some((from, current)) = self.serving_manifest(env, &candidate.function).await? else {
            return Ok(None);
        };
        let diff = ContractDiff::between(&current.events, &manifest_of(candidate)?.events);
        if diff.is_empty() {
            return Ok(None);
        }
        let object = format!("{env}/{}", candidate.function);
        if diff.breaking && self.protection.is_protected(env) {
            let breaking: Vec<String> = diff
                .lines()
                .into_iter()
                .zip(&diff.changes)
                .filter(|(_, c)| c.breaking)
                .map(|(l, _)| l)
                .collect();
            let message = format!(
                "{}@{} breaks the event contracts of {}@{from} in {env}: {}; an admin must approve it",
                candidate.function,
                candidate.version,
                candidate.function,
                breaking.join(", ")
            );
            let outcome = if approved { "approved" } else { "refused" };
            self.state
                .audit(NewAudit {
                    actor,
                    action: "breaking-contract",
                    object: &object,
                    digest: Some(&candidate.digest),
                    outcome,
                    detail: json!({"version": candidate.version, "from_version": from, "contracts": diff}),
                })
                .await?;
            if !approved {
                return Err(ControlError::ContractBroken(message));
            }
        }
        Ok(Some(ContractChanges {
            diff,
            from_version: from,
        }))
    }

    /// Re-reads an artifact's blobs, each checked against its digest.
    async fn verified_artifact(&self, digest: &Digest) -> ControlResult<()> {
        self.catalog.verified_component(digest).await.map(|_| ())
    }
}

fn manifest_of(v: &VersionRecord) -> ControlResult<SealManifest> {
    serde_json::from_value(v.manifest.clone()).map_err(ControlError::internal)
}

/// The reason of a refusal, without the error type's prefix.
fn refusal(e: &seal_trust::TrustError) -> String {
    match e {
        seal_trust::TrustError::Refused(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// A policy from trusted keys as PEM (stored with their key ids) and
/// required provenance fields, each checked.
pub(crate) fn build_policy(
    require_signature: bool,
    trusted_keys: &[String],
    required_provenance: BTreeMap<String, Option<String>>,
) -> ControlResult<Policy> {
    let mut keys = Vec::new();
    for pem in trusted_keys {
        let key = PublicKey::from_pem(pem)
            .map_err(|e| ControlError::bad_request(format!("trusted key: {e}")))?;
        keys.push(TrustedKey::from(&key));
    }
    for (field, value) in &required_provenance {
        let spec = match value {
            Some(v) => format!("{field}={v}"),
            None => field.clone(),
        };
        seal_trust::parse_requirement(&spec)
            .map_err(|e| ControlError::bad_request(e.to_string()))?;
    }
    if require_signature && keys.is_empty() {
        return Err(ControlError::bad_request(
            "require_signature needs at least one trusted key",
        ));
    }
    Ok(Policy {
        require_signature,
        trusted_keys: keys,
        required_provenance,
    })
}
