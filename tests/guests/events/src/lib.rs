//! Test guest: an event consumer and producer.
//!
//! Each request prints one line, `event: <ce-id> type=<ce-type>
//! subject=<ce-subject> request=<x-request-id> time=<ce-time> at=<unix ns
//! when the handler started>`.
//!
//! As a consumer it answers the status the event asks for: a subject
//! `status-NNN` answers NNN, `sleep-MS` sleeps that long then answers 200,
//! `trap` traps, `emit-<queue>` publishes an `order.forwarded` event (data
//! `{"from": "<ce-id>"}`) to `<queue>` and answers the publish's status;
//! anything else answers 200.
//!
//! As a producer, a request to
//! `/emit/<queue>?type=<ce-type>&id=<ce-id>&subject=<ce-subject>`
//! publishes its body (JSON) as a binary-mode CloudEvent to `<queue>`
//! through `http://events.seal.internal/<queue>` and answers the status
//! and body the platform answered (`502 <error>` when the request itself
//! was refused, e.g. `HttpRequestDenied` for a queue the manifest does not
//! list). Both print `emitted: <status> <body>`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Events;

fn header(request: &IncomingRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "-".into())
}

fn query(pq: &str, key: &str) -> Option<String> {
    let (_, q) = pq.split_once('?')?;
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let Ok(body) = request.consume() else {
        return Vec::new();
    };
    let Ok(stream) = body.stream() else {
        return Vec::new();
    };
    let mut bytes = Vec::new();
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend(chunk);
    }
    bytes
}

/// Publishes one binary-mode CloudEvent; the platform's status and body.
fn emit(queue: &str, id: &str, ty: &str, subject: Option<&str>, data: &[u8]) -> (u16, String) {
    let headers = Fields::new();
    if let Some(s) = subject {
        let _ = headers.set("ce-subject", &[s.as_bytes().to_vec()]);
    }
    for (k, v) in [
        ("ce-specversion", "1.0"),
        ("ce-id", id),
        ("ce-source", "/guest-events"),
        ("ce-type", ty),
        ("content-type", "application/json"),
    ] {
        let _ = headers.set(k, &[v.as_bytes().to_vec()]);
    }
    let req = OutgoingRequest::new(headers);
    let _ = req.set_method(&Method::Post);
    let _ = req.set_scheme(Some(&Scheme::Http));
    let _ = req.set_authority(Some("events.seal.internal"));
    let _ = req.set_path_with_query(Some(&format!("/{queue}")));
    let body = req.body().expect("request body");
    let future = match outgoing_handler::handle(req, None) {
        Ok(f) => f,
        Err(e) => return (502, format!("{e:?}")),
    };
    // A refused request drops its body: the answer below says why.
    if let Ok(stream) = body.write() {
        for chunk in data.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
    let resp = loop {
        match future.get() {
            Some(r) => break r,
            None => future.subscribe().block(),
        }
    };
    let resp = match resp {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (502, format!("{e:?}")),
        Err(()) => return (502, "response taken twice".into()),
    };
    let status = resp.status();
    let mut text = Vec::new();
    if let Ok(b) = resp.consume()
        && let Ok(stream) = b.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            text.extend(chunk);
        }
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = body.write().expect("body stream");
        for chunk in text.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
    }
    OutgoingBody::finish(body, None).expect("finish body");
}

impl Guest for Events {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let now = wasi::clocks::wall_clock::now();
        let at = u128::from(now.seconds) * 1_000_000_000 + u128::from(now.nanoseconds);
        let id = header(&request, "ce-id");
        let subject = header(&request, "ce-subject");
        println!(
            "event: {id} type={} subject={subject} request={} time={} at={at}",
            header(&request, "ce-type"),
            header(&request, "x-request-id"),
            header(&request, "ce-time"),
        );
        let pq = request.path_with_query().unwrap_or_default();
        if let Some(rest) = pq.strip_prefix("/emit/") {
            let queue = rest.split('?').next().unwrap_or_default().to_owned();
            let ty = query(&pq, "type").unwrap_or_else(|| "order.created".into());
            let ce_id = query(&pq, "id").unwrap_or_else(|| format!("e-{at}"));
            let subject = query(&pq, "subject");
            let data = read_body(request);
            let (status, text) = emit(&queue, &ce_id, &ty, subject.as_deref(), &data);
            println!("emitted: {status} {text}");
            return respond(response_out, status, &text);
        }
        if let Some(queue) = subject.strip_prefix("emit-") {
            let data = format!("{{\"from\":\"{id}\"}}");
            let (status, text) = emit(queue, &format!("fwd-{id}"), "order.forwarded", None, data.as_bytes());
            println!("emitted: {status} {text}");
            return respond(response_out, status, &text);
        }
        if let Some(ms) = subject.strip_prefix("sleep-").and_then(|s| s.parse::<u64>().ok()) {
            wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        }
        if subject == "trap" {
            panic!("asked to trap");
        }
        let status = subject
            .strip_prefix("status-")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200);
        respond(response_out, status, &format!("{id}\n"));
    }
}

wasi::http::proxy::export!(Events);
