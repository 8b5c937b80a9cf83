//! The control API client used by every client command.

use anyhow::{Context, bail};
use seal_api_types::{ErrorBody, ErrorDetail, codes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::Path;

/// Whether the server's address is this machine's.
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub struct Client {
    base: String,
    http: reqwest::Client,
    /// The bearer token, and where it came from (for error messages).
    token: Option<(String, String)>,
}

impl Client {
    /// `token` (from --token or SEAL_TOKEN) wins; without it, a server on
    /// a loopback address is assumed to be this machine's, and its admin
    /// token is read from `<data_dir>/admin.token` if that file exists.
    pub fn new(server: &str, token: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let base = server.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .ok()
            .filter(|u| u.scheme() == "http" || u.scheme() == "https")
            .ok_or_else(|| {
                anyhow::anyhow!("--server must be an http:// or https:// URL, got {server:?}")
            })?;
        let token = match token.map(str::trim).filter(|t| !t.is_empty()) {
            Some(t) => Some((t.to_owned(), "--token/SEAL_TOKEN".to_owned())),
            None if is_loopback(&url) => {
                let path = data_dir.join("admin.token");
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .map(|t| (t, path.display().to_string()))
            }
            None => None,
        };
        Ok(Self {
            base,
            http: reqwest::Client::builder()
                .build()
                .context("cannot build HTTP client")?,
            token,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match &self.token {
            Some((token, _)) => req.bearer_auth(token),
            None => req,
        }
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

    /// `GET path`, its answer read as `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let req = self.request(reqwest::Method::GET, path);
        self.send_as(req, "GET", path).await
    }

    /// `POST path` with `body` as JSON, its answer read as `T`.
    pub async fn post_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let req = self.request(reqwest::Method::POST, path).json(body);
        self.send_as(req, "POST", path).await
    }

    /// `PUT path` with `body` as JSON, its answer read as `T`.
    pub async fn put_as<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let req = self.request(reqwest::Method::PUT, path).json(body);
        self.send_as(req, "PUT", path).await
    }

    /// Sends a request built by the caller (`method` and `path` only name
    /// it in errors); a non-2xx answer becomes an error as in
    /// [`Client::send`], and a 2xx body that is not a `T` an error naming
    /// the request.
    pub async fn send_as<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> anyhow::Result<T> {
        let text = self
            .checked(req)
            .await?
            .text()
            .await
            .map_err(|e| self.unreachable(e))?;
        parse_answer(&text, method, path)
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
        let mut msg = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => with_hint(&body.error),
            Err(_) => text,
        };
        if status == reqwest::StatusCode::UNAUTHORIZED {
            msg = match &self.token {
                None => format!(
                    "{msg}: set SEAL_TOKEN or --token (on the server's machine the CLI reads <data-dir>/admin.token; see --data-dir)"
                ),
                Some((_, from)) => format!("{msg} (token from {from})"),
            };
        }
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

/// A 2xx body read as `T`, or an error naming the request it answered.
fn parse_answer<T: DeserializeOwned>(text: &str, method: &str, path: &str) -> anyhow::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("unexpected answer from {method} {path}: {e}"))
}

/// The server's message plus what to do about it with this CLI: the
/// server names no commands or flags, the CLI knows its own.
fn with_hint(e: &ErrorDetail) -> String {
    let hint = match e.code.as_str() {
        codes::DEPLOYMENT_IN_PROGRESS => e
            .deployment
            .map(|id| format!("wait for it, or stop it with `seal abort {id}`")),
        codes::UNKNOWN_ENVIRONMENT => e
            .environment
            .as_ref()
            .map(|env| format!("create it with `seal env create {env}`")),
        codes::PERMISSIONS_WIDENED => {
            Some("deploy it as an admin with --allow-new-permissions".to_owned())
        }
        codes::BREAKING_CONTRACT => {
            Some("deploy it as an admin with --allow-breaking-contract".to_owned())
        }
        codes::NO_PREVIOUS_VERSION => Some("use --to N".to_owned()),
        _ => None,
    };
    match hint {
        Some(h) => format!("{}; {h}", e.message),
        None => e.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_get_the_cli_hint_their_code_calls_for() {
        let mut busy = ErrorBody::new(codes::DEPLOYMENT_IN_PROGRESS, "deployment 4 is in progress");
        busy.error.deployment = Some(4);
        assert_eq!(
            with_hint(&busy.error),
            "deployment 4 is in progress; wait for it, or stop it with `seal abort 4`"
        );
        let plain = ErrorBody::new("not_found", "no deployment 9");
        assert_eq!(with_hint(&plain.error), "no deployment 9");
    }

    #[test]
    fn an_answer_of_the_wrong_shape_names_the_request() {
        let ok: seal_api_types::access::WhoAmI = parse_answer(
            r#"{"id":"tk_1","name":"admin","role":"admin","environments":null}"#,
            "GET",
            "/v1/whoami",
        )
        .unwrap();
        assert_eq!(ok.role, "admin");
        let err =
            parse_answer::<seal_api_types::access::WhoAmI>(r#"{"id":"tk_1"}"#, "GET", "/v1/whoami")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("unexpected answer from GET /v1/whoami: missing field `name`"),
            "{err}"
        );
    }
}
