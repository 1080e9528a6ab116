//! Local replies to gRPC requests: Envoy answers them as gRPC does — HTTP 200, no body, the
//! outcome in `grpc-status` (mapped from the HTTP status) and `grpc-message` (the reply's
//! text) — so gRPC clients read the error instead of failing on a non-gRPC response.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply

use super::router::ResponseBody;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");

/// Whether a request is gRPC: `application/grpc`, or `application/grpc+<codec>` (gRPC-Web's
/// `application/grpc-web` is not).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc" || v.starts_with(b"application/grpc+")
    })
}

/// The gRPC status for an HTTP status, as gRPC maps them.
/// https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Turns a local reply into its gRPC form: status 200, `grpc-status`, and the body as
/// `grpc-message`. A reply already in gRPC form is left alone. Local replies hold their body
/// in memory, so reading it completes at once.
pub async fn into_grpc(response: &mut Response<ResponseBody>) {
    if response.headers().get(header::CONTENT_TYPE) == Some(&APPLICATION_GRPC) {
        return;
    }
    let body = std::mem::replace(response.body_mut(), super::router::empty_body());
    let text = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    set_grpc_status(response, grpc_status_for(response.status()), &text);
}

/// Makes `response` a trailers-only gRPC reply with `grpc_status` and `message`.
pub fn set_grpc_status(response: &mut Response<ResponseBody>, grpc_status: u32, message: &[u8]) {
    *response.status_mut() = StatusCode::OK;
    *response.body_mut() = super::router::empty_body();
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONTENT_TYPE, APPLICATION_GRPC.clone());
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(grpc_status));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            headers.insert(GRPC_MESSAGE.clone(), v);
        }
    }
}

/// gRPC's encoding of `grpc-message`: printable ASCII except `%` as is, every other byte as
/// `%XX`.
fn percent_encode(message: &[u8]) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(
            percent_encode(b"no healthy upstream"),
            "no healthy upstream"
        );
        assert_eq!(percent_encode(b"50% off\n"), "50%25 off%0A");
    }
}
