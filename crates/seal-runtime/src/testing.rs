//! Test support shared by the modules' unit tests: tiny wasi:http proxy
//! components written in WAT (wasmtime's default `wat` feature compiles
//! them, so no guest toolchain is needed), a runtime over a temporary cache
//! and an observer that records what it is told.

use crate::error::InvokeError;
use crate::observer::{InvocationObserver, InvocationReport};
use crate::stdio::GuestStream;
use crate::{FunctionLimits, Runtime, RuntimeConfig};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A component exporting `wasi:http/incoming-handler` whose `handle` is the
/// core function exported as "handle" by `core_module` (the fields of a
/// core module). Its two parameters are the request and response-outparam
/// handles.
pub(crate) fn proxy(core_module: &str) -> Vec<u8> {
    format!(
        r#"(component
            (import "wasi:http/types@0.2.0" (instance $types
                (export "incoming-request" (type (sub resource)))
                (export "response-outparam" (type (sub resource)))))
            (alias export $types "incoming-request" (type $req))
            (alias export $types "response-outparam" (type $out))
            (core module $m {core_module})
            (core instance $i (instantiate $m))
            (func $handle (param "request" (own $req)) (param "response-out" (own $out))
                (canon lift (core func $i "handle")))
            (instance $h (export "handle" (func $handle)))
            (export "wasi:http/incoming-handler@0.2.0" (instance $h)))"#
    )
    .into_bytes()
}

/// A handler that returns without answering.
pub(crate) const RETURNS: &str = r#"(func (export "handle") (param i32 i32))"#;

pub(crate) fn runtime(dir: &tempfile::TempDir) -> Runtime {
    Runtime::new(RuntimeConfig {
        cache_dir: dir.path().join("cache"),
        max_instances: 4,
    })
    .unwrap()
}

pub(crate) fn limits(memory_bytes: u64, timeout: Duration) -> FunctionLimits {
    FunctionLimits {
        memory_bytes,
        timeout,
        outbound_hosts: Arc::new([]),
        queues: Arc::new([]),
        config_keys: Arc::new([]),
        flags: Arc::new([]),
        max_concurrency: None,
        instance_reuse: None,
    }
}

/// (compiles, cache loads) so far.
pub(crate) fn counts(rt: &Runtime) -> (u64, u64) {
    let s = rt.stats();
    (
        s.compiles.load(Ordering::Relaxed),
        s.cache_loads.load(Ordering::Relaxed),
    )
}

/// Records everything an invocation tells its observer.
#[derive(Default)]
pub(crate) struct Recorder {
    lines: Mutex<Vec<(GuestStream, String)>>,
    late: Mutex<Vec<InvokeError>>,
    reports: Mutex<Vec<InvocationReport>>,
}

impl Recorder {
    pub(crate) fn lines(&self) -> Vec<(GuestStream, String)> {
        self.lines.lock().unwrap().clone()
    }

    pub(crate) fn texts(&self) -> Vec<String> {
        self.lines().into_iter().map(|(_, l)| l).collect()
    }

    pub(crate) fn late(&self) -> Vec<InvokeError> {
        self.late.lock().unwrap().clone()
    }

    pub(crate) fn reports(&self) -> Vec<InvocationReport> {
        self.reports.lock().unwrap().clone()
    }
}

impl InvocationObserver for Recorder {
    fn guest_output(&self, stream: GuestStream, line: &str) {
        self.lines.lock().unwrap().push((stream, line.to_owned()));
    }

    fn late_failure(&self, error: &InvokeError) {
        self.late.lock().unwrap().push(error.clone());
    }

    fn finished(&self, report: InvocationReport) {
        self.reports.lock().unwrap().push(report);
    }
}
