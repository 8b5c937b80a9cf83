//! The Seal manifest (the artifact's config blob) and the `seal.toml`
//! project file it is made from.

use crate::contracts::EventContracts;
use crate::{ArtifactError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const DEFAULT_MEMORY_MB: u64 = 128;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Upper bounds a manifest may ask for; the server's pooling allocator is
/// sized for these.
pub const MAX_MEMORY_MB: u64 = 4096;
pub const MAX_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Largest `instance_reuse` a manifest may declare.
pub const MAX_INSTANCE_REUSE: u32 = 1_000_000;
/// Largest `max_concurrency` a manifest may declare.
pub const MAX_CONCURRENCY: u32 = 100_000;

/// The Seal manifest: part of the artifact, hence part of its digest.
///
/// Field order is fixed and maps are `BTreeMap`s so serialisation is
/// canonical: the same manifest always gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealManifest {
    /// Manifest format version.
    pub schema: u32,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Event contracts: a JSON Schema per event type the function
    /// consumes and produces (see [`crate::contracts`]).
    #[serde(default)]
    pub events: EventContracts,
    #[serde(default)]
    pub provenance: Provenance,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests of this function served at once in an environment, all
    /// versions together; past it the gateway answers 429. Absent: the
    /// server's default (`seal server --function-concurrency`). Absent
    /// from the canonical bytes when unset, so older digests hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Invocations one instance may serve, one at a time, before it is
    /// discarded (a trap, a timeout, a memory kill or an idle spell
    /// discard it sooner): a guest's global state lives across them.
    /// Absent: a fresh instance per request. Absent from the canonical
    /// bytes when unset, so older digests hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
}

fn default_memory_mb() -> u64 {
    DEFAULT_MEMORY_MB
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mb: DEFAULT_MEMORY_MB,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_concurrency: None,
            instance_reuse: None,
        }
    }
}

/// What the function asks to be allowed to do; the runtime enforces it
/// (see [`crate::capabilities`]): outbound requests only to these hosts,
/// only these config keys (and secrets) in its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub outbound_hosts: Vec<String>,
    #[serde(default)]
    pub config_keys: Vec<String>,
    /// Queues the function may publish events to (an outbound request to
    /// `http://events.seal.internal/<queue>`). Left out of the canonical
    /// bytes when empty, so older digests hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// Feature flags the function may evaluate (OFREP requests to
    /// `http://flags.seal.internal`). Left out of the canonical bytes when
    /// empty, so older digests hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// Where the artifact came from. Filled in by `seal publish`; never a
/// timestamp, so that packing stays deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<String>,
}

impl SealManifest {
    pub fn new(name: &str) -> Self {
        Self {
            schema: 1,
            name: name.to_owned(),
            description: None,
            tags: Vec::new(),
            limits: Limits::default(),
            capabilities: Capabilities::default(),
            events: EventContracts::default(),
            provenance: Provenance::default(),
        }
    }

    /// Checks every field a user can get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.schema != 1 {
            return Err(ArtifactError::InvalidManifest(format!(
                "unsupported manifest schema {} (this Seal reads schema 1)",
                self.schema
            )));
        }
        validate_function_name(&self.name)?;
        let l = &self.limits;
        if l.memory_mb == 0 || l.memory_mb > MAX_MEMORY_MB {
            return Err(ArtifactError::InvalidManifest(format!(
                "limits.memory_mb must be between 1 and {MAX_MEMORY_MB}, got {}",
                l.memory_mb
            )));
        }
        if l.timeout_ms == 0 || l.timeout_ms > MAX_TIMEOUT_MS {
            return Err(ArtifactError::InvalidManifest(format!(
                "limits.timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, got {}",
                l.timeout_ms
            )));
        }
        if let Some(n) = l.max_concurrency
            && (n == 0 || n > MAX_CONCURRENCY)
        {
            return Err(ArtifactError::InvalidManifest(format!(
                "limits.max_concurrency must be between 1 and {MAX_CONCURRENCY}, got {n}"
            )));
        }
        if let Some(n) = l.instance_reuse
            && (n == 0 || n > MAX_INSTANCE_REUSE)
        {
            return Err(ArtifactError::InvalidManifest(format!(
                "limits.instance_reuse must be between 1 and {MAX_INSTANCE_REUSE} invocations per instance, got {n}"
            )));
        }
        for host in &self.capabilities.outbound_hosts {
            crate::capabilities::HostPattern::parse(host).map_err(|e| {
                ArtifactError::InvalidManifest(format!("capabilities.outbound_hosts: {e}"))
            })?;
        }
        for key in self.capabilities.config_keys.iter().filter(|k| *k != "*") {
            crate::capabilities::validate_config_key(key).map_err(|e| {
                ArtifactError::InvalidManifest(format!("capabilities.config_keys: {e}"))
            })?;
        }
        for queue in &self.capabilities.queues {
            validate_function_name(queue).map_err(|e| {
                ArtifactError::InvalidManifest(format!(
                    "capabilities.queues: queue {queue:?}: {}",
                    match e {
                        ArtifactError::InvalidName { reason, .. } => reason.to_owned(),
                        other => other.to_string(),
                    }
                ))
            })?;
        }
        for flag in &self.capabilities.flags {
            crate::capabilities::validate_flag_key(flag)
                .map_err(|e| ArtifactError::InvalidManifest(format!("capabilities.flags: {e}")))?;
        }
        self.events
            .validate()
            .map_err(ArtifactError::InvalidManifest)?;
        if let Some(tag) = self.tags.iter().find(|t| t.is_empty() || t.len() > 64) {
            return Err(ArtifactError::InvalidManifest(format!(
                "tag {tag:?} must be 1 to 64 characters"
            )));
        }
        Ok(())
    }

    /// The canonical bytes stored as the config blob.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // Serialising plain structs, strings and BTreeMaps cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError::InvalidManifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }
}

