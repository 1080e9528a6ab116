//! `outrigger` with no arguments runs its embedded demo bootstrap: admin on 127.0.0.1:15000,
//! a demo listener on 127.0.0.1:10000 that answers `/` itself and proxies `/admin/...` to the
//! admin API.
//!
//! These are fixed ports, so the test takes `fixed_ports::lock` (a machine-wide lock that
//! works across test processes, as under nextest): any other test that needs 15000 or 10000
//! must take it too. It fails, naming the port, if something outside the tests holds them.

use std::time::Duration;
use tests::{curl, fixed_ports, Kind, RunningProxy};

const DEMO_TEXT: &str =
    "Hello from Outrigger. Try /admin/server_info (proxied to the admin API).\n";

#[test]
fn no_arguments_serves_the_embedded_demo_and_quits_on_request() {
    let _lock = fixed_ports::lock(&[15000, 10000], Duration::from_secs(120));
    let admin = "127.0.0.1:15000".parse().expect("an address");
    let mut proxy = RunningProxy::start_with_args(Kind::Outrigger, &[], admin);

    // One line per thing it listens on, each naming the address.
    let stdout = proxy.stdout();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        2,
        "expected one stdout line for the admin and one for the demo listener:\n{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin") && l.contains("127.0.0.1:15000")),
        "no stdout line for the admin on 127.0.0.1:15000:\n{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("demo") && l.contains("127.0.0.1:10000")),
        "no stdout line for the demo listener on 127.0.0.1:10000:\n{stdout}"
    );

    let demo = curl::get("http://127.0.0.1:10000/");
    assert_eq!(demo.status, 200, "{demo:?}\n{}", proxy.logs_for_failure());
    assert_eq!(demo.body, DEMO_TEXT);

    let info = curl::get("http://127.0.0.1:10000/admin/server_info");
    assert_eq!(info.status, 200, "{info:?}\n{}", proxy.logs_for_failure());
    assert_eq!(info.header("content-type"), Some("application/json"));
    assert_eq!(info.json()["state"], "LIVE", "{}", info.body);

    let quit = proxy.post("/quitquitquit");
    assert_eq!(quit.status, 200, "{quit:?}");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "outrigger did not exit 0 after /quitquitquit: {status:?}\n{}",
        proxy.logs_for_failure()
    );
}
