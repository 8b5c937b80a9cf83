//! in-toto Statement v1 with an SLSA Provenance v1 predicate.

use crate::{Result, TrustError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA Provenance v1.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// `buildType` of artifacts built by Seal from a `seal.toml` project.
pub const BUILD_TYPE: &str = "https://seal.dev/build/cargo-component/v1";
/// `buildType` of artifacts published from a ready-made `.wasm` component.
pub const BUILD_TYPE_PREBUILT: &str = "https://seal.dev/build/prebuilt-wasm/v1";

/// What the builder knows about one build; becomes the statement.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    /// The function name, used as the statement's subject name.
    pub function: String,
    /// The artifact (OCI manifest) digest.
    pub subject: seal_artifact::Digest,
    /// [`BUILD_TYPE`], [`BUILD_TYPE_PREBUILT`] or another URI.
    pub build_type: String,
    /// Where the source came from, e.g. `git+https://example.org/team/hello`.
    pub source: Option<String>,
    /// The source revision (git commit sha).
    pub commit: Option<String>,
    pub build_command: Option<String>,
    /// The project path relative to the source root, when known.
    pub project: Option<String>,
    pub resolved_dependencies: Vec<ResolvedDependency>,
    /// e.g. `https://seal.dev/builder/seal-cli@0.1.0`.
    pub builder_id: String,
    pub started_on: SystemTime,
    pub finished_on: SystemTime,
}

/// One SLSA `ResourceDescriptor` in `resolvedDependencies`:
/// `{"uri": .., "digest": {"sha256": ..}}` (digest omitted when unknown).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "ResourceDescriptor", from = "ResourceDescriptor")]
pub struct ResolvedDependency {
    pub uri: String,
    pub digest_sha256: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ResourceDescriptor {
    #[serde(default)]
    uri: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    digest: BTreeMap<String, String>,
}

impl From<ResolvedDependency> for ResourceDescriptor {
    fn from(d: ResolvedDependency) -> Self {
        Self {
            uri: d.uri,
            digest: d
                .digest_sha256
                .map(|h| BTreeMap::from([("sha256".to_owned(), h)]))
                .unwrap_or_default(),
        }
    }
}

impl From<ResourceDescriptor> for ResolvedDependency {
    fn from(mut r: ResourceDescriptor) -> Self {
        Self {
            uri: r.uri,
            digest_sha256: r.digest.remove("sha256"),
        }
    }
}

#[derive(Deserialize)]
struct CargoLock {
    #[serde(default)]
    package: Vec<CargoPackage>,
}

#[derive(Deserialize)]
struct CargoPackage {
    name: String,
    version: String,
    #[serde(default)]
    checksum: Option<String>,
}

/// The packages of a `Cargo.lock` as resolved dependencies: one entry per
/// `[[package]]`, uri `pkg:cargo/<name>@<version>`, digest = its `checksum`
/// (registry packages; path and git packages have none). Sorted and
/// deduplicated, so the same lock file always gives the same list.
pub fn cargo_lock_dependencies(lock: &str) -> Result<Vec<ResolvedDependency>> {
    let lock: CargoLock = toml::from_str(lock).map_err(|e| TrustError::CargoLock(e.to_string()))?;
    let mut deps = Vec::with_capacity(lock.package.len());
    for p in lock.package {
        if !valid_package_part(&p.name) || !valid_package_part(&p.version) {
            return Err(TrustError::CargoLock(format!(
                "package {:?} version {:?} is not a valid name and version",
                p.name, p.version
            )));
        }
        if let Some(sum) = &p.checksum
            && (sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(TrustError::CargoLock(format!(
                "checksum of {} {} is not a sha256 hex digest",
                p.name, p.version
            )));
        }
        deps.push(ResolvedDependency {
            uri: format!("pkg:cargo/{}@{}", p.name, p.version),
            digest_sha256: p.checksum.map(|s| s.to_ascii_lowercase()),
        });
    }
    deps.sort();
    deps.dedup();
    Ok(deps)
}

/// Cargo package names and versions never need percent-encoding in a purl;
/// anything else is not a real Cargo.lock.
fn valid_package_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// RFC 3339 UTC with whole seconds, e.g. `2025-01-02T03:04:05Z`. Times
/// outside 1970..=9999 are clamped (the formatter cannot render them).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    const MAX: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    humantime::format_rfc3339_seconds(UNIX_EPOCH + since.min(MAX)).to_string()
}

