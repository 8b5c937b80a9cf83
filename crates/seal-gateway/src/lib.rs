//! The gateway: Seal's HTTP trigger.
//!
//! A hyper server, separate from the control API, that resolves
//! environment + function from the request (path or `Host`), picks a
//! version from the route, and runs it through [`seal_serving::Serving`].
//!
//! Invariants:
//! - the request path takes no lock and touches no database (the route
//!   table is a snapshot in [`Serving`]);
//! - every response names the version and artifact digest that produced it
//!   (`seal-version`, `seal-digest`), errors included.
//!
//! This crate does not know where routes come from; it reads the serving
//! layer's tables.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use seal_runtime::{HyperOutgoingBody, full_body};
use seal_serving::invocation::X_REQUEST_ID;
use seal_serving::{Backend, HEADER_PIN, HEADER_PREVIEW_TOKEN, Serving};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

pub use seal_serving::{HEADER_DIGEST, HEADER_VERSION};

/// What one client may hold of the gateway: its connections are bounded
/// in number and in how long they may take to send a request head.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; one more is answered `503` with
    /// `retry-after` and closed.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, the
    /// first or the next one on a kept-alive connection (so it is also the
    /// idle keep-alive timeout); then it is closed.
    pub header_read_timeout: std::time::Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The HTTP trigger: serves the routes of a [`Serving`] over HTTP.
pub struct Gateway {
    serving: Arc<Serving>,
    default_environment: String,
    limits: ConnectionLimits,
    /// Where producers' events posted to the gateway go, when the server
    /// set it (the gateway knows no queue).
    ingest: std::sync::OnceLock<Arc<dyn EventIngest>>,
    /// The CPU lane the guests it serves take turns in, when the server
    /// set it: while a heavy guest runs, answers are written at once.
    lane: std::sync::OnceLock<seal_runtime::CpuLane>,
}

/// Takes the events a producer posts to
/// `POST /_seal/queues/{env}/{queue}/events` on the gateway (for producers
/// that reach the gateway but not the control API): authentication, the
/// queue and the commit are the implementation's. Answers a status and a
/// JSON body.
pub trait EventIngest: Send + Sync {
    fn ingest(
        &self,
        environment: String,
        queue: String,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = (StatusCode, String)> + Send>>;
}

/// The gateway's path prefix for event producers (no function name starts
/// with `_`).
pub const INGEST_PREFIX: &str = "/_seal/queues/";
/// The largest body the gateway reads for an ingest (a batch).
pub const MAX_INGEST_BYTES: usize = 1024 * 1024;

impl Gateway {
    pub fn new(serving: Arc<Serving>, default_environment: &str) -> Arc<Self> {
        Self::with_limits(serving, default_environment, ConnectionLimits::default())
    }

