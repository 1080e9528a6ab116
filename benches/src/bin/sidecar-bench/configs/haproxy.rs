//! HAProxy: one thread (`nbthread 1`), HTTP mode with connection reuse to the backend
//! (`http-reuse always`, as a sidecar pools upstream connections), `proto h2` for h2c
//! prior knowledge, and a TCP-mode frontend for passthrough.

use super::{endpoints, port};
use crate::scenario::{Job, Listener};
use std::fmt::Write;

pub fn config(job: &Job, block: u16) -> String {
    let mut c = String::from(
        "global\n  nbthread 1\n  maxconn 4096\n\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  option http-keep-alive\n\n",
    );
    let _ = write!(
        c,
        "frontend http\n  mode http\n  bind 127.0.0.1:{}\n  bind 127.0.0.1:{} proto h2\n  default_backend {}\n\n",
        port(block, Listener::Http),
        port(block, Listener::H2c),
        job.cluster
    );
    // The mTLS hop: `verify required` refuses a client without a certificate from the CA.
    let _ = write!(
        c,
        "frontend mtls\n  mode http\n  bind 127.0.0.1:{} ssl crt {} ca-file {} verify required alpn http/1.1\n  default_backend {}\n\n",
        port(block, Listener::Mtls),
        job.tls.server_combined.display(),
        job.tls.ca.display(),
        job.cluster
    );
    let _ = write!(
        c,
        "backend {}\n  mode http\n  balance roundrobin\n  http-reuse always\n",
        job.cluster
    );
    for (i, e) in endpoints(&job.http_endpoints).enumerate() {
        let _ = writeln!(c, "  server e{i} {e}");
    }
    let _ = write!(
        c,
        "\nfrontend tcp\n  mode tcp\n  bind 127.0.0.1:{}\n  default_backend tcp_backend\n\nbackend tcp_backend\n  mode tcp\n  balance roundrobin\n",
        port(block, Listener::Tcp)
    );
    for (i, e) in endpoints(&job.tcp_endpoints).enumerate() {
        let _ = writeln!(c, "  server t{i} {e}");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_h2_bind_and_tcp_frontend() {
        let c = config(&crate::configs::test_job(), 19040);
        assert!(c.contains("nbthread 1"));
        assert!(c.contains("bind 127.0.0.1:19041 proto h2"));
        assert!(c.contains("bind 127.0.0.1:19042\n"));
        assert!(c.contains("bind 127.0.0.1:19043 ssl crt ") && c.contains("verify required"));
        assert_eq!(c.matches("  server ").count(), 4);
    }
}
