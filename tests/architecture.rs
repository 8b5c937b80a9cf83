//! The crate dependency rules of `ARCHITECTURE.md`, checked against
//! `cargo metadata`, so a change that breaks one fails CI (the way
//! rust-analyzer's tidy tests keep its invariants).

use std::collections::{BTreeMap, BTreeSet};

/// Each workspace package and the packages it depends on directly (normal
/// dependencies; dev and build dependencies are not part of its API).
fn workspace() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut packages = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().expect("name").to_owned())
            .collect();
        packages.insert(p["name"].as_str().expect("name").to_owned(), deps);
    }
    packages
}

fn deps<'a>(ws: &'a BTreeMap<String, BTreeSet<String>>, name: &str) -> &'a BTreeSet<String> {
    ws.get(name)
        .unwrap_or_else(|| panic!("{name} is not a workspace package"))
}

/// Packages of the workspace that depend directly on `dep`.
fn dependents(ws: &BTreeMap<String, BTreeSet<String>>, dep: &str) -> BTreeSet<String> {
    ws.iter()
        .filter(|(_, d)| d.contains(dep))
        .map(|(n, _)| n.clone())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn api_types_depend_on_no_seal_crate() {
    let ws = workspace();
    let seal: Vec<_> = deps(&ws, "seal-api-types")
        .iter()
        .filter(|d| d.starts_with("seal"))
        .collect();
    assert!(seal.is_empty(), "seal-api-types depends on {seal:?}");
}

#[test]
fn the_domain_knows_no_http_server_sql_driver_or_wasm_engine() {
    let ws = workspace();
    let control = deps(&ws, "seal-control");
    for forbidden in [
        "axum",
        "hyper",
        "hyper-util",
        "sqlx",
        "wasmtime",
        "wasmtime-wasi",
        "wasmtime-wasi-http",
        "seal-gateway",
        "seal-api",
        "seal-server",
    ] {
        assert!(
            !control.contains(forbidden),
            "seal-control depends on {forbidden}"
        );
    }
}

#[test]
fn only_the_api_crate_depends_on_axum() {
    let ws = workspace();
    assert_eq!(dependents(&ws, "axum"), set(&["seal-api"]));
}

#[test]
fn only_the_composition_root_names_the_gateway_and_the_api() {
    let ws = workspace();
    assert_eq!(dependents(&ws, "seal-gateway"), set(&["seal-server"]));
    assert_eq!(dependents(&ws, "seal-api"), set(&["seal-server"]));
    // The CLI reaches the server only through the composition root and
    // the wire types.
    let cli = deps(&ws, "seal");
    for inner in [
        "seal-control",
        "seal-state",
        "seal-oci",
        "seal-runtime",
        "seal-serving",
    ] {
        assert!(!cli.contains(inner), "the CLI depends on {inner}");
    }
}

#[test]
fn serving_has_no_listener_and_no_control_plane() {
    let ws = workspace();
    let serving = deps(&ws, "seal-serving");
    for forbidden in [
        "hyper",
        "hyper-util",
        "axum",
        "wasmtime",
        "wasmtime-wasi-http",
        "seal-control",
        "seal-state",
        "seal-gateway",
    ] {
        assert!(
            !serving.contains(forbidden),
            "seal-serving depends on {forbidden}"
        );
    }
    let gateway = deps(&ws, "seal-gateway");
    for forbidden in ["seal-control", "seal-state", "seal-oci"] {
        assert!(
            !gateway.contains(forbidden),
            "seal-gateway depends on {forbidden}: it must not know where routes come from"
        );
    }
}

#[test]
fn event_triggers_sit_beside_the_gateway_on_the_serving_layer() {
    let ws = workspace();
    let events = deps(&ws, "seal-events");
    for forbidden in [
        "hyper",
        "hyper-util",
        "axum",
        "sqlx",
        "wasmtime",
        "wasmtime-wasi-http",
        "seal-control",
        "seal-state",
        "seal-gateway",
        "seal-api",
    ] {
        assert!(
            !events.contains(forbidden),
            "seal-events depends on {forbidden}: it runs one attempt through the serving layer, nothing more"
        );
    }
    assert!(events.contains("seal-serving"));
    for inner in ["seal-gateway", "seal-serving"] {
        assert!(
            !deps(&ws, inner).contains("seal-events"),
            "{inner} depends on seal-events: triggers go beside the gateway, not inside it or under it"
        );
    }
}

#[test]
fn pure_crates_stay_pure() {
    let ws = workspace();
    for pure in ["seal-artifact", "seal-trust", "seal-flags"] {
        let d = deps(&ws, pure);
        for io in ["tokio", "sqlx", "axum", "hyper", "reqwest", "wasmtime"] {
            assert!(!d.contains(io), "{pure} depends on {io}");
        }
        let seal: BTreeSet<_> = d.iter().filter(|n| n.starts_with("seal")).collect();
        assert!(
            seal.iter().all(|n| *n == "seal-artifact"),
            "{pure} depends on {seal:?}"
        );
    }
}

#[test]
fn the_state_model_knows_no_sql_driver_and_backends_are_picked_at_the_root() {
    let ws = workspace();
    let state = deps(&ws, "seal-state");
    assert!(!state.contains("sqlx"), "seal-state depends on sqlx");
    // The wire enums (deployment state, kind, strategy) are its only Seal
    // dependency: serde-only types that depend on nothing of Seal's.
    assert!(
        state
            .iter()
            .all(|d| !d.starts_with("seal") || d == "seal-api-types"),
        "seal-state depends on {state:?}"
    );
    assert_eq!(dependents(&ws, "seal-state-sqlite"), set(&["seal-server"]));
    assert_eq!(
        dependents(&ws, "seal-state-postgres"),
        set(&["seal-server"])
    );
    assert_eq!(
        dependents(&ws, "sqlx"),
        set(&["seal-state-sqlite", "seal-state-postgres", "seal-state-sql"])
    );
    // What the SQL backends share (rows, their records, the audit check)
    // is theirs alone.
    assert_eq!(
        dependents(&ws, "seal-state-sql"),
        set(&["seal-state-sqlite", "seal-state-postgres"])
    );
    // Backends are siblings: neither knows the other.
    assert!(!deps(&ws, "seal-state-sqlite").contains("seal-state-postgres"));
    assert!(!deps(&ws, "seal-state-postgres").contains("seal-state-sqlite"));
}

#[test]
fn the_artifact_backends_are_siblings_picked_at_the_root() {
    let ws = workspace();
    // The registry store implements seal-oci's port over a cache that is
    // any other store (the layout, handed in at the root).
    assert_eq!(dependents(&ws, "seal-oci-registry"), set(&["seal-server"]));
    assert_eq!(dependents(&ws, "oci-client"), set(&["seal-oci-registry"]));
    let registry = deps(&ws, "seal-oci-registry");
    assert!(registry.contains("seal-oci"));
    for forbidden in ["seal-control", "seal-state", "seal-runtime", "seal-serving"] {
        assert!(
            !registry.contains(forbidden),
            "seal-oci-registry depends on {forbidden}: it stores bytes, nothing more"
        );
    }
    assert!(!deps(&ws, "seal-oci").contains("seal-oci-registry"));
}

#[test]
fn the_queue_backends_are_siblings_picked_at_the_root() {
    let ws = workspace();
    // The NATS queues implement seal-state's `Queues` port; the control
    // plane sees the port, the root picks the backend.
    assert_eq!(dependents(&ws, "seal-queues-nats"), set(&["seal-server"]));
    assert_eq!(dependents(&ws, "async-nats"), set(&["seal-queues-nats"]));
    let nats = deps(&ws, "seal-queues-nats");
    assert!(nats.contains("seal-state"));
    for forbidden in [
        "seal-control",
        "seal-runtime",
        "seal-serving",
        "seal-state-sqlite",
        "seal-state-postgres",
    ] {
        assert!(
            !nats.contains(forbidden),
            "seal-queues-nats depends on {forbidden}: it keeps events, nothing more"
        );
    }
}

/// Source files of a crate (`crates/<name>/src/**.rs`).
fn sources(krate: &str) -> Vec<(std::path::PathBuf, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates")
            .join(krate)
            .join("src"),
        &mut out,
    );
    out
}

