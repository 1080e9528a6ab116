//! The admin API, Envoy-compatible: https://www.envoyproxy.io/docs/envoy/latest/operations/admin
//! `handle` is pure routing (method + path → response) so every endpoint is testable without
//! sockets; `serve` puts it behind an HTTP/1.1 listener until the server shuts down.

mod certs;
mod clusters;
mod config_dump;
mod dump_query;
mod histogram_buckets;
mod json;
mod listeners;
mod logging;
mod memory;
mod misc;
mod redact;
mod runtime;
pub mod server_info;
mod stats;
#[cfg(test)]
mod test_support;

use crate::server::Server;
use bytes::Bytes;
use http::{header, Method, Response, StatusCode};
use http_body_util::Full;
use std::sync::Arc;

pub type AdminResponse = Response<Full<Bytes>>;

pub(crate) const TEXT: &str = "text/plain; charset=UTF-8";
pub(crate) const JSON: &str = "application/json";

/// The query string, decoded, in order. A bare key (`?usedonly`) has an empty value.
#[derive(Debug, Default, Clone)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Self {
        Query(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) => (percent_decode(k), percent_decode(v)),
                    None => (percent_decode(pair), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

/// `%XX` decoding as Envoy's query parser does it; `+` stays a plus.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Handler = fn(&Server, &Query) -> AdminResponse;

/// One admin endpoint, described as Envoy's `/help` describes it.
struct Endpoint {
    path: &'static str,
    help: &'static str,
    post_only: bool,
    params: &'static [(&'static str, &'static str)],
    handler: Handler,
}

const ENDPOINTS: &[Endpoint] = &[
    Endpoint { path: "/", help: "Admin home page", post_only: false, params: &[], handler: help },
    Endpoint { path: "/certs", help: "print certs on machine", post_only: false, params: &[], handler: certs::handle },
    Endpoint { path: "/clusters", help: "upstream cluster status", post_only: false, params: &[
        ("format", "Format to use; One of (text, json)"),
        ("filter", "Regular expression (Google re2) for filtering clusters by name"),
    ], handler: clusters::handle },
    Endpoint { path: "/config_dump", help: "dump current Envoy configs", post_only: false, params: &[
        ("resource", "The resource to dump"),
        ("mask", "The mask to apply. When both resource and mask are specified, the mask is applied to every element in the desired repeated field so that only a subset of fields are returned. The mask is parsed as a Protobuf::FieldMask"),
        ("name_regex", "Dump only the currently loaded configurations whose names match the specified regex. Can be used with both resource and mask query parameters."),
        ("include_eds", "Dump currently loaded configuration including EDS. See the response definition for more information"),
    ], handler: config_dump::handle },
    Endpoint { path: "/drain_listeners", help: "drain listeners", post_only: true, params: &[
        ("graceful", "When draining listeners, enter a graceful drain period prior to closing listeners. This behaviour and duration is configurable via server options or CLI"),
        ("inboundonly", "Drains all inbound listeners. traffic_direction field in envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener is inbound or outbound."),
    ], handler: misc::drain_listeners },
    Endpoint { path: "/healthcheck/fail", help: "cause the server to fail health checks", post_only: true, params: &[], handler: misc::healthcheck_fail },
    Endpoint { path: "/healthcheck/ok", help: "cause the server to pass health checks", post_only: true, params: &[], handler: misc::healthcheck_ok },
    Endpoint { path: "/help", help: "print out list of admin commands", post_only: false, params: &[], handler: help },
    Endpoint { path: "/hot_restart_version", help: "print the hot restart compatibility version", post_only: false, params: &[], handler: misc::hot_restart_version },
    Endpoint { path: "/listeners", help: "print listener info", post_only: false, params: &[
        ("format", "File format to use; One of (text, json)"),
    ], handler: listeners::handle },
    Endpoint { path: "/logging", help: "query/change logging levels", post_only: true, params: &[
        ("paths", "Change multiple logging levels by setting to <logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>."),
        ("level", "desired logging level, this will change all loggers's level; One of (, trace, debug, info, warning, error, critical, off)"),
    ], handler: logging::handle },
    Endpoint { path: "/memory", help: "print current allocation/heap usage", post_only: false, params: &[], handler: memory::handle },
    Endpoint { path: "/quitquitquit", help: "exit the server", post_only: true, params: &[], handler: misc::quit },
    Endpoint { path: "/ready", help: "print server state, return 200 if LIVE, otherwise return 503", post_only: false, params: &[], handler: misc::ready },
    Endpoint { path: "/runtime", help: "print runtime values", post_only: false, params: &[], handler: runtime::handle },
    Endpoint { path: "/server_info", help: "print server version/status information", post_only: false, params: &[], handler: server_info::handle },
    Endpoint { path: "/stats", help: "print server stats", post_only: false, params: &[
        ("usedonly", "Only include stats that have been written by system since restart"),
        ("filter", "Regular expression (Google re2) for filtering stats"),
        ("format", "Format to use; One of (text, json, prometheus)"),
        ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges)"),
    ], handler: stats::handle },
    Endpoint { path: "/stats/prometheus", help: "print server stats in prometheus format", post_only: false, params: &[
        ("usedonly", "Only include stats that have been written by system since restart"),
        ("filter", "Regular expression (Google re2) for filtering stats"),
    ], handler: stats::prometheus },
];

