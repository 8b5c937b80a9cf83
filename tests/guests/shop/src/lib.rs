//! Test guest for replays: two routes whose answers carry noise (a random
//! id, the time) besides what they mean, and one that changes by version.
//!
//! - `/price` → `{"price": P, "id": "<random>", "at": <ms>}`: P is 12 when
//!   `SEAL_VERSION` is 2 (a candidate that changed a price), else 10;
//! - `/hello` → `{"greeting": "hi", "id": "<random>"}`, the same for every
//!   version;
//! - anything else → 404 `{"error": "no such route"}`.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Shop;

impl Guest for Shop {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let route = path.split('?').next().unwrap_or("/").to_owned();
        let id = format!("{:016x}", wasi::random::random::get_random_u64());
        let now = wasi::clocks::wall_clock::now();
        let at = now.seconds * 1000 + u64::from(now.nanoseconds / 1_000_000);
        let version = std::env::var("SEAL_VERSION").unwrap_or_default();
        let (status, body) = match route.as_str() {
            "/price" => {
                let price = if version == "2" { 12 } else { 10 };
                (
                    200,
                    format!("{{\"price\":{price},\"id\":\"{id}\",\"at\":{at}}}"),
                )
            }
            "/hello" => (200, format!("{{\"greeting\":\"hi\",\"id\":\"{id}\"}}")),
            _ => (404, "{\"error\":\"no such route\"}".to_owned()),
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let out = response.body().expect("response body");
        ResponseOutparam::set(response_out, Ok(response));
        {
            let stream = out.write().expect("body stream");
            stream
                .blocking_write_and_flush(body.as_bytes())
                .expect("write body");
        }
        OutgoingBody::finish(out, None).expect("finish body");
    }
}

wasi::http::proxy::export!(Shop);