#[test]
fn only_the_composition_root_names_the_concrete_stores() {
    let ws = workspace();
    // (type, the crate that defines it)
    let concrete = [
        ("SqliteStore", "seal-state-sqlite"),
        ("PostgresStore", "seal-state-postgres"),
        ("OciLayout", "seal-oci"),
        ("RegistryStore", "seal-oci-registry"),
        ("NatsQueues", "seal-queues-nats"),
        ("Gateway", "seal-gateway"),
        // The control plane loads functions through `seal_runtime::Loader`.
        ("Runtime", "seal-runtime"),
    ];
    for krate in ws.keys().filter(|k| k.starts_with("seal-")) {
        if krate == "seal-server" {
            continue;
        }
        for (ty, owner) in concrete {
            if krate == owner {
                continue;
            }
            for (path, text) in sources(krate) {
                let named = text.lines().any(|l| {
                    let code = l.split("//").next().unwrap_or("");
                    code.split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|word| word == ty)
                });
                assert!(!named, "{} names {ty}", path.display());
            }
        }
    }
}

/// The signatures of a crate's `pub fn`s (from `pub` to the opening brace).
fn public_signatures(krate: &str) -> Vec<(std::path::PathBuf, String)> {
    let mut out = Vec::new();
    for (path, text) in sources(krate) {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let mut rest = code.as_str();
        while let Some(at) = rest.find("pub ") {
            let tail = &rest[at..];
            let head = tail.trim_start_matches("pub ").trim_start_matches("async ");
            if head.starts_with("fn ") {
                let end = tail.find(['{', ';']).unwrap_or(tail.len());
                out.push((path.clone(), tail[..end].to_owned()));
            }
            rest = &rest[at + 4..];
        }
    }
    out
}

#[test]
fn the_domain_answers_with_types_not_json_values() {
    let signatures = public_signatures("seal-control");
    assert!(
        signatures.len() > 50,
        "found only {} public functions in seal-control",
        signatures.len()
    );
    for (path, sig) in signatures {
        let words: Vec<&str> = sig
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .collect();
        assert!(
            !words.contains(&"Value"),
            "{}: `{}` takes or returns a serde_json::Value; give it a type (seal-api-types for wire answers)",
            path.display(),
            sig.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
