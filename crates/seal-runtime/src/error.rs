//! How the runtime fails: [`RuntimeError`] when a component cannot be made
//! ready (compile, link, cache I/O, engine configuration), and
//! [`InvokeError`] when one invocation fails.
//!
//! They are kept apart because they are different kinds of failure: a
//! `RuntimeError` stops a version from loading at all, while an
//! `InvokeError` is that one request's failure alone and carries what the
//! gateway needs to answer it (its kind, its HTTP status, and whether it
//! counts against the function or the server).

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("failed to compile component: {0}")]
    Compile(String),
    #[error("component cannot be linked: {0}")]
    Link(String),
    #[error("compile cache I/O error at {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runtime configuration error: {0}")]
    Config(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Why one invocation failed. Each is that request's failure alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeError {
    /// The guest trapped (unreachable, panic, bad memory access, …).
    Trap(String),
    /// The guest ran past its time limit.
    Timeout(Duration),
    /// The guest tried to grow memory past its limit.
    OutOfMemory { limit_bytes: u64 },
    /// The guest returned without setting a response, or set an error code.
    NoResponse(String),
    /// Every instance slot is busy: the server is at capacity, the
    /// function did nothing wrong.
    Overloaded(String),
    /// The function has as many requests in flight in this environment as
    /// its concurrency limit allows: retry later.
    Throttled { limit: u32 },
    /// The caller hung up (closed its connection or stopped waiting)
    /// before the answer was complete; whatever the guest did after that
    /// is not held against it. Carries what ended the guest's run.
    ClientClosed(String),
    /// The host could not set up the invocation.
    Internal(String),
}

impl InvokeError {
    /// A short machine-readable kind: `trap`, `timeout`, `memory`,
    /// `no_response`, `overloaded`, `client_closed`, `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            InvokeError::Trap(_) => "trap",
            InvokeError::Timeout(_) => "timeout",
            InvokeError::OutOfMemory { .. } => "memory",
            InvokeError::NoResponse(_) => "no_response",
            InvokeError::Overloaded(_) => "overloaded",
            InvokeError::Throttled { .. } => "throttled",
            InvokeError::ClientClosed(_) => "client_closed",
            InvokeError::Internal(_) => "internal",
        }
    }

    /// Whether this failure is the function's fault (and so counts as an
    /// error of its version) rather than the server's.
    pub fn is_function_error(&self) -> bool {
        !matches!(
            self,
            InvokeError::Overloaded(_)
                | InvokeError::Throttled { .. }
                | InvokeError::ClientClosed(_)
                | InvokeError::Internal(_)
        )
    }

    /// The platform refused the request for lack of capacity (the pool, a
    /// fair share of it, or the function's own concurrency limit): neither
    /// a success nor the version's failure.
    pub fn is_overloaded(&self) -> bool {
        matches!(
            self,
            InvokeError::Overloaded(_) | InvokeError::Throttled { .. }
        )
    }

    /// What a caller of the function is told: the kind of failure and the
    /// limit it hit, never a guest backtrace or a host error chain (those
    /// go to the server log and the function's invocation log).
    pub fn public_message(&self) -> String {
        match self {
            InvokeError::Trap(_) => "function trapped".into(),
            InvokeError::Timeout(_) | InvokeError::OutOfMemory { .. } => self.to_string(),
            InvokeError::NoResponse(_) => "function did not produce a response".into(),
            InvokeError::Overloaded(_) => "server at capacity; retry later".into(),
            InvokeError::Throttled { .. } => format!("{self}; retry later"),
            InvokeError::ClientClosed(_) => "the client closed the request".into(),
            InvokeError::Internal(_) => "internal error".into(),
        }
    }

    /// The HTTP status this failure answers with.
    pub fn status(&self) -> u16 {
        match self {
            InvokeError::Timeout(_) => 504,
            InvokeError::Overloaded(_) => 503,
            InvokeError::Throttled { .. } => 429,
            // nginx's "client closed request": never sent, only recorded.
            InvokeError::ClientClosed(_) => 499,
            _ => 500,
        }
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InvokeError::Trap(m) => write!(f, "function trapped: {m}"),
            InvokeError::Timeout(d) => {
                write!(f, "function exceeded its timeout of {} ms", d.as_millis())
            }
            InvokeError::OutOfMemory { limit_bytes } => write!(
                f,
                "function exceeded its memory limit of {} MiB",
                limit_bytes >> 20
            ),
            InvokeError::NoResponse(m) => write!(f, "function did not produce a response: {m}"),
            InvokeError::Overloaded(m) => write!(f, "server at capacity: {m}"),
            InvokeError::Throttled { limit } => write!(
                f,
                "function at its concurrency limit of {limit} requests in flight"
            ),
            InvokeError::ClientClosed(m) => write!(f, "the client closed the request: {m}"),
            InvokeError::Internal(m) => write!(f, "runtime error: {m}"),
        }
    }
}
