//! `/logging` (POST): lists the loggers and their levels, or changes them:
//! `?level=L` (all), `?<logger>=L` (one), `?paths=a:L,b:L` (several).
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#post--logging

use super::{text, AdminResponse, Query};
use crate::logging::{LogControl, LogError, LEVELS};
use crate::server::Server;
use http::StatusCode;

pub fn handle(server: &Server, query: &Query) -> AdminResponse {
    let control = &server.logging;
    let result = match query.pairs().first() {
        None => Ok(()),
        Some((key, level)) if key == "level" => control.set_all(level),
        Some((key, paths)) if key == "paths" => set_paths(control, paths),
        Some((logger, level)) => control.set_component(logger, level),
    };
    match result {
        Ok(()) => {
            tracing::info!(target: "admin", "log levels: {:?}", query.pairs());
            text(StatusCode::OK, active_loggers(control))
        }
        Err(e) => {
            let reason = match e {
                LogError::Level(_) => "unknown logger level",
                LogError::Component(_) => "unknown logger name",
                LogError::Malformed(_) => "invalid paths",
            };
            text(
                StatusCode::BAD_REQUEST,
                format!(
                    "error: {reason}\n\n{}{}\n",
                    usage(),
                    active_loggers(control)
                ),
            )
        }
    }
}

/// Checks every pair before changing any, so a bad entry changes nothing.
fn set_paths(control: &LogControl, paths: &str) -> Result<(), LogError> {
    let pairs: Vec<(&str, &str)> = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once(':')
                .ok_or_else(|| LogError::Malformed(p.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let known = control.levels();
    for (logger, level) in &pairs {
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str())
            && !level.eq_ignore_ascii_case("warn")
        {
            return Err(LogError::Level(level.to_string()));
        }
        if !known.iter().any(|(name, _)| name == logger) {
            return Err(LogError::Component(logger.to_string()));
        }
    }
    pairs
        .into_iter()
        .try_for_each(|(logger, level)| control.set_component(logger, level))
}

fn usage() -> String {
    let mut out = String::from(
        "usage: /logging?<name>=<level> (change single level)\n\
         usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n\
         usage: /logging?level=<level> (change all levels)\n\
         levels: ",
    );
    for level in LEVELS {
        out.push_str(level);
        out.push(' ');
    }
    out.push('\n');
    out
}

fn active_loggers(control: &LogControl) -> String {
    let mut out = String::from("active loggers:\n");
    for (name, level) in control.levels() {
        out.push_str(&format!("  {name}: {level}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{body, server};
    use super::*;
    use http::Method;

    #[test]
    fn lists_and_changes_levels() {
        let s = server();
        let r = handle(&s, &Method::POST, "/logging");
        assert_eq!(r.status(), StatusCode::OK);
        let b = body(r);
        assert!(b.starts_with("active loggers:\n  admin: info\n"), "{b}");

        let b = body(handle(&s, &Method::POST, "/logging?upstream=debug"));
        assert!(b.contains("  upstream: debug\n") && b.contains("  router: info\n"));

        body(handle(&s, &Method::POST, "/logging?level=warning"));
        assert!(s.logging.levels().iter().all(|(_, l)| *l == "warning"));

        body(handle(
            &s,
            &Method::POST,
            "/logging?paths=router:trace,hc:error",
        ));
        let levels = s.logging.levels();
        assert!(levels.contains(&("router", "trace")) && levels.contains(&("hc", "error")));
    }

    #[test]
    fn unknown_level_or_logger_is_400() {
        let s = server();
        let r = handle(&s, &Method::POST, "/logging?level=loud");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(
            body(r).starts_with("error: unknown logger level\n\nusage: /logging?<name>=<level>")
        );
        let r = handle(&s, &Method::POST, "/logging?nope=debug");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(body(r).starts_with("error: unknown logger name\n"));
        let r = handle(&s, &Method::POST, "/logging?paths=router:debug,nope:debug");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(s.logging.levels().contains(&("router", "info")));
    }
}
