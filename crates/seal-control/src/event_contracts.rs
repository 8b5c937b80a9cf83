//! The event contracts of versions, compiled once per artifact digest.
//! An event whose type the version picked to consume it declares is
//! checked against that version's schema before it is handed over; one
//! that fails is dead-lettered with reason `schema` and never reaches the
//! function. An event a function publishes, of a type its manifest says
//! it produces, is checked against that schema before it is enqueued; one
//! that fails is refused to the function and never enters the queue.

use crate::error::{ControlError, ControlResult};
use seal_artifact::SealManifest;
use seal_artifact::contracts::{Schema, compile};
use seal_events::{AttributesReader, Data, Event};
use seal_state::StateStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Event type → compiled schema, both directions of one artifact.
#[derive(Default)]
struct Compiled {
    consumes: HashMap<String, Schema>,
    produces: HashMap<String, Schema>,
}

/// Which side of a contract an event is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Consumes,
    Produces,
}

pub(crate) struct ContractCache {
    state: Arc<dyn StateStore>,
    /// By artifact digest: bytes under a digest never change, so neither
    /// do their contracts.
    by_digest: Mutex<HashMap<String, Arc<Compiled>>>,
}

impl ContractCache {
    pub(crate) fn new(state: Arc<dyn StateStore>) -> Self {
        Self {
            state,
            by_digest: Mutex::default(),
        }
    }

    async fn compiled(
        &self,
        function: &str,
        version: u64,
        digest: &str,
    ) -> ControlResult<Arc<Compiled>> {
        if let Some(c) = crate::events::lock(&self.by_digest).get(digest) {
            return Ok(c.clone());
        }
        let Some(v) = self.state.version(function, version).await? else {
            return Err(ControlError::NotFound(format!(
                "{function}@{version} is not published"
            )));
        };
        let manifest: SealManifest =
            serde_json::from_value(v.manifest).map_err(ControlError::internal)?;
        let mut compiled = Compiled::default();
        for (side, declared, into) in [
            (
                "consumes",
                &manifest.events.consumes,
                &mut compiled.consumes,
            ),
            (
                "produces",
                &manifest.events.produces,
                &mut compiled.produces,
            ),
        ] {
            for (ty, schema) in declared {
                // Checked at publish; a schema that no longer compiles (a
                // stricter library) is a server fault, not the event's.
                let s = compile(schema).map_err(|e| {
                    ControlError::internal(format!(
                        "{function}@{version} {side} schema of {ty}: {e}"
                    ))
                })?;
                into.insert(ty.clone(), s);
            }
        }
        let compiled = Arc::new(compiled);
        crate::events::lock(&self.by_digest).insert(digest.to_owned(), compiled.clone());
        Ok(compiled)
    }

    /// `Ok(Err(why))` when `event` breaks the contract a version declares
    /// for its type on `side`; `Ok(Ok(()))` when it keeps it or its type
    /// has none.
    pub(crate) async fn check(
        &self,
        side: Side,
        function: &str,
        version: u64,
        digest: &str,
        event: &Event,
    ) -> ControlResult<Result<(), String>> {
        let compiled = self.compiled(function, version, digest).await?;
        let schemas = match side {
            Side::Consumes => &compiled.consumes,
            Side::Produces => &compiled.produces,
        };
        let Some(schema) = schemas.get(event.ty()) else {
            return Ok(Ok(()));
        };
        let data = match event.data() {
            None => serde_json::Value::Null,
            Some(Data::Json(v)) => v.clone(),
            Some(Data::String(s)) => match serde_json::from_str(s) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("data is not JSON: {e}"))),
            },
            Some(Data::Binary(b)) => match serde_json::from_slice(b) {
                Ok(v) => v,
                Err(e) => return Ok(Err(format!("data is not JSON: {e}"))),
            },
        };
        Ok(schema.check(&data).map_err(|e| {
            format!(
                "{} does not match the schema {function}@{version} declares for it ({}): {e}",
                event.ty(),
                match side {
                    Side::Consumes => "consumes",
                    Side::Produces => "produces",
                }
            )
        }))
    }
}
