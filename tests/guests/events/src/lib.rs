//! Test guest: an event consumer. Prints one line per event it receives,
//! `event: <ce-id> type=<ce-type> subject=<ce-subject> request=<x-request-id>
//! time=<ce-time> at=<unix ns when the handler started>`, and answers the status the event asks for: a subject
//! `status-NNN` answers NNN, `sleep-MS` sleeps that long then answers 200,
//! anything else 200. `trap` as the subject traps.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Events;

fn header(request: &IncomingRequest, name: &str) -> String {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| "-".into())
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
        let headers = Fields::new();
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let body = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));
        {
            let stream = body.write().expect("body stream");
            stream
                .blocking_write_and_flush(format!("{id}\n").as_bytes())
                .expect("write body");
        }
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

wasi::http::proxy::export!(Events);
