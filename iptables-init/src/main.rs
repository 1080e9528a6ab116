//! `outrigger-iptables`: see the library docs; this only forwards argv and the exit code.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(iptables_init::main_with_args(std::env::args().collect()));
}
