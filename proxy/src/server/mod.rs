//! Running the proxy: logging, the runtime, listeners, clusters and the admin server.

use crate::cli::Options;
use std::process::ExitCode;

pub fn main(_options: Options) -> ExitCode {
    ExitCode::FAILURE
}
pub mod state;
pub use state::{BoundListener, DrainRequest, Server, ServerState};
