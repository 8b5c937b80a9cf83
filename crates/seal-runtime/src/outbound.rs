//! The outbound-request gate: a guest's HTTP request leaves only for a host
//! its manifest allows.
//!
//! [`OutboundGate`] is the store's [`WasiHttpHooks`]: every request the
//! guest sends passes through [`WasiHttpHooks::send_request`], which checks
//! the authority against the allowed [`HostPattern`]s before any socket is
//! opened. A denied request fails inside the guest with
//! `HTTP-request-denied`; an allowed one is sent by wasmtime's default
//! client. The name checked must be the name connected to, so authorities
//! that could be read two ways (userinfo, an empty port) are denied outright.
//!
//! Names are resolved here, before the request leaves: an address that is
//! not public (loopback, private, link-local such as the cloud metadata
//! address, …) fails with `destination-IP-prohibited` unless the manifest
//! names that very address (`127.0.0.1:9000`); a name or `*` never
//! reaches one. Plain HTTP then connects to the vetted address (the `Host`
//! header keeps the name), so a second lookup cannot rebind it; HTTPS
//! connects by name, and a rebound name fails its certificate check.

use crate::observer::{EVENTS_AUTHORITY, Emitter, FLAGS_AUTHORITY, FlagEvaluator};
use bytes::Bytes;
use http_body_util::BodyExt;
use seal_artifact::capabilities::HostPattern;
use std::sync::Arc;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

/// The largest event request a guest may publish (a batch).
pub const MAX_EMIT_BYTES: usize = 1024 * 1024;

/// Lets a guest's outbound request through only to an allowed host.
pub(crate) struct OutboundGate {
    allowed: Arc<[HostPattern]>,
    /// Queues the guest may publish to, and where its events go.
    queues: Arc<[String]>,
    emitter: Option<Arc<dyn Emitter>>,
    /// Flags the guest may evaluate, and what evaluates them.
    flags: Arc<[String]>,
    evaluator: Option<Arc<dyn FlagEvaluator>>,
}

