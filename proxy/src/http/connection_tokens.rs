//! The `Connection` header's tokens (`close`, `keep-alive`, `upgrade`), read the same way on
//! requests and responses, downstream and upstream: comma-separated, case-insensitive, over
//! every `Connection` line.
//! RFC 9110 §7.6.1: https://www.rfc-editor.org/rfc/rfc9110#section-7.6.1

/// Whether a `Connection` line of `headers` lists `token`.
pub fn has_token(headers: &http::HeaderMap, token: &str) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_any_line_and_any_case() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::CONNECTION,
            http::HeaderValue::from_static("keep-alive"),
        );
        headers.append(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade , CLOSE"),
        );
        assert!(has_token(&headers, "close"));
        assert!(has_token(&headers, "upgrade"));
        assert!(has_token(&headers, "keep-alive"));
        assert!(!has_token(&headers, "te"));
        assert!(!has_token(&http::HeaderMap::new(), "close"));
    }
}
