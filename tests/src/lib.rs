//! Shared helpers for Outrigger's end-to-end tests: finding the binaries (ours and Envoy, the
//! oracle), running them with a time limit, and reading the test corpora. Each module holds one
//! idea; test files in `tests/tests/` combine them.

#![forbid(unsafe_code)]

pub mod binaries;
pub mod corpus;
pub mod parallel;
pub mod process;
pub mod validate;

pub use binaries::{envoy_or_skip, outrigger, Kind, Proxy};
pub use validate::{run_validate, Verdict};
