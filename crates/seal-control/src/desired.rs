//! Desired state in files: a release file says what each environment
//! should run (version or digest, how a change rolls out, config, the
//! names of the secrets it expects); `export` writes today's state as one,
//! `plan` computes the ordered changes a file makes, `apply` carries them
//! out through the same deploy and settings services the API uses, and
//! `diff` says where an environment differs from a file and why.
//!
//! Everything is compared on Seal's own model with defaults filled: a
//! field left out of a file is not managed by it, so it is never a
//! difference. A file is parsed here, on the server, so every client gets
//! the same errors; an error names the line and the field and never
//! repeats a value (a secret written where a name belongs stays out of
//! logs and answers).

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use crate::rollout::Progressive;
use crate::rollout::plan::{Planning, VersionRef};
use crate::trust::Approvals;
use seal_api_types::desired::{
    ApplyAnswer, ApplyPlan, Change, DiffAnswer, Difference, EnvironmentSpec, FileSource,
    FunctionSpec, PlanStep, ReleaseFile, ReleaseRecord, SecretNames, StepOutcome,
};
use seal_api_types::rollout::Strategy;
use seal_state::{DeploymentKind, DeploymentState, NewAudit, VersionRecord};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The largest release file accepted.
pub const MAX_FILE_BYTES: usize = 512 * 1024;

/// How often an apply looks at a progressive deployment it waits for.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// `sha256:<hex>` of a file's bytes.
pub fn file_digest(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Parses and checks a release file: its shape (every name valid, a
/// version or digest per function, `after` naming functions of the same
/// environment, no cycle, secrets by name only) before anything is read
/// from the store.
pub fn parse(text: &str) -> ControlResult<ReleaseFile> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ControlError::TooLarge(format!(
            "the release file is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let file: ReleaseFile = toml::from_str(text).map_err(|e| {
        // The message and position only: toml's own rendering quotes the
        // line, which may hold a secret written where a name belongs.
        let at = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line}, column {column}: ")
            })
            .unwrap_or_default();
        ControlError::bad_request(format!(
            "the release file does not follow its schema: {at}{}",
            e.message().trim()
        ))
    })?;
    if file.environments.is_empty() {
        return Err(ControlError::bad_request(
            "the release file names no environment: add [environments.NAME.functions.FUNCTION] tables",
        ));
    }
    for (env, spec) in &file.environments {
        seal_artifact::validate_environment_name(env)
            .map_err(|e| ControlError::bad_request(format!("environments.{env}: {e}")))?;
        check_environment(env, spec)?;
        for (name, f) in &spec.functions {
            let at = format!("environments.{env}.functions.{name}");
            seal_artifact::validate_function_name(name)
                .map_err(|e| ControlError::bad_request(format!("{at}: {e}")))?;
            check_function(&at, name, f, &spec.functions)?;
        }
        order(env, &spec.functions)?;
    }
    Ok(file)
}

/// The environment's own settings: queue names, the policy's
/// requirements (keys are read when planning), the notification URL.
fn check_environment(env: &str, spec: &EnvironmentSpec) -> ControlResult<()> {
    let at = format!("environments.{env}");
    for name in spec.queues.iter().flat_map(|q| q.keys()) {
        crate::events::check_name("queue", name).map_err(|e| {
            ControlError::bad_request(format!("{at}.queues: {}", e.public_message()))
        })?;
    }
    if let Some(policy) = &spec.policy {
        for r in &policy.require_provenance {
            seal_trust::parse_requirement(r).map_err(|e| {
                ControlError::bad_request(format!("{at}.policy.require_provenance: {e}"))
            })?;
        }
        if policy.require_signature && policy.trusted_keys.is_empty() {
            return Err(ControlError::bad_request(format!(
                "{at}.policy: require_signature needs at least one trusted key"
            )));
        }
    }
    if let Some(url) = &spec.notify
        && !url.starts_with("http://")
    {
        return Err(ControlError::bad_request(format!(
            "{at}.notify must be an http:// URL (https is not supported yet; use a local relay), got {url:?}"
        )));
    }
    Ok(())
}

fn check_function(
    at: &str,
    name: &str,
    f: &FunctionSpec,
    all: &BTreeMap<String, FunctionSpec>,
) -> ControlResult<()> {
    if f.version.is_none() && f.digest.is_none() {
        return Err(ControlError::bad_request(format!(
            "{at}: give the version (version = N) or the artifact digest (digest = \"sha256:…\") to serve"
        )));
    }
    if f.version == Some(0) {
        return Err(ControlError::bad_request(format!(
            "{at}.version: versions start at 1"
        )));
    }
    if let Some(d) = &f.digest {
        seal_artifact::Digest::parse(d)
            .map_err(|e| ControlError::bad_request(format!("{at}.digest: {e}")))?;
    }
    for a in &f.after {
        if a == name {
            return Err(ControlError::bad_request(format!(
                "{at}.after: a function cannot come after itself"
            )));
        }
        if !all.contains_key(a) {
            return Err(ControlError::bad_request(format!(
                "{at}.after: {a:?} is not a function of this environment in the file"
            )));
        }
    }
    if let Some(spec) = &f.rollout
        && let Some(e) = spec.all_at_once_conflict()
    {
        return Err(ControlError::bad_request(format!("{at}.rollout: {e}")));
    }
    if let Some(config) = &f.config {
        for key in config.keys() {
            seal_artifact::capabilities::validate_config_key(key)
                .map_err(|e| ControlError::bad_request(format!("{at}.config: {e}")))?;
        }
    }
    if let Some(SecretNames(names)) = &f.secrets {
        let mut seen = BTreeSet::new();
        for (i, key) in names.iter().enumerate() {
            // Never echoed: an entry that is not a name may be a value.
            if seal_artifact::capabilities::validate_config_key(key).is_err() {
                return Err(ControlError::bad_request(format!(
                    "{at}.secrets: entry {} is not a secret name (names are letters, digits and '_', not starting with SEAL_); a release file holds names only, set values with `seal secrets set`",
                    i + 1
                )));
            }
            if !seen.insert(key) {
                return Err(ControlError::bad_request(format!(
                    "{at}.secrets: {key} is listed twice"
                )));
            }
        }
        if let Some(config) = &f.config
            && let Some(k) = names.iter().find(|k| config.contains_key(*k))
        {
            return Err(ControlError::bad_request(format!(
                "{at}: {k} is both a config key and a secret"
            )));
        }
    }
    Ok(())
}

/// The functions of an environment in the order an apply changes them:
/// each after those its `after` names, otherwise by name. A cycle is
/// refused, naming it.
pub fn order(env: &str, functions: &BTreeMap<String, FunctionSpec>) -> ControlResult<Vec<String>> {
    let mut done: Vec<String> = Vec::with_capacity(functions.len());
    let mut left: BTreeSet<&str> = functions.keys().map(String::as_str).collect();
    while !left.is_empty() {
        let ready = left.iter().copied().find(|name| {
            functions[*name]
                .after
                .iter()
                .all(|a| done.iter().any(|d| d == a))
        });
        match ready {
            Some(name) => {
                left.remove(name);
                done.push(name.to_owned());
            }
            None => {
                return Err(ControlError::bad_request(format!(
                    "environments.{env}: `after` makes a cycle among {}",
                    cycle(functions, &left).join(" → ")
                )));
            }
        }
    }
    Ok(done)
}

/// One cycle among `left` (each of which waits for another of them).
fn cycle(functions: &BTreeMap<String, FunctionSpec>, left: &BTreeSet<&str>) -> Vec<String> {
    let Some(start) = left.iter().next() else {
        return Vec::new();
    };
    let mut path: Vec<&str> = vec![start];
    loop {
        let last = path[path.len() - 1];
        let Some(next) = functions[last]
            .after
            .iter()
            .map(String::as_str)
            .find(|a| left.contains(a))
        else {
            return path.iter().map(|s| (*s).to_owned()).collect();
        };
        if let Some(i) = path.iter().position(|p| *p == next) {
            let mut c: Vec<String> = path[i..].iter().map(|s| (*s).to_owned()).collect();
            c.push(next.to_owned());
            return c;
        }
        path.push(next);
    }
}

/// What an environment's own settings are, and what the file asks.
struct EnvTarget {
    environment: String,
    spec: EnvironmentSpec,
    protected: bool,
    protection: crate::protection::Source,
    policy: crate::trust::PolicyView,
    /// The policy the file asks for, its keys read.
    wanted_policy: Option<seal_trust::Policy>,
    queues: BTreeMap<String, seal_state::QueueRecord>,
}

impl EnvTarget {
    /// The file's policy when it differs from the environment's.
    fn policy_change(&self) -> Option<&seal_trust::Policy> {
        let wanted = self.wanted_policy.as_ref()?;
        let keys = |p: &seal_trust::Policy| -> BTreeSet<String> {
            p.trusted_keys.iter().map(|k| k.keyid.clone()).collect()
        };
        let have = &self.policy.policy;
        (wanted.require_signature != have.require_signature
            || wanted.required_provenance != have.required_provenance
            || keys(wanted) != keys(have))
        .then_some(wanted)
    }

