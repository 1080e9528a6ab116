//! The `envoy.filters.listener.tls_inspector` listener filter: looks at the first bytes of a
//! connection without consuming them and, when they are a TLS ClientHello, reports the SNI and
//! the offered ALPN for filter chain matching (transport protocol `tls`); anything else is
//! `raw_buffer`. The parser reads only what matching needs and never panics on hostile bytes.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/tls_inspector

use crate::listener::peek::{peek_until, Peeked};
use tokio::net::TcpStream;

/// What the inspector learned about a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detected {
    /// `tls` or `raw_buffer`.
    pub transport: &'static str,
    /// Lowercased.
    pub sni: Option<String>,
    pub alpn: Vec<String>,
}

impl Detected {
    pub fn raw() -> Self {
        Self {
            transport: "raw_buffer",
            ..Default::default()
        }
    }
}

/// The most ClientHello bytes examined, as Envoy's inspector bounds it (64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    Tls(Detected),
    NotTls,
    NeedMore,
}

/// Peeks at `stream` until the ClientHello is complete or the bytes are not TLS; None when
/// the client closes first. The caller bounds the wait with `listener_filters_timeout`.
pub async fn inspect(stream: &TcpStream) -> Option<Detected> {
    let verdict = peek_until(stream, MAX_CLIENT_HELLO, |bytes| match parse(bytes) {
        Parse::Tls(detected) => Some(detected),
        Parse::NotTls => Some(Detected::raw()),
        Parse::NeedMore => None,
    });
    match verdict.await {
        Peeked::Decided(detected) => Some(detected),
        Peeked::Exhausted => Some(Detected::raw()),
        Peeked::Closed => None,
    }
}

/// Parses the TLS records at the start of a connection far enough to read the ClientHello.
pub fn parse(bytes: &[u8]) -> Parse {
    // The ClientHello may span several handshake records: gather their payloads.
    let mut handshake = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            return Parse::NeedMore;
        }
        if rest[0] != 0x16 {
            return Parse::NotTls;
        }
        if rest.len() < 2 {
            return Parse::NeedMore;
        }
        if rest[1] != 0x03 {
            return Parse::NotTls;
        }
        if rest.len() < 5 {
            return Parse::NeedMore;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Parse::NotTls;
        }
        let Some(payload) = rest.get(5..5 + len) else {
            if handshake.is_empty() && rest.len() >= 6 && rest[5] != 0x01 {
                return Parse::NotTls;
            }
            return Parse::NeedMore;
        };
        handshake.extend_from_slice(payload);
        rest = &rest[5 + len..];
        if handshake[0] != 0x01 {
            return Parse::NotTls;
        }
        if handshake.len() < 4 {
            continue;
        }
        let body_len = usize::from(handshake[1]) << 16
            | usize::from(handshake[2]) << 8
            | usize::from(handshake[3]);
        if body_len > MAX_CLIENT_HELLO {
            return Parse::NotTls;
        }
        if handshake.len() >= 4 + body_len {
            return match client_hello(&handshake[4..4 + body_len]) {
                Some(d) => Parse::Tls(d),
                None => Parse::NotTls,
            };
        }
    }
}

/// A cursor over big-endian length-prefixed fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn client_hello(body: &[u8]) -> Option<Detected> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut detected = Detected {
        transport: "tls",
        ..Default::default()
    };
    if r.0.is_empty() {
        return Some(detected);
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut data = Reader(extensions.vec16()?);
        match kind {
            // server_name (RFC 6066 §3)
            0 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 && detected.sni.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        detected.sni = Some(name.to_ascii_lowercase());
                    }
                }
            }
            // application_layer_protocol_negotiation (RFC 7301 §3.1)
            16 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let protocol = list.vec8()?;
                    detected
                        .alpn
                        .push(String::from_utf8_lossy(protocol).into_owned());
                }
            }
            _ => {}
        }
    }
    Some(detected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it.
    fn client_hello_bytes(sni: &str, alpn: &[&str]) -> Vec<u8> {
        let provider = Arc::new(crate::config::tls::provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_client_hello() {
        let hello = client_hello_bytes("Outbound_.8080_._.Web.Svc", &["istio-http/1.1", "h2"]);
        assert_eq!(
            parse(&hello),
            Parse::Tls(Detected {
                transport: "tls",
                sni: Some("outbound_.8080_._.web.svc".into()),
                alpn: vec!["istio-http/1.1".into(), "h2".into()],
            })
        );
        // Every prefix is incomplete, never a verdict.
        for len in 0..hello.len() {
            assert_eq!(parse(&hello[..len]), Parse::NeedMore, "prefix {len}");
        }
    }

    #[test]
    fn plaintext_and_garbage_are_raw_and_never_panic() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parse::NotTls);
        assert_eq!(parse(b"PRI * HTTP/2.0"), Parse::NotTls);
        assert_eq!(parse(&[0x16, 0x03, 0x01, 0x00, 0x00]), Parse::NotTls);
        let hello = client_hello_bytes("a.example", &["h2"]);
        for i in 0..hello.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = hello.clone();
                bad[i] ^= flip;
                let _ = parse(&bad);
            }
        }
        // A ClientHello split across two records still parses.
        let body = &hello[5..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert!(matches!(parse(&split), Parse::Tls(d) if d.sni.as_deref() == Some("a.example")));
    }
}
