//! Access logs as they run: each HTTP connection manager, tcp_proxy and listener holds an
//! [`AccessLogs`] built once from its configuration, with the writer of each sink resolved.
//! At the end of a stream the caller fills a [`crate::format::StreamInfo`]; every logger whose
//! filter passes renders its line into a reused per-thread buffer and appends it to its sink's
//! buffer, which a writer task writes out (see [`writer`]). Nothing on the request path waits
//! for the disk: when a stalled sink's buffer is full the line is dropped and counted
//! (`filesystem.write_dropped`, an Outrigger stat).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage

mod writer;

pub use writer::Files;

use crate::config::access_log::AccessLog;
use crate::format::Context;
use http::HeaderName;
use std::sync::Arc;
use writer::LogSender;

/// The access logs of one connection manager, tcp_proxy or listener.
#[derive(Debug, Default)]
pub struct AccessLogs {
    loggers: Vec<(Arc<AccessLog>, LogSender)>,
    /// Request headers any format or filter reads: only these are kept past routing.
    pub request_headers: Vec<HeaderName>,
    /// Response headers any format reads.
    pub response_headers: Vec<HeaderName>,
    /// Whether any format reads response trailers.
    pub trailers: bool,
}

impl AccessLogs {
    pub fn new(configs: &[Arc<AccessLog>], files: &Files) -> Self {
        let mut request_headers = Vec::new();
        let mut response_headers = Vec::new();
        let mut trailers = false;
        for log in configs {
            for t in log.format.templates() {
                request_headers.extend(t.request_header_names().cloned());
                response_headers.extend(t.response_header_names().cloned());
                trailers |= t.reads_trailers();
            }
            if let Some(f) = &log.filter {
                f.header_names(&mut request_headers);
            }
        }
        dedup(&mut request_headers);
        dedup(&mut response_headers);
        Self {
            loggers: configs
                .iter()
                .map(|c| (c.clone(), files.sender(&c.sink)))
                .collect(),
            request_headers,
            response_headers,
            trailers,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.loggers.is_empty()
    }

    /// Logs one finished stream to every logger whose filter lets it through.
    pub fn log(&self, ctx: &Context<'_>) {
        let Some(stream) = ctx.stream else { return };
        for (config, sender) in &self.loggers {
            if let Some(filter) = &config.filter {
                if !filter.allows(stream, ctx.request_headers) {
                    continue;
                }
            }
            LINE.with(|line| {
                let mut line = line.borrow_mut();
                line.clear();
                config.format.render(ctx, &mut line);
                sender.send(&line);
            });
        }
    }
}

thread_local! {
    /// The line being rendered, reused so logging allocates nothing per request.
    static LINE: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
}

fn dedup(names: &mut Vec<HeaderName>) {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
}
