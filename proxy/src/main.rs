//! The `outrigger` binary. `outrigger istio-iptables ...` runs the traffic-capture init
//! (the same code as the `outrigger-iptables` binary); anything else is the proxy.

fn main() -> std::process::ExitCode {
    outrigger::cli::main()
}
