//! The control API: JSON over HTTP under `/v1/…`, on its own listener.
//! Routes are grouped by context ([`functions`]: catalog, deployments,
//! audit, environments; [`observe`]: metrics, logs, top, cost, budgets,
//! monitoring; [`security`]: tokens, config, secrets, attestations,
//! verification, policies). Each route declares the access it needs where
//! it is declared ([`auth`]); [`error`] is the one place a domain error
//! becomes a status and a JSON body.
//!
//! | method | path | what |
//! |---|---|---|
//! | HEAD/PUT | `/v1/blobs/{digest}` | does a blob exist / stream one in (size-limited, digest-checked) |
//! | POST | `/v1/artifacts` | body = OCI manifest; creates `function@N` |
//! | GET | `/v1/functions` | functions with their routes |
//! | GET | `/v1/functions/{fn}` | status: routes, weights, live counters |
//! | GET | `/v1/functions/{fn}/versions[/{n}]` | versions / one version in full |
//! | POST | `/v1/functions/{fn}/deploy` | `{"version", "environment"?, "reason"?, "rollout"?, "dry_run"?}` |
//! | POST | `/v1/functions/{fn}/rollback` | `{"environment"?, "to"?}` |
//! | GET | `/v1/functions/{fn}/deployments` | history, newest first |
//! | GET | `/v1/deployments/{id}` | one deployment with its events |
//! | POST | `/v1/deployments/{id}/approve\|promote\|abort` | steer a progressive deployment |
//! | GET | `/v1/functions/{fn}/rollout?environment=` | live view: weights, per-version windows, gates |
//! | GET | `/v1/audit` | audit entries, newest first |
//! | GET | `/v1/audit/verify` | recompute the hash chain: `{ok, entries, head, first_broken}` |
//! | GET/POST | `/v1/environments` | list / create (`{"name"}`) environments |
//! | GET | `/v1/environments/{env}` | one environment: default, protected and why |
//! | PUT | `/v1/environments/{env}/protection` | admin: `{"protected": true\|false\|null}` |
//! | GET | `/v1/server` | runtime counters (compiles, cache loads) |
//! | GET | `/healthz` | liveness |
//!
//! Observability, security, event and desired-state routes are listed in
//! their modules.

pub mod auth;
pub mod capture;
pub mod desired;
pub mod error;
pub mod events;
pub mod flags;
pub mod functions;
pub mod observe;
pub mod security;

use crate::error::ApiError;
use axum::Router;
use axum::http::StatusCode;
use seal_control::Control;
use std::sync::Arc;

pub use auth::{Access, Declared, Routes};

/// The manifest endpoint takes small JSON documents only.
const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// Every route of the API, with the access each declared.
pub fn routes() -> Routes {
    functions::routes()
        .merge(observe::routes())
        .merge(security::routes())
        .merge(events::routes())
        .merge(desired::routes())
        .merge(capture::routes())
        .merge(flags::routes())
}

