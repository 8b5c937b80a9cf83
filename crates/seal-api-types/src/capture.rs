//! Traffic capture: a sample of a function's real requests in one
//! environment, kept for replaying against a candidate.

use serde::{Deserialize, Serialize};

/// `POST /v1/captures`: start (or restart) capturing a function's
/// requests in an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartCapture {
    pub function: String,
    /// The server's default environment when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Share of requests kept, in percent: more than 0, at most 100.
    pub rate_percent: f64,
    /// Requests kept at most (default 10,000; at most 1,000,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Body bytes kept per request (default 64 KiB; at most 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_limit: Option<u64>,
    /// Headers removed besides `Authorization`, `Proxy-Authorization` and
    /// `Cookie` (always removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop_headers: Vec<String>,
}

/// A capture: what it keeps, who started it, how many it kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    pub environment: String,
    pub function: String,
    pub rate_percent: f64,
    pub max: u64,
    pub body_limit: u64,
    #[serde(default)]
    pub drop_headers: Vec<String>,
    pub started_at: i64,
    pub started_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// Requests kept so far.
    #[serde(default)]
    pub captured: u64,
}

impl Capture {
    /// Still keeping requests: not stopped and not full.
    pub fn running(&self) -> bool {
        self.stopped_at.is_none() && self.captured < self.max
    }
}

/// `GET /v1/captures`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureList {
    pub captures: Vec<Capture>,
}

/// One captured request and what answered it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedRequest {
    pub id: u64,
    pub environment: String,
    pub function: String,
    /// The version that answered it.
    pub version: u64,
    /// When it arrived (ms since the epoch).
    pub at: i64,
    pub method: String,
    /// Path and query as the function saw them.
    pub path: String,
    /// Headers in order, credentials removed.
    pub headers: Vec<(String, String)>,
    /// The body (up to the capture's cap), base64.
    #[serde(with = "base64_bytes")]
    pub body: Vec<u8>,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub body_truncated: bool,
    pub status: u16,
    /// `sha256:<hex>` of the response body.
    pub response_digest: String,
    pub response_bytes: u64,
    pub duration_ms: u64,
}

/// `GET /v1/captures/{env}/{fn}/requests`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedRequests {
    pub requests: Vec<CapturedRequest>,
}

/// `DELETE /v1/captures/{env}/{fn}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureDeleted {
    pub environment: String,
    pub function: String,
    /// Captured requests deleted with it.
    pub deleted: u64,
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}