    /// Queues the file names that do not exist yet.
    fn missing_queues(&self) -> Vec<String> {
        self.spec
            .queues
            .iter()
            .flat_map(|q| q.keys())
            .filter(|q| !self.queues.contains_key(*q))
            .cloned()
            .collect()
    }

    /// Queues the file names with a dedup window other than theirs:
    /// (name, the queue's, the file's).
    fn window_mismatches(&self) -> Vec<(&str, u64, u64)> {
        self.spec
            .queues
            .iter()
            .flatten()
            .filter_map(|(name, q)| {
                let want = q
                    .dedup_window_ms
                    .unwrap_or(crate::events::DEFAULT_DEDUP_WINDOW_MS);
                let have = self.queues.get(name)?.dedup_window_ms;
                (have != want).then_some((name.as_str(), have, want))
            })
            .collect()
    }

    /// A queue's window is fixed when it is made: a file that asks for
    /// another cannot be applied (but is reported by `seal diff`).
    fn check_windows(&self) -> ControlResult<()> {
        match self.window_mismatches().first() {
            Some((name, have, want)) => Err(ControlError::bad_request(format!(
                "environments.{}.queues.{name}: the queue's dedup window is {have} ms and the file asks for {want} ms; a queue's window is fixed when it is made (write {have} in the file, or delete the queue and apply again)",
                self.environment
            ))),
            None => Ok(()),
        }
    }

    fn changes(&self) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(p) = self.spec.protected
            && p != self.protected
        {
            changes.push(Change::Protection { protected: p });
        }
        if let Some(p) = self.policy_change() {
            changes.push(Change::Policy {
                require_signature: p.require_signature,
                trusted_keys: p.trusted_keys.iter().map(|k| k.keyid.clone()).collect(),
                require_provenance: requirements(p),
            });
        }
        let create = self.missing_queues();
        if !create.is_empty() {
            changes.push(Change::Queues { create });
        }
        changes
    }
}

/// A release file's required provenance fields, read.
fn required(
    at: &str,
    p: &seal_api_types::desired::PolicySpec,
) -> ControlResult<BTreeMap<String, Option<String>>> {
    let mut required = BTreeMap::new();
    for r in &p.require_provenance {
        let (k, v) = seal_trust::parse_requirement(r).map_err(|e| {
            ControlError::bad_request(format!("{at}.policy.require_provenance: {e}"))
        })?;
        required.insert(k, v);
    }
    Ok(required)
}

/// A policy's required provenance fields, as a release file writes them.
fn requirements(p: &seal_trust::Policy) -> Vec<String> {
    p.required_provenance
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect()
}

/// A policy in a few words, for a difference.
fn policy_summary(p: &seal_trust::Policy) -> String {
    if p.is_empty() {
        return "none".into();
    }
    let keys: Vec<&str> = p.trusted_keys.iter().map(|k| short(&k.keyid)).collect();
    format!(
        "require_signature={}, trusted keys [{}], require_provenance [{}]",
        p.require_signature,
        keys.join(", "),
        requirements(p).join(", ")
    )
}

/// What one function is to become, read and checked against the store.
struct Target {
    environment: String,
    function: String,
    spec: FunctionSpec,
    version: VersionRecord,
    /// The version serving now (the one with the most weight).
    serving: Option<u64>,
    weights: Vec<seal_state::WeightedVersion>,
    config: BTreeMap<String, String>,
    secrets: BTreeSet<String>,
    /// The function's triggers in the environment now.
    triggers: BTreeMap<String, seal_state::TriggerRecord>,
}

impl Control {
    /// Today's state as a release file: every routed function of `env`
    /// (default: every environment) with the version and digest it
    /// serves, its config and the names of its secrets.
    pub async fn export_release(&self, env: Option<&str>) -> ControlResult<ReleaseFile> {
        let envs = match env {
            Some(e) => {
                self.environment_must_exist(e).await?;
                vec![e.to_owned()]
            }
            None => self.state.environments().await?,
        };
        let routes = self.state.routes().await?;
        let mut file = ReleaseFile::default();
        for env in envs {
            let mut functions = BTreeMap::new();
            for r in routes.iter().filter(|r| r.environment == env) {
                let Some(main) = r.weights.iter().max_by_key(|w| w.weight) else {
                    continue;
                };
                let Some(v) = self.state.version(&r.function, main.version).await? else {
                    continue;
                };
                let view = self.settings.settings_view(&r.function, &env).await?;
                let secrets: Vec<String> = view.secrets.into_iter().map(|s| s.key).collect();
                let triggers: BTreeMap<String, seal_api_types::events::TriggerSpec> = self
                    .triggers_of(&env, &r.function)
                    .await?
                    .into_iter()
                    .map(|(name, t)| (name, t.spec))
                    .collect();
                functions.insert(
                    r.function.clone(),
                    FunctionSpec {
                        version: Some(v.version),
                        digest: Some(v.digest),
                        config: (!view.config.is_empty()).then_some(view.config),
                        secrets: (!secrets.is_empty()).then_some(SecretNames(secrets)),
                        triggers: (!triggers.is_empty()).then_some(triggers),
                        ..Default::default()
                    },
                );
            }
            let policy = self.trust.policy(&env).await?;
            let queues: BTreeMap<String, seal_api_types::desired::QueueSpec> = self
                .events
                .queues(Some(&env))
                .await?
                .into_iter()
                .map(|q| {
                    let spec = seal_api_types::desired::QueueSpec {
                        dedup_window_ms: Some(q.dedup_window_ms),
                    };
                    (q.name, spec)
                })
                .collect();
            let spec = EnvironmentSpec {
                protected: Some(self.protection_of(&env).0),
                policy: (!policy.is_empty()).then(|| seal_api_types::desired::PolicySpec {
                    require_signature: policy.require_signature,
                    trusted_keys: policy.trusted_keys.iter().map(|k| k.pem.clone()).collect(),
                    require_provenance: requirements(&policy),
                }),
                queues: (!queues.is_empty()).then_some(queues),
                notify: None,
                functions,
            };
            file.environments.insert(env, spec);
        }
        Ok(file)
    }

    /// Reads an environment's own settings and checks what the file asks
    /// of them: trusted keys that parse, queues whose window matches, a
    /// notification URL the server may call.
    async fn env_target(&self, env: &str, spec: &EnvironmentSpec) -> ControlResult<EnvTarget> {
        self.environment_must_exist(env).await?;
        let at = format!("environments.{env}");
        let wanted_policy = match &spec.policy {
            Some(p) => {
                let required = required(&at, p)?;
                Some(
                    crate::trust::build_policy(p.require_signature, &p.trusted_keys, required)
                        .map_err(|e| {
                            ControlError::bad_request(format!(
                                "{at}.policy: {}",
                                e.public_message()
                            ))
                        })?,
                )
            }
            None => None,
        };
        let queues: BTreeMap<String, seal_state::QueueRecord> = self
            .events
            .queues(Some(env))
            .await?
            .into_iter()
            .map(|q| (q.name.clone(), q))
            .collect();
        if let Some(url) = &spec.notify {
            self.outbound.check_url(&format!("{at}.notify"), url)?;
        }
        let (protected, protection) = self.protection_of(env);
        Ok(EnvTarget {
            environment: env.to_owned(),
            spec: EnvironmentSpec {
                functions: BTreeMap::new(),
                ..spec.clone()
            },
            protected,
            protection,
            policy: self.trust.policy_view(env).await?,
            wanted_policy,
            queues,
        })
    }

    /// Reads what each function of an environment serves now and checks
    /// what the file names exists: functions, versions, digests, queues
    /// of triggers (or made by the file).
    async fn function_targets(
        &self,
        env: &str,
        spec: &EnvironmentSpec,
        et: &EnvTarget,
    ) -> ControlResult<Vec<Target>> {
        let mut out = Vec::new();
        {
            for function in order(env, &spec.functions)? {
                let f = &spec.functions[&function];
                let at = format!("environments.{env}.functions.{function}");
                self.function_or_404(&function).await?;
                let version = match (f.version, &f.digest) {
                    (Some(n), digest) => {
                        let v = self.version_or_404(&function, n).await?;
                        if let Some(d) = digest
                            && *d != v.digest
                        {
                            return Err(ControlError::bad_request(format!(
                                "{at}: {function}@{n} is {}, the file says {d}",
                                v.digest
                            )));
                        }
                        v
                    }
                    (None, Some(d)) => match self.state.version_by_digest(d).await? {
                        Some(v) if v.function == function => v,
                        Some(v) => {
                            return Err(ControlError::bad_request(format!(
                                "{at}.digest: {d} is {}@{}, not a version of {function}",
                                v.function, v.version
                            )));
                        }
                        None => {
                            return Err(ControlError::not_found(format!(
                                "{at}.digest: no version has digest {d}: publish it first"
                            )));
                        }
                    },
                    (None, None) => unreachable!("checked by parse"),
                };
                let route = self.state.route(env, &function).await?;
                let weights = route.map(|r| r.weights).unwrap_or_default();
                let serving = weights.iter().max_by_key(|w| w.weight).map(|w| w.version);
                let view = self.settings.settings_view(&function, env).await?;
                let triggers = self.triggers_of(env, &function).await?;
                if let Some(wanted) = &f.triggers {
                    self.check_triggers(&at, env, &function, wanted, &et.missing_queues())
                        .await?;
                }
                out.push(Target {
                    environment: env.to_owned(),
                    function,
                    spec: f.clone(),
                    version,
                    serving,
                    weights,
                    config: view.config,
                    secrets: view.secrets.into_iter().map(|s| s.key).collect(),
                    triggers,
                });
            }
        }
        Ok(out)
    }

