//! Desired state in files: the release file (what each environment
//! should run), and what `apply`, `diff` and `export` answer.
//!
//! A release file is TOML; its JSON Schema is `schemas/release.schema.json`.
//! A field left out is not managed by the file: `config` absent leaves
//! the config alone, `config = {}` removes every key.

use crate::rollout::RolloutSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A release file: the environments it speaks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    #[serde(default)]
    pub environments: BTreeMap<String, EnvironmentSpec>,
}

/// What one environment should run, and its own settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// Whether the environment is protected (changed by an admin only).
    /// Absent: not managed by the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected: Option<bool>,
    /// The environment's trust policy, the whole of it (changed by an
    /// admin only). Absent: not managed by the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySpec>,
    /// The queues that must exist, by name. Apply makes the missing ones
    /// and never deletes one (its events would go with it): a queue the
    /// file does not list is reported by `diff`. Absent: not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<BTreeMap<String, QueueSpec>>,
    /// An `http://` URL told (a JSON POST) when the environment drifts
    /// from this file and when it matches it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSpec>,
}

/// An environment's trust policy in a release file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Deploys need a provenance signed by one of `trusted_keys`.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub require_signature: bool,
    /// Public keys, SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// Provenance fields a deploy needs, as `seal policy set
    /// --require-provenance` takes them: `source=git+https://…` (exact
    /// value) or `commit` (present).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_provenance: Vec<String>,
}

/// A queue in a release file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The deduplication window (default ten minutes), fixed when the
    /// queue is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<u64>,
}

/// What one function should serve in an environment and how a change
/// rolls out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// The version to serve (`function@N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The artifact digest to serve; with `version`, both must name the
    /// same artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Functions of the same environment changed before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// How a change of version rolls out (default: all at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Config values, in clear: the whole set (keys not listed are
    /// removed). Absent: the config is not managed by the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
    /// The names of the secrets the function expects: each must be set
    /// (with `seal secrets set`), others are removed. Never values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretNames>,
    /// The function's triggers in the environment, by name: the whole
    /// set (triggers not listed are deleted). Absent: not managed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<BTreeMap<String, crate::events::TriggerSpec>>,
}

/// Secret names. A table of names to values is refused with a message
/// that names no value.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SecretNames(pub Vec<String>);

impl<'de> Deserialize<'de> for SecretNames {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = SecretNames;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of secret names")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(SecretNames(names))
            }
            // Never `invalid type: string "…"`: the string may be a value.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Err(E::custom(
                    "secrets is a list of names (secrets = [\"API_KEY\"]), not a string: a release file never holds a secret's value; set it with `seal secrets set`",
                ))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                _: A,
            ) -> Result<Self::Value, A::Error> {
                Err(serde::de::Error::custom(
                    "secrets are names only (secrets = [\"API_KEY\"]): a release file never holds a secret's value; set it with `seal secrets set`",
                ))
            }
        }
        d.deserialize_any(Names)
    }
}

/// `POST /v1/apply` and `POST /v1/diff`: the file's text (parsed and
/// checked by the server, so every client gets the same errors) and where
/// it came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRequest {
    /// The release file, TOML.
    pub file: String,
    /// Only compute and return the plan.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub plan: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FileSource>,
    /// Admin: versions may ask for more than the ones they replace.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub allow_new_permissions: bool,
    /// Admin: versions may break the event contracts of the ones they
    /// replace.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub allow_breaking_contract: bool,
    /// Admin: versions may serve without the evidence an environment's
    /// pipeline asks for.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub allow_missing_evidence: bool,
}

/// Where a release file came from, when it is in a git work tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The file differs from the commit.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub uncommitted: bool,
}

/// One change the plan makes, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// The environment's protection set (admin).
    Protection { protected: bool },
    /// The environment's trust policy replaced (admin): trusted keys by
    /// key id.
    Policy {
        require_signature: bool,
        trusted_keys: Vec<String>,
        require_provenance: Vec<String>,
    },
    /// Queues made.
    Queues { create: Vec<String> },
    /// Config values set (keys and values: config is not secret) and
    /// removed.
    Config {
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    },
    /// Secrets removed (by name).
    UnsetSecrets { keys: Vec<String> },
    /// Triggers created, changed (deleted and made again) and deleted, by
    /// name, after the route.
    Triggers {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        create: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replace: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        delete: Vec<String>,
    },
    /// The route moves to a version.
    Deploy {
        /// The version serving now (none: nothing serves yet).
        from: Option<u64>,
        to: u64,
        digest: String,
        strategy: crate::rollout::Strategy,
        /// The candidate's weight at each step (progressive only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<u32>,
        /// The gates that verify each step, as `name <= threshold`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gates: Vec<String>,
        /// The hooks that run, by name and phase.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hooks: Vec<String>,
        /// Why the strategy is not the file's (e.g. the first version of
        /// a route goes all at once).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
}

/// The changes of one function, or of the environment itself (then
/// `function` is empty and the step comes first in its environment), a
/// step of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub environment: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// Steps of one wave run side by side, their gates judged together:
    /// one that fails stops the others. A wave starts when the one before
    /// it has ended; a function's wave is after every wave of the
    /// functions it names in `after`.
    #[serde(default)]
    pub wave: u32,
    pub changes: Vec<Change>,
}

