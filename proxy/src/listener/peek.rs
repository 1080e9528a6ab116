//! What the inspecting listener filters (tls_inspector, http_inspector) share: reading a
//! connection's first bytes without consuming them, growing the window until the filter can
//! decide, the window is full, or the client gives up.

use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How peeking ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked<T> {
    /// The filter decided on these bytes.
    Decided(T),
    /// `limit` bytes arrived and the filter still wants more.
    Exhausted,
    /// The client shut its side (or the socket failed) while the filter looked: Envoy closes
    /// such a connection rather than matching a chain for it.
    Closed,
}

/// The first window; most decisions need far less (a request line, one ClientHello record).
const FIRST_WINDOW: usize = 1024;

/// Peeks at `stream` until `decide` returns a verdict on the bytes so far. The caller bounds
/// the wait with `listener_filters_timeout`.
pub async fn peek_until<T>(
    stream: &TcpStream,
    limit: usize,
    mut decide: impl FnMut(&[u8]) -> Option<T>,
) -> Peeked<T> {
    let mut buf = vec![0u8; FIRST_WINDOW.min(limit)];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Peeked::Closed,
            Ok(n) => n,
        };
        // Envoy closes a connection whose client shuts its side while the listener filters
        // still run, even when what came before would have let them decide. Peeking does not
        // clear readiness, so this returns at once.
        match stream.ready(Interest::READABLE).await {
            Ok(ready) if !ready.is_read_closed() => {}
            _ => return Peeked::Closed,
        }
        if let Some(verdict) = decide(&buf[..n]) {
            return Peeked::Decided(verdict);
        }
        if n == buf.len() {
            if buf.len() >= limit {
                return Peeked::Exhausted;
            }
            buf.resize((buf.len() * 4).min(limit), 0);
            continue;
        }
        // Waiting for "readable" would return at once (see above): wait a little for the rest
        // (it nearly always arrives in the first segment).
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
