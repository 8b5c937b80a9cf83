//! Limits on a request's head, checked by every HTTP listener (the
//! gateway and the control API) so an oversized head is refused with a
//! JSON error naming the limit. hyper refuses larger heads itself with an
//! empty body (a URI over 64 KiB: 414; over 100 header fields or a head
//! over its ~400 KiB read buffer: 431); these limits sit below its own.

use http::{HeaderMap, StatusCode, Uri};

/// Longest request target (path and query) served.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most bytes of header names and values in one request.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// Why a head is refused: status, error code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRefusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// `None` when the head is within the limits.
pub fn refusal(uri: &Uri, headers: &HeaderMap) -> Option<HeadRefusal> {
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(HeadRefusal {
            status: StatusCode::URI_TOO_LONG,
            code: "uri_too_long",
            message: format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
        });
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(HeadRefusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            code: "headers_too_large",
            message: format!(
                "the request's header fields are {bytes} bytes; the limit is {MAX_HEADER_BYTES}"
            ),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn heads_over_a_limit_are_refused_by_name() {
        let ok: Uri = "/hello/?q=1".parse().unwrap();
        assert_eq!(refusal(&ok, &HeaderMap::new()), None);
        let long: Uri = format!("/hello/?q={}", "a".repeat(MAX_URI_BYTES))
            .parse()
            .unwrap();
        let r = refusal(&long, &HeaderMap::new()).unwrap();
        assert_eq!((r.status.as_u16(), r.code), (414, "uri_too_long"));
        let at_limit: Uri = format!("/{}", "a".repeat(MAX_URI_BYTES - 1))
            .parse()
            .unwrap();
        assert_eq!(refusal(&at_limit, &HeaderMap::new()), None);

        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_str(&"v".repeat(4000)).unwrap();
        for i in 0..8 {
            headers.insert(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                value.clone(),
            );
        }
        assert_eq!(refusal(&ok, &headers), None, "32,032 bytes of 32,768");
        headers.insert("x-last", value);
        let r = refusal(&ok, &headers).unwrap();
        assert_eq!((r.status.as_u16(), r.code), (431, "headers_too_large"));
        assert!(r.message.contains("32768"), "{}", r.message);
    }
}
