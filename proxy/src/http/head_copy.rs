//! A copy of the bytes an HTTP/1 connection read since its last response went out: the head
//! of the request being read (unless the client pipelines), for what Envoy's codec acts on
//! and hyper's parser does not tell. Copying is a memcpy per read; the copy is only read for
//! the rare request that needs it (a chunked one, or one hyper refused).

use std::sync::Mutex;

/// How much of a request a connection copies unless told: Envoy's largest default header
/// block (60 KiB) and a request line.
pub const DEFAULT_LIMIT: usize = 64 * 1024;

/// Above this, a copy's buffer is given back when the next request starts, so a connection
/// that once read a large request does not keep that memory.
const KEPT_CAPACITY: usize = 4096;

#[derive(Debug)]
pub struct HeadCopy {
    bytes: Mutex<Vec<u8>>,
    limit: usize,
}

impl Default for HeadCopy {
    fn default() -> Self {
        Self::new(DEFAULT_LIMIT)
    }
}

impl HeadCopy {
    /// A copy of at most `limit` bytes per request.
    pub fn new(limit: usize) -> Self {
        Self {
            bytes: Mutex::new(Vec::new()),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes just read from the connection.
    pub fn extend(&self, read: &[u8]) {
        let mut bytes = self.lock();
        let room = self.limit.saturating_sub(bytes.len());
        if room > 0 {
            bytes.extend_from_slice(&read[..read.len().min(room)]);
        }
    }

    /// A response went out: what is read next starts the next request.
    pub fn restart(&self) {
        let mut bytes = self.lock();
        bytes.clear();
        if bytes.capacity() > KEPT_CAPACITY {
            bytes.shrink_to(KEPT_CAPACITY);
        }
    }

    /// Whether bytes of a next request were read since the last response went out.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The first `n` bytes of the request being read (fewer if fewer were read).
    pub fn start(&self, n: usize) -> Vec<u8> {
        let bytes = self.lock();
        bytes[..bytes.len().min(n)].to_vec()
    }

    /// Whether the head of a `method` request, which hyper parsed as chunked, also carried
    /// `Content-Length`: hyper drops that header (RFC 9112 §6.3, as Envoy's
    /// `allow_chunked_length`) where Envoy refuses the request by default.
    /// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/protocol.proto#envoy-v3-api-field-config-core-v3-http1protocoloptions-allow-chunked-length
    pub fn content_length_beside_chunked(&self, method: &http::Method) -> bool {
        let bytes = self.lock();
        // A copy that does not start with this request's line (a pipelined request, or the
        // rest of a body read after an early response) says nothing about it.
        let method = method.as_str().as_bytes();
        if !(bytes.starts_with(method) && bytes.get(method.len()) == Some(&b' ')) {
            return false;
        }
        // hyper parsed the head, so its lines are `name:value` with no space before the
        // colon; the head ends at the first empty line.
        bytes
            .split(|&b| b == b'\n')
            .skip(1)
            .take_while(|line| !matches!(line, [] | [b'\r']))
            .any(|line| {
                line.len() > CONTENT_LENGTH.len()
                    && line[CONTENT_LENGTH.len()] == b':'
                    && line[..CONTENT_LENGTH.len()].eq_ignore_ascii_case(CONTENT_LENGTH)
            })
    }
}

const CONTENT_LENGTH: &[u8] = b"content-length";

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_of(parts: &[&[u8]], limit: usize) -> HeadCopy {
        let copy = HeadCopy::new(limit);
        for part in parts {
            copy.extend(part);
        }
        copy
    }

    #[test]
    fn finds_content_length_beside_chunked_across_reads() {
        let post = http::Method::POST;
        let copy = copy_of(
            &[
                b"POST / HTTP/1.1\r\nHost: x\r\nConTent-Len",
                b"gth: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            ],
            DEFAULT_LIMIT,
        );
        assert!(copy.content_length_beside_chunked(&post));
        // Another request's line, or another method: not this request's head.
        assert!(!copy.content_length_beside_chunked(&http::Method::PUT));
        copy.restart();
        assert!(!copy.content_length_beside_chunked(&post));
    }

    #[test]
    fn looks_only_at_the_head_and_whole_header_names() {
        let post = http::Method::POST;
        let in_body = copy_of(
            &[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ncontent-length: 1\r\n"],
            DEFAULT_LIMIT,
        );
        assert!(!in_body.content_length_beside_chunked(&post));
        let longer_name = copy_of(
            &[b"POST / HTTP/1.1\r\ncontent-length-x: 1\r\nTransfer-Encoding: chunked\r\n\r\n"],
            DEFAULT_LIMIT,
        );
        assert!(!longer_name.content_length_beside_chunked(&post));
    }

    #[test]
    fn copies_at_most_its_limit_and_gives_back_large_buffers() {
        let copy = copy_of(&[&[b'a'; 10_000], b"more"], 6000);
        assert_eq!(copy.start(usize::MAX).len(), 6000);
        assert_eq!(copy.start(3), b"aaa");
        copy.restart();
        assert!(copy.lock().capacity() <= KEPT_CAPACITY);
        copy.extend(b"GET");
        assert_eq!(copy.start(64), b"GET");
    }
}
