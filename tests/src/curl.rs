//! A real HTTP client for the tests: curl, run as a subprocess with a deadline. Responses are
//! reduced to what a user sees: the status, the headers (lower-cased names, in order) and the
//! body.

use crate::process;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

/// How long one request may take; the proxies answer in milliseconds.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response as curl received it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{}", self.body))
    }
}

/// Why a request got no response.
#[derive(Debug, Clone)]
pub struct Failed {
    /// curl's exit code (7: could not connect, 28: timed out, 52: empty reply, ...).
    pub exit_code: Option<i32>,
    pub message: String,
}

/// `curl -sS -i [args] <url>`: `Err` when curl got no HTTP response at all.
pub fn request(method: &str, url: &str, args: &[&str]) -> Result<Response, Failed> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-i", "--max-time", "8", "-X", method])
        .args(args)
        .arg(url);
    let finished = process::run(&mut command, TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot run curl ({e}); install it (apt-get install curl)"));
    if !finished.success() {
        return Err(Failed {
            exit_code: finished.status.and_then(|s| s.code()),
            message: format!("curl {method} {url}: {}", finished.stderr.trim()),
        });
    }
    parse(&finished.stdout).map_err(|message| Failed {
        exit_code: Some(0),
        message: format!("curl {method} {url}: {message}:\n{}", finished.stdout),
    })
}

/// GET `url`; panics when there is no response.
pub fn get(url: &str) -> Response {
    request("GET", url, &[]).unwrap_or_else(|f| panic!("{}", f.message))
}

/// POST `url` with an empty body; panics when there is no response.
pub fn post(url: &str) -> Response {
    request("POST", url, &[]).unwrap_or_else(|f| panic!("{}", f.message))
}

/// `curl -i` output: one header block per response (1xx ones first), then the body.
fn parse(output: &str) -> Result<Response, String> {
    let mut rest = output;
    loop {
        let (head, body) = rest
            .split_once("\r\n\r\n")
            .ok_or("no end of the header block")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        if (100..200).contains(&status) && body.starts_with("HTTP/") {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        return Ok(Response {
            status,
            headers,
            body: body.to_string(),
        });
    }
}

/// Whether a TCP connection to `addr` is accepted within a second.
pub fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// `"<status> <body>"` of GET `url`, or `"refused"`, polled every 50 ms until it equals `want`
/// or `within` has passed; the last answer either way.
pub fn body_becomes(url: &str, want: &str, within: std::time::Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = match request("GET", url, &["--max-time", "2"]) {
            Ok(r) => format!("{} {}", r.status, r.body),
            Err(_) => "refused".to_string(),
        };
        if got == want || std::time::Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_status_headers_and_body_after_a_100_continue() {
        let r = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nX-A: b: c\r\n\r\nbody\r\n\r\nmore",
        )
        .expect("parses");
        assert_eq!(r.status, 503);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("X-A"), Some("b: c"));
        assert_eq!(r.body, "body\r\n\r\nmore");
    }
}