    pub fn with_limits(
        serving: Arc<Serving>,
        default_environment: &str,
        limits: ConnectionLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            serving,
            default_environment: default_environment.to_owned(),
            limits,
            ingest: std::sync::OnceLock::new(),
            lane: std::sync::OnceLock::new(),
        })
    }

    /// Tells the gateway the CPU lane of the runtime behind it.
    pub fn set_cpu_lane(&self, lane: seal_runtime::CpuLane) {
        let _ = self.lane.set(lane);
    }

    /// Whether an answer may wait for the requests queued behind it on
    /// its worker: not while a heavy guest runs, since one of them could
    /// be a whole epoch tick of guest code ahead of the answer.
    fn answers_may_wait(&self) -> bool {
        self.lane.get().is_none_or(|l| l.running() == 0)
    }

    /// Lets producers post events to the gateway, handed to `ingest`.
    pub fn set_ingest(&self, ingest: Arc<dyn EventIngest>) {
        let _ = self.ingest.set(ingest);
    }

    /// `POST /_seal/queues/{env}/{queue}/events`: the body read (up to
    /// the limit) and handed to the ingest.
    async fn ingest(&self, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let path = req.uri().path().to_owned();
        let parts: Vec<&str> = path[INGEST_PREFIX.len()..].split('/').collect();
        let (Some(ingest), [environment, queue, "events"]) = (self.ingest.get(), parts.as_slice())
        else {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "events are posted to /_seal/queues/<environment>/<queue>/events",
                None,
                None,
            );
        };
        if req.method() != http::Method::POST {
            return error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "events are posted (POST)",
                None,
                None,
            );
        }
        let (environment, queue) = (environment.to_string(), queue.to_string());
        let (head, body) = req.into_parts();
        use http_body_util::BodyExt;
        let body = match http_body_util::Limited::new(body, MAX_INGEST_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    &format!("the request is over the ingest limit of {MAX_INGEST_BYTES} bytes"),
                    None,
                    None,
                );
            }
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                    None,
                    None,
                );
            }
        };
        let (status, json) = ingest.ingest(environment, queue, head.headers, body).await;
        let mut resp = Response::new(full_body(Bytes::from(json)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// Accepts connections until `shutdown` resolves, then lets in-flight
    /// requests finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // HTTP/1 only: hyper starts its header-read timer as soon as it
        // waits for a request head, before any byte, and again between
        // kept-alive requests; version detection (for prior-knowledge
        // HTTP/2) would wait for its first bytes with no timer at all.
        let mut builder =
            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
        builder
            .http1()
            // One buffer, one `send`, per response: a `writev` of head and
            // body costs the kernel more for an answer this small.
            .writev(false)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "gateway accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tokio::spawn(refuse(stream));
                continue;
            };
            // A handle per connection: a request clones the connection's
            // own `Arc` (a count only this connection's task writes), not
            // the gateway's, which every connection's thread would write.
            let gateway = Arc::new(self.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let gateway = gateway.clone();
                async move {
                    use hyper::body::Body as _;
                    let had_body = !req.body().is_end_stream();
                    let mut resp = gateway.handle(req).await;
                    // The answer is written once the requests already
                    // waiting on this worker have had their turn: under
                    // load the answers leave in bursts, so a client on the
                    // same host (a proxy, a load generator) wakes once per
                    // burst rather than once per answer, and this worker
                    // finds its next requests waiting instead of sleeping
                    // between them. Alone, a request goes on at once; while
                    // a heavy guest runs, every answer does.
                    // bench/RESULTS.md, "Answers in bursts".
                    if gateway.answers_may_wait() {
                        BehindQueued(false).await;
                    }
                    // The gateway's own error answers come before (or
                    // instead of) reading the request body; hyper then
                    // closes the connection, so the answer says so, or a
                    // pooled client would send its next request into it.
                    if had_body && resp.extensions().get::<GatewayError>().is_some() {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "gateway connection ended with an error");
                }
                drop(slot);
            });
        }
        graceful.shutdown().await;
    }

    /// Serves one request.
    pub async fn handle(&self, mut req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = std::time::Instant::now();
        if let Some(r) = seal_serving::head::refusal(req.uri(), req.headers()) {
            return error_response(r.status, r.code, &r.message, None, None);
        }
        if req.uri().path().starts_with(INGEST_PREFIX) {
            return self.ingest(req).await;
        }
        let (route, uri, target_preview) = {
            let Some(target) = resolve(&req, &self.default_environment) else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no function named in the request: use http://GATEWAY/<function>/… or Host: <function>.<environment>.localhost",
                    None,
                    None,
                );
            };
            // Take the route's Arc and let the snapshot guard go at once: the
            // request keeps what it picked even if the table is swapped.
            let route = self.serving.route(target.environment, target.function);
            let Some(route) = route else {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!(
                        "no route for function {:?} in environment {:?}",
                        target.function, target.environment
                    ),
                    None,
                    None,
                );
            };
            match function_uri(&req, &target.path) {
                Ok(uri) => (route, uri, target.preview),
                Err(msg) => {
                    return error_response(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        &msg,
                        None,
                        None,
                    );
                }
            }
        };
        // The function sees the path after `/<function>`.
        if let Some(uri) = uri {
            *req.uri_mut() = uri;
        }
        let pin = req.headers().get(&HEADER_PIN);
        let pin_sent = pin.is_some();
        let requested = if target_preview {
            route.preview
        } else {
            pin.and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if target_preview && requested.is_none() {
            return error_response(
                StatusCode::NOT_FOUND,
                "no_preview",
                &format!(
                    "{} has no deployment in progress in {}: nothing to preview",
                    route.function, route.environment
                ),
                None,
                None,
            );
        }
        // A pinned request counts in the gates only with the deployment's
        // preview token, and needs it in a protected environment.
        let pinned = target_preview || pin_sent;
        // The token is the gateway's: the function never sees it.
        let token = req.headers_mut().remove(&HEADER_PREVIEW_TOKEN);
        let Some(traffic) = route.admit_pin(pinned, token.as_ref()) else {
            return error_response(
                StatusCode::FORBIDDEN,
                "preview_token_required",
                &format!(
                    "{} is a protected environment: a request pinned to a version (seal-version or the preview host) needs the deployment's preview token in {HEADER_PREVIEW_TOKEN} (`seal deployments show ID` prints it)",
                    route.environment
                ),
                None,
                None,
            );
        };
        let sticky = route
            .sticky_header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .map(|v| v.as_bytes().to_vec());
        let Some(backend) = route.pick(requested, sticky.as_deref()).cloned() else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_version",
                "the route has no version with traffic",
                None,
                None,
            );
        };
        // A sampled request is copied as the guest reads it and its answer
        // digested as it is sent (see seal_serving::capture).
        let (invoked, capture) = match self
            .serving
            .captures()
            .sample(&route.environment, &route.function)
        {
            None => (
                self.serving.invoke(&backend, req, started, traffic).await,
                None,
            ),
            Some(tap) => {
                let (req, pending) =
                    tap.begin(self.serving.captures().clone(), backend.version, req);
                (
                    self.serving.invoke(&backend, req, started, traffic).await,
                    Some(pending),
                )
            }
        };
        let resp = self.answer(&route, &backend, invoked);
        match capture {
            None => resp,
            Some(pending) => pending
                .finish(resp)
                .map(http_body_util::combinators::UnsyncBoxBody::new),
        }
    }

    /// The caller's answer: the function's response stamped with its
    /// version, or the error it ended with.
    fn answer(
        &self,
        route: &seal_serving::Route,
        backend: &Arc<seal_serving::Backend>,
        invoked: seal_serving::Invoked,
    ) -> Response<HyperOutgoingBody> {
        let request_id_header = invoked.request_id;
        let mut resp = match invoked.result {
            Ok(resp) => resp,
            Err(e) => {
                if !e.is_overloaded() {
                    tracing::warn!(
                        function = %route.function, environment = %route.environment,
                        version = backend.version, digest = %backend.digest,
                        kind = e.kind(), error = %e, "invocation failed"
                    );
                } else {
                    // Refusals come in floods: counted, not logged one by one.
                    tracing::debug!(
                        function = %route.function, environment = %route.environment,
                        version = backend.version, kind = e.kind(), error = %e, "invocation refused"
                    );
                }
                let status =
                    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                // The caller gets the kind and the request id; the details
                // (a guest backtrace, a host error chain) are in the log
                // line above and the invocation record.
                let request_id = request_id_header
                    .as_ref()
                    .and_then(|id| id.to_str().ok())
                    .map(str::to_owned);
                let mut resp = error_response(
                    status,
                    e.kind(),
                    &e.public_message(),
                    Some(backend),
                    request_id.as_deref(),
                );
                if let Some(id) = request_id_header {
                    resp.headers_mut().insert(X_REQUEST_ID, id);
                }
                if e.is_overloaded() {
                    resp.headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return resp;
            }
        };
        backend.stamp(resp.headers_mut());
        if let Some(id) = request_id_header
            && !resp.headers().contains_key(X_REQUEST_ID)
        {
            resp.headers_mut().insert(X_REQUEST_ID, id);
        }
        resp
    }
}

