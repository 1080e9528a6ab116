//! The HTTP connection manager: serves HTTP/1.1 and HTTP/2 (h2c) connections, selects a
//! route, and answers locally or forwards through the router.

mod access_log;
mod attempt;
mod attempt_idle;
pub(crate) mod codec;
mod codec_error;
mod compressor;
mod connection;
pub(crate) mod connection_tokens;
mod downstream_cx;
mod fault;
mod forward;
pub mod forwarding;
mod grpc_frames;
mod grpc_reply;
pub mod grpc_stats;
mod head_copy;
mod hedge;
pub mod istio;
pub mod jwt_authn;
mod local_reply;
mod mirror;
mod rate_limited_back_off;
mod rbac;
mod redirect;
mod replay_body;
mod request_checks;
pub mod retry;
mod router;
mod stats;
mod stream_timeouts;
mod throttle;
pub mod tracing;
mod tunnel;
mod upstream_failure;
mod upstream_request;

pub use compressor::Compressors;
pub use connection::{serve_connection, HttpContext};
pub use fault::FaultStats;
pub use forwarding::Downstream;
pub use grpc_reply::is_grpc;
pub use local_reply::ResponseFlag;
pub use stats::HcmStats;
pub use stream_timeouts::set_grpc_timeout;
