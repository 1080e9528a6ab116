//! `outrigger request` (pilot-agent's `request`): one HTTP request to a local debug port,
//! printing the answer's body, for lifecycle hooks (`request --debug-port=15020 POST drain`)
//! and `istioctl`, which reads stdout as the admin API's JSON, so nothing else goes there.

use super::cli_http::{self, FAILURE};
use clap::Parser;
use http::{Method, Uri};
use std::process::ExitCode;
use std::time::Duration;

/// The ports pilot-agent lets `request` reach: admin, health, status, and the old debug port.
const ALLOWED_PORTS: [u16; 4] = [15000, 15004, 15020, 15021];
/// pilot-agent's client timeout.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "request",
    about = "Makes an HTTP request to the Envoy admin API",
    override_usage = "request <method> <path> [<body>]"
)]
struct RequestArgs {
    /// Set the port to make a local request to. The default points to the Envoy admin API.
    #[arg(long = "debug-port", default_value_t = 15000)]
    debug_port: i64,
    /// METHOD PATH [BODY]; anything after the body is ignored, as in pilot-agent
    #[arg(num_args = 2.., required = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Runs `request` with `args`, the arguments after the subcommand's name. Exits 0 with the body
/// on stdout, or 255 with the error on stderr: for a port outside the allowed list, a failed
/// request, or a status above 399 other than 404.
pub fn request_main(args: Vec<String>) -> ExitCode {
    let parsed =
        match RequestArgs::try_parse_from(std::iter::once("request".to_string()).chain(args)) {
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
    let port = match u16::try_from(parsed.debug_port) {
        Ok(p) if ALLOWED_PORTS.contains(&p) => p,
        _ => {
            eprintln!(
                "error\tdebug port {} is not in allowed list [15000 15004 15020 15021]",
                parsed.debug_port
            );
            return ExitCode::from(FAILURE);
        }
    };
    let Some(runtime) = cli_http::runtime() else {
        return ExitCode::from(FAILURE);
    };
    let (method, path) = (&parsed.args[0], &parsed.args[1]);
    let body = parsed.args.get(2).cloned().unwrap_or_default();
    match runtime.block_on(request(port, method, path, body)) {
        Ok(body) => {
            // Println, as pilot-agent: the body and one newline.
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error\t{e}");
            ExitCode::from(FAILURE)
        }
    }
}

async fn request(port: u16, method: &str, path: &str, body: String) -> Result<String, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("net/http: invalid method {method:?}"))?;
    let url = format!("http://localhost:{port}/{}", path.trim_start_matches('/'));
    let uri: Uri = url.parse().map_err(|e| format!("parse {url:?}: {e}"))?;
    let (status, body) = cli_http::fetch(&method, &uri, body.into(), TIMEOUT).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.as_u16() > 399 && status != http::StatusCode::NOT_FOUND {
        return Err(format!(
            "received unsuccessful status code {}: {text}",
            status.as_u16()
        ));
    }
    Ok(text)
}
