//! The existence checks every service makes before it changes anything:
//! a typo must neither create a function or environment nor reach one
//! that is not there.

use crate::error::{ControlError, ControlResult};
use seal_state::{StateStore, VersionRecord};

/// `NotFound` unless the function exists.
pub(crate) async fn function_must_exist(
    state: &dyn StateStore,
    function: &str,
) -> ControlResult<()> {
    if state.function_exists(function).await? {
        Ok(())
    } else {
        Err(ControlError::not_found(format!(
            "unknown function {function:?}"
        )))
    }
}

/// `UnknownEnvironment` (naming the ones there are) unless `env` exists.
pub(crate) async fn environment_must_exist(state: &dyn StateStore, env: &str) -> ControlResult<()> {
    if state.environment_exists(env).await? {
        return Ok(());
    }
    Err(ControlError::UnknownEnvironment {
        name: env.to_owned(),
        known: state.environments().await?,
    })
}

/// The version record, `NotFound` unless the function and the version exist.
pub(crate) async fn version_must_exist(
    state: &dyn StateStore,
    function: &str,
    version: u64,
) -> ControlResult<VersionRecord> {
    function_must_exist(state, function).await?;
    state
        .version(function, version)
        .await?
        .ok_or_else(|| ControlError::not_found(format!("{function} has no version {version}")))
}
