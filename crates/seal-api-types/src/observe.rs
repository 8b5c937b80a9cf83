//! Answers about live traffic and cost: `seal top`, `seal cost`,
//! `seal budget`.

use crate::records::Budget;
use serde::{Deserialize, Serialize};

/// `GET /v1/top`: every routed version over the last few seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Top {
    /// When the numbers were read (unix ms).
    pub at: i64,
    /// The longest window any row covers.
    pub window_seconds: f64,
    /// By function, environment, then newest version first.
    pub rows: Vec<TopRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopRow {
    pub function: String,
    pub environment: String,
    pub version: u64,
    pub digest: String,
    pub weight: u32,
    pub rps: f64,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cold_starts: u64,
    /// Since the version was loaded.
    pub total_requests: u64,
    pub total_cold_starts: u64,
    pub gb_seconds: f64,
}

/// `GET /v1/functions/{fn}/cost`: invocations and GB-seconds per version
/// since `since` (hourly rows), and the budget's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    pub function: String,
    pub since: i64,
    pub until: i64,
    /// `hour`: usage is kept in hourly rows.
    pub granularity: String,
    pub versions: Vec<CostRow>,
    pub total: CostTotal,
    pub budget: Option<BudgetStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostRow {
    pub environment: String,
    pub version: i64,
    pub digest: Option<String>,
    pub invocations: i64,
    pub gb_seconds: f64,
    pub gb_seconds_per_invocation: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostTotal {
    pub invocations: i64,
    pub gb_seconds: f64,
}

/// A budget and what its current period has used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub gb_seconds: f64,
    pub period: String,
    pub period_start: i64,
    pub used_gb_seconds: f64,
    pub ratio: f64,
    pub exceeded: bool,
    pub webhook: Option<String>,
}

/// `PUT /v1/functions/{fn}/budget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    pub gb_seconds: f64,
    /// `day` or `month` (default).
    #[serde(default)]
    pub period: Option<String>,
    #[serde(default)]
    pub webhook: Option<String>,
}

/// The answer to [`BudgetBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetAnswer {
    pub budget: Budget,
}
