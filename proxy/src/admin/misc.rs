//! The small control endpoints: `/ready`, `/quitquitquit`, `/healthcheck/fail|ok`,
//! `/drain_listeners`, `/hot_restart_version`.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin

use super::{server_info, text, AdminResponse, Query};
use crate::server::{DrainRequest, Server, ServerState};
use http::StatusCode;

/// The state name and a newline; 200 only when LIVE.
pub fn ready(server: &Server, _: &Query) -> AdminResponse {
    let state = server_info::state(server);
    let status = if state == ServerState::Live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, format!("{}\n", state.name()))
}

/// Answers first; the shutdown signal is observed by the serving loops, which let this
/// response go out before closing.
pub fn quit(server: &Server, _: &Query) -> AdminResponse {
    tracing::info!(target: "admin", "shutting down server instance (/quitquitquit)");
    server.shutdown();
    text(StatusCode::OK, "OK\n")
}

pub fn healthcheck_fail(server: &Server, _: &Query) -> AdminResponse {
    server.set_health_check_failed(true);
    text(StatusCode::OK, "OK\n")
}

pub fn healthcheck_ok(server: &Server, _: &Query) -> AdminResponse {
    server.set_health_check_failed(false);
    text(StatusCode::OK, "OK\n")
}

pub fn drain_listeners(server: &Server, query: &Query) -> AdminResponse {
    server.drain_listeners(DrainRequest {
        inbound_only: query.has("inboundonly"),
        graceful: query.has("graceful"),
    });
    text(StatusCode::OK, "OK\n")
}

/// Envoy prints `disabled` when built or run without hot restart; Outrigger has none.
pub fn hot_restart_version(_: &Server, _: &Query) -> AdminResponse {
    text(StatusCode::OK, "disabled\n")
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{body, server};
    use super::*;
    use http::Method;

    #[test]
    fn ready_follows_the_state() {
        let s = server();
        let r = handle(&s, &Method::GET, "/ready");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r), "PRE_INITIALIZING\n");
        s.set_state(ServerState::Initializing);
        assert_eq!(body(handle(&s, &Method::GET, "/ready")), "INITIALIZING\n");
        s.set_state(ServerState::Live);
        let r = handle(&s, &Method::GET, "/ready");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], super::super::TEXT);
        assert_eq!(body(r), "LIVE\n");

        let r = handle(&s, &Method::POST, "/healthcheck/fail");
        assert_eq!((r.status(), body(r)), (StatusCode::OK, "OK\n".to_string()));
        let r = handle(&s, &Method::GET, "/ready");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r), "DRAINING\n");
        handle(&s, &Method::POST, "/healthcheck/ok");
        assert_eq!(handle(&s, &Method::GET, "/ready").status(), StatusCode::OK);
    }

    #[test]
    fn drain_and_quit() {
        let s = server();
        let drain = s.drain_signal();
        let r = handle(&s, &Method::POST, "/drain_listeners?inboundonly&graceful");
        assert_eq!(body(r), "OK\n");
        assert_eq!(
            *drain.borrow(),
            Some(DrainRequest {
                inbound_only: true,
                graceful: true
            })
        );
        let shutdown = s.shutdown_signal();
        let r = handle(&s, &Method::POST, "/quitquitquit");
        assert_eq!((r.status(), body(r)), (StatusCode::OK, "OK\n".to_string()));
        assert!(*shutdown.borrow());
    }
}
