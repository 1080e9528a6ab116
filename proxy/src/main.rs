//! The `outrigger` binary. `outrigger istio-iptables ...` runs the traffic-capture init (the same
//! code as the `outrigger-iptables` binary, so the sidecar image's init container can call it by
//! Istio's name); `outrigger proxy sidecar ...` is the Istio agent and the proxy in one
//! process; `wait` and `request` are pilot-agent's lifecycle subcommands; anything else is the proxy with Envoy's command line.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: 4% fewer instructions per proxied request, 8% with an
/// access log, and a lower peak RSS under load (benches/README.md). Its arenas are committed
/// lazily (.cargo/config.toml), or an idle proxy would hold 18 MiB more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("istio-iptables") {
        // main_with_args reads its flags from args[1..], so drop the binary name only.
        let code = iptables_init::main_with_args(args[1..].to_vec());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    // pilot-agent's subcommands, so the image's entrypoint can be called as Istio calls it.
    match args.get(1).map(String::as_str) {
        Some("proxy") => return outrigger::agent::sidecar::main(&args[2..]),
        // The lifecycle hooks' `pilot-agent wait` and `pilot-agent request ...`; each takes the
        // arguments after its name.
        Some("wait") => return outrigger::agent::wait_main(args[2..].to_vec()),
        Some("request") => return outrigger::agent::request_main(args[2..].to_vec()),
        _ => {}
    }
    outrigger::cli::main()
}
