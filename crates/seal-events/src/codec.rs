//! CloudEvents 1.0 over HTTP: reading an ingest request in any of the
//! three content modes, and writing an event as a binary-mode request for
//! a function.
//!
//! The SDK's own HTTP binding neither percent-decodes header values nor
//! refuses a `ce-datacontenttype` header, both of which the HTTP binding
//! (1.0.2, §3.1.3) requires; the binary mode is therefore read and written
//! here, on the SDK's event builder and model.

use bytes::Bytes;
use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

pub const STRUCTURED: &str = "application/cloudevents+json";
pub const BATCH: &str = "application/cloudevents-batch+json";

/// What an ingest accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// One event's data (default 256 KiB).
    pub max_event_bytes: usize,
    /// A whole request body (default 1 MiB).
    pub max_batch_bytes: usize,
    /// Events in one batch (default 100).
    pub max_batch_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 256 * 1024,
            max_batch_bytes: 1024 * 1024,
            max_batch_events: 100,
        }
    }
}

/// Why an ingest was refused; the message is safe to show the producer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("{0}")]
    Malformed(String),
    #[error("event data is {size} bytes, over the limit of {limit}")]
    EventTooLarge { size: usize, limit: usize },
    #[error("the request is {size} bytes, over the batch limit of {limit}")]
    BatchTooLarge { size: usize, limit: usize },
    #[error("the batch has {count} events, over the limit of {limit}")]
    TooManyEvents { count: usize, limit: usize },
}

fn malformed(m: impl Into<String>) -> CodecError {
    CodecError::Malformed(m.into())
}

/// The events of one ingest request, by its content mode: a batch, a
/// structured event, or else a binary-mode event.
pub fn read_request(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<Event>, CodecError> {
    if body.len() > limits.max_batch_bytes {
        return Err(CodecError::BatchTooLarge {
            size: body.len(),
            limit: limits.max_batch_bytes,
        });
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map_err(|_| malformed("content-type is not ASCII"))
        })
        .transpose()?
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let events = if media == BATCH {
        let items: Vec<serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("a batch is a JSON array of events: {e}")))?;
        if items.len() > limits.max_batch_events {
            return Err(CodecError::TooManyEvents {
                count: items.len(),
                limit: limits.max_batch_events,
            });
        }
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| structured(v).map_err(|e| malformed(format!("event {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?
    } else if media == STRUCTURED {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("a structured event is a JSON object: {e}")))?;
        vec![structured(v).map_err(malformed)?]
    } else {
        vec![read_binary(headers, body)?]
    };
    for e in &events {
        let size = data_len(e);
        if size > limits.max_event_bytes {
            return Err(CodecError::EventTooLarge {
                size,
                limit: limits.max_event_bytes,
            });
        }
    }
    Ok(events)
}

/// One structured-mode event, checked as the binary mode is.
fn structured(v: serde_json::Value) -> Result<Event, String> {
    let obj = v.as_object().ok_or("an event is a JSON object")?;
    for required in ["specversion", "id", "source", "type"] {
        match obj.get(required) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            Some(_) => return Err(format!("{required} must be a non-empty string")),
            None => return Err(format!("missing required attribute {required}")),
        }
    }
    if obj.get("specversion").and_then(|s| s.as_str()) != Some("1.0") {
        return Err(format!(
            "specversion {} is not supported (1.0 is)",
            obj["specversion"]
        ));
    }
    serde_json::from_value::<Event>(v).map_err(|e| e.to_string())
}

/// Reads a binary-mode event: `ce-*` headers (percent-decoded), the
/// content type as `datacontenttype`, the body as data.
pub fn read_binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, CodecError> {
    if headers.contains_key("ce-datacontenttype") {
        return Err(malformed(
            "ce-datacontenttype is not allowed in binary mode: the Content-Type header carries it",
        ));
    }
    let get = |name: &str| -> Result<Option<String>, CodecError> {
        headers
            .get(name)
            .map(|v| decode_header(name, v))
            .transpose()
    };
    let specversion = get("ce-specversion")?.ok_or_else(|| {
        malformed("missing required attribute specversion (ce-specversion header)")
    })?;
    if specversion != "1.0" {
        return Err(malformed(format!(
            "specversion {specversion:?} is not supported (1.0 is)"
        )));
    }
    let mut b = EventBuilderV10::new();
    for (attr, header) in [
        ("id", "ce-id"),
        ("source", "ce-source"),
        ("type", "ce-type"),
    ] {
        let v = get(header)?.filter(|v| !v.is_empty()).ok_or_else(|| {
            malformed(format!(
                "missing required attribute {attr} ({header} header)"
            ))
        })?;
        b = match attr {
            "id" => b.id(v),
            "source" => b.source(v),
            _ => b.ty(v),
        };
    }
    if let Some(t) = get("ce-time")? {
        b = b.time(t);
    }
    if let Some(s) = get("ce-subject")? {
        b = b.subject(s);
    }
    for (name, value) in headers {
        let Some(ext) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        if matches!(
            ext,
            "specversion" | "id" | "source" | "type" | "time" | "subject" | "dataschema"
        ) {
            continue;
        }
        if ext.is_empty()
            || !ext
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(malformed(format!(
                "extension name {ext:?} must be lowercase letters and digits"
            )));
        }
        b = b.extension(ext, decode_header(name.as_str(), value)?);
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let dataschema = get("ce-dataschema")?;
    if !body.is_empty() {
        let ct = content_type.unwrap_or_else(|| "application/octet-stream".into());
        let data = if is_json(&ct) {
            Data::Json(
                serde_json::from_slice(body)
                    .map_err(|e| malformed(format!("data is not the JSON its type says: {e}")))?,
            )
        } else {
            match std::str::from_utf8(body) {
                Ok(s) if ct.starts_with("text/") => Data::String(s.to_owned()),
                _ => Data::Binary(body.to_vec()),
            }
        };
        b = match dataschema {
            Some(s) => b.data_with_schema(ct, s.as_str(), data),
            None => b.data(ct, data),
        };
    }
    b.build().map_err(|e| malformed(e.to_string()))
}