/// The API as an axum service over a control plane.
pub fn router(control: Arc<Control>) -> Router {
    routes()
        .router
        // Unknown paths get a plain 404.
        .fallback(|| async { ApiError::not_found("no such API endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_MANIFEST_BYTES))
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::from_fn(close_unread))
        .layer(axum::middleware::from_fn(head_limits))
        .layer(axum::Extension(control.clone()))
        .with_state(control)
}

/// Serves the API on `listener` until `shutdown` resolves, then lets the
/// calls in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: Arc<Control>,
    header_read_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let app = router(control);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // The API's own budget, apart from the gateway's: a flood of
    // connections to either leaves the other reachable. HTTP/1 only, so the
    // header-read timer runs from a connection's first wait (see the
    // gateway).
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(API_MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the budget: closed at once (an operator's client retries).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("api connection refused: at the connection limit");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "api connection ended with an error");
            }
            drop(slot);
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Open connections the control API serves at once (its own budget).
pub const API_MAX_CONNECTIONS: usize = 1024;

/// A request target or header fields over the limits every listener
/// keeps (see [`seal_serving::head`]): a JSON error naming the limit.
async fn head_limits(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match seal_serving::head::refusal(req.uri(), req.headers()) {
        Some(r) => {
            let resp = axum::response::IntoResponse::into_response(ApiError::new(
                r.status, r.code, r.message,
            ));
            // Its body, if any, is left unread.
            close_if_body(&req, resp)
        }
        None => next.run(req).await,
    }
}

fn close_if_body(
    req: &axum::extract::Request,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    use http_body::Body as _;
    if !req.body().is_end_stream() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// An answer given before its request body was read to the end (a refused
/// upload, a blob already stored, a 401 before the body) ends its
/// connection: hyper closes it after the answer, so the answer says
/// `connection: close`, or a client that pools the connection would send
/// its next request into a closed socket and see it fail.
async fn close_unread(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(WatchedBody {
            inner,
            read: read.clone(),
        })
    });
    let mut resp = next.run(req).await;
    if !read.load(std::sync::atomic::Ordering::Acquire) {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// A request body that notes when it has been read to its end.
struct WatchedBody {
    inner: axum::body::Body,
    read: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// JSON bodies with errors that name the problem (axum's `Json` rejection
/// is plain text).
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Every error answer is JSON, including axum's own rejections (bad query
/// strings, bodies over the limit, wrong methods), which are plain text.
async fn json_errors(resp: axum::response::Response) -> axum::response::Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let body = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let mut message = String::from_utf8_lossy(&body).trim().to_owned();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned();
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    axum::response::IntoResponse::into_response(ApiError::new(status, code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;
    use seal_control::Role;

    fn access(method: Method, path: &str) -> Option<Access> {
        let routes = routes();
        let found: Vec<_> = routes
            .declared()
            .iter()
            .filter(|d| d.method == method && d.path == path)
            .map(|d| d.access)
            .collect();
        assert!(found.len() <= 1, "{method} {path} declared twice");
        found.first().copied()
    }

    #[test]
    fn routes_need_the_right_role() {
        let viewer = Some(Access::Role(Role::Viewer));
        let deployer = Some(Access::Role(Role::Deployer));
        let admin = Some(Access::UnlimitedAdmin);
        assert_eq!(access(Method::GET, "/healthz"), Some(Access::Public));
        assert_eq!(access(Method::GET, "/v1/functions"), viewer);
        assert_eq!(access(Method::GET, "/metrics"), viewer);
        assert_eq!(access(Method::HEAD, "/v1/blobs/{digest}"), viewer);
        assert_eq!(access(Method::PUT, "/v1/blobs/{digest}"), deployer);
        assert_eq!(
            access(Method::GET, "/v1/environments/{environment}"),
            viewer
        );
        assert_eq!(
            access(Method::PUT, "/v1/environments/{environment}/protection"),
            admin
        );
        assert_eq!(
            access(
                Method::DELETE,
                "/v1/functions/{function}/versions/{version}/attestations/{referrer}"
            ),
            admin
        );
        assert_eq!(
            access(Method::POST, "/v1/functions/{function}/deploy"),
            deployer
        );
        assert_eq!(
            access(
                Method::POST,
                "/v1/functions/{function}/versions/{version}/verify"
            ),
            viewer
        );
        assert_eq!(
            access(Method::POST, "/v1/deployments/{id}/{command}"),
            deployer
        );
        assert_eq!(access(Method::GET, "/v1/tokens"), admin);
        assert_eq!(access(Method::POST, "/v1/tokens/{id}/revoke"), admin);
        assert_eq!(access(Method::PUT, "/v1/policies/{environment}"), admin);
        assert_eq!(access(Method::GET, "/v1/policies/{environment}"), viewer);
        assert_eq!(
            access(
                Method::POST,
                "/v1/functions/{function}/versions/{version}/attestations"
            ),
            deployer
        );
        assert_eq!(access(Method::POST, "/v1/environments"), admin);
        assert_eq!(access(Method::GET, "/v1/environments"), viewer);
        assert_eq!(
            access(Method::PUT, "/v1/functions/{function}/budget"),
            admin
        );
        assert_eq!(
            access(Method::DELETE, "/v1/functions/{function}/budget"),
            admin
        );
        // Events: a publisher enqueues (on its queues); bindings and dead
        // letters are a deployer's.
        assert_eq!(
            access(Method::POST, "/v1/queues/{environment}/{queue}/events"),
            Some(Access::Publish)
        );
        assert_eq!(access(Method::POST, "/v1/triggers"), deployer);
        assert_eq!(access(Method::POST, "/v1/dlq/redrive"), deployer);
        assert_eq!(access(Method::GET, "/v1/dlq"), viewer);
        // Pipelines are an admin's; the evidence anyone may read.
        assert_eq!(
            access(Method::PUT, "/v1/environments/{environment}/pipeline"),
            admin
        );
        assert_eq!(
            access(
                Method::GET,
                "/v1/environments/{environment}/evidence/{function}/{version}"
            ),
            viewer
        );
        assert_eq!(access(Method::POST, "/v1/verify-release"), deployer);
        assert_eq!(access(Method::POST, "/v1/flags/{environment}"), deployer);
        assert_eq!(access(Method::GET, "/v1/flags/{environment}"), viewer);
        assert_eq!(
            access(Method::DELETE, "/v1/flags/{environment}/{key}"),
            deployer
        );
        assert_eq!(access(Method::GET, "/v1/server-key"), viewer);
        // Captured requests are real requests: a deployer's to read.
        assert_eq!(access(Method::GET, "/v1/captures"), viewer);
        assert_eq!(access(Method::POST, "/v1/captures"), deployer);
        assert_eq!(
            access(
                Method::GET,
                "/v1/captures/{environment}/{function}/requests"
            ),
            deployer
        );
        // Reading a budget is part of cost; there is no GET on the budget.
        assert_eq!(access(Method::GET, "/v1/functions/{function}/budget"), None);
    }

    #[test]
    fn every_write_route_needs_at_least_a_deployer_or_says_why() {
        // The only POSTs a viewer may make change nothing: verification,
        // and comparing a release file with what serves.
        for d in routes().declared() {
            let read = d.method == Method::GET || d.method == Method::HEAD;
            if read || d.access != Access::Role(Role::Viewer) {
                continue;
            }
            assert!(
                [
                    "/v1/functions/{function}/versions/{version}/verify",
                    "/v1/diff"
                ]
                .contains(&d.path),
                "{} {} is a write open to viewers",
                d.method,
                d.path
            );
        }
        assert_eq!(
            access(Method::POST, "/v1/apply"),
            Some(Access::Role(Role::Deployer))
        );
        assert_eq!(
            access(Method::POST, "/v1/holds/release"),
            Some(Access::Role(Role::Deployer))
        );
    }
}
