//! One module per verb group.

pub mod access;
pub mod capture;
pub mod cluster;
pub mod deploy;
pub mod desired;
pub mod events;
pub mod flags;
pub mod observe;
pub mod promotion;
pub mod publish;
pub mod query;
pub mod rollout;
pub mod server;
pub mod settings;
pub mod trust;