struct Target<'a> {
    environment: &'a str,
    function: &'a str,
    /// Path and query the function sees.
    path: std::borrow::Cow<'a, str>,
    /// `<fn>--preview.<env>.localhost`: the version under deployment.
    preview: bool,
}

/// `Host: <fn>.<env>.localhost` picks the environment explicitly;
/// otherwise the first path segment is the function in the default one.
fn resolve<'a, B>(req: &'a Request<B>, default_env: &'a str) -> Option<Target<'a>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    if let Some(prefix) = host.strip_suffix(".localhost") {
        let mut parts = prefix.split('.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(f), Some(e), None) if !f.is_empty() && !e.is_empty() => {
                let (function, preview) = split_preview(f);
                return Some(Target {
                    environment: e,
                    function,
                    path: path_and_query.into(),
                    preview,
                });
            }
            (Some(f), None, None) if !f.is_empty() => {
                let (function, preview) = split_preview(f);
                return Some(Target {
                    environment: default_env,
                    function,
                    path: path_and_query.into(),
                    preview,
                });
            }
            _ => {}
        }
    }
    let rest = path_and_query.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (function, tail) = rest.split_at(end);
    if function.is_empty() {
        return None;
    }
    let path = if tail.starts_with('/') {
        tail.into()
    } else {
        format!("/{tail}").into()
    };
    Some(Target {
        environment: default_env,
        function,
        path,
        preview: false,
    })
}

