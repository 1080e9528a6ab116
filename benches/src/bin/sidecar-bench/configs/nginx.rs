//! nginx: one worker, an `upstream` block with keep-alive connections (HTTP/1.1 to the
//! upstream, `Connection` cleared, as a sidecar does), `listen ... http2` for h2c prior
//! knowledge, and the `stream` module for TCP passthrough.

use super::{endpoints, port};
use crate::scenario::{Job, Listener};
use std::fmt::Write;
use std::path::Path;

/// Where Debian's `libnginx-mod-stream` puts the stream module.
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// `dir` holds the pid file and temp paths, so no root-owned default is touched.
pub fn config(job: &Job, block: u16, dir: &Path, with_stream: bool) -> String {
    let d = dir.display();
    let mut c = String::new();
    if with_stream {
        let _ = writeln!(c, "load_module {STREAM_MODULE};");
    }
    let _ = write!(
        c,
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  keepalive_requests 1000000;\n  http2_max_requests 1000000;\n  upstream {} {{\n",
        job.cluster
    );
    for e in endpoints(&job.http_endpoints) {
        let _ = writeln!(c, "    server {e};");
    }
    let location = format!(
        "    location / {{\n      proxy_pass http://{};\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_buffering on;\n    }}\n",
        job.cluster
    );
    let _ = write!(
        c,
        "    keepalive 128;\n    keepalive_requests 1000000;\n  }}\n  server {{\n    listen 127.0.0.1:{http};\n    listen 127.0.0.1:{h2} http2;\n{location}  }}\n",
        http = port(block, Listener::Http),
        h2 = port(block, Listener::H2c),
    );
    // The mTLS hop: a client certificate chaining to the CA is required; no session cache,
    // as the Envoy configuration has none configured either.
    let tls = &job.tls;
    let _ = write!(
        c,
        "  server {{\n    listen 127.0.0.1:{mtls} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_client_certificate {ca};\n    ssl_verify_client on;\n{location}  }}\n}}\n",
        mtls = port(block, Listener::Mtls),
        cert = tls.server.cert.display(),
        key = tls.server.key.display(),
        ca = tls.ca.display(),
    );
    if with_stream {
        c.push_str("stream {\n  upstream tcp_backend {\n");
        for e in endpoints(&job.tcp_endpoints) {
            let _ = writeln!(c, "    server {e};");
        }
        let _ = write!(
            c,
            "  }}\n  server {{\n    listen 127.0.0.1:{};\n    proxy_pass tcp_backend;\n  }}\n}}\n",
            port(block, Listener::Tcp)
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_two_servers_and_stream_only_when_loaded() {
        let job = crate::configs::test_job();
        let with = config(&job, 19030, Path::new("/tmp/x"), true);
        assert!(with.contains("worker_processes 1;"));
        assert_eq!(with.matches("server 127.0.0.1:1900").count(), 4);
        assert!(with.contains("listen 127.0.0.1:19031 http2;"));
        assert!(
            with.contains("listen 127.0.0.1:19033 ssl;") && with.contains("ssl_verify_client on;")
        );
        let without = config(&job, 19030, Path::new("/tmp/x"), false);
        assert!(!without.contains("stream {") && !without.contains("load_module"));
    }
}
