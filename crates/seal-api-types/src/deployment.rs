//! What a deployment is and where it stands, as every API answer names it.

use serde::{Deserialize, Serialize};

/// Where a deployment stands. `pending`, `progressing` and `paused` own
/// their route: only the deployment's driver moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Pending,
    Progressing,
    Paused,
    Succeeded,
    RolledBack,
    Aborted,
}

impl DeploymentState {
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::Progressing,
        Self::Paused,
        Self::Succeeded,
        Self::RolledBack,
        Self::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Progressing => "progressing",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::RolledBack => "rolled_back",
            Self::Aborted => "aborted",
        }
    }

    /// Whether the deployment still owns its route.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Progressing | Self::Paused)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a deployment was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Deploy, Self::Rollback]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for DeploymentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_as_they_are_written() {
        for s in DeploymentState::ALL {
            assert_eq!(DeploymentState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(DeploymentState::parse("rolled-back"), None);
        let active: Vec<_> = DeploymentState::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect();
        assert_eq!(
            active,
            [
                DeploymentState::Pending,
                DeploymentState::Progressing,
                DeploymentState::Paused
            ]
        );
        assert_eq!(
            DeploymentKind::parse("rollback"),
            Some(DeploymentKind::Rollback)
        );
        assert_eq!(DeploymentKind::parse("Deploy"), None);
    }
}
