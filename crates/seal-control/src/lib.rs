//! The control plane, the domain only: publish and deploy ([`engine`]),
//! progressive delivery ([`rollout`]), settings, trust, tokens, usage and
//! telemetry. It knows no HTTP server, no SQL driver and no CLI: callers
//! (the API, a trigger, a reconciler) get typed [`ControlError`]s.
//!
//! Invariants:
//! - a route changes only through a deployment, and the deployment, its
//!   events and an audit entry are committed to the state store *before*
//!   the gateway's route table is swapped;
//! - a version is loaded (and so its artifact verified) before any
//!   deployment names it;
//! - every digest a client sends is recomputed here; nothing a client
//!   claims about content is trusted.

pub mod capture;
pub mod catalog;
pub mod changelog;
pub mod cluster;
pub mod desired;
pub mod drift;
pub mod engine;
pub mod error;
mod event_contracts;
pub mod events;
mod files;
pub mod flags;
pub mod holds;
mod lookup;
pub mod metrics;
pub mod monitoring;
pub mod outbound;
pub mod preview;
pub mod promotion;
pub mod protection;
pub mod queries;
pub mod redact;
pub mod rollout;
pub mod settings;
pub mod telemetry;
pub mod tokens;
pub mod trust;
pub mod usage;
pub mod verify;

pub use catalog::{Catalog, Published};
pub use engine::Control;
pub use error::{ControlError, ControlResult};
pub use tokens::{Principal, Role};