    /// Every environment of the file with its functions, read and checked.
    async fn targets(&self, file: &ReleaseFile) -> ControlResult<Vec<(EnvTarget, Vec<Target>)>> {
        let mut out = Vec::new();
        for (env, spec) in &file.environments {
            let et = self.env_target(env, spec).await?;
            let targets = self.function_targets(env, spec, &et).await?;
            out.push((et, targets));
        }
        Ok(out)
    }

    /// The ordered changes `file` makes, in waves: per environment, its
    /// own settings first, then its functions, each in the wave after
    /// every function it names in `after`. Refused when a function it
    /// changes has a deployment in progress, lacks a secret it expects,
    /// or would serve a held version or one the file's policy refuses.
    pub async fn plan_release(&self, text: &str) -> ControlResult<(ApplyPlan, ReleaseFile)> {
        let file = parse(text)?;
        let active = self.state.active_deployments().await?;
        let mut steps = Vec::new();
        // The first wave of the next environment.
        let mut next = 0u32;
        for (et, targets) in self.targets(&file).await? {
            let env = et.environment.clone();
            et.check_windows()?;
            let changes = et.changes();
            if !changes.is_empty() {
                steps.push(PlanStep {
                    environment: env.clone(),
                    function: String::new(),
                    wave: next,
                    changes,
                });
                next += 1;
            }
            // Each function's depth in `after` (unchanged ones count, so
            // an order through them holds).
            let mut depth: BTreeMap<String, u32> = BTreeMap::new();
            for t in &targets {
                let d = t
                    .spec
                    .after
                    .iter()
                    .filter_map(|a| depth.get(a))
                    .map(|d| d + 1)
                    .max()
                    .unwrap_or(0);
                depth.insert(t.function.clone(), d);
            }
            let mut env_steps = Vec::new();
            for t in &targets {
                let changes = self.changes(t)?;
                if changes.is_empty() {
                    continue;
                }
                if let Some(d) = active
                    .iter()
                    .find(|d| d.environment == t.environment && d.function == t.function)
                {
                    return Err(ControlError::conflict(format!(
                        "deployment {} is in progress on {} in {}: wait for it to end (or abort it), then apply",
                        d.id, t.function, t.environment
                    )));
                }
                let deploys = changes.iter().find_map(|c| match c {
                    Change::Deploy { to, .. } => Some(*to),
                    _ => None,
                });
                if let Some(to) = deploys {
                    if let Some(h) = self
                        .holds_of(&t.environment, &t.function)
                        .await?
                        .iter()
                        .find(|h| h.version == to)
                    {
                        return Err(crate::holds::refusal(h));
                    }
                    // The policy the file sets is the one the deploy meets.
                    if let Some(policy) = et.policy_change() {
                        self.trust
                            .check_policy_with(&t.version, &env, policy)
                            .await
                            .map_err(|e| {
                                ControlError::PolicyRefused(format!(
                                    "environments.{env}.functions.{}: {} (the policy this file sets)",
                                    t.function,
                                    e.public_message()
                                ))
                            })?;
                    }
                }
                env_steps.push(PlanStep {
                    environment: t.environment.clone(),
                    function: t.function.clone(),
                    wave: depth[&t.function],
                    changes,
                });
            }
            // Waves numbered from `next` with no gap (an unchanged
            // function's depth leaves none).
            let used: BTreeSet<u32> = env_steps.iter().map(|s| s.wave).collect();
            let renumber: BTreeMap<u32, u32> = used
                .iter()
                .enumerate()
                .map(|(i, w)| (*w, next + i as u32))
                .collect();
            for s in &mut env_steps {
                s.wave = renumber[&s.wave];
            }
            env_steps.sort_by_key(|s| s.wave);
            next += used.len() as u32;
            steps.extend(env_steps);
        }
        Ok((
            ApplyPlan {
                file_digest: file_digest(text),
                environments: file.environments.keys().cloned().collect(),
                steps,
            },
            file,
        ))
    }

    fn changes(&self, t: &Target) -> ControlResult<Vec<Change>> {
        let mut changes = Vec::new();
        if let Some(config) = &t.spec.config {
            let set: BTreeMap<String, String> = config
                .iter()
                .filter(|(k, v)| t.config.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let unset: Vec<String> = t
                .config
                .keys()
                .filter(|k| !config.contains_key(*k))
                .cloned()
                .collect();
            if !set.is_empty() || !unset.is_empty() {
                changes.push(Change::Config { set, unset });
            }
        }
        if let Some(SecretNames(names)) = &t.spec.secrets {
            let missing: Vec<&str> = names
                .iter()
                .filter(|k| !t.secrets.contains(*k))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                return Err(ControlError::bad_request(format!(
                    "{} in {} expects secrets that are not set: {}; set them with `seal secrets set` (a release file names secrets, never holds them)",
                    t.function,
                    t.environment,
                    missing.join(", ")
                )));
            }
            let keys: Vec<String> = t
                .secrets
                .iter()
                .filter(|k| !names.contains(k))
                .cloned()
                .collect();
            if !keys.is_empty() {
                changes.push(Change::UnsetSecrets { keys });
            }
        }
        let to = t.version.version;
        let settled = t.weights.len() == 1;
        if t.serving != Some(to) || !settled {
            let spec = t.spec.rollout.clone();
            let progressive = spec
                .as_ref()
                .is_some_and(|s| s.strategy != Strategy::AllAtOnce);
            let mut change = Change::Deploy {
                from: t.serving,
                to,
                digest: t.version.digest.clone(),
                strategy: Strategy::AllAtOnce,
                steps: Vec::new(),
                gates: Vec::new(),
                hooks: Vec::new(),
                note: None,
            };
            if let (Some(spec), true) = (spec, progressive) {
                match t.serving {
                    Some(from) if from != to => {
                        let plan = spec.plan(
                            &t.function,
                            &t.environment,
                            VersionRef {
                                version: from,
                                digest: String::new(),
                            },
                            VersionRef {
                                version: to,
                                digest: t.version.digest.clone(),
                            },
                            t.weights.clone(),
                        )?;
                        if let Change::Deploy {
                            strategy,
                            steps,
                            gates,
                            hooks,
                            ..
                        } = &mut change
                        {
                            *strategy = plan.strategy;
                            *steps = plan.steps.iter().map(|s| s.weight).collect();
                            *gates = plan
                                .gates
                                .iter()
                                .map(|g| format!("{} {}", g.gate, g.threshold))
                                .collect();
                            *hooks = plan
                                .hooks
                                .iter()
                                .map(|h| format!("{} ({})", h.name, h.phase.as_str()))
                                .collect();
                        }
                    }
                    Some(_) => {
                        if let Change::Deploy { note, .. } = &mut change {
                            *note = Some(
                                "the route is split: it goes back to this version alone at once"
                                    .into(),
                            );
                        }
                    }
                    None => {
                        if let Change::Deploy { note, .. } = &mut change {
                            *note = Some(format!(
                                "nothing serves {} in {} yet: the first version goes all at once",
                                t.function, t.environment
                            ));
                        }
                    }
                }
            }
            changes.push(change);
        }
        if let Some(wanted) = &t.spec.triggers {
            let mut create = Vec::new();
            let mut replace = Vec::new();
            for (name, spec) in wanted {
                match t.triggers.get(name) {
                    None => create.push(name.clone()),
                    Some(have) if have.spec != *spec => replace.push(name.clone()),
                    Some(_) => {}
                }
            }
            let delete: Vec<String> = t
                .triggers
                .keys()
                .filter(|n| !wanted.contains_key(*n))
                .cloned()
                .collect();
            if !create.is_empty() || !replace.is_empty() || !delete.is_empty() {
                changes.push(Change::Triggers {
                    create,
                    replace,
                    delete,
                });
            }
        }
        Ok(changes)
    }

