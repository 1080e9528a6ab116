//! `/stats/prometheus` and `/metrics` on the status port: pilot-agent's merge, by plain
//! concatenation, of the agent's own metrics, the proxy's Prometheus text (rendered here, as
//! :15090 would serve it) and the application's metrics scraped from `localhost`.

use super::client::{self, Connected, ReadError, Version};
use super::config::ScrapeTarget;
use super::StatusContext;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::Full;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The exposition formats pilot-agent answers with.
pub const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_001: &str = "application/openmetrics-text; version=0.0.1; charset=utf-8";
const OPENMETRICS_100: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A target's body above this is dropped when several targets are merged (bounded memory).
const MAX_TARGET_BODY: usize = 10 * 1024 * 1024;

/// The agent's own counters, exported with the `istio_agent_` prefix.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    scrapes: AtomicU64,
    envoy_failures: AtomicU64,
    app_failures: AtomicU64,
}

/// The merged body and its content type.
pub struct Merged {
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

pub async fn merged(ctx: &StatusContext, raw_query: Option<&str>, headers: &HeaderMap) -> Merged {
    let metrics = &ctx.metrics;
    metrics.scrapes.fetch_add(1, Ordering::Relaxed);

    let proxy = if ctx.options.merge_proxy_stats {
        let path = match raw_query.filter(|q| !q.is_empty()) {
            Some(q) => format!("/stats/prometheus?{q}"),
            None => "/stats/prometheus".to_string(),
        };
        let response = crate::admin::handle(&ctx.server, &Method::GET, &path);
        if response.status() == http::StatusCode::OK {
            Some(response.into_body())
        } else {
            tracing::error!(target: "agent", "failed scraping envoy metrics: status {}", response.status());
            metrics.envoy_failures.fetch_add(1, Ordering::Relaxed);
            None
        }
    } else {
        None
    };

    let (content_type, app) = match &ctx.options.scrape {
        Some(scrape) => {
            let accept = allowed_content_types(header(headers, "accept"), APP_TYPES);
            scrape_app(ctx, &scrape.targets, headers, &accept).await
        }
        None => (TEXT_004, Vec::new()),
    };

    let mut body = render_agent(ctx).into_bytes();
    if let Some(proxy) = proxy {
        use http_body_util::BodyExt;
        let Ok(collected) = proxy.collect().await;
        body.extend_from_slice(&collected.to_bytes());
    }
    // The application goes last: an OpenMetrics body ends with `# EOF`, which ends everything.
    body.extend_from_slice(&app);
    Merged { content_type, body }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// Scrapes every target (concurrently when several) and returns the format to answer with
/// and the bodies to append. One target is passed through as it came; several have their
/// `# EOF` markers removed and one put back at the end when the format is OpenMetrics.
async fn scrape_app(
    ctx: &StatusContext,
    targets: &[ScrapeTarget],
    headers: &HeaderMap,
    accept: &str,
) -> (&'static str, Vec<u8>) {
    let failures = &ctx.metrics.app_failures;
    if let [target] = targets {
        return match scrape_one(target, headers, accept, None).await {
            Ok((content_type, body)) => (negotiate(&content_type), body),
            Err(e) => {
                tracing::error!(target: "agent", "failed scraping application metrics: {e}");
                failures.fetch_add(1, Ordering::Relaxed);
                (TEXT_004, Vec::new())
            }
        };
    }
    let scrapes = targets
        .iter()
        .map(|t| scrape_one(t, headers, accept, Some(MAX_TARGET_BODY)));
    let results = futures_join_all(scrapes).await;
    let mut format: Option<&'static str> = None;
    let mut out = Vec::new();
    for (target, result) in targets.iter().zip(results) {
        match result {
            Ok((content_type, body)) => {
                let f = negotiate(&content_type);
                // Mixed formats cannot be one valid exposition: fall back to text.
                format = Some(match format {
                    None => f,
                    Some(prev) if prev == f => prev,
                    Some(_) => TEXT_004,
                });
                let body = strip_eof(&body);
                out.extend_from_slice(body);
                if !body.is_empty() && !body.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            Err(e) => {
                tracing::error!(target: "agent", "scrape target {}:{:?}: {e}", target.port, target.path);
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let format = format.unwrap_or(TEXT_004);
    if format != TEXT_004 {
        out.extend_from_slice(b"# EOF\n");
    }
    (format, out)
}

/// Runs the futures concurrently on this task and returns their outputs in order.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn strip_eof(body: &[u8]) -> &[u8] {
    let trimmed = body.trim_ascii_end();
    trimmed.strip_suffix(b"# EOF").unwrap_or(body)
}

/// GET `http://localhost:<port><path>` with the scraper's `User-Agent` and timeout header
/// passed on, the Accept header narrowed to what can be merged, and the scraper's timeout
/// (`X-Prometheus-Scrape-Timeout-Seconds`) as the deadline; without it there is none, as in
/// pilot-agent. Only a 200 counts.
async fn scrape_one(
    target: &ScrapeTarget,
    headers: &HeaderMap,
    accept: &str,
    limit: Option<usize>,
) -> Result<(String, Vec<u8>), String> {
    let timeout = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64);
    let url = format!("http://localhost:{}{}", target.port, target.path);
    let work = async {
        let stream = client::connect("localhost", target.port, None)
            .await
            .map_err(|e| format!("error scraping {url}: {e}"))?;
        let mut request = Request::get(target.path.as_str())
            .header("host", format!("localhost:{}", target.port))
            .header("accept", accept);
        for name in ["user-agent", "x-prometheus-scrape-timeout-seconds"] {
            if let Some(v) = headers.get(name).filter(|v| !v.is_empty()) {
                request = request.header(name, v);
            }
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("error scraping {url}: {e}"))?;
        let response = Connected::plain(stream, Version::Http1)
            .send(request)
            .await
            .map_err(|e| format!("error scraping {url}: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!(
                "error scraping {url}, status code: {}",
                response.status().as_u16()
            ));
        }
        let content_type = header(response.headers(), "content-type").to_string();
        let body =
            match client::read_limited(response.into_body(), limit.unwrap_or(usize::MAX)).await {
                Ok(b) => b,
                Err(ReadError::TooLong(_)) => {
                    return Err(format!(
                        "response exceeds {} bytes; dropping target",
                        limit.unwrap_or(0)
                    ))
                }
                Err(ReadError::Failed(e)) => return Err(format!("read failed: {e}")),
            };
        Ok((content_type, body))
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| format!("error scraping {url}: context deadline exceeded"))?,
        None => work.await,
    }
}

/// The response format for the application's content type: OpenMetrics when it answered so
/// (1.0.0, or 0.0.1 for that version or none), otherwise Prometheus text 0.0.4.
fn negotiate(content_type: &str) -> &'static str {
    let Some((media, params)) = parse_media_type(content_type) else {
        return TEXT_004;
    };
    if media != "application/openmetrics-text" {
        return TEXT_004;
    }
    match params
        .iter()
        .find(|(k, _)| k == "version")
        .map(|(_, v)| v.as_str())
    {
        Some("1.0.0") => OPENMETRICS_100,
        Some("0.0.1") | None => OPENMETRICS_001,
        Some(_) => TEXT_004,
    }
}

/// The media types the application may answer with: text, or OpenMetrics, which can still be
/// merged because it goes last.
const APP_TYPES: &[&str] = &["text/*", "text/plain", "application/openmetrics-text"];

/// pilot-agent's narrowing of the scraper's Accept header to `allowed`: wildcards become the
/// most basic type they cover (`*/*` → text 0.0.4, `application/*` → OpenMetrics 0.0.1),
/// other types are dropped, and the survivors get descending `q` values in their order. An
/// unparsable or empty result falls back to text 0.0.4.
fn allowed_content_types(accept: &str, allowed: &[&str]) -> String {
    const FALLBACK: &str = "text/plain;version=0.0.4";
    let mut kept: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for part in accept.split(',') {
        let Some((media, mut params)) = parse_media_type(part) else {
            tracing::warn!(target: "agent", "Failed to parse Accept header {accept:?}");
            return FALLBACK.to_string();
        };
        params.retain(|(k, _)| k != "q");
        let (media, params) = match media.as_str() {
            "*/*" | "*" => (
                "text/plain".to_string(),
                vec![("version".into(), "0.0.4".into())],
            ),
            "application/*" => (
                "application/openmetrics-text".to_string(),
                vec![("version".into(), "0.0.1".into())],
            ),
            _ => (media, params),
        };
        if !allowed.contains(&media.as_str()) {
            continue;
        }
        let duplicate = kept.iter().any(|(m, p)| *m == media && *p == params);
        // Only the wildcard substitutes are deduplicated in pilot-agent; an exact repeat of a
        // listed type is kept, which changes nothing for the application.
        if duplicate
            && matches!(
                part.trim().split(';').next(),
                Some("*/*" | "*" | "application/*")
            )
        {
            continue;
        }
        kept.push((media, params));
    }
    if kept.is_empty() {
        tracing::warn!(target: "agent", "No recognized encodings found in Accept header {accept:?}");
        return FALLBACK.to_string();
    }
    let total = kept.len();
    let mut out = Vec::with_capacity(total);
    for (i, (media, mut params)) in kept.into_iter().enumerate() {
        params.push(("q".to_string(), format!("0.{}", total - i)));
        params.sort();
        let mut s = media;
        for (k, v) in params {
            let _ = write!(s, "; {k}={}", quote_if_needed(&v));
        }
        out.push(s);
    }
    out.join(",")
}

fn quote_if_needed(v: &str) -> String {
    let token = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    if token {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `type/subtype; k=v; ...` lower-cased (parameter values as given, unquoted); `None` when
/// there is no media type, as Go's `mime.ParseMediaType` fails.
fn parse_media_type(s: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut parts = s.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    if media.is_empty() || media.contains(char::is_whitespace) {
        return None;
    }
    let mut params = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (k, v) = p.split_once('=')?;
        let v = v.trim().trim_matches('"');
        params.push((k.trim().to_ascii_lowercase(), v.to_string()));
    }
    Some((media, params))
}

/// The agent's metrics in text format: the scrape counters, the startup time once ready, and
/// the process collector's metrics (this process is agent and proxy both). pilot-agent's Go
/// runtime metrics (`istio_agent_go_*`) have no truthful equivalent here and are left out.
fn render_agent(ctx: &StatusContext) -> String {
    let m = &ctx.metrics;
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP istio_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE istio_agent_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "istio_agent_{name}{labels} {value}");
        }
    };
    let p = process_stats();
    if let Some(cpu) = p.cpu_seconds {
        family(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process, in seconds.",
            &[("", fmt_f64(cpu))],
        );
    }
    if let Some(max) = p.max_fds {
        family(
            "process_max_fds",
            "gauge",
            "The open file descriptor limit.",
            &[("", fmt_f64(max))],
        );
    }
    if let Some(open) = p.open_fds {
        family(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            &[("", open.to_string())],
        );
    }
    if let Some(rss) = p.resident_bytes {
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory, in bytes.",
            &[("", rss.to_string())],
        );
    }
    if let Some(start) = p.start_time_seconds {
        family(
            "process_start_time_seconds",
            "gauge",
            "When the process started, in seconds since the Unix epoch.",
            &[("", fmt_f64(start))],
        );
    }
    if let Some(vsize) = p.virtual_bytes {
        family(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, in bytes.",
            &[("", vsize.to_string())],
        );
    }
    let failures: Vec<(&str, String)> = [
        (
            "{type=\"application\"}",
            m.app_failures.load(Ordering::Relaxed),
        ),
        ("{type=\"envoy\"}", m.envoy_failures.load(Ordering::Relaxed)),
    ]
    .into_iter()
    .filter(|(_, v)| *v > 0)
    .map(|(l, v)| (l, v.to_string()))
    .collect();
    family(
        "scrape_failures_total",
        "counter",
        "The total number of failed scrapes.",
        &failures,
    );
    family(
        "scrapes_total",
        "counter",
        "The total number of scrapes.",
        &[("", m.scrapes.load(Ordering::Relaxed).to_string())],
    );
    if let Some(d) = ctx.readiness.startup_duration() {
        family(
            "startup_duration_seconds",
            "gauge",
            "The time from the process starting to being marked ready.",
            &[("", fmt_f64(d.as_secs_f64()))],
        );
    }
    for provider in &ctx.extra_metrics {
        out.push_str(&provider());
    }
    out
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".to_string()
    } else {
        format!("{v}")
    }
}

