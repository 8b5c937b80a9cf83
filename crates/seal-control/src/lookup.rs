//! The existence checks every service makes before it changes anything:
//! a typo must neither create a function or environment nor reach one
//! that is not there.

use crate::error::{ControlError, ControlResult};
use seal_state::StateStore;

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