type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl OutboundGate {
    pub(crate) fn new(allowed: Arc<[HostPattern]>) -> Self {
        Self {
            allowed,
            queues: Arc::new([]),
            emitter: None,
            flags: Arc::new([]),
            evaluator: None,
        }
    }

    /// A gate for one invocation: the hosts it may reach, the queues it
    /// may publish to and where its events go, the flags it may evaluate
    /// and what evaluates them (the manifest's lists are shared, nothing
    /// is allocated).
    pub(crate) fn for_invocation(
        allowed: Arc<[HostPattern]>,
        (queues, emitter): (Arc<[String]>, Option<Arc<dyn Emitter>>),
        (flags, evaluator): (Arc<[String]>, Option<Arc<dyn FlagEvaluator>>),
    ) -> Self {
        Self {
            allowed,
            queues,
            emitter,
            flags,
            evaluator,
        }
    }

    /// Points a kept instance's gate at its next invocation. The lists are
    /// the function's, which the gate holds already after its first
    /// invocation: each is replaced only when it differs (an instance made
    /// ahead, a replay's refused hosts), so a reuse touches no shared count.
    pub(crate) fn attach(
        &mut self,
        allowed: &Arc<[HostPattern]>,
        (queues, emitter): (&Arc<[String]>, Option<Arc<dyn Emitter>>),
        (flags, evaluator): (&Arc<[String]>, Option<Arc<dyn FlagEvaluator>>),
    ) {
        fn keep<T: ?Sized>(held: &mut Arc<T>, wanted: &Arc<T>) {
            if !Arc::ptr_eq(held, wanted) {
                *held = wanted.clone();
            }
        }
        keep(&mut self.allowed, allowed);
        keep(&mut self.queues, queues);
        keep(&mut self.flags, flags);
        self.emitter = emitter;
        self.evaluator = evaluator;
    }

    /// Lets go of what belongs to the invocation (where its events go,
    /// what evaluates its flags): what an idle instance keeps points at
    /// no invocation. The manifest's lists stay.
    pub(crate) fn detach(&mut self) {
        self.emitter = None;
        self.evaluator = None;
    }

    /// An OFREP request, answered here: `POST /ofrep/v1/evaluate/flags/KEY`
    /// (one flag) or `POST /ofrep/v1/evaluate/flags` (every flag the
    /// manifest declares), body `{"context": {…}}`. A flag the manifest
    /// does not declare is answered 403 in OFREP's error format.
    fn evaluate_flags(
        &self,
        request: http::Request<WasiBody>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        let declared = self.flags.clone();
        let evaluator = self.evaluator.clone();
        Box::new(async move {
            let path = request.uri().path().to_owned();
            let post = request.method() == http::Method::POST;
            let body = http_body_util::Limited::new(request.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes());
            let error = |status: http::StatusCode, key: &str, code: &str, details: String| {
                let mut b = serde_json::json!({"errorCode": code, "errorDetails": details});
                if !key.is_empty() {
                    b["key"] = serde_json::Value::String(key.to_owned());
                }
                (status, b)
            };
            let context = match &body {
                Ok(b) if b.is_empty() => Ok(serde_json::json!({})),
                Ok(b) => serde_json::from_slice::<serde_json::Value>(b)
                    .map(|v| v.get("context").cloned().unwrap_or(serde_json::json!({}))),
                Err(_) => Ok(serde_json::Value::Null),
            };
            let (status, answer) = match (path.strip_prefix("/ofrep/v1/evaluate/flags"), context) {
                _ if !post => error(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "",
                    "GENERAL",
                    "evaluate a flag with POST".into(),
                ),
                (None, _) => error(
                    http::StatusCode::NOT_FOUND,
                    "",
                    "GENERAL",
                    format!("{path}: OFREP evaluates at /ofrep/v1/evaluate/flags[/KEY]"),
                ),
                (Some(_), Err(e)) => error(
                    http::StatusCode::BAD_REQUEST,
                    "",
                    "PARSE_ERROR",
                    format!("the request body is not an OFREP request: {e}"),
                ),
                (Some(_), Ok(ctx)) if !ctx.is_object() => error(
                    http::StatusCode::BAD_REQUEST,
                    "",
                    "INVALID_CONTEXT",
                    "the context must be an object (at most 64 KiB)".into(),
                ),
                (Some(""), Ok(ctx)) | (Some("/"), Ok(ctx)) => {
                    let flags: Vec<serde_json::Value> = declared
                        .iter()
                        .filter_map(|k| {
                            let (s, a) = evaluator.as_ref()?.evaluate(k, &ctx);
                            (s != http::StatusCode::NOT_FOUND).then_some(a)
                        })
                        .collect();
                    (http::StatusCode::OK, serde_json::json!({"flags": flags}))
                }
                (Some(rest), Ok(ctx)) => {
                    let key = rest.trim_start_matches('/');
                    if !declared.iter().any(|d| d == key) {
                        tracing::debug!(
                            flag = key,
                            "evaluation of a flag the manifest does not declare"
                        );
                        error(
                            http::StatusCode::FORBIDDEN,
                            key,
                            "GENERAL",
                            format!(
                                "the function's manifest does not declare flag {key:?} ([capabilities] flags, or seal publish --flag)"
                            ),
                        )
                    } else {
                        match &evaluator {
                            Some(e) => e.evaluate(key, &ctx),
                            None => error(
                                http::StatusCode::NOT_FOUND,
                                key,
                                "FLAG_NOT_FOUND",
                                format!("no flag {key:?} in this environment"),
                            ),
                        }
                    }
                }
            };
            let response = http::Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(
                    http_body_util::Full::new(Bytes::from(answer.to_string()))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|_| wasmtime_wasi_http::Error::InternalError(None))?;
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }

    /// Requests to [`EVENTS_AUTHORITY`] for one of `queues` go to `emitter`.
    #[cfg(test)]
    pub(crate) fn with_events(
        mut self,
        queues: Arc<[String]>,
        emitter: Option<Arc<dyn Emitter>>,
    ) -> Self {
        self.queues = queues;
        self.emitter = emitter;
        self
    }

    /// A request to the events authority, answered here: the queue must be
    /// one the manifest lists (else the guest sees `HTTP-request-denied`,
    /// as for an unlisted host); the answer is the emitter's.
    fn publish(&self, request: http::Request<WasiBody>) -> Box<dyn Future<Output = Sent> + Send> {
        let queue = request.uri().path().trim_start_matches('/').to_owned();
        if !self.queues.contains(&queue) {
            tracing::debug!(
                queue,
                "event publishing to a queue the manifest does not list"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let emitter = self.emitter.clone();
        Box::new(async move {
            let answer = |status: http::StatusCode, message: &str| {
                let body = serde_json::json!({"error": {"code": "events", "message": message}});
                (status, Bytes::from(body.to_string()))
            };
            let (status, body) = if request.method() != http::Method::POST {
                answer(
                    http::StatusCode::METHOD_NOT_ALLOWED,
                    "publish an event with POST",
                )
            } else if let Some(emitter) = emitter {
                let (parts, body) = request.into_parts();
                match http_body_util::Limited::new(body, MAX_EMIT_BYTES)
                    .collect()
                    .await
                {
                    Ok(b) => emitter.emit(queue, parts.headers, b.to_bytes()).await,
                    Err(_) => answer(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("an event request is at most {MAX_EMIT_BYTES} bytes"),
                    ),
                }
            } else {
                answer(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "events are not taken here",
                )
            };
            let response = http::Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(
                    http_body_util::Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .map_err(|_| wasmtime_wasi_http::Error::InternalError(None))?;
            let done: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response, done))
        })
    }

    /// Whether a request to `uri` may leave.
    fn permits(&self, uri: &http::Uri) -> bool {
        // The name checked must be the name connected to: no userinfo
        // (`allowed.org@other.org`), no port that is not a number.
        let authority = uri.authority().map_or("", |a| a.as_str());
        if authority.contains('@') || (authority.ends_with(':') && uri.port_u16().is_none()) {
            return false;
        }
        let host = uri.host().unwrap_or("");
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
                443
            } else {
                80
            });
        if !seal_artifact::capabilities::host_allowed(&self.allowed, host, port) {
            tracing::debug!(host, port, "outbound request denied by the manifest");
            return false;
        }
        true
    }
}

impl WasiHttpHooks for OutboundGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        if request
            .uri()
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(EVENTS_AUTHORITY))
        {
            return self.publish(request);
        }
        if request
            .uri()
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case(FLAGS_AUTHORITY))
        {
            return self.evaluate_flags(request);
        }
        if !self.permits(request.uri()) {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let allowed = self.allowed.clone();
        Box::new(async move {
            let request = vet_addresses(&allowed, request).await?;
            Box::into_pin(wasmtime_wasi_http::default_hooks().send_request(request, options, fut))
                .await
        })
    }
}

