//! The control API client used by every client command.

use anyhow::{Context, bail};
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::Client,
    actor: String,
}

impl Client {
    pub fn new(server: &str) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http:// or https:// URL, got {server:?}");
        }
        let actor = std::env::var("SEAL_ACTOR")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "cli".into());
        Ok(Self {
            base,
            http: reqwest::Client::builder()
                .build()
                .context("cannot build HTTP client")?,
            actor,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("seal-actor", &self.actor)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the
    /// server's message.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let text = self.checked(req).await?.text().await.unwrap_or_default();
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Sends a request and hands back a 2xx response unread (for streamed
    /// or non-JSON bodies); a non-2xx answer becomes an error carrying the
    /// server's message, as in [`Client::send`].
    pub async fn checked(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        let msg = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        bail!("{msg} (HTTP {})", status.as_u16());
    }

    pub fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow::anyhow!(
                "cannot reach the Seal API at {}: is `seal server` running? (set --server or SEAL_SERVER)",
                self.base
            )
        } else {
            anyhow::anyhow!("request to {} failed: {e}", self.base)
        }
    }
}
