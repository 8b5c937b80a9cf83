//! Test guest: always responds `500 boom`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Fail;

impl Guest for Fail {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        respond(response_out, 500, "text/plain", b"boom\n");
    }
}

/// Sends a complete response with the given status, content type and body.
fn respond(out: ResponseOutparam, status: u16, content_type: &str, body_bytes: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
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

wasi::http::proxy::export!(Fail);
