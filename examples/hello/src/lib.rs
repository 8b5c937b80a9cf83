//! Minimal Seal example: answers every request with a greeting (v1).

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        // Config from the environment (`seal config set hello GREETING=hi`).
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello from Seal!".into());
        let body_text = format!("{greeting} (v1) path={path}\n");

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("content-length", &[body_text.len().to_string().into_bytes()]);

        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(200);
        let body = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));

        {
            let stream = body.write().expect("body stream");
            for chunk in body_text.as_bytes().chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .expect("write body");
            }
        }
        OutgoingBody::finish(body, None).expect("finish body");
    }
}

wasi::http::proxy::export!(Hello);