/// The in-toto Statement v1 for a build, with an SLSA Provenance v1
/// predicate. Absent optional fields are omitted, never `null`.
pub fn statement(info: &BuildInfo) -> Value {
    let mut external = Map::new();
    for (name, value) in [
        ("source", &info.source),
        ("commit", &info.commit),
        ("project", &info.project),
        ("buildCommand", &info.build_command),
    ] {
        if let Some(v) = value {
            external.insert(name.to_owned(), Value::String(v.clone()));
        }
    }
    let mut build_definition = Map::new();
    build_definition.insert("buildType".into(), json!(info.build_type));
    build_definition.insert("externalParameters".into(), Value::Object(external));
    if !info.resolved_dependencies.is_empty() {
        build_definition.insert(
            "resolvedDependencies".into(),
            json!(info.resolved_dependencies),
        );
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": info.function,
            "digest": { "sha256": info.subject.hex() },
        }],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": build_definition,
            "runDetails": {
                "builder": { "id": info.builder_id },
                "metadata": {
                    "startedOn": rfc3339(info.started_on),
                    "finishedOn": rfc3339(info.finished_on),
                },
            },
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn info() -> BuildInfo {
        BuildInfo {
            function: "hello".into(),
            subject: seal_artifact::sha256_digest(b"manifest"),
            build_type: BUILD_TYPE.into(),
            source: Some("git+https://example.org/team/hello".into()),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            build_command: Some("cargo component build --release".into()),
            project: None,
            resolved_dependencies: vec![ResolvedDependency {
                uri: "pkg:cargo/serde@1.0.0".into(),
                digest_sha256: Some("ab".repeat(32)),
            }],
            builder_id: "https://seal.dev/builder/seal-cli@0.1.0".into(),
            started_on: UNIX_EPOCH + Duration::from_secs(1_735_787_045),
            finished_on: UNIX_EPOCH + Duration::from_secs(1_735_787_105),
        }
    }

    #[test]
    fn statement_has_every_slsa_required_field() {
        let i = info();
        let s = statement(&i);
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["predicateType"], SLSA_PROVENANCE_V1);
        assert_eq!(s["subject"][0]["name"], "hello");
        assert_eq!(s["subject"][0]["digest"]["sha256"], i.subject.hex());
        let bd = &s["predicate"]["buildDefinition"];
        assert_eq!(bd["buildType"], BUILD_TYPE);
        assert_eq!(
            bd["externalParameters"]["source"],
            "git+https://example.org/team/hello"
        );
        assert_eq!(
            bd["externalParameters"]["commit"],
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(
            bd["externalParameters"]["buildCommand"],
            "cargo component build --release"
        );
        assert_eq!(
            bd["resolvedDependencies"],
            json!([{"uri": "pkg:cargo/serde@1.0.0", "digest": {"sha256": "ab".repeat(32)}}])
        );
        let rd = &s["predicate"]["runDetails"];
        assert_eq!(
            rd["builder"]["id"],
            "https://seal.dev/builder/seal-cli@0.1.0"
        );
        assert_eq!(rd["metadata"]["startedOn"], "2025-01-02T03:04:05Z");
        assert_eq!(rd["metadata"]["finishedOn"], "2025-01-02T03:05:05Z");
        // Absent optionals are absent, not null.
        let ext = bd["externalParameters"].as_object().unwrap();
        assert!(!ext.contains_key("project"));
    }

    #[test]
    fn statement_omits_all_absent_optionals() {
        let mut i = info();
        i.build_type = BUILD_TYPE_PREBUILT.into();
        i.source = None;
        i.commit = None;
        i.build_command = None;
        i.resolved_dependencies.clear();
        let s = statement(&i);
        let bd = s["predicate"]["buildDefinition"].as_object().unwrap();
        assert_eq!(bd["externalParameters"], json!({}));
        assert!(!bd.contains_key("resolvedDependencies"));
        assert_eq!(bd["buildType"], BUILD_TYPE_PREBUILT);
        assert!(!s.to_string().contains("null"));
    }

    #[test]
    fn times_are_rfc3339_and_clamped() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        let now = rfc3339(SystemTime::now());
        assert!(humantime::parse_rfc3339(&now).is_ok(), "{now}");
    }

    #[test]
    fn resolved_dependency_round_trips_as_resource_descriptor() {
        let d = ResolvedDependency {
            uri: "pkg:cargo/hello@0.1.0".into(),
            digest_sha256: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v, json!({"uri": "pkg:cargo/hello@0.1.0"}));
        assert_eq!(serde_json::from_value::<ResolvedDependency>(v).unwrap(), d);
    }

    const LOCK: &str = r#"
# This file is automatically @generated by Cargo.
version = 4

[[package]]
name = "serde"
version = "1.0.219"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6"
dependencies = ["serde_derive"]

[[package]]
name = "hello"
version = "0.1.0"
dependencies = ["serde"]
"#;

    #[test]
    fn cargo_lock_gives_sorted_purls_with_checksums() {
        let deps = cargo_lock_dependencies(LOCK).unwrap();
        assert_eq!(
            deps,
            vec![
                ResolvedDependency {
                    uri: "pkg:cargo/hello@0.1.0".into(),
                    digest_sha256: None,
                },
                ResolvedDependency {
                    uri: "pkg:cargo/serde@1.0.219".into(),
                    digest_sha256: Some(
                        "5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6".into()
                    ),
                },
            ]
        );
        assert_eq!(cargo_lock_dependencies(LOCK).unwrap(), deps);
        assert!(cargo_lock_dependencies("").unwrap().is_empty());
    }

    #[test]
    fn cargo_lock_rejects_garbage() {
        assert!(cargo_lock_dependencies("[[package]]\nname = 1").is_err());
        let bad_sum = "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nchecksum = \"xyz\"\n";
        let err = cargo_lock_dependencies(bad_sum).unwrap_err();
        assert!(err.to_string().contains("checksum of a 1.0.0"), "{err}");
        let bad_name = "[[package]]\nname = \"a/../b\"\nversion = \"1.0.0\"\n";
        assert!(cargo_lock_dependencies(bad_name).is_err());
    }
}
