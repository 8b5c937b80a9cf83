//! Which environments are protected. In a protected environment a
//! permission widening needs an admin's approval and a request pinned to a
//! version (`seal-version`) needs the deployment's preview token. By rule
//! the server's default environment and `production` are protected; an
//! admin may set any environment either way (`seal env protect`,
//! `seal env unprotect`), and clear the setting to return to the rule.

use std::collections::HashMap;
use std::sync::RwLock;

/// The environment protected by rule whatever the server's default is.
pub const PRODUCTION: &str = "production";

/// Where an environment's protection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The server's rule: its default environment and `production`.
    Rule,
    /// An admin set it.
    Set,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rule => "rule",
            Source::Set => "set",
        }
    }
}

/// The protection of every environment, as last committed to the state
/// store (read at start, changed only by [`crate::Control::set_protection`]).
#[derive(Debug)]
pub struct Protection {
    default_environment: String,
    set: RwLock<HashMap<String, bool>>,
}

impl Protection {
    pub fn new(default_environment: impl Into<String>) -> Self {
        Self {
            default_environment: default_environment.into(),
            set: RwLock::new(HashMap::new()),
        }
    }

    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// Whether `environment` is protected, and why.
    pub fn of(&self, environment: &str) -> (bool, Source) {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        match set.get(environment) {
            Some(&p) => (p, Source::Set),
            None => (
                environment == PRODUCTION || environment == self.default_environment,
                Source::Rule,
            ),
        }
    }

    pub fn is_protected(&self, environment: &str) -> bool {
        self.of(environment).0
    }

    /// Replaces every admin setting (at start, from the state store).
    pub(crate) fn replace(&self, settings: impl IntoIterator<Item = (String, bool)>) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = settings.into_iter().collect();
    }

    /// One environment's setting, after it was committed.
    pub(crate) fn set(&self, environment: &str, protected: Option<bool>) {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        match protected {
            Some(p) => set.insert(environment.to_owned(), p),
            None => set.remove(environment),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_protects_production_and_the_default_until_an_admin_says_otherwise() {
        let p = Protection::new("main");
        assert_eq!(p.of("production"), (true, Source::Rule));
        assert_eq!(p.of("main"), (true, Source::Rule));
        assert_eq!(p.of("staging"), (false, Source::Rule));
        p.set("staging", Some(true));
        p.set("production", Some(false));
        assert_eq!(p.of("staging"), (true, Source::Set));
        assert_eq!(p.of("production"), (false, Source::Set));
        p.set("production", None);
        assert_eq!(p.of("production"), (true, Source::Rule));
        p.replace([("main".to_owned(), false)]);
        assert!(!p.is_protected("main"));
        assert!(!p.is_protected("staging"), "replaced, not merged");
    }
}
