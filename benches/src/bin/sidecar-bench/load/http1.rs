//! A minimal blocking HTTP/1.1 keep-alive client: `GET /`, read a `Content-Length` response.
//! Enough for the open-loop generator and readiness probes, and cheap: one buffer per
//! connection, no allocation per request.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub struct Connection {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let request =
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sidecar-bench\r\n\r\n");
        Ok(Self {
            stream,
            request: request.into_bytes(),
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request and reads its whole response; returns the status code.
    pub fn get(&mut self) -> io::Result<u16> {
        self.stream.write_all(&self.request)?;
        let mut filled = 0;
        let (head_len, status, body_len) = loop {
            if filled == self.buf.len() {
                return Err(invalid("response head too large"));
            }
            let n = self.stream.read(&mut self.buf[filled..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            filled += n;
            if let Some(head) = parse_head(&self.buf[..filled])? {
                break head;
            }
        };
        let mut remaining = (head_len + body_len).saturating_sub(filled);
        while remaining > 0 {
            let want = remaining.min(self.buf.len());
            let n = self.stream.read(&mut self.buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            remaining -= n;
        }
        Ok(status)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `Some((head length, status, content length))` once the head is complete.
pub fn parse_head(data: &[u8]) -> io::Result<Option<(usize, u16, usize)>> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&data[..end]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("no status line"))?;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            } else if name.trim().eq_ignore_ascii_case("transfer-encoding") {
                return Err(invalid("chunked responses are not expected"));
            }
        }
    }
    let length = length.ok_or_else(|| invalid("no content-length"))?;
    Ok(Some((end + 4, status, length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_head_only() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_head(&r[..20]).ok().flatten(), None);
        assert_eq!(parse_head(r).ok().flatten(), Some((38, 200, 5)));
    }
}