/// `hello--preview` → (`hello`, true). Function names cannot contain
/// `--` followed by `preview` at the end and mean something else: the
/// name rule allows it, so a function literally named `x--preview` is
/// reachable by path only.
fn split_preview(host_label: &str) -> (&str, bool) {
    match host_label.strip_suffix("--preview") {
        Some(f) if !f.is_empty() => (f, true),
        _ => (host_label, false),
    }
}

/// The URI the function sees: its own path. `None` when that is the
/// request's URI as it came (routed by host, origin-form): nothing to
/// build. wasi:http takes the authority from the `Host` header when the
/// URI has none; without one (HTTP/1.0) the URI is absolute, on
/// `localhost`.
fn function_uri<B>(req: &Request<B>, path: &str) -> Result<Option<Uri>, String> {
    let invalid = |e: http::Error| format!("invalid request URI: {e}");
    // The guest gets `Host` as the authority only when it is one (a
    // malformed one is refused below, an unreadable one replaced).
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok());
    if let Some(host) = host {
        http::uri::Authority::try_from(host)
            .map_err(|e| format!("invalid request URI: invalid Host header: {e}"))?;
        let uri = req.uri();
        if uri.authority().is_none() && uri.path_and_query().map_or("/", |p| p.as_str()) == path {
            return Ok(None);
        }
        return Uri::builder()
            .path_and_query(path)
            .build()
            .map(Some)
            .map_err(invalid);
    }
    // No readable `Host`: the URI's own authority, else `localhost`.
    let authority = req
        .uri()
        .authority()
        .map_or("localhost", |a| a.as_str())
        .to_owned();
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map(Some)
        .map_err(invalid)
}

/// Answers a connection over the limit with `503`, `retry-after` and a
/// JSON body, then closes it; bounded in time so a client that does not
/// read cannot hold the task.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"the gateway is at its connection limit; retry later"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
        // Read what the client sent (bounded) before closing: closing with
        // unread bytes resets the connection, and the reset may reach the
        // client before the 503 does.
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    tracing::debug!("gateway connection refused: at the connection limit");
}

/// Marks an answer the gateway wrote itself (not the guest's).
#[derive(Clone, Copy)]
struct GatewayError;