/// Resolves the request's host and refuses it if any address is not public
/// and not named by the manifest; plain HTTP is pointed at the vetted
/// address.
async fn vet_addresses(
    allowed: &[HostPattern],
    mut request: http::Request<wasmtime_wasi_http::WasiBody>,
) -> Result<http::Request<wasmtime_wasi_http::WasiBody>, wasmtime_wasi_http::Error> {
    use wasmtime_wasi_http::Error;
    let uri = request.uri();
    let tls = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addresses: Vec<std::net::IpAddr> = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(_) => return Err(Error::DestinationNotFound),
        },
    };
    if addresses.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    for ip in &addresses {
        if let Some(why) = seal_artifact::capabilities::address_refusal(*ip)
            && !seal_artifact::capabilities::address_named(allowed, *ip, port)
        {
            tracing::debug!(host, %ip, why, "outbound request to a non-public address denied");
            return Err(Error::DestinationIpProhibited);
        }
    }
    if !tls && host.parse::<std::net::IpAddr>().is_err() {
        let vetted = std::net::SocketAddr::new(addresses[0], port);
        let mut parts = request.uri().clone().into_parts();
        parts.authority = Some(
            vetted
                .to_string()
                .parse()
                .map_err(|_| Error::HttpRequestUriInvalid)?,
        );
        *request.uri_mut() =
            http::Uri::from_parts(parts).map_err(|_| Error::HttpRequestUriInvalid)?;
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gate(patterns: &[&str]) -> OutboundGate {
        let allowed: Vec<HostPattern> = patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        OutboundGate::new(allowed.into())
    }

    fn permits(gate: &OutboundGate, uri: &str) -> bool {
        gate.permits(&uri.parse().unwrap())
    }

    fn get(uri: &str) -> http::Request<wasmtime_wasi_http::WasiBody> {
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::get(uri).body(body).unwrap()
    }

    #[test]
    fn an_allowed_host_passes_and_an_unlisted_one_does_not() {
        let g = gate(&["api.example.org"]);
        assert!(permits(&g, "https://api.example.org/v1"));
        assert!(permits(&g, "http://API.Example.ORG/"));
        assert!(!permits(&g, "https://other.example.org/"));
        assert!(!permits(&g, "https://example.org/"));
        assert!(!permits(&g, "https://api.example.org.evil.net/"));
    }

    #[test]
    fn no_patterns_allow_nothing_and_star_allows_everything() {
        let none = gate(&[]);
        assert!(!permits(&none, "https://api.example.org/"));
        let all = gate(&["*"]);
        assert!(permits(&all, "https://api.example.org/"));
        assert!(permits(&all, "http://127.0.0.1:9000/"));
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        let g = gate(&["*.example.org"]);
        assert!(permits(&g, "https://a.example.org/"));
        assert!(permits(&g, "https://a.b.example.org/"));
        assert!(!permits(&g, "https://example.org/"));
        assert!(!permits(&g, "https://badexample.org/"));
    }

    #[test]
    fn ports_are_checked_with_the_schemes_default() {
        let any_port = gate(&["api.example.org"]);
        assert!(permits(&any_port, "https://api.example.org:8443/"));
        assert!(permits(&any_port, "http://api.example.org:8080/"));

        let g = gate(&["api.example.org:8443"]);
        assert!(permits(&g, "https://api.example.org:8443/"));
        assert!(!permits(&g, "https://api.example.org/"));
        assert!(!permits(&g, "https://api.example.org:8444/"));

        // Without a port, https means 443 and http means 80.
        let tls = gate(&["api.example.org:443"]);
        assert!(permits(&tls, "https://api.example.org/"));
        assert!(!permits(&tls, "http://api.example.org/"));
        let plain = gate(&["api.example.org:80"]);
        assert!(permits(&plain, "http://api.example.org/"));
        assert!(!permits(&plain, "https://api.example.org/"));
    }

    #[test]
    fn ipv6_hosts_match_with_or_without_brackets() {
        let g = gate(&["[::1]:8080"]);
        assert!(permits(&g, "http://[::1]:8080/"));
        assert!(!permits(&g, "http://[::1]:8081/"));
        assert!(!permits(&g, "http://[::2]:8080/"));
    }

    #[test]
    fn ambiguous_authorities_are_denied_even_when_everything_is_allowed() {
        let g = gate(&["*"]);
        // Userinfo: which name is connected to must not be in doubt.
        assert!(!permits(&g, "http://api.example.org@evil.net/"));
        assert!(!permits(&g, "http://user:pw@api.example.org/"));
        // An empty port.
        assert!(!permits(&g, "http://api.example.org:/"));
    }

    /// Records what it is handed and answers 202.
    #[derive(Default)]
    struct Taken(std::sync::Mutex<Vec<(String, String, Bytes)>>);

    impl Emitter for Taken {
        fn emit(
            &self,
            queue: String,
            headers: http::HeaderMap,
            body: Bytes,
        ) -> std::pin::Pin<Box<dyn Future<Output = (http::StatusCode, Bytes)> + Send>> {
            let ty = headers
                .get("ce-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            self.0.lock().unwrap().push((queue, ty, body));
            Box::pin(async { (http::StatusCode::ACCEPTED, Bytes::from_static(b"{}")) })
        }
    }

    #[tokio::test]
    async fn events_go_to_the_emitter_only_for_listed_queues_and_never_to_a_socket() {
        let taken = Arc::new(Taken::default());
        let mut g = gate(&["*"]).with_events(
            Arc::from(vec!["invoices".to_owned()]),
            Some(taken.clone() as Arc<dyn Emitter>),
        );
        let post = |uri: &str, body: &'static [u8]| {
            http::Request::post(uri)
                .header("ce-type", "invoice.issued")
                .body(
                    http_body_util::Full::new(Bytes::from_static(body))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap()
        };
        let send = |g: &mut OutboundGate, r| {
            Box::into_pin(g.send_request(r, None, Box::new(async { Ok(()) })))
        };
        let (resp, _) = match send(
            &mut g,
            post("http://events.seal.internal/invoices", b"{\"n\":1}"),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => panic!("publishing failed: {e}"),
        };
        assert_eq!(resp.status(), 202);
        {
            let got = taken.0.lock().unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "invoices");
            assert_eq!(got[0].1, "invoice.issued");
            assert_eq!(&got[0].2[..], b"{\"n\":1}");
        }
        // A queue the manifest does not list: denied like an unlisted host,
        // even though every host is allowed.
        for uri in [
            "http://events.seal.internal/orders",
            "http://EVENTS.seal.internal/invoices/x",
            "http://events.seal.internal/",
        ] {
            assert!(
                matches!(
                    send(&mut g, post(uri, b"{}")).await,
                    Err(wasmtime_wasi_http::Error::HttpRequestDenied)
                ),
                "{uri}"
            );
        }
        // Only POST publishes.
        let (resp, _) = match send(&mut g, get("http://events.seal.internal/invoices")).await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(resp.status(), 405);
        assert_eq!(taken.0.lock().unwrap().len(), 1);
        // No emitter (events are not taken here): a clear 503.
        let mut bare = gate(&[]).with_events(Arc::from(vec!["invoices".to_owned()]), None);
        let (resp, _) = match send(
            &mut bare,
            post("http://events.seal.internal/invoices", b"{}"),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(resp.status(), 503);
    }

    #[tokio::test]
    async fn an_unlisted_host_is_answered_with_http_request_denied() {
        let mut g = gate(&["api.example.org"]);
        let fut = g.send_request(
            get("http://other.example.org/"),
            None,
            Box::new(async { Ok(()) }),
        );
        match Box::into_pin(fut).await {
            Err(wasmtime_wasi_http::Error::HttpRequestDenied) => {}
            Err(e) => panic!("expected HttpRequestDenied, got {e}"),
            Ok(_) => panic!("an unlisted host was let through"),
        }
    }

    async fn outcome(g: &mut OutboundGate, uri: &str) -> Result<u16, String> {
        match Box::into_pin(g.send_request(get(uri), None, Box::new(async { Ok(()) }))).await {
            Ok((resp, _)) => Ok(resp.status().as_u16()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// `*` and names reach public addresses only: loopback, the metadata
    /// address and a name resolving to loopback are prohibited before any
    /// connection is made.
    #[tokio::test]
    async fn names_and_star_never_reach_a_non_public_address() {
        let mut any = gate(&["*"]);
        for uri in [
            "http://127.0.0.1:9/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9/",
            "http://[::ffff:127.0.0.1]:9/",
            "http://localhost:9/",
        ] {
            let got = outcome(&mut any, uri).await;
            assert_eq!(got, Err("DestinationIpProhibited".into()), "{uri}");
        }
        let mut named = gate(&["localhost:9"]);
        assert_eq!(
            outcome(&mut named, "http://localhost:9/").await,
            Err("DestinationIpProhibited".into())
        );
        let mut nowhere = gate(&["*"]);
        assert_eq!(
            outcome(&mut nowhere, "http://no-such-host.invalid/").await,
            Err("DestinationNotFound".into())
        );
    }

    /// An allowed request is really sent: to a listener on loopback that
    /// answers it, and only when its port is the allowed one.
    #[tokio::test]
    async fn an_allowed_host_is_sent_the_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed before the request head");
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });

        let mut wrong_port = gate(&[&format!("127.0.0.1:{}", port.wrapping_add(1).max(1))]);
        let uri = format!("http://127.0.0.1:{port}/hello");
        let fut = wrong_port.send_request(get(&uri), None, Box::new(async { Ok(()) }));
        assert!(matches!(
            Box::into_pin(fut).await,
            Err(wasmtime_wasi_http::Error::HttpRequestDenied)
        ));

        let mut g = gate(&[&format!("127.0.0.1:{port}")]);
        let fut = g.send_request(get(&uri), None, Box::new(async { Ok(()) }));
        let (resp, _io) = match Box::into_pin(fut).await {
            Ok(r) => r,
            Err(e) => panic!("allowed request failed: {e}"),
        };
        assert_eq!(resp.status(), 204);
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /hello HTTP/1.1\r\n"), "{head}");
    }
}
