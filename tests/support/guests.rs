//! Guest components built from source for wasm32-wasip2, once per test
//! binary. Shared by the end-to-end harness and the crate tests of
//! `seal-server` (included there with `#[path]`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root: the nearest ancestor of this crate holding
/// `tests/guests`.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("tests/guests/Cargo.toml").exists())
        .expect("the repository root above CARGO_MANIFEST_DIR")
        .to_owned()
}

/// Builds a guest workspace once per test binary and returns its release dir.
fn build_wasm_workspace(dir: &str, cell: &'static OnceLock<PathBuf>) -> PathBuf {
    cell.get_or_init(|| {
        let manifest = repo().join(dir).join("Cargo.toml");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(&manifest)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo for guests");
        assert!(status.success(), "building {dir} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`)");
        repo().join(dir).join("target/wasm32-wasip2/release")
    })
    .clone()
}

/// Path of a test guest component (`echo`, `fail`, `slow`, `trap`, `spin`, `memhog`, `cli`).
pub fn guest(name: &str) -> PathBuf {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    let dir = build_wasm_workspace("tests/guests", &CELL);
    if name == "cli" {
        dir.join("guest-cli.wasm")
    } else {
        dir.join(format!("guest_{name}.wasm"))
    }
}

/// Makes sure `examples/` is built (the CLI builds it too, through seal.toml).
pub fn example_component(name: &str) -> PathBuf {
    static CELL: OnceLock<PathBuf> = OnceLock::new();
    build_wasm_workspace("examples", &CELL).join(format!("{name}.wasm"))
}
