//! Text readouts (Envoy's string stats): `control_plane.identifier` (who answered on the ADS
//! stream) and each subscription's `version_text` (the version accepted). Envoy lists them
//! first in `/stats` (`name: "value"`) and `/stats?format=json` (string values), leaves them out
//! of `/stats/prometheus` unless `?text_readouts` is given (then a gauge of 0 with a
//! `text_value` label), and `?type=TextReadouts` selects only them. Compared with Envoy over
//! the same control plane.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--stats-prometheus

use std::time::Duration;
use tests::control_plane::{ControlPlane, IDENTIFIER};
use tests::curl::body_becomes;
use tests::xds_resources::{ads_bootstrap, serve_backend};
use tests::{envoy_or_skip, free_port, Kind, RunningProxy, Upstream};

/// Every view of the text readouts, once the proxy serves.
fn readouts(kind: Kind, delta: bool) -> Vec<(String, String)> {
    let up = Upstream::start("one");
    let cp = ControlPlane::start();
    let port = free_port();
    serve_backend(&cp, up.port(), port);
    let proxy = RunningProxy::start(kind, &ads_bootstrap(free_port(), cp.port(), delta), &[]);
    let url = format!("http://127.0.0.1:{port}/");
    assert_eq!(
        body_becomes(&url, "200 one", Duration::from_secs(10)),
        "200 one"
    );
    let text = proxy.get("/stats").body;
    let first: Vec<&str> = text.lines().take_while(|l| l.contains(": \"")).collect();
    let json = proxy.get("/stats?format=json").json();
    let strings: Vec<String> = json["stats"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["value"].is_string())
        .map(|s| format!("{}={}", s["name"], s["value"]))
        .collect();
    let prometheus = proxy.get("/stats/prometheus").body;
    let with_text = proxy.get("/stats/prometheus?text_readouts").body;
    let text_value: Vec<&str> = with_text
        .lines()
        .filter(|l| l.contains("text_value="))
        .collect();
    vec![
        ("/stats, leading lines".into(), first.join("\n")),
        (
            "/stats?type=TextReadouts".into(),
            proxy.get("/stats?type=TextReadouts").body,
        ),
        ("/stats?format=json strings".into(), strings.join("\n")),
        (
            "/stats/prometheus has text_value".into(),
            prometheus.contains("text_value").to_string(),
        ),
        (
            "/stats/prometheus?text_readouts".into(),
            text_value.join("\n"),
        ),
    ]
}

fn check(delta: bool) {
    let ours = readouts(Kind::Outrigger, delta);
    let identifier = format!("control_plane.identifier: \"{IDENTIFIER}\"");
    assert!(ours[1].1.contains(&identifier), "{ours:#?}");
    assert!(
        ours[0].1.contains("cluster_manager.cds.version_text"),
        "{ours:#?}"
    );
    assert_eq!(ours[3].1, "false");
    let Some(_) = envoy_or_skip("xds_text_readouts") else {
        return;
    };
    let envoy = readouts(Kind::Envoy, delta);
    for ((what, ours), (_, envoy)) in ours.iter().zip(&envoy) {
        assert_eq!(ours, envoy, "{what}");
    }
}

#[test]
fn text_readouts_state_of_the_world_like_envoy() {
    check(false);
}

#[test]
fn text_readouts_delta_like_envoy() {
    check(true);
}