fn is_json(ct: &str) -> bool {
    let m = ct.split(';').next().unwrap_or("").trim();
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

/// Percent-decodes a `ce-*` header value: a `%` must start two hex digits
/// and the result must be UTF-8.
fn decode_header(name: &str, v: &HeaderValue) -> Result<String, CodecError> {
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.len() > i + 2
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit();
            if !ok {
                return Err(malformed(format!(
                    "{name}: bad percent-encoding (a % must start two hex digits)"
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    percent_encoding::percent_decode(bytes)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| malformed(format!("{name}: the percent-decoded value is not UTF-8")))
}

/// What the binding says to encode: space, `"`, `%` and anything outside
/// printable ASCII.
const HEADER_ESCAPES: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

fn encode_header(s: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(s, HEADER_ESCAPES).to_string();
    // Every byte left is printable ASCII.
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The length of an event's data as it would be delivered.
pub fn data_len(e: &Event) -> usize {
    match e.data() {
        None => 0,
        Some(Data::Binary(b)) => b.len(),
        Some(Data::String(s)) => s.len(),
        Some(Data::Json(v)) => serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0),
    }
}

/// The event as a binary-mode request (`POST uri`): every attribute in a
/// percent-encoded `ce-*` header, `datacontenttype` as `Content-Type`,
/// the data as the body.
pub fn to_request(e: &Event, uri: &str) -> http::Request<http_body_util::Full<Bytes>> {
    to_request_bytes(e, uri).map(http_body_util::Full::new)
}

/// [`to_request`] with the body as bytes.
pub fn to_request_bytes(e: &Event, uri: &str) -> http::Request<Bytes> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        if let Ok(n) = HeaderName::from_bytes(format!("ce-{name}").as_bytes()) {
            headers.insert(n, encode_header(value));
        }
    };
    put("specversion", "1.0");
    put("id", e.id());
    put("source", &e.source().to_string());
    put("type", e.ty());
    if let Some(t) = e.time() {
        put(
            "time",
            &t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
    }
    if let Some(s) = e.subject() {
        put("subject", s);
    }
    if let Some(s) = e.dataschema() {
        put("dataschema", s.as_str());
    }
    for (name, value) in e.iter_extensions() {
        let v = match value {
            ExtensionValue::String(s) => s.clone(),
            ExtensionValue::Boolean(b) => b.to_string(),
            ExtensionValue::Integer(i) => i.to_string(),
        };
        put(name, &v);
    }
    let body = match e.data() {
        None => Bytes::new(),
        Some(Data::Binary(b)) => Bytes::from(b.clone()),
        Some(Data::String(s)) => Bytes::from(s.clone()),
        Some(Data::Json(v)) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    };
    if let Some(ct) = e.datacontenttype()
        && let Ok(v) = HeaderValue::from_str(ct)
    {
        headers.insert(CONTENT_TYPE, v);
    }
    let mut req = http::Request::new(body);
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    *req.headers_mut() = headers;
    req
}

/// The event in the structured JSON format (what the store keeps).
pub fn to_json(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "{}".into())
}

/// An event the store kept.
pub fn from_json(s: &str) -> Result<Event, String> {
    serde_json::from_str(s).map_err(|e| e.to_string())
}

/// A new event (a cron tick, `seal events send`): the SDK's builder.
pub fn new_event(
    id: &str,
    source: &str,
    ty: &str,
    time: Option<chrono::DateTime<chrono::Utc>>,
    data: Option<serde_json::Value>,
) -> Result<Event, String> {
    let mut b = EventBuilderV10::new().id(id).source(source).ty(ty);
    if let Some(t) = time {
        b = b.time(t);
    }
    if let Some(d) = data {
        b = b.data("application/json", d);
    }
    b.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn binary(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const OK: &[(&str, &str)] = &[
        ("ce-specversion", "1.0"),
        ("ce-id", "a1"),
        ("ce-source", "/shop"),
        ("ce-type", "order.created"),
        ("content-type", "application/json"),
    ];

    #[test]
    fn binary_mode_round_trips_with_percent_encoding() {
        let mut h = binary(OK);
        h.insert(
            "ce-subject",
            HeaderValue::from_static("caf%C3%A9%20%22x%22"),
        );
        h.insert("ce-traceparent", HeaderValue::from_static("00-abc-01"));
        h.insert("ce-time", HeaderValue::from_static("2026-12-03T10:00:00Z"));
        let e = read_binary(&h, br#"{"n":1}"#).unwrap();
        assert_eq!(e.subject(), Some("café \"x\""));
        assert_eq!(e.id(), "a1");
        assert_eq!(
            e.extension("traceparent").map(|v| v.to_string()),
            Some("00-abc-01".into())
        );
        let req = to_request(&e, "/");
        assert_eq!(req.headers()["ce-subject"], "caf%C3%A9%20%22x%22");
        assert_eq!(req.headers()["content-type"], "application/json");
        assert_eq!(req.headers()["ce-time"], "2026-12-03T10:00:00Z");
        let back = read_binary(req.headers(), br#"{"n":1}"#).unwrap();
        assert_eq!(back, e);
        // The store's form round-trips too.
        assert_eq!(from_json(&to_json(&e)).unwrap(), e);
    }

    #[test]
    fn malformed_binary_events_are_refused_with_the_reason() {
        let limits = Limits::default();
        for missing in ["ce-id", "ce-source", "ce-type", "ce-specversion"] {
            let mut h = binary(OK);
            h.remove(missing);
            let err = read_request(&h, b"{}", &limits).unwrap_err();
            assert!(err.to_string().contains(missing), "{missing}: {err}");
        }
        let mut h = binary(OK);
        h.insert("ce-specversion", HeaderValue::from_static("0.3"));
        assert!(
            read_request(&h, b"{}", &limits)
                .unwrap_err()
                .to_string()
                .contains("0.3")
        );
        let mut h = binary(OK);
        h.insert("ce-subject", HeaderValue::from_static("bad%zzvalue"));
        assert!(
            read_request(&h, b"{}", &limits)
                .unwrap_err()
                .to_string()
                .contains("percent")
        );
        let mut h = binary(OK);
        h.insert("ce-subject", HeaderValue::from_static("%FF%FE"));
        assert!(
            read_request(&h, b"{}", &limits)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
        let mut h = binary(OK);
        h.insert("ce-datacontenttype", HeaderValue::from_static("text/plain"));
        assert!(
            read_request(&h, b"{}", &limits)
                .unwrap_err()
                .to_string()
                .contains("ce-datacontenttype")
        );
        let h = binary(OK);
        assert!(read_request(&h, b"{not json", &limits).is_err());
    }

    #[test]
    fn structured_and_batch_modes_and_their_limits() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
        );
        let one = br#"{"specversion":"1.0","id":"s1","source":"/x","type":"t","data":{"a":1}}"#;
        let e = read_request(&h, one, &Limits::default()).unwrap();
        assert_eq!(e[0].id(), "s1");
        for (bad, why) in [
            (r#"{"specversion":"1.0","source":"/x","type":"t"}"#, "id"),
            (
                r#"{"specversion":"0.3","id":"1","source":"/x","type":"t"}"#,
                "specversion",
            ),
            (r#"{"specversion":"1.0","id":"1","source":"/x"}"#, "type"),
            ("[]", "object"),
        ] {
            let err = read_request(&h, bad.as_bytes(), &Limits::default()).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static(BATCH));
        let batch = format!(
            "[{},{}]",
            std::str::from_utf8(one).unwrap(),
            std::str::from_utf8(one).unwrap().replace("s1", "s2")
        );
        let e = read_request(&h, batch.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(e.len(), 2);
        let small = Limits {
            max_batch_events: 1,
            ..Limits::default()
        };
        assert!(matches!(
            read_request(&h, batch.as_bytes(), &small),
            Err(CodecError::TooManyEvents { count: 2, limit: 1 })
        ));
        let tiny = Limits {
            max_batch_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            read_request(&h, batch.as_bytes(), &tiny),
            Err(CodecError::BatchTooLarge { .. })
        ));
        let small_event = Limits {
            max_event_bytes: 4,
            ..Limits::default()
        };
        assert!(matches!(
            read_request(&h, batch.as_bytes(), &small_event),
            Err(CodecError::EventTooLarge { size: 7, limit: 4 })
        ));
    }
}