/// A JSON error answer: `{"error": {"code", "message", "request_id"?}}`.
fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    backend: Option<&Backend>,
    request_id: Option<&str>,
) -> Response<HyperOutgoingBody> {
    let mut body = serde_json::json!({"error": {"code": code, "message": message}});
    if let Some(id) = request_id {
        body["error"]["request_id"] = serde_json::Value::String(id.to_owned());
    }
    let mut resp = Response::new(full_body(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(GatewayError);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(b) = backend {
        b.stamp(resp.headers_mut());
    }
    resp
}

/// Resolves on its second poll, having woken its own task on the first:
/// the task goes to the back of its worker's run queue, behind the tasks
/// already waiting there (requests that arrived with this one), and runs
/// again once they have had their turn. (Tokio's `yield_now` instead
/// waits until the worker parks or polls its sockets, which a worker busy
/// with long guest slices may not do for dozens of tasks.)
struct BehindQueued(bool);

impl Future for BehindQueued {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Going behind the queued tasks is one wake of its own task and one
    /// more poll: no timer, no wait for the worker to park.
    #[test]
    fn behind_queued_wakes_its_task_once_then_resolves() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::{Context, Poll, Wake, Waker};
        struct Wakes(AtomicUsize);
        impl Wake for Wakes {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut behind = BehindQueued(false);
        assert_eq!(std::pin::Pin::new(&mut behind).poll(&mut cx), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken to the queue");
        assert_eq!(
            std::pin::Pin::new(&mut behind).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "and no more");
    }

    fn req(host: &str, path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap()
    }

    #[test]
    fn resolves_path_and_host_forms() {
        let check = |host: &str, path: &str, want: Option<(&str, &str, &str)>| {
            let r = req(host, path);
            let got =
                resolve(&r, "production").map(|t| (t.environment, t.function, t.path.into_owned()));
            let got = got.as_ref().map(|(e, f, p)| (*e, *f, p.as_str()));
            assert_eq!(got, want, "{host} {path}");
        };
        check(
            "127.0.0.1:8080",
            "/hello/a/b?x=1",
            Some(("production", "hello", "/a/b?x=1")),
        );
        check(
            "127.0.0.1:8080",
            "/hello",
            Some(("production", "hello", "/")),
        );
        check(
            "127.0.0.1",
            "/hello?q",
            Some(("production", "hello", "/?q")),
        );
        check(
            "hello.staging.localhost:8080",
            "/x",
            Some(("staging", "hello", "/x")),
        );
        check("hello.localhost", "/x", Some(("production", "hello", "/x")));
        check("127.0.0.1", "/", None);
        let r = req("hello--preview.staging.localhost", "/x");
        let t = resolve(&r, "production").unwrap();
        assert_eq!(
            (t.function, t.environment, t.preview),
            ("hello", "staging", true)
        );
        let r = req("hello.staging.localhost", "/x");
        assert!(!resolve(&r, "production").unwrap().preview);
    }

    #[test]
    fn the_function_sees_its_own_path_and_an_authority() {
        let uri_for = |r: &Request<()>| {
            let t = resolve(r, "production").unwrap();
            function_uri(r, &t.path).unwrap()
        };
        // Routed by host: the request's URI as it came.
        assert_eq!(uri_for(&req("hello.localhost", "/a/b?x=1")), None);
        // Routed by path: origin-form, the function's prefix gone; the
        // authority is the Host header's.
        let uri = uri_for(&req("127.0.0.1:8080", "/hello/a/b?x=1")).unwrap();
        assert_eq!(uri.to_string(), "/a/b?x=1");
        assert_eq!(uri.authority(), None);
        // Absolute-form: rebuilt (the Host header names the authority).
        let r = req("hello.localhost", "http://hello.localhost/a");
        assert_eq!(uri_for(&r).unwrap().to_string(), "/a");
        // No Host header (HTTP/1.0): absolute, on localhost.
        let r = Request::builder().uri("/hello/a").body(()).unwrap();
        assert_eq!(uri_for(&r).unwrap().to_string(), "http://localhost/a");
        // A Host that is no authority is refused, however it routes.
        for bad in ["a b", "a/b", ""] {
            let r = req(bad, "/hello/a");
            let err = function_uri(&r, "/a").unwrap_err();
            assert!(err.contains("invalid Host header"), "{bad:?}: {err}");
        }
        // An unreadable Host (not visible ASCII) is replaced by localhost.
        let r = Request::builder()
            .uri("/hello/a")
            .header("host", http::HeaderValue::from_bytes(b"h\xe9").unwrap())
            .body(())
            .unwrap();
        assert_eq!(
            function_uri(&r, "/a").unwrap().unwrap().to_string(),
            "http://localhost/a"
        );
    }
}