/// Function names: `[a-z][a-z0-9-]{0,62}`, so they are safe in URLs, host
/// names (`<fn>.<env>.localhost`) and file names.
/// Environment names follow the function-name rule: they appear in host
/// names (`<fn>.<env>.localhost`) and URLs.
pub fn validate_environment_name(name: &str) -> Result<()> {
    validate_function_name(name).map_err(|e| match e {
        ArtifactError::InvalidName { name, reason } => {
            ArtifactError::InvalidEnvironment { name, reason }
        }
        other => other,
    })
}

pub fn validate_function_name(name: &str) -> Result<()> {
    let fail = |reason| {
        Err(ArtifactError::InvalidName {
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty");
    }
    if name.len() > 63 {
        return fail("it is longer than 63 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("it must start with a lowercase letter a-z");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase letters, digits and '-' are allowed");
    }
    if name.ends_with('-') || name.contains("--") {
        return fail("it may not end with '-' or contain '--'");
    }
    Ok(())
}

/// `seal.toml`: how a function project is built and what goes in its manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub build: ProjectBuild,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub events: ProjectEvents,
}

/// `[events.consumes."order.created"] schema = "schemas/order.json"`: the
/// schema files are read at publish and packed into the manifest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectEvents {
    #[serde(default)]
    pub consumes: BTreeMap<String, ProjectContract>,
    #[serde(default)]
    pub produces: BTreeMap<String, ProjectContract>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectContract {
    /// Path of a JSON Schema file, relative to the project directory.
    pub schema: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectBuild {
    /// Shell command run in the project directory, e.g.
    /// `cargo build --release --target wasm32-wasip2`.
    #[serde(default)]
    pub command: Option<String>,
    /// Path of the built component, relative to the project directory.
    pub component: String,
}

impl ProjectFile {
    pub fn parse(text: &str) -> Result<Self> {
        let p: Self =
            toml::from_str(text).map_err(|e| ArtifactError::InvalidManifest(e.to_string()))?;
        Ok(p)
    }

    /// The manifest this project produces (before provenance is added).
    /// `read` gives the bytes of a schema file named in `[events]`.
    pub fn to_manifest(
        &self,
        mut read: impl FnMut(&str) -> std::io::Result<Vec<u8>>,
    ) -> Result<SealManifest> {
        let mut events = EventContracts::default();
        for (side, from, to) in [
            ("consumes", &self.events.consumes, &mut events.consumes),
            ("produces", &self.events.produces, &mut events.produces),
        ] {
            for (ty, contract) in from {
                let fail = |why: String| {
                    ArtifactError::InvalidManifest(format!(
                        "events.{side}.{ty:?}: schema {}: {why}",
                        contract.schema
                    ))
                };
                let bytes = read(&contract.schema).map_err(|e| fail(e.to_string()))?;
                let schema =
                    serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))?;
                to.insert(ty.clone(), schema);
            }
        }
        Ok(SealManifest {
            schema: 1,
            name: self.name.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            limits: self.limits.clone(),
            capabilities: self.capabilities.clone(),
            events,
            provenance: Provenance {
                build_command: self.build.command.clone(),
                ..Provenance::default()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_files(path: &str) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(std::io::ErrorKind::NotFound, path))
    }

    #[test]
    fn schema_files_are_packed_into_the_manifest() {
        let p = ProjectFile::parse(
            "name = \"billing\"\n[build]\ncomponent = \"x.wasm\"\n\
             [capabilities]\nqueues = [\"invoices\"]\n\
             [events.consumes.\"order.created\"]\nschema = \"order.json\"\n",
        )
        .unwrap();
        let m = p
            .to_manifest(|path| {
                assert_eq!(path, "order.json");
                Ok(br#"{"type": "object", "required": ["id"]}"#.to_vec())
            })
            .unwrap();
        assert_eq!(m.events.consumes["order.created"]["required"][0], "id");
        assert_eq!(m.capabilities.queues, ["invoices"]);
        m.validate().unwrap();
        assert_eq!(SealManifest::from_json(&m.to_canonical_json()).unwrap(), m);
        // A missing file, a file that is not JSON, a schema that is not
        // JSON Schema: each named.
        let e = p.to_manifest(no_files).unwrap_err().to_string();
        assert!(
            e.contains("order.json") && e.contains("order.created"),
            "{e}"
        );
        let e = p
            .to_manifest(|_| Ok(b"{nope".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not JSON"), "{e}");
        let m = p.to_manifest(|_| Ok(br#"{"type": 12}"#.to_vec())).unwrap();
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("not a valid JSON Schema"), "{e}");
        let mut bad = SealManifest::new("billing");
        bad.capabilities.queues = vec!["Orders!".into()];
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("capabilities.queues"), "{e}");
    }

    #[test]
    fn a_manifest_without_contracts_keeps_its_bytes() {
        let m = SealManifest::new("hello");
        let text = String::from_utf8(m.to_canonical_json()).unwrap();
        assert!(text.contains(r#""events":{}"#), "{text}");
        assert!(!text.contains("queues"), "{text}");
    }

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "hello", "hello-world", "h2", &"a".repeat(63)] {
            assert!(validate_function_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "Hello",
            "1abc",
            "-a",
            "a-",
            "a--b",
            "a_b",
            "a.b",
            &"a".repeat(64),
            &"a".repeat(200),
        ] {
            assert!(validate_function_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_json_is_stable_and_round_trips() {
        let mut m = SealManifest::new("hello");
        m.tags = vec!["x".into()];
        m.events.consumes.insert(
            "order.created".into(),
            serde_json::json!({"type": "object"}),
        );
        let a = m.to_canonical_json();
        assert_eq!(a, m.clone().to_canonical_json());
        assert_eq!(SealManifest::from_json(&a).unwrap(), m);
    }

    #[test]
    fn project_file_parses_and_rejects_typos() {
        let p = ProjectFile::parse(
            "name = \"hello\"\n[build]\ncomponent = \"x.wasm\"\n[limits]\nmemory_mb = 64\n",
        )
        .unwrap();
        assert_eq!(p.to_manifest(no_files).unwrap().limits.memory_mb, 64);
        assert_eq!(
            p.to_manifest(no_files).unwrap().limits.timeout_ms,
            DEFAULT_TIMEOUT_MS
        );
        let err = ProjectFile::parse("name = \"hello\"\nbulid = 1\n").unwrap_err();
        assert!(err.to_string().contains("bulid"), "{err}");
    }

    #[test]
    fn limits_are_bounded() {
        let mut m = SealManifest::new("hello");
        m.limits.memory_mb = 0;
        assert!(m.validate().is_err());
        m.limits.memory_mb = 128;
        m.limits.timeout_ms = MAX_TIMEOUT_MS + 1;
        assert!(m.validate().is_err());
    }

    #[test]
    fn max_concurrency_is_optional_bounded_and_out_of_old_digests() {
        let m = SealManifest::new("hello");
        // Unset: the canonical bytes do not name it (older digests hold).
        assert!(
            !String::from_utf8(m.to_canonical_json())
                .unwrap()
                .contains("max_concurrency")
        );
        let p = ProjectFile::parse(
            "name = \"hello\"\n[build]\ncomponent = \"x.wasm\"\n[limits]\nmax_concurrency = 8\n",
        )
        .unwrap();
        let m = p.to_manifest(no_files).unwrap();
        assert_eq!(m.limits.max_concurrency, Some(8));
        assert_eq!(SealManifest::from_json(&m.to_canonical_json()).unwrap(), m);
        for bad in [0, MAX_CONCURRENCY + 1] {
            let mut m = m.clone();
            m.limits.max_concurrency = Some(bad);
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains("limits.max_concurrency"), "{e}");
        }
    }

    #[test]
    fn instance_reuse_is_optional_bounded_and_out_of_old_digests() {
        let m = SealManifest::new("hello");
        assert!(
            !String::from_utf8(m.to_canonical_json())
                .unwrap()
                .contains("instance_reuse")
        );
        let p = ProjectFile::parse(
            "name = \"hello\"\n[build]\ncomponent = \"x.wasm\"\n[limits]\ninstance_reuse = 1000\n",
        )
        .unwrap();
        let m = p.to_manifest(no_files).unwrap();
        assert_eq!(m.limits.instance_reuse, Some(1000));
        let bytes = m.to_canonical_json();
        assert!(
            String::from_utf8(bytes.clone())
                .unwrap()
                .contains("\"instance_reuse\":1000")
        );
        assert_eq!(SealManifest::from_json(&bytes).unwrap(), m);
        for bad in [0, MAX_INSTANCE_REUSE + 1] {
            let mut m = m.clone();
            m.limits.instance_reuse = Some(bad);
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains("limits.instance_reuse"), "{e}");
        }
    }
}