/// `seal apply --plan`: every change the file makes, in the order apply
/// carries them out. Empty when the environments already match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyPlan {
    /// sha256 of the file's bytes.
    pub file_digest: String,
    pub environments: Vec<String>,
    pub steps: Vec<PlanStep>,
}

impl ApplyPlan {
    /// Whether the plan changes an environment's protection or policy
    /// (which needs an admin).
    pub fn changes_environment_settings(&self) -> bool {
        self.steps
            .iter()
            .flat_map(|s| &s.changes)
            .any(|c| matches!(c, Change::Protection { .. } | Change::Policy { .. }))
    }
}

/// How one step of an apply went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub environment: String,
    /// Empty for the environment's own settings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// `applied`, `failed`, `rolled_back` (undone because another step of
    /// the same apply failed, or stopped because one beside it in its
    /// wave did), `not_started`, `interrupted` (an environment step a
    /// restart cut: its settings may be partly applied).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<u64>,
    /// The version the function served before this step moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The trust policy an environment step replaced, written before the
    /// step runs: a release that fails (or a restart interrupts) puts it
    /// back, so the versions it moved may return to what served before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_policy: Option<serde_json::Value>,
}

/// `POST /v1/apply`: the plan, and (unless only planned) how each step
/// went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApplyAnswer {
    /// The release this apply is (none when only planned or nothing
    /// changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<u64>,
    pub plan: ApplyPlan,
    /// The plan was carried out (false with `--plan`).
    pub applied: bool,
    /// Every step succeeded (or there was nothing to do).
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<StepOutcome>,
}

/// One difference between a file and what serves, with why it is so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    pub environment: String,
    /// Empty for the environment's own settings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// `version`, `config.KEY`, `secrets.KEY`, `triggers.NAME`; for the
    /// environment, `protected`, `policy`, `queues.NAME`.
    pub field: String,
    /// What the file asks for (`null`: absent).
    pub desired: Option<String>,
    /// What is there (`null`: absent).
    pub actual: Option<String>,
    /// Who or what made it so, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// `POST /v1/diff`: whether the environments match the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffAnswer {
    pub file_digest: String,
    pub in_sync: bool,
    pub differences: Vec<Difference>,
}

/// `GET /v1/export`: today's state as a release file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exported {
    pub file: ReleaseFile,
}

/// A version held in an environment: a deployment rolled it back (a gate,
/// a failed hook, a person's abort or `seal rollback`), so an apply will
/// not deploy it there again until the hold is released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub environment: String,
    pub function: String,
    pub version: u64,
    /// The deployment that rolled it back.
    pub deployment: u64,
    /// When it was rolled back.
    pub at: i64,
    /// Who rolled it back (`seal` for a gate or a hook).
    pub by: String,
    /// Why, with the gate's numbers when a gate did it.
    pub reason: String,
}

/// `GET /v1/holds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holds {
    pub holds: Vec<Hold>,
}

/// `POST /v1/holds/release`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHold {
    pub function: String,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// One deployment in a function's change log: where the version came
/// from (its commit, by its provenance), how it was released (strategy,
/// who, which apply) and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangelogEntry {
    pub deployment: u64,
    pub environment: String,
    pub at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    pub kind: crate::DeploymentKind,
    pub strategy: crate::rollout::Strategy,
    pub actor: String,
    /// The version the deployment moved to (a progressive one's
    /// candidate).
    pub version: u64,
    pub digest: String,
    /// The version that served before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// From the version's SLSA provenance, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The deployment's reason (an apply names its file and commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `succeeded`, `rolled_back`, `aborted`, or still running.
    pub outcome: crate::DeploymentState,
    /// Why it was rolled back or aborted, with the gate's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The version this deployment rolled back is still held.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub held: bool,
}

/// `GET /v1/changelog`: a function's deployments, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changelog {
    pub function: String,
    pub entries: Vec<ChangelogEntry>,
}

/// The last drift check of one environment against the release file last
/// applied to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftReport {
    pub environment: String,
    /// sha256 of the file as it was applied.
    pub file_digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub applied_at: i64,
    pub applied_by: String,
    pub checked_at: i64,
    /// Empty: the environment matches the file.
    pub differences: Vec<Difference>,
    /// The check could not be made (a function or version the file names
    /// is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/drift`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub environments: Vec<DriftReport>,
}

/// One apply of a release file: one id, one state, every step's outcome.
/// `running` while it is carried out (one at a time, across every node
/// of a store); then `succeeded`, `failed` (a step failed and what the
/// release had moved went back) or `rolled_back` (interrupted by a
/// restart, and rolled back as a whole when the server came back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub id: u64,
    pub file_digest: String,
    pub environments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FileSource>,
    pub actor: String,
    /// The node carrying it out.
    pub node: String,
    pub state: String,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<i64>,
    pub plan: ApplyPlan,
    pub outcomes: Vec<StepOutcome>,
}

/// `GET /v1/releases`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Releases {
    pub releases: Vec<ReleaseRecord>,
}
