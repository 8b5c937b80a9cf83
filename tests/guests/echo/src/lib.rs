//! Test guest: echoes the request back as JSON:
//!
//! ```json
//! {"method": "...", "path": "...", "headers": {...}, "body": "...", "env": {...}}
//! ```
//!
//! Header names are lowercased (repeated headers are joined with ", "), the
//! body is the whole request body decoded as lossy UTF-8, and `env` holds every
//! environment variable visible to the guest.
//!
//! It also prints `echo: <method> <path>` to stdout and
//! `echo: request id <x-request-id>` to stderr.
//!
//! `/redirect?to=URL` answers `307` with `location: URL` instead (what a
//! hostile candidate answers a rollout hook with).

use std::collections::BTreeMap;

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasi::io::streams::StreamError;

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_default();

        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in request.headers().entries() {
            let value = String::from_utf8_lossy(&value).into_owned();
            headers
                .entry(name.to_ascii_lowercase())
                .and_modify(|existing| {
                    existing.push_str(", ");
                    existing.push_str(&value);
                })
                .or_insert(value);
        }

        if let Some(to) = path.strip_prefix("/redirect?to=") {
            let headers = Fields::new();
            let _ = headers.set("location", &[to.as_bytes().to_vec()]);
            respond_with(response_out, 307, headers, b"redirecting\n");
            return;
        }
        let body = read_body(&request);
        // One line on each stream, for the log-capture tests.
        println!("echo: {method} {path}");
        eprintln!(
            "echo: request id {}",
            headers.get("x-request-id").map_or("-", String::as_str)
        );
        let env: BTreeMap<String, String> = std::env::vars().collect();

        let mut json = String::with_capacity(256 + body.len());
        json.push_str("{\"method\":");
        push_json_str(&mut json, &method);
        json.push_str(",\"path\":");
        push_json_str(&mut json, &path);
        json.push_str(",\"headers\":");
        push_json_map(&mut json, &headers);
        json.push_str(",\"body\":");
        push_json_str(&mut json, &String::from_utf8_lossy(&body));
        json.push_str(",\"env\":");
        push_json_map(&mut json, &env);
        json.push('}');

        respond(response_out, 200, "application/json", json.as_bytes());
    }
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

/// Reads the entire request body.
fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(body) = request.consume() else {
        return out;
    };
    {
        let Ok(stream) = body.stream() else {
            return out;
        };
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(_)) => break,
            }
        }
        // The stream (a child resource) must be dropped before `finish`.
    }
    drop(IncomingBody::finish(body));
    out
}

/// Appends `s` as a JSON string literal (with quotes).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends a string-to-string map as a JSON object.
fn push_json_map(out: &mut String, map: &BTreeMap<String, String>) {
    out.push('{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, k);
        out.push(':');
        push_json_str(out, v);
    }
    out.push('}');
}

/// Sends a complete response with the given status, content type and body.
fn respond(out: ResponseOutparam, status: u16, content_type: &str, body_bytes: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
    respond_with(out, status, headers, body_bytes);
}

fn respond_with(out: ResponseOutparam, status: u16, headers: Fields, body_bytes: &[u8]) {
    let _ = headers.set("content-length", &[body_bytes.len().to_string().into_bytes()]);

    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));

    {
        let stream = body.write().expect("body stream");
        for chunk in body_bytes.chunks(4096) {
            stream.blocking_write_and_flush(chunk).expect("write body");
        }
    }
    OutgoingBody::finish(body, None).expect("finish body");
}

wasi::http::proxy::export!(Echo);