#[derive(Default)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    open_fds: Option<usize>,
    max_fds: Option<f64>,
    virtual_bytes: Option<u64>,
    resident_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
}

/// From `/proc/self`: what Prometheus' process collector reports.
fn process_stats() -> ProcessStats {
    let mut p = ProcessStats::default();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
            // rest[0] is field 3 (state): utime 14, stime 15, starttime 22, vsize 23, rss 24.
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                p.cpu_seconds = Some((u + s) as f64 / ticks);
            }
            p.virtual_bytes = num(20);
            p.resident_bytes = num(21).map(|pages| pages * page);
            if let (Some(start), Some(boot)) = (num(19), boot_time()) {
                p.start_time_seconds = Some(boot as f64 + start as f64 / ticks);
            }
        }
    }
    p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count());
    p.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            let soft = line
                .trim_start_matches("Max open files")
                .split_whitespace()
                .next()?;
            Some(if soft == "unlimited" {
                f64::INFINITY
            } else {
                soft.parse::<f64>().ok()?
            })
        });
    p
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_narrowing_follows_pilot_agent() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            allowed_content_types(prometheus, APP_TYPES),
            "application/openmetrics-text; q=0.3; version=1.0.0,application/openmetrics-text; q=0.2; version=0.0.1,text/plain; q=0.1; version=0.0.4"
        );
        assert_eq!(
            allowed_content_types("", APP_TYPES),
            "text/plain;version=0.0.4"
        );
        assert_eq!(
            allowed_content_types("application/vnd.google.protobuf", APP_TYPES),
            "text/plain;version=0.0.4"
        );
        assert_eq!(
            allowed_content_types("*/*", APP_TYPES),
            "text/plain; q=0.1; version=0.0.4"
        );
    }

    #[test]
    fn format_of_the_application_answer() {
        assert_eq!(
            negotiate("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            OPENMETRICS_100
        );
        assert_eq!(negotiate("application/openmetrics-text"), OPENMETRICS_001);
        assert_eq!(
            negotiate("application/openmetrics-text; version=2.0.0"),
            TEXT_004
        );
        assert_eq!(negotiate("text/plain; version=0.0.4"), TEXT_004);
        assert_eq!(negotiate(""), TEXT_004);
        assert_eq!(strip_eof(b"a 1\n# EOF\n"), b"a 1\n");
        assert_eq!(strip_eof(b"a 1\n"), b"a 1\n");
    }

    #[test]
    fn process_stats_are_read() {
        let p = process_stats();
        assert!(p.cpu_seconds.is_some() && p.resident_bytes.is_some_and(|r| r > 0));
        assert!(p.start_time_seconds.is_some_and(|s| s > 1.0e9));
    }
}
