//! Test guest: makes one outbound HTTP GET through `wasi:http/outgoing-handler`
//! to the `host` and `path` given in the query (`?host=127.0.0.1:9000&path=/x`,
//! plain http), after computing for `spin` milliseconds when the query
//! has `spin=<ms>`, and answers:
//!
//! - `200 upstream <status>: <body>` when the request went through;
//! - `502 outbound error: <error-code>` when the host refused it, e.g.
//!   `HttpRequestDenied` when Seal's capability gate denied it.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam,
    Scheme,
};

struct Outbound;

impl Guest for Outbound {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let host = query(&pq, "host").unwrap_or_default();
        let path = query(&pq, "path").unwrap_or_else(|| "/".into());
        if let Some(ms) = query(&pq, "spin").and_then(|ms| ms.parse::<u64>().ok()) {
            let until = wasi::clocks::monotonic_clock::now() + ms * 1_000_000;
            while wasi::clocks::monotonic_clock::now() < until {
                std::hint::spin_loop();
            }
        }
        let (status, text) = match fetch(&host, &path) {
            Ok((code, body)) => (200, format!("upstream {code}: {body}")),
            Err(e) => (502, format!("outbound error: {e}")),
        };
        respond(response_out, status, text.as_bytes());
    }
}

fn fetch(host: &str, path: &str) -> Result<(u16, String), String> {
    let req = OutgoingRequest::new(Fields::new());
    req.set_scheme(Some(&Scheme::Http)).map_err(|_| "bad scheme")?;
    req.set_authority(Some(host)).map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    let resp = loop {
        match future.get() {
            Some(r) => break r,
            None => future.subscribe().block(),
        }
    };
    let resp = resp
        .map_err(|_| "response taken twice".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.consume().map_err(|_| "no body")?;
    let stream = body.stream().map_err(|_| "no body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend(chunk),
            Err(_) => break,
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

fn query(pq: &str, key: &str) -> Option<String> {
    let (_, q) = pq.split_once('?')?;
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

fn respond(out: ResponseOutparam, status: u16, body_bytes: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = body.write().expect("body stream");
        let _ = stream.blocking_write_and_flush(body_bytes);
    }
    let _ = OutgoingBody::finish(body, None);
}

wasi::http::proxy::export!(Outbound);
