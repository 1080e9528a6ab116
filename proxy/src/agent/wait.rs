//! `outrigger wait` (pilot-agent's `wait`): polls a readiness URL until it answers 200, for
//! the postStart hook that holds the application until the proxy is ready.

use super::cli_http::{self, FAILURE};
use clap::Parser;
use http::{Method, Uri};
use std::process::ExitCode;
use std::time::Duration;

/// Flags with pilot-agent's names and defaults.
#[derive(Debug, Parser)]
#[command(name = "wait", about = "Waits until the Envoy proxy is ready")]
struct WaitArgs {
    /// maximum number of seconds to wait for Envoy to be ready
    #[arg(long = "timeoutSeconds", default_value_t = 60)]
    timeout_seconds: u64,
    /// number of milliseconds to wait for response
    #[arg(long = "requestTimeoutMillis", default_value_t = 500)]
    request_timeout_millis: u64,
    /// number of milliseconds to wait between attempts
    #[arg(long = "periodMillis", default_value_t = 500)]
    period_millis: u64,
    /// URL to use in requests
    #[arg(long = "url", default_value = "http://localhost:15021/healthz/ready")]
    url: String,
}

/// Runs `wait` with `args`, the arguments after the subcommand's name. Exits 0 once the URL
/// answered 200, 255 when the timeout passed first (or the flags are wrong).
pub fn wait_main(args: Vec<String>) -> ExitCode {
    let parsed = match WaitArgs::try_parse_from(std::iter::once("wait".to_string()).chain(args)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let Some(runtime) = cli_http::runtime() else {
        return ExitCode::from(FAILURE);
    };
    match runtime.block_on(wait(&parsed)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error\t{e}");
            ExitCode::from(FAILURE)
        }
    }
}

async fn wait(args: &WaitArgs) -> Result<(), String> {
    let url: Uri = args
        .url
        .parse()
        .map_err(|e| format!("parse {:?}: {e}", args.url))?;
    println!(
        "info\tWaiting for Envoy proxy to be ready (timeout: {} seconds)...",
        args.timeout_seconds
    );
    let deadline = tokio::time::sleep(Duration::from_secs(args.timeout_seconds));
    tokio::pin!(deadline);
    let period = Duration::from_millis(args.period_millis);
    let request_timeout = Duration::from_millis(args.request_timeout_millis);
    let mut last = String::from("<nil>");
    loop {
        // As pilot-agent: the first attempt comes one period in, and the deadline is only
        // looked at between attempts.
        tokio::select! {
            biased;
            () = &mut deadline => {
                return Err(format!(
                    "timeout waiting for Envoy proxy to become ready. Last error: {last}"
                ));
            }
            () = tokio::time::sleep(period) => {
                match check(&url, request_timeout).await {
                    Ok(()) => {
                        println!("info\tEnvoy is ready!");
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::debug!(target: "agent", "Not ready yet: {e}");
                        last = e;
                    }
                }
            }
        }
    }
}

async fn check(url: &Uri, timeout: Duration) -> Result<(), String> {
    let (status, _) = cli_http::fetch(&Method::GET, url, bytes::Bytes::new(), timeout).await?;
    if status != http::StatusCode::OK {
        return Err(format!("HTTP status code {}", status.as_u16()));
    }
    Ok(())
}
