//! The runtime: runs sealed components in wasmtime.
//!
//! One [`Engine`](wasmtime::Engine) (pooling allocator, epoch interruption)
//! and one [`Linker`](wasmtime::component::Linker) serve every function. A
//! component is compiled once, at publish time, and its compiled form cached
//! on disk by artifact digest; a [`Function`] holds the pre-instantiated
//! component (`ProxyPre`) and its limits, and every request gets a fresh
//! `Store`.
//!
//! Invariants:
//! - nothing is compiled on the request path;
//! - a cached compiled file is deserialized only after its sha256 matches
//!   the one recorded when it was compiled (wasmtime trusts what it
//!   deserializes); otherwise the caller recompiles from the verified blob;
//! - a trap, a timeout or an out-of-memory ends that one request with an
//!   [`InvokeError`]; the engine and every other request carry on;
//! - a guest's outbound HTTP request leaves only for a host its manifest
//!   allows ([`FunctionLimits::outbound_hosts`]); any other is answered
//!   inside the guest with `HTTP-request-denied` before a socket is opened.
//!
//! This crate knows nothing of routes, versions or databases.
//!
//! Layout (the modules are private; every public item is re-exported
//! here, at the path it always had): `engine` builds the engine and linker
//! and turns a digest into a ready [`Function`], through the on-disk compile
//! cache in `cache`; `function` runs one request in a fresh store whose
//! state is `host`'s `Host`, holding the memory limiter from `limits`, the
//! request gate from `outbound` and the guest output from `stdio`;
//! `observer` is what the runtime tells the embedder about an invocation,
//! and `error` how loading and invoking fail.

mod cache;
mod engine;
mod error;
mod function;
mod host;
mod lane;
mod limits;
mod observer;
mod outbound;
mod stdio;
#[cfg(test)]
mod testing;

pub use engine::{ComponentSource, EPOCH_TICK, Loader, Runtime, RuntimeConfig, RuntimeStats};
pub use error::{InvokeError, Result, RuntimeError};
pub use function::{Env, Function, LoadTimings, full_body};
pub use lane::{CpuLane, HEAVY_NICE, LIGHT_GROWTH, LIGHT_TICKS};
pub use limits::FunctionLimits;
pub use observer::{
    EVENTS_AUTHORITY, Emitter, FLAGS_AUTHORITY, FlagEvaluator, InvocationObserver, InvocationReport,
};
pub use stdio::GuestStream;

pub use seal_artifact::capabilities::{HostPattern, config_key_allowed};
/// What a request body's errors must convert into for a guest to read it.
pub use wasmtime_wasi_http::Error as BodyError;
pub use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
