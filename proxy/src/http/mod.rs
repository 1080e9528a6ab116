//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (h2c) connections, selects a
//! route, and answers locally or forwards through the router.

mod access_log;
mod connection;
mod forward;
pub mod forwarding;
mod local_reply;
mod redirect;
mod replay_body;
mod request_checks;
pub mod retry;
mod router;
mod stats;
mod upstream_failure;
mod upstream_request;

pub use connection::{serve_connection, HttpContext};
pub use forwarding::Downstream;
pub use local_reply::ResponseFlag;
pub use stats::HcmStats;