    /// A function's triggers in an environment, by name.
    async fn triggers_of(
        &self,
        env: &str,
        function: &str,
    ) -> ControlResult<BTreeMap<String, seal_state::TriggerRecord>> {
        Ok(self
            .events
            .triggers(Some(function))
            .await?
            .into_iter()
            .filter(|t| t.environment == env)
            .map(|t| (t.name.clone(), t))
            .collect())
    }

    /// The triggers a file asks for can be made: valid names and specs,
    /// queues that exist, names no other function or environment uses.
    async fn check_triggers(
        &self,
        at: &str,
        env: &str,
        function: &str,
        wanted: &BTreeMap<String, seal_api_types::events::TriggerSpec>,
        made_by_file: &[String],
    ) -> ControlResult<()> {
        for (name, spec) in wanted {
            let at = format!("{at}.triggers.{name}");
            let checked = match spec {
                // The file makes its queue before its triggers.
                seal_api_types::events::TriggerSpec::Queue(q)
                    if made_by_file.contains(&q.queue) =>
                {
                    crate::events::check_subscription(q)
                }
                _ => self.events.check_trigger(env, spec).await,
            };
            checked
                .map_err(|e| ControlError::bad_request(format!("{at}: {}", e.public_message())))?;
            crate::events::check_name("trigger", name)
                .map_err(|e| ControlError::bad_request(format!("{at}: {}", e.public_message())))?;
            let other = match self.events.trigger(name).await {
                Ok(t) => Some(t),
                Err(ControlError::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            if let Some(other) = other
                && (other.environment != env || other.function != function)
            {
                return Err(ControlError::conflict(format!(
                    "{at}: the trigger {name} exists already for {} in {}: choose another name",
                    other.function, other.environment
                )));
            }
        }
        Ok(())
    }

    /// `seal apply`: plans `text` and (unless `plan_only`) carries the
    /// plan out wave by wave: the steps of a wave side by side, each
    /// progressive deployment waited for before the next wave starts.
    /// When one fails, the others of its wave are stopped, the functions
    /// this apply already moved go back to what they served before (and a
    /// policy it replaced comes back first), and later waves never start. One apply at a time;
    /// recorded in the audit log with the file's digest and commit.
    pub async fn apply_release(
        self: &Arc<Self>,
        text: &str,
        plan_only: bool,
        source: Option<FileSource>,
        actor: &str,
        approvals: Approvals,
    ) -> ControlResult<ApplyAnswer> {
        let (plan, file) = self.plan_release(text).await?;
        if !plan_only && plan.changes_environment_settings() && !approvals.environment_settings {
            let envs: Vec<&str> = plan
                .steps
                .iter()
                .filter(|s| {
                    s.changes
                        .iter()
                        .any(|c| matches!(c, Change::Protection { .. } | Change::Policy { .. }))
                })
                .map(|s| s.environment.as_str())
                .collect();
            return Err(ControlError::forbidden(format!(
                "the file changes the protection or trust policy of {}: applying it needs an admin token (`seal apply --plan` shows the plan)",
                envs.join(", ")
            )));
        }
        // A version an environment's pipeline refuses is said in the plan,
        // before anything moves (an admin's override lets it through).
        if !approvals.missing_evidence {
            for step in &plan.steps {
                for c in &step.changes {
                    if let Change::Deploy { to, .. } = c {
                        let v = self.version_or_404(&step.function, *to).await?;
                        let e = self.evidence(&step.environment, &v).await?;
                        if !e.missing.is_empty() {
                            let _ = self
                                .state
                                .audit(NewAudit {
                                    actor,
                                    action: "apply",
                                    object: &format!("{}/{}", step.environment, step.function),
                                    digest: Some(&v.digest),
                                    outcome: "refused",
                                    detail: serde_json::json!({"version": to, "missing": e.missing}),
                                })
                                .await;
                            return Err(ControlError::EvidenceMissing(format!(
                                "environments.{}.functions.{}: {}@{to} may not serve in {} yet: {} (an admin may apply it anyway with --allow-missing-evidence)",
                                step.environment,
                                step.function,
                                step.function,
                                step.environment,
                                e.missing.join("; ")
                            )));
                        }
                    }
                }
            }
        }
        if !plan_only && plan.steps.is_empty() {
            self.record_applied(&plan, &file, source.as_ref(), actor)
                .await?;
        }
        if plan_only || plan.steps.is_empty() {
            return Ok(ApplyAnswer {
                release: None,
                succeeded: true,
                applied: !plan_only,
                plan,
                outcomes: Vec::new(),
            });
        }
        // One release at a time, across every node of the store: the
        // store refuses a second, naming the one running.
        let outcomes = plan
            .steps
            .iter()
            .map(|step| outcome(step, "pending", None, None))
            .collect();
        let release = self
            .state
            .start_release(&ReleaseRecord {
                id: 0,
                file_digest: plan.file_digest.clone(),
                environments: plan.environments.clone(),
                source: source.clone(),
                actor: actor.to_owned(),
                node: self.node_name(),
                state: "running".into(),
                created_at: now_ms(),
                finished_at: None,
                plan: plan.clone(),
                outcomes,
            })
            .await?;
        // Planned again now that no other release runs: what it read
        // before (holds, routes, deployments in progress) may have moved.
        match self.plan_release(text).await {
            Ok((again, _)) if again == plan => {}
            other => {
                let why = match other {
                    Err(e) => e.public_message(),
                    Ok(_) => "the environments changed while the file was being planned".into(),
                };
                self.persist_release(release.id, "failed", &release.outcomes, true)
                    .await;
                return Err(ControlError::conflict(format!(
                    "{why}: nothing was changed; apply again to see the new plan"
                )));
            }
        }
        // Carried out in a task of its own: a client that hangs up does not
        // stop an apply half-way.
        let control = self.clone();
        let actor = actor.to_owned();
        let id = release.id;
        self.carrying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        let task = tokio::spawn(async move {
            // Let go of even when the task panics: the controller's
            // recovery then rolls the release back.
            struct Carrying(Arc<Control>, u64);
            impl Drop for Carrying {
                fn drop(&mut self) {
                    self.0
                        .carrying
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                }
            }
            let _carrying = Carrying(control.clone(), id);
            control.carry_out(release, file, &actor, approvals).await
        });
        task.await.map_err(ControlError::internal)?
    }

    async fn carry_out(
        self: &Arc<Self>,
        release: ReleaseRecord,
        file: ReleaseFile,
        actor: &str,
        approvals: Approvals,
    ) -> ControlResult<ApplyAnswer> {
        let ReleaseRecord {
            id,
            plan,
            source,
            mut outcomes,
            ..
        } = release;
        let reason = release_reason(id, &plan.file_digest, source.as_ref());
        // The functions moved so far, with the version each served before.
        let mut moved: Vec<(String, String, Option<u64>)> = Vec::new();
        let mut failed = false;
        // Set by the first step that fails: the ones beside it stop.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let waves: BTreeSet<u32> = plan.steps.iter().map(|s| s.wave).collect();
        for wave in waves {
            let wave_steps: Vec<usize> = (0..plan.steps.len())
                .filter(|i| plan.steps[*i].wave == wave)
                .collect();
            if failed {
                for i in wave_steps {
                    outcomes[i].outcome = "not_started".into();
                }
                continue;
            }
            // Said before they start, so a restart knows what may have
            // moved (and the policy a step replaces, to put it back).
            for i in &wave_steps {
                outcomes[*i].outcome = "running".into();
                let step = &plan.steps[*i];
                if step
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::Policy { .. }))
                {
                    match self.trust.policy(&step.environment).await {
                        Ok(p) => outcomes[*i].previous_policy = serde_json::to_value(p).ok(),
                        Err(e) => {
                            tracing::error!(environment = %step.environment, error = %e, "cannot read the policy a release replaces")
                        }
                    }
                }
            }
            self.persist_release(id, "running", &outcomes, false).await;
            // Side by side: every progressive deployment of the wave runs
            // at once, and the first to fail stops the others.
            let results = futures::future::join_all(wave_steps.iter().map(|i| {
                let step = &plan.steps[*i];
                let (reason, stop, file) = (&reason, &stop, &file);
                async move {
                    let env = &file.environments[&step.environment];
                    let r = self
                        .carry_out_step(step, env, reason, actor, approvals, stop)
                        .await;
                    if r.is_err() {
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    r
                }
            }))
            .await;
            let first = wave_steps
                .iter()
                .zip(&results)
                .find(|(_, r)| matches!(r, Err(f) if !f.stopped))
                .map(|(i, _)| plan.steps[*i].function.clone());
            for (i, result) in wave_steps.into_iter().zip(results) {
                let step = &plan.steps[i];
                match result {
                    Ok((deployment, from)) => {
                        if deployment.is_some() {
                            moved.push((step.environment.clone(), step.function.clone(), from));
                        }
                        outcomes[i].outcome = "applied".into();
                        outcomes[i].deployment = deployment;
                    }
                    Err(f) => {
                        failed = true;
                        // A step that moved its route and then failed (a
                        // trigger refused, a canary rolled back) goes back too.
                        if f.deployment.is_some() {
                            moved.push((
                                step.environment.clone(),
                                step.function.clone(),
                                outcomes[i].from,
                            ));
                        }
                        outcomes[i].deployment = f.deployment;
                        if f.stopped {
                            outcomes[i].outcome = "rolled_back".into();
                            outcomes[i].detail = Some(format!(
                                "stopped: {} failed beside it in wave {} of release {id}",
                                first.as_deref().unwrap_or("another step"),
                                wave + 1
                            ));
                        } else {
                            outcomes[i].outcome = "failed".into();
                            outcomes[i].detail = Some(f.error.public_message());
                        }
                    }
                }
            }
        }
        if failed {
            // The policy first: one the file tightened may refuse the
            // versions that served before.
            self.restore_policies(id, &mut outcomes, actor, actor).await;
            for (env, function, from) in moved.iter().rev() {
                let undone = match from {
                    Some(v) => self
                        .rollback_because(
                            function,
                            Some(env),
                            Some(*v),
                            Some(&format!(
                                "{} {}: release {id}: another step failed",
                                crate::holds::UNDONE_BY_APPLY,
                                short(&plan.file_digest)
                            )),
                            actor,
                            approvals,
                        )
                        .await
                        .map(|o| o.deployment.map(|d| d.id)),
                    None => Err(ControlError::conflict(
                        "nothing served before this apply: left on its new version",
                    )),
                };
                if let Some(o) = outcomes
                    .iter_mut()
                    .find(|o| o.environment == *env && o.function == *function)
                {
                    match undone {
                        Ok(_) if o.outcome == "failed" => {
                            let was = o.detail.take().unwrap_or_default();
                            o.detail = Some(format!(
                                "{was}; back to {function}@{}",
                                from.unwrap_or_default()
                            ));
                        }
                        Ok(_) if o.outcome == "rolled_back" => {}
                        Ok(d) => {
                            o.outcome = "rolled_back".into();
                            o.detail = Some(format!(
                                "back to {function}@{} because another step of release {id} failed{}",
                                from.unwrap_or_default(),
                                d.map(|d| format!(" (deployment {d})")).unwrap_or_default()
                            ));
                        }
                        Err(e) => {
                            let why = format!(
                                "another step failed, and it could not go back: {}",
                                e.public_message()
                            );
                            o.detail = Some(match o.detail.take() {
                                Some(was) => format!("{was}; {why}"),
                                None => why,
                            });
                        }
                    }
                }
            }
        }
        if !failed
            && let Err(e) = self
                .record_applied(&plan, &file, source.as_ref(), actor)
                .await
        {
            tracing::error!(error = %e, "cannot record the file applied; drift is checked against the one before");
        }
        let _ = self
            .state
            .audit(NewAudit {
                actor,
                action: "apply",
                object: &plan.environments.join(","),
                digest: Some(&plan.file_digest),
                outcome: if failed { "failed" } else { "succeeded" },
                detail: serde_json::json!({
                    "release": id,
                    "source": source,
                    "steps": outcomes,
                }),
            })
            .await;
        self.persist_release(
            id,
            if failed { "failed" } else { "succeeded" },
            &outcomes,
            true,
        )
        .await;
        tracing::info!(release = id, file = %plan.file_digest, steps = plan.steps.len(), failed, "release file applied");
        Ok(ApplyAnswer {
            release: Some(id),
            plan,
            applied: true,
            succeeded: !failed,
            outcomes,
        })
    }

    /// Puts back the trust policy each environment step of a failed
    /// release replaced (so the versions it moved may return), noted on
    /// the step.
    async fn restore_policies(
        &self,
        id: u64,
        outcomes: &mut [StepOutcome],
        set_by: &str,
        actor: &str,
    ) {
        for o in outcomes.iter_mut().filter(|o| o.function.is_empty()) {
            let Some(previous) = &o.previous_policy else {
                continue;
            };
            if !matches!(o.outcome.as_str(), "applied" | "failed" | "interrupted") {
                continue;
            }
            let done = match serde_json::from_value::<seal_trust::Policy>(previous.clone()) {
                Ok(p) => match self.trust.policy_view(&o.environment).await {
                    // Never written (the step failed first): nothing to do.
                    Ok(now) if now.policy == p => continue,
                    // Changed since by someone else: theirs stands.
                    Ok(now) if now.updated_by.as_deref() != Some(set_by) => Ok(format!(
                        "trust policy not put back: {} changed it since",
                        now.updated_by.as_deref().unwrap_or("someone")
                    )),
                    Ok(_) => self
                        .trust
                        .restore_policy(&o.environment, &p, actor)
                        .await
                        .map(|()| format!("trust policy put back ({}) because release {id} failed, so its versions may go back", policy_summary(&p))),
                    Err(e) => Err(e),
                },
                Err(e) => Err(ControlError::internal(e)),
            };
            let note = match done {
                Ok(note) => note,
                Err(e) => format!(
                    "the trust policy could not be put back: {}",
                    e.public_message()
                ),
            };
            o.detail = Some(match o.detail.take() {
                Some(was) => format!("{was}; {note}"),
                None => note,
            });
        }
    }

    /// Writes a release's progress; a store that cannot take it is logged
    /// (the apply goes on: its deployments are recorded on their own).
    async fn persist_release(
        &self,
        id: u64,
        state: &str,
        outcomes: &[StepOutcome],
        finished: bool,
    ) {
        if let Err(e) = self
            .state
            .update_release(id, state, outcomes, finished)
            .await
        {
            tracing::error!(release = id, error = %e, "cannot record the release's progress");
        }
    }

    /// At start on the controller: a release a restart interrupted is
    /// rolled back as a whole — its progressive deployment in progress
    /// aborted, every function it had moved (or was moving) returned to
    /// what it served before — and recorded as `rolled_back`.
    pub async fn recover_releases(self: &Arc<Self>) -> ControlResult<()> {
        // Each live node with when its process started: a node that
        // started after a release began is not the process running it.
        let alive: BTreeMap<String, i64> = self
            .state
            .nodes(crate::cluster::LEASE_TTL * 2)
            .await?
            .into_iter()
            .map(|n| (n.report.node, n.report.started_at))
            .collect();
        for r in self.state.releases(20).await? {
            if r.state != "running" {
                continue;
            }
            // Carried out by this process, or by another node still alive:
            // not interrupted.
            if self
                .carrying
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&r.id)
                || (r.node != self.node_name()
                    && alive
                        .get(&r.node)
                        .is_some_and(|started| *started <= r.created_at))
            {
                continue;
            }
            tracing::warn!(release = r.id, file = %r.file_digest, "a release was interrupted by a restart; rolling it back as a whole");
            let prefix = release_reason(r.id, &r.file_digest, None);
            let mut outcomes = r.outcomes.clone();
            // An environment's own settings stay (but for a policy it
            // replaced, put back first so the versions may return); one
            // the restart cut may be partly applied.
            for o in outcomes.iter_mut().filter(|o| o.function.is_empty()) {
                match o.outcome.as_str() {
                    "pending" => o.outcome = "not_started".into(),
                    "running" => {
                        o.outcome = "interrupted".into();
                        o.detail = Some(
                            "interrupted by a restart: its settings may be partly applied (`seal diff` shows which)".into(),
                        );
                    }
                    _ => {}
                }
            }
            self.restore_policies(r.id, &mut outcomes, &r.actor, "seal")
                .await;
            for o in outcomes.iter_mut().rev() {
                if o.function.is_empty() {
                    continue;
                }
                if o.outcome != "running" && o.outcome != "applied" {
                    if o.outcome == "pending" {
                        o.outcome = "not_started".into();
                    }
                    continue;
                }
                if let Some(d) = self.active_deployment(&o.environment, &o.function).await?
                    && d.reason.as_deref().is_some_and(|x| x.starts_with(&prefix))
                {
                    match self
                        .command(
                            d.id,
                            crate::rollout::Command::Abort,
                            crate::holds::RELEASE_RECOVERY,
                        )
                        .await
                    {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(deployment = d.id, error = %e, "cannot abort the interrupted release's deployment")
                        }
                    }
                    let _ = self.wait_for_end(d.id, None).await;
                }
                let serving = self
                    .state
                    .route(&o.environment, &o.function)
                    .await?
                    .and_then(|route| {
                        route
                            .weights
                            .iter()
                            .max_by_key(|w| w.weight)
                            .map(|w| w.version)
                    });
                let Some(from) = o.from else {
                    o.detail = Some("nothing served before the release: left as it is".into());
                    continue;
                };
                if serving == Some(from) {
                    o.outcome = "rolled_back".into();
                    o.detail = Some(format!("{}@{from} serves again", o.function));
                    continue;
                }
                match self
                    .rollback_because(
                        &o.function,
                        Some(&o.environment),
                        Some(from),
                        Some(&format!(
                            "{} {}: release {} was interrupted by a restart",
                            crate::holds::UNDONE_BY_APPLY,
                            short(&r.file_digest),
                            r.id
                        )),
                        "seal",
                        Approvals::default(),
                    )
                    .await
                {
                    Ok(done) => {
                        o.outcome = "rolled_back".into();
                        o.deployment = done.deployment.map(|d| d.id).or(o.deployment);
                        o.detail = Some(format!(
                            "back to {}@{from}: the release was interrupted by a restart",
                            o.function
                        ));
                    }
                    Err(e) => {
                        o.detail = Some(format!(
                            "interrupted by a restart, and it could not go back: {}",
                            e.public_message()
                        ))
                    }
                }
            }
            self.persist_release(r.id, "rolled_back", &outcomes, true)
                .await;
            let _ = self
                .state
                .audit(NewAudit {
                    actor: "seal",
                    action: "apply",
                    object: &r.environments.join(","),
                    digest: Some(&r.file_digest),
                    outcome: "rolled_back",
                    detail: serde_json::json!({
                        "release": r.id,
                        "reason": "interrupted by a restart",
                        "steps": outcomes,
                    }),
                })
                .await;
        }
        Ok(())
    }

    /// `seal releases`: newest first.
    pub async fn releases(&self, limit: u32) -> ControlResult<Vec<ReleaseRecord>> {
        Ok(self.state.releases(limit).await?)
    }

    /// `seal releases show ID`.
    pub async fn release(&self, id: u64) -> ControlResult<ReleaseRecord> {
        self.state
            .release(id)
            .await?
            .ok_or_else(|| ControlError::not_found(format!("no release {id}")))
    }

    /// The file, per environment it names, as what that environment
    /// should run from now on (what drift is checked against).
    async fn record_applied(
        &self,
        plan: &ApplyPlan,
        file: &ReleaseFile,
        source: Option<&FileSource>,
        actor: &str,
    ) -> ControlResult<()> {
        let now = now_ms();
        let mut files = Vec::new();
        for env in file.environments.keys() {
            files.push(seal_state::AppliedFile {
                environment: env.clone(),
                file: crate::drift::restricted(file, env)?,
                file_digest: plan.file_digest.clone(),
                commit: source.and_then(|s| s.commit.clone()),
                actor: actor.to_owned(),
                applied_at: now,
            });
        }
        Ok(self.state.record_applied(&files).await?)
    }

    /// One step's changes. A function's settings first (so the new
    /// version starts with them), then the route, then its triggers; an
    /// environment's protection, policy and queues. The deployment made,
    /// and the version served before; a failure keeps the deployment it
    /// happened in.
    async fn carry_out_step(
        self: &Arc<Self>,
        step: &PlanStep,
        env_spec: &EnvironmentSpec,
        reason: &str,
        actor: &str,
        approvals: Approvals,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<(Option<u64>, Option<u64>), StepFailure> {
        let (env, function) = (step.environment.as_str(), step.function.as_str());
        let fail = |deployment: Option<u64>| {
            move |error: ControlError| StepFailure {
                deployment,
                error,
                stopped: false,
            }
        };
        let mut made = (None, None);
        for change in &step.changes {
            match change {
                Change::Protection { protected } => {
                    self.set_protection(env, Some(*protected), actor)
                        .await
                        .map_err(fail(None))?;
                }
                Change::Policy { .. } => {
                    let p = env_spec.policy.clone().unwrap_or_default();
                    let required =
                        required(&format!("environments.{env}"), &p).map_err(fail(None))?;
                    self.trust
                        .set_policy(env, p.require_signature, &p.trusted_keys, required, actor)
                        .await
                        .map_err(fail(None))?;
                }
                Change::Queues { create } => {
                    for name in create {
                        let spec = env_spec
                            .queues
                            .as_ref()
                            .and_then(|q| q.get(name))
                            .cloned()
                            .unwrap_or_default();
                        let req = seal_api_types::events::CreateQueue {
                            name: name.clone(),
                            environment: Some(env.to_owned()),
                            dedup_window_ms: spec.dedup_window_ms,
                        };
                        self.events
                            .create_queue(&req, actor)
                            .await
                            .map_err(fail(None))?;
                    }
                }
                Change::Config { set, unset } => {
                    self.settings
                        .change_settings(function, env, false, set.clone(), unset.clone(), actor)
                        .await
                        .map_err(fail(None))?;
                }
                Change::UnsetSecrets { keys } => {
                    self.settings
                        .change_settings(function, env, true, BTreeMap::new(), keys.clone(), actor)
                        .await
                        .map_err(fail(None))?;
                }
                Change::Triggers {
                    create,
                    replace,
                    delete,
                } => {
                    let wanted = env_spec
                        .functions
                        .get(function)
                        .and_then(|f| f.triggers.clone())
                        .unwrap_or_default();
                    for name in replace.iter().chain(delete) {
                        self.events
                            .delete_trigger(name, actor)
                            .await
                            .map_err(fail(made.0))?;
                    }
                    for name in create.iter().chain(replace) {
                        let req = seal_api_types::events::CreateTrigger {
                            name: Some(name.clone()),
                            function: function.to_owned(),
                            environment: Some(env.to_owned()),
                            spec: wanted[name].clone(),
                        };
                        self.events
                            .create_trigger(&req, actor)
                            .await
                            .map_err(fail(made.0))?;
                    }
                }
                Change::Deploy {
                    from, to, strategy, ..
                } => {
                    let progressive = *strategy != Strategy::AllAtOnce;
                    let id = if progressive {
                        let rollout = env_spec
                            .functions
                            .get(function)
                            .and_then(|f| f.rollout.clone())
                            .unwrap_or_else(|| {
                                seal_api_types::rollout::RolloutSpec::new(*strategy)
                            });
                        match self
                            .deploy_progressive(
                                function,
                                *to,
                                Some(env),
                                Some(reason),
                                actor,
                                rollout,
                                false,
                                approvals,
                            )
                            .await
                            .map_err(fail(None))?
                        {
                            Progressive::Started { deployment, .. } => deployment.id,
                            Progressive::Planned { .. } => {
                                return Err(fail(None)(ControlError::internal(
                                    "planned, not started",
                                )));
                            }
                        }
                    } else {
                        let o = self
                            .deploy(function, *to, Some(env), Some(reason), actor, approvals)
                            .await
                            .map_err(fail(None))?;
                        match o.deployment {
                            Some(d) => d.id,
                            None => continue,
                        }
                    };
                    made = (Some(id), *from);
                    if progressive {
                        match self.wait_for_end(id, Some(stop)).await {
                            Ok(()) => {}
                            Err(Ended::Stopped) => {
                                return Err(StepFailure {
                                    deployment: Some(id),
                                    error: ControlError::conflict("stopped"),
                                    stopped: true,
                                });
                            }
                            Err(Ended::Failed(e)) => return Err(fail(Some(id))(e)),
                        }
                    }
                }
            }
        }
        Ok(made)
    }

    /// Waits until deployment `id` ends; an error unless it succeeded.
    /// Once `stop` is set (a step beside it failed), the deployment is
    /// aborted: that judged nothing about its version, so it holds none.
    async fn wait_for_end(
        &self,
        id: u64,
        stop: Option<&std::sync::atomic::AtomicBool>,
    ) -> Result<(), Ended> {
        let mut stopped = false;
        loop {
            let Some((d, _)) = self.state.deployment(id).await? else {
                return Err(ControlError::not_found(format!("deployment {id} vanished")).into());
            };
            if !d.is_active() {
                if d.state == DeploymentState::Succeeded {
                    return Ok(());
                }
                let (reason, by) = self.ending(&d).await?;
                // Stopped only when the release's abort ended it: a gate
                // that rolled it back first judged its version.
                if stopped && by == crate::holds::RELEASE_STOPPED {
                    return Err(Ended::Stopped);
                }
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                return Err(ControlError::conflict(format!(
                    "deployment {id} of {}@{} in {} ended {}{why}",
                    d.function,
                    d.candidate.unwrap_or_default(),
                    d.environment,
                    d.state.as_str()
                ))
                .into());
            }
            if !stopped && stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
                stopped = true;
                if let Err(e) = self
                    .command(
                        id,
                        crate::rollout::Command::Abort,
                        crate::holds::RELEASE_STOPPED,
                    )
                    .await
                {
                    tracing::warn!(deployment = id, error = %e, "cannot stop a deployment beside a failed step");
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// `seal diff`: where the environments differ from `text`, and why.
    pub async fn diff_release(&self, text: &str) -> ControlResult<DiffAnswer> {
        let file = parse(text)?;
        let differences = self.differences(&file).await?;
        Ok(DiffAnswer {
            file_digest: file_digest(text),
            in_sync: differences.is_empty(),
            differences,
        })
    }

    /// Where the environments differ from `file`, each with why.
    pub(crate) async fn differences(&self, file: &ReleaseFile) -> ControlResult<Vec<Difference>> {
        let mut differences = Vec::new();
        for (et, targets) in self.targets(file).await? {
            differences.extend(self.environment_differences(&et));
            self.function_differences(&targets, &mut differences)
                .await?;
        }
        Ok(differences)
    }

    /// Where an environment's own settings differ from the file.
    fn environment_differences(&self, et: &EnvTarget) -> Vec<Difference> {
        let mut out = Vec::new();
        let diff = |field: String, desired: Option<String>, actual: Option<String>, why: String| {
            Difference {
                environment: et.environment.clone(),
                function: String::new(),
                field,
                desired,
                actual,
                why: Some(why),
            }
        };
        if let Some(p) = et.spec.protected
            && p != et.protected
        {
            out.push(diff(
                "protected".into(),
                Some(p.to_string()),
                Some(et.protected.to_string()),
                match et.protection {
                    crate::protection::Source::Rule => {
                        "the server's rule (its default environment and production are protected)"
                            .into()
                    }
                    crate::protection::Source::Set => {
                        "set by an admin (PUT /v1/environments/{env}/protection)".into()
                    }
                },
            ));
        }
        if let Some(wanted) = et.policy_change() {
            let why = match (&et.policy.updated_by, et.policy.updated_at) {
                (Some(by), Some(at)) => format!("policy set by {by} at {}", time(at)),
                _ => "no policy was ever set".into(),
            };
            out.push(diff(
                "policy".into(),
                Some(policy_summary(wanted)),
                Some(policy_summary(&et.policy.policy)),
                why,
            ));
        }
        if let Some(wanted) = &et.spec.queues {
            for name in et.missing_queues() {
                out.push(diff(
                    format!("queues.{name}"),
                    Some("exists".into()),
                    None,
                    "no such queue (deleted, or never made)".into(),
                ));
            }
            for (name, have, want) in et.window_mismatches() {
                out.push(diff(
                    format!("queues.{name}.dedup_window_ms"),
                    Some(want.to_string()),
                    Some(have.to_string()),
                    format!(
                        "fixed when the queue was made by {}; apply cannot change it (delete the queue and apply again)",
                        et.queues[name].created_by
                    ),
                ));
            }
            for (name, q) in &et.queues {
                if !wanted.contains_key(name) {
                    out.push(diff(
                        format!("queues.{name}"),
                        None,
                        Some("exists".into()),
                        format!(
                            "made by {} at {}; apply never deletes a queue (its events would go with it): `seal queue delete {name} --env {}`",
                            q.created_by,
                            time(q.created_at),
                            et.environment
                        ),
                    ));
                }
            }
        }
        out
    }

    /// Where functions differ from the file, each with why.
    async fn function_differences(
        &self,
        targets: &[Target],
        differences: &mut Vec<Difference>,
    ) -> ControlResult<()> {
        for t in targets {
            let diff =
                |field: String, desired: Option<String>, actual: Option<String>| Difference {
                    environment: t.environment.clone(),
                    function: t.function.clone(),
                    field,
                    desired,
                    actual,
                    why: None,
                };
            let to = t.version.version;
            if t.serving != Some(to) || t.weights.len() > 1 {
                let actual = (!t.weights.is_empty()).then(|| {
                    t.weights
                        .iter()
                        .map(|w| format!("{}@{} ({}%)", t.function, w.version, w.weight))
                        .collect::<Vec<_>>()
                        .join(" + ")
                });
                let mut d = diff(
                    "version".into(),
                    Some(format!("{}@{to}", t.function)),
                    actual,
                );
                d.why = self.why_route(&t.environment, &t.function).await?;
                differences.push(d);
            }
            let mut keys = Vec::new();
            if let Some(config) = &t.spec.config {
                for k in config
                    .keys()
                    .chain(t.config.keys())
                    .collect::<BTreeSet<_>>()
                {
                    let (want, have) = (config.get(k), t.config.get(k));
                    if want != have {
                        keys.push(k.clone());
                        differences.push(diff(format!("config.{k}"), want.cloned(), have.cloned()));
                    }
                }
            }
            if let Some(SecretNames(names)) = &t.spec.secrets {
                let names: BTreeSet<&String> = names.iter().collect();
                for k in names
                    .iter()
                    .copied()
                    .chain(t.secrets.iter())
                    .collect::<BTreeSet<_>>()
                {
                    let (want, have) = (names.contains(k), t.secrets.contains(k));
                    if want != have {
                        keys.push(k.clone());
                        let set = |b: bool| b.then(|| "set".to_owned());
                        differences.push(diff(format!("secrets.{k}"), set(want), set(have)));
                    }
                }
            }
            if let Some(wanted) = &t.spec.triggers {
                let show = |spec: &seal_api_types::events::TriggerSpec| {
                    serde_json::to_string(spec).unwrap_or_default()
                };
                for name in wanted
                    .keys()
                    .chain(t.triggers.keys())
                    .collect::<BTreeSet<_>>()
                {
                    let want = wanted.get(name);
                    let have = t.triggers.get(name);
                    if want == have.map(|h| &h.spec) {
                        continue;
                    }
                    let mut d = diff(
                        format!("triggers.{name}"),
                        want.map(show),
                        have.map(|h| show(&h.spec)),
                    );
                    d.why = Some(match have {
                        Some(h) => format!("made by {} at {}", h.created_by, time(h.created_at)),
                        None => "no such trigger (deleted, or never made)".into(),
                    });
                    differences.push(d);
                }
            }
            if !keys.is_empty() {
                let whys = self.why_settings(&t.environment, &t.function).await?;
                for d in differences.iter_mut().filter(|d| {
                    d.environment == t.environment && d.function == t.function && d.why.is_none()
                }) {
                    let key = d.field.split_once('.').map(|(_, k)| k).unwrap_or_default();
                    d.why = whys.get(key).cloned();
                }
            }
        }
        Ok(())
    }

    /// Who or what last moved a route: a person's deploy or rollback
    /// (which command, when), a gate's rollback with its numbers.
    async fn why_route(&self, env: &str, function: &str) -> ControlResult<Option<String>> {
        let Some(d) = self
            .state
            .deployments(function, Some(env))
            .await?
            .into_iter()
            .next()
        else {
            return Ok(Some(format!("nothing was ever deployed to {env}")));
        };
        let when = time(d.finished_at.unwrap_or(d.created_at));
        let what = match (d.state, d.kind) {
            (DeploymentState::RolledBack | DeploymentState::Aborted, _) => {
                let (reason, by) = self.ending(&d).await?;
                let by = if by == "seal" {
                    "seal (a gate or a hook)".to_owned()
                } else {
                    by
                };
                format!(
                    "rolled back by {by} at {when}: {} (deployment {})",
                    reason.unwrap_or_else(|| d.state.as_str().to_owned()),
                    d.id
                )
            }
            (state, _) if state.is_active() => format!(
                "deployment {} by {} is in progress ({})",
                d.id,
                d.actor,
                state.as_str()
            ),
            (_, kind) => {
                let command = match kind {
                    DeploymentKind::Rollback => "seal rollback",
                    _ if d.strategy != Strategy::AllAtOnce => "a progressive seal deploy",
                    _ => "seal deploy",
                };
                let via = d
                    .reason
                    .as_deref()
                    .map(|r| format!(", reason: {r}"))
                    .unwrap_or_default();
                format!(
                    "{command} by {} at {when} (deployment {}{via})",
                    d.actor, d.id
                )
            }
        };
        Ok(Some(what))
    }

    /// Per key, the newest settings revision that touched it.
    async fn why_settings(
        &self,
        env: &str,
        function: &str,
    ) -> ControlResult<BTreeMap<String, String>> {
        let mut whys = BTreeMap::new();
        for r in self
            .state
            .setting_revisions(function, Some(env), 200)
            .await?
        {
            let kind = r
                .changes
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("config");
            for (list, verb) in [("set", "set"), ("unset", "unset")] {
                for key in r
                    .changes
                    .get(list)
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str())
                {
                    whys.entry(key.to_owned()).or_insert_with(|| {
                        format!(
                            "{kind} {verb} by {} at {} (revision {})",
                            r.actor,
                            time(r.at),
                            r.revision
                        )
                    });
                }
            }
        }
        Ok(whys)
    }
}

/// How a step failed: the deployment it made, and whether it was stopped
/// because a step beside it failed (rather than failing itself).
struct StepFailure {
    deployment: Option<u64>,
    error: ControlError,
    stopped: bool,
}

/// How a deployment waited for did not succeed.
enum Ended {
    /// Aborted because a step beside it failed.
    Stopped,
    Failed(ControlError),
}

impl From<ControlError> for Ended {
    fn from(e: ControlError) -> Self {
        Ended::Failed(e)
    }
}

impl From<seal_state::StateError> for Ended {
    fn from(e: seal_state::StateError) -> Self {
        Ended::Failed(e.into())
    }
}

fn outcome(
    step: &PlanStep,
    what: &str,
    deployment: Option<u64>,
    detail: Option<String>,
) -> StepOutcome {
    let from = step.changes.iter().find_map(|c| match c {
        Change::Deploy { from, .. } => *from,
        _ => None,
    });
    StepOutcome {
        environment: step.environment.clone(),
        function: step.function.clone(),
        outcome: what.into(),
        deployment,
        from,
        detail,
        previous_policy: None,
    }
}

/// The reason every deployment of a release carries (a restart finds the
/// release's deployments by it).
fn release_reason(id: u64, digest: &str, source: Option<&FileSource>) -> String {
    match source.and_then(|s| s.commit.as_deref()) {
        Some(c) => format!(
            "release {id}: apply {} (commit {})",
            short(digest),
            short(c)
        ),
        None => format!("release {id}: apply {}", short(digest)),
    }
}

/// The first 12 hex digits of a digest or commit.
fn short(s: &str) -> &str {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    &hex[..hex.len().min(12)]
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339, to the second, UTC.
pub(crate) fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every field a release file has.
    const FULL: &str = r#"
[environments.production]
protected = true
notify = "http://hooks.example.org/drift"
[environments.production.policy]
require_signature = true
trusted_keys = ["""
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=
-----END PUBLIC KEY-----
"""]
require_provenance = ["source=git+https://example.org/hello", "commit"]
[environments.production.queues.orders]
dedup_window_ms = 60000
[environments.production.queues.audit]
[environments.production.functions.hello]
version = 3
digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
after = ["billing"]
config = { GREETING = "hi" }
secrets = ["API_KEY"]
[environments.production.functions.hello.rollout]
strategy = "canary"
steps = [10, 50]
increment = 10
interval_ms = 30000
on_inconclusive = "fail"
progress_deadline_ms = 600000
approve_before_promote = true
scale_down_delay_ms = 1000
sticky_header = "x-user"
notify = "https://example.org/hook"
gates = { max_error_rate = 0.01, max_latency = { quantile = 0.99, ms = 200.0 }, max_error_rate_increase = 0.005, max_latency_increase = 1.5, min_requests = 50, max_queue_age_ms = 60000 }
[[environments.production.functions.hello.rollout.hooks]]
name = "smoke"
phase = "pre-traffic"
request = { method = "GET", path = "/", headers = { accept = "text/plain" }, body = "" }
expect = { status = 200, body_contains = "ok", success = false }
[environments.production.functions.hello.triggers.hello-orders]
kind = "queue"
queue = "orders"
max_attempts = 5
backoff_initial_ms = 100
backoff_max_ms = 1000
max_age_ms = 60000
max_in_flight = 4
[environments.production.functions.hello.triggers.hello-cron]
kind = "cron"
schedule = "0 9 * * 1-5"
timezone = "Europe/Paris"
on_missed = "once"
overlap = "forbid"
canary = "follow-weights"
[environments.production.functions.billing]
version = 1
"#;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_file_parses_with_its_defaults() {
        let f = parse(FULL).unwrap();
        let hello = &f.environments["production"].functions["hello"];
        assert_eq!(hello.version, Some(3));
        assert_eq!(hello.secrets, Some(SecretNames(vec!["API_KEY".into()])));
        assert_eq!(hello.rollout.as_ref().unwrap().steps, Some(vec![10, 50]));
        let billing = &f.environments["production"].functions["billing"];
        assert_eq!(billing.config, None, "absent: not managed");
        assert!(billing.rollout.is_none() && billing.after.is_empty());
        assert_eq!(
            order("production", &f.environments["production"].functions).unwrap(),
            ["billing", "hello"]
        );
    }

    #[test]
    fn schema_errors_name_the_line_and_the_field() {
        let e = err("[environments.production.functions.hello]\nverison = 3\n");
        assert!(e.contains("line 2") && e.contains("verison"), "{e}");
        let e = err("[environments.production.functions.hello]\nversion = \"three\"\n");
        assert!(e.contains("line 2"), "{e}");
        let e = err("[environments.production.functions.hello]\nconfig = { A = 1 }\n");
        assert!(e.contains("line 2"), "{e}");
        assert!(err("").contains("names no environment"));
        let e = err("[environments.production.functions.hello]\nafter = []\n");
        assert!(e.contains("give the version"), "{e}");
        let e = err("[environments.production.functions.hello]\ndigest = \"md5:x\"\n");
        assert!(e.contains("functions.hello.digest"), "{e}");
    }

    #[test]
    fn a_secret_value_is_refused_and_never_repeated() {
        for text in [
            "[environments.production.functions.hello]\nversion = 1\nsecrets = { API_KEY = \"hunter2\" }\n",
            "[environments.production.functions.hello]\nversion = 1\nsecrets = [\"API_KEY=hunter2\"]\n",
            "[environments.production.functions.hello]\nversion = 1\nsecrets = \"hunter2\"\n",
            "[environments.production.functions.hello]\nversion = 1\n[environments.production.functions.hello.secrets]\nAPI_KEY = \"hunter2\"\n",
        ] {
            let e = err(text);
            assert!(e.contains("names"), "{e}");
            assert!(!e.contains("hunter2"), "the value leaked: {e}");
        }
    }

    #[test]
    fn after_must_name_a_function_of_the_file_and_make_no_cycle() {
        let e = err(
            "[environments.p.functions.a]\nversion = 1\nafter = [\"c\"]\n[environments.p.functions.b]\nversion = 1\nafter = [\"a\"]\n[environments.p.functions.c]\nversion = 1\nafter = [\"b\"]\n[environments.p.functions.d]\nversion = 1\n",
        );
        assert!(e.contains("cycle") && e.contains("a → c → b → a"), "{e}");
        let e = err("[environments.p.functions.a]\nversion = 1\nafter = [\"zz\"]\n");
        assert!(e.contains("\"zz\" is not a function"), "{e}");
        let e = err("[environments.p.functions.a]\nversion = 1\nafter = [\"a\"]\n");
        assert!(e.contains("after itself"), "{e}");
    }

    #[test]
    fn an_all_at_once_rollout_with_steps_is_refused() {
        let e = err(
            "[environments.p.functions.a]\nversion = 1\nrollout = { strategy = \"all-at-once\", steps = [10] }\n",
        );
        assert!(e.contains("functions.a.rollout"), "{e}");
    }

    /// The published JSON Schema (for editors) accepts what the server
    /// accepts and refuses what it refuses.
    #[test]
    fn an_environments_own_settings_are_checked_by_name() {
        let head = "[environments.production]\n";
        for (text, wanted) in [
            (
                "[environments.production.queues.Orders]\n",
                "environments.production.queues",
            ),
            (
                "[environments.production.policy]\nrequire_provenance = [\"=x\"]\n",
                "environments.production.policy.require_provenance",
            ),
            (
                "[environments.production.policy]\nrequire_signature = true\n",
                "require_signature needs at least one trusted key",
            ),
            (
                "[environments.production]\nnotify = \"https://example.org\"\n",
                "environments.production.notify must be an http:// URL",
            ),
            ("[environments.production]\nprotected = \"yes\"\n", "line 2"),
        ] {
            let e = err(text);
            assert!(e.contains(wanted), "{text}: {e}");
        }
        let file = parse(&format!(
            "{head}protected = false\n[environments.production.queues.orders]\n"
        ))
        .unwrap();
        let env = &file.environments["production"];
        assert_eq!(env.protected, Some(false));
        assert_eq!(env.queues.as_ref().unwrap()["orders"].dedup_window_ms, None);
        assert!(env.functions.is_empty() && env.policy.is_none());
    }

    #[test]
    fn the_published_schema_agrees_with_the_parser() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../schemas/release.schema.json")).unwrap();
        jsonschema::draft202012::meta::validate(&schema).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let file = parse(FULL).unwrap();
        // Every field the types have, written back: the schema knows each.
        let json = serde_json::to_value(&file).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&json)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let as_toml: serde_json::Value = toml::from_str(FULL).unwrap();
        assert!(validator.is_valid(&as_toml));
        for bad in [
            "[environments.production.functions.hello]\nverison = 3\n",
            "[environments.production.functions.hello]\nafter = []\n",
            "[environments.production.functions.hello]\nversion = 1\nsecrets = { API_KEY = \"x\" }\n",
            "[environments.production.functions.Hello]\nversion = 1\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
            let v: serde_json::Value = toml::from_str(bad).unwrap();
            assert!(!validator.is_valid(&v), "the schema accepts {bad}");
        }
    }
}
