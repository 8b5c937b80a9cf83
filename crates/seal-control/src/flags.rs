//! Feature flags, the control side: an environment's flag set (flagd
//! JSON) applied from a file or with one flag deleted, each change a
//! checked, audited revision of the whole set.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_api_types::flags::{FlagHistory, FlagList, FlagSummary, FlagsChanged};
use seal_flags::FlagSet;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// A flag file's size at most.
pub const MAX_FLAG_FILE: usize = 1024 * 1024;

impl Control {
    /// Sets what this node's guests evaluate from every environment's
    /// flags in the store (at start, after a change here, and when another
    /// node's is followed).
    pub async fn load_flags(&self) -> ControlResult<()> {
        let mut sets = HashMap::new();
        for r in self.state.all_flags().await? {
            match FlagSet::from_value(r.flags) {
                Ok(set) => {
                    sets.insert(r.environment, Arc::new(set));
                }
                Err(e) => {
                    tracing::error!(environment = %r.environment, revision = r.revision, error = %e, "a stored flag set no longer reads; its environment's guests see no flags")
                }
            }
        }
        self.serving.set_flag_sets(sets);
        Ok(())
    }

    /// The environment's current set, checked (an empty one if none).
    async fn flag_set(&self, env: &str) -> ControlResult<(FlagSet, i64)> {
        match self.state.flags(env).await? {
            Some(r) => Ok((
                FlagSet::from_value(r.flags).map_err(ControlError::internal)?,
                r.revision,
            )),
            None => Ok((FlagSet::empty(), 0)),
        }
    }

    /// `seal flags apply FILE`: the file's flags added to the environment's
    /// set, replacing those of the same key. A file that is not valid
    /// flagd JSON is refused by name, and nothing changes.
    pub async fn apply_flags(
        &self,
        env: &str,
        file: &[u8],
        actor: &str,
    ) -> ControlResult<FlagsChanged> {
        self.environment_must_exist(env).await?;
        if file.len() > MAX_FLAG_FILE {
            return Err(ControlError::TooLarge(format!(
                "the flag file is {} bytes; the limit is {MAX_FLAG_FILE}",
                file.len()
            )));
        }
        let given = FlagSet::parse(file).map_err(ControlError::bad_request)?;
        let changed: Vec<String> = given.keys().map(str::to_owned).collect();
        if changed.is_empty() {
            return Err(ControlError::bad_request(
                "the file defines no flag (\"flags\": {} is empty)",
            ));
        }
        let (current, _) = self.flag_set(env).await?;
        let merged = current.merged(&given).map_err(ControlError::bad_request)?;
        let revision = self
            .state
            .set_flags(env, merged.source(), "apply", &changed, actor)
            .await?;
        self.load_flags().await?;
        tracing::info!(environment = env, revision, changed = ?changed, "flags applied");
        Ok(FlagsChanged {
            environment: env.to_owned(),
            revision,
            changed,
        })
    }

    /// `seal flags delete KEY`.
    pub async fn delete_flag(
        &self,
        env: &str,
        key: &str,
        actor: &str,
    ) -> ControlResult<FlagsChanged> {
        self.environment_must_exist(env).await?;
        let (current, _) = self.flag_set(env).await?;
        let less = current
            .without(key)
            .ok_or_else(|| ControlError::not_found(format!("no flag {key:?} in {env}")))?;
        let changed = vec![key.to_owned()];
        let revision = self
            .state
            .set_flags(env, less.source(), "delete", &changed, actor)
            .await?;
        self.load_flags().await?;
        Ok(FlagsChanged {
            environment: env.to_owned(),
            revision,
            changed,
        })
    }

    /// `seal flags list`.
    pub async fn list_flags(&self, env: &str) -> ControlResult<FlagList> {
        self.environment_must_exist(env).await?;
        let (set, revision) = self.flag_set(env).await?;
        let flags = set.source()["flags"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(key, def)| FlagSummary {
                key: key.clone(),
                state: def["state"].as_str().unwrap_or_default().to_owned(),
                default_variant: def["defaultVariant"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                variants: def["variants"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default(),
                targeting: def
                    .get("targeting")
                    .and_then(Value::as_object)
                    .is_some_and(|t| !t.is_empty()),
            })
            .collect();
        Ok(FlagList {
            environment: env.to_owned(),
            revision,
            flags,
        })
    }

    /// `seal flags get KEY`: its definition as applied (flagd JSON).
    pub async fn flag(
        &self,
        env: &str,
        key: &str,
    ) -> ControlResult<seal_api_types::flags::FlagDefinition> {
        self.environment_must_exist(env).await?;
        let (set, revision) = self.flag_set(env).await?;
        let definition = set.source()["flags"]
            .get(key)
            .cloned()
            .ok_or_else(|| ControlError::not_found(format!("no flag {key:?} in {env}")))?;
        Ok(seal_api_types::flags::FlagDefinition {
            environment: env.to_owned(),
            key: key.to_owned(),
            revision,
            definition,
        })
    }

    /// `seal flags history [KEY]`.
    pub async fn flag_history(
        &self,
        env: &str,
        key: Option<&str>,
        limit: u32,
    ) -> ControlResult<FlagHistory> {
        self.environment_must_exist(env).await?;
        Ok(FlagHistory {
            revisions: self.state.flag_history(env, key, limit).await?,
        })
    }
}
