//! The control plane: the publish and deploy engine ([`engine`]), the JSON
//! API under `/v1` ([`api`]), and the server's composition root
//! ([`server::start`]).
//!
//! Invariants:
//! - a route changes only through a deployment, and the deployment, its
//!   events and an audit entry are committed to the state store *before*
//!   the gateway's route table is swapped;
//! - a version is loaded (and so its artifact verified) before any
//!   deployment names it;
//! - every digest a client sends is recomputed here; nothing a client
//!   claims about content is trusted.

pub mod api;
pub mod auth;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod monitoring;
mod observe_api;
pub mod rollout;
mod security_api;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod trust;
mod usage;

pub use engine::{Control, Published};
pub use error::ApiError;
pub use server::{RunningServer, ServerConfig, start};