/// Routes one admin request. Envoy serves every endpoint to any method except the mutating
/// ones, which answer 405 to anything but POST.
pub fn handle(server: &Server, method: &Method, path_and_query: &str) -> AdminResponse {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let Some(endpoint) = ENDPOINTS.iter().find(|e| e.path == path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("invalid path. {}", help_text()),
        );
    };
    if endpoint.post_only && method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {method} not allowed, POST required."),
        );
    }
    tracing::debug!(target: "admin", %method, path, "admin request");
    (endpoint.handler)(server, &Query::parse(query))
}

fn help(_: &Server, _: &Query) -> AdminResponse {
    text(StatusCode::OK, help_text())
}

fn help_text() -> String {
    let mut out = String::from("admin commands are:\n");
    for e in ENDPOINTS {
        let post = if e.post_only { " (POST)" } else { "" };
        out.push_str(&format!("  {}{post}: {}\n", e.path, e.help));
        for (name, help) in e.params {
            out.push_str(&format!("      {name}: {help}\n"));
        }
    }
    out
}

/// A response with Envoy's admin headers.
pub(crate) fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::SERVER, header::HeaderValue::from_static("envoy"));
    response
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    respond(status, TEXT, body)
}

/// Pretty JSON as Envoy prints it (one-space indent).
pub(crate) fn json_response(value: &serde_json::Value) -> AdminResponse {
    let mut body = json::pretty(value);
    // Envoy ends JSON bodies with a newline.
    if !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    respond(StatusCode::OK, JSON, body)
}

/// Serves the admin API on `listener` until the server's shutdown signal fires.
pub async fn serve(server: Arc<Server>, listener: tokio::net::TcpListener) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let mut shutdown = server.shutdown_signal();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(target: "admin", "admin accept failed: {e}");
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return,
        };
        let server = server.clone();
        let mut conn_shutdown = server.shutdown_signal();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let server = server.clone();
                async move {
                    let path = request
                        .uri()
                        .path_and_query()
                        .map(|pq| pq.as_str())
                        .unwrap_or("/");
                    Ok::<_, std::convert::Infallible>(handle(&server, request.method(), path))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(target: "admin", "admin connection: {e}");
                    }
                }
                () = stopped(&mut conn_shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Resolves once the shutdown signal is set (or its sender is gone).
async fn stopped(signal: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it before returning.
    let _ = signal.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::test_support::{body, server};
    use super::*;

    #[test]
    fn unknown_path_is_404_with_the_help() {
        let s = server();
        let r = handle(&s, &Method::GET, "/nope");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert!(body(r).starts_with("invalid path. admin commands are:\n  /: Admin home page\n"));
    }

    #[test]
    fn post_only_endpoints_refuse_get() {
        let s = server();
        for path in [
            "/quitquitquit",
            "/healthcheck/fail",
            "/healthcheck/ok",
            "/drain_listeners",
            "/logging?level=debug",
        ] {
            let r = handle(&s, &Method::GET, path);
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(body(r), "Method GET not allowed, POST required.");
        }
        assert!(!s.health_check_failed());
        assert!(!*s.shutdown_signal().borrow());
    }

    #[test]
    fn help_lists_post_endpoints() {
        let s = server();
        let r = handle(&s, &Method::GET, "/help");
        assert_eq!(r.headers()[header::CONTENT_TYPE], TEXT);
        let b = body(r);
        assert!(b.contains("  /quitquitquit (POST): exit the server\n"));
        assert!(b.contains("      usedonly: Only include stats"));
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("filter=%5Ecluster%2E&usedonly&a=b%");
        assert_eq!(q.get("filter"), Some("^cluster."));
        assert_eq!(q.get("usedonly"), Some(""));
        assert_eq!(q.get("a"), Some("b%"));
    }

    #[tokio::test]
    async fn serves_http1_until_shutdown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let s = server();
        s.set_state(crate::server::ServerState::Live);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(serve(s.clone(), listener));
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.ends_with("\r\n\r\nLIVE\n"), "{response}");
        s.shutdown();
        task.await.expect("serve returns on shutdown");
    }
}
