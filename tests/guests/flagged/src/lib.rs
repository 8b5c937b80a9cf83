//! Test guest: evaluates a feature flag the way any OpenFeature OFREP
//! provider does — `POST http://flags.seal.internal/ofrep/v1/evaluate/flags/KEY`
//! with `{"context": {"targetingKey": USER}}` — and answers
//! `<status> <body>` of that evaluation. `/flag?key=K&user=U` evaluates one
//! flag; `/all?user=U` every flag (OFREP's bulk evaluation); `/bench?key=K&n=N`
//! times N evaluations inside the guest (microseconds each, and failures).

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Flagged;

impl Guest for Flagged {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let user = query(&pq, "user").unwrap_or_default();
        // `/bench?key=K&n=N`: N evaluations for N users, timed inside the
        // guest; answers the microseconds per evaluation.
        if pq.starts_with("/bench") {
            let key = query(&pq, "key").unwrap_or_default();
            let n: u64 = query(&pq, "n").and_then(|n| n.parse().ok()).unwrap_or(100);
            let path = format!("/ofrep/v1/evaluate/flags/{key}");
            let start = wasi::clocks::monotonic_clock::now();
            let mut failed = 0;
            for i in 0..n {
                let body = format!("{{\"context\":{{\"targetingKey\":\"user-{i}\"}}}}");
                if !matches!(post(&path, body.as_bytes()), Ok((200, _))) {
                    failed += 1;
                }
            }
            let ns = wasi::clocks::monotonic_clock::now() - start;
            let text = format!("{:.2} {failed}", ns as f64 / 1000.0 / n.max(1) as f64);
            respond(response_out, text.as_bytes());
            return;
        }
        let path = if pq.starts_with("/all") {
            "/ofrep/v1/evaluate/flags".to_owned()
        } else {
            format!(
                "/ofrep/v1/evaluate/flags/{}",
                query(&pq, "key").unwrap_or_default()
            )
        };
        let body = format!("{{\"context\":{{\"targetingKey\":\"{user}\"}}}}");
        let text = match post(&path, body.as_bytes()) {
            Ok((status, body)) => format!("{status} {body}"),
            Err(e) => format!("error {e}"),
        };
        respond(response_out, text.as_bytes());
    }
}

fn post(path: &str, body: &[u8]) -> Result<(u16, String), String> {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"application/json".to_vec()]);
    let req = OutgoingRequest::new(headers);
    req.set_method(&Method::Post).map_err(|_| "bad method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|_| "bad scheme")?;
    req.set_authority(Some("flags.seal.internal"))
        .map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "bad path")?;
    let out = req.body().map_err(|_| "no request body")?;
    {
        let stream = out.write().map_err(|_| "no request stream")?;
        stream
            .blocking_write_and_flush(body)
            .map_err(|e| format!("{e:?}"))?;
    }
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    OutgoingBody::finish(out, None).map_err(|e| format!("{e:?}"))?;
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
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        bytes.extend(chunk);
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

fn respond(out: ResponseOutparam, body_bytes: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(200);
    let body = response.body().expect("response body");
    ResponseOutparam::set(out, Ok(response));
    {
        let stream = body.write().expect("body stream");
        let _ = stream.blocking_write_and_flush(body_bytes);
    }
    let _ = OutgoingBody::finish(body, None);
}

wasi::http::proxy::export!(Flagged);
