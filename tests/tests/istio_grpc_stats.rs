//! Istio's gRPC message metrics (`istio_request_messages_total`,
//! `istio_response_messages_total`) between two Outrigger sidecars whose chains have the gRPC
//! statistics filter: counts for every call shape, and the periodic reports of streams that
//! stay open (`tcp_reporting_duration`).

use tests::istio_pair::{bootstraps_reporting, bootstraps_with, message_counts, promtool_accepts};
use tests::{Kind, Ports, RunningProxy};

/// `istio_request_messages_total` / `istio_response_messages_total` between two sidecars whose
/// chains have the gRPC statistics filter, for a real gRPC client and server: every call
/// shape, messages spanning many HTTP/2 frames. Istio reports them with the peer and service
/// labels only (golden `istio/proxy:testdata/metric/server_request_messages.yaml.tmpl`).
#[test]
fn grpc_message_counts_come_from_the_grpc_stats_filter() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_with(&ports, None, true);
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let mut c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let big = "m".repeat(100_000);
        for _ in 0..2 {
            assert_eq!(
                c.unary("/test.Echo/Unary", "hi").await.expect("unary"),
                "hi"
            );
        }
        let collected = c.collect(vec!["a".into(), "b".into(), "c".into()]).await;
        assert_eq!(collected.expect("collect"), "received 3");
        assert_eq!(c.repeat(4, "r").await.expect("repeat").len(), 4);
        let chat = c.chat(vec![big.clone(), "s".into(), big]).await;
        assert_eq!(chat.expect("chat").len(), 3);
        assert!(c.unary("/test.Echo/Fail", "x").await.is_err());
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Requests: 2 + 3 + 1 + 3 + 1; responses: 2 + 1 + 4 + 3 + 0 (a failed unary answers none).
    for (proxy, reporter) in [(&client, "source"), (&server, "destination")] {
        let body = proxy.get("/stats/prometheus").body;
        let request = message_counts(&body, "istio_request_messages_total");
        let response = message_counts(&body, "istio_response_messages_total");
        assert_eq!(
            request.len(),
            1,
            "one series on the {reporter} side:\n{body}"
        );
        assert_eq!(response.len(), 1, "{body}");
        assert_eq!(request[0].1, 10, "{reporter}: request messages\n{body}");
        assert_eq!(response[0].1, 10, "{reporter}: response messages\n{body}");
        let labels = &request[0].0;
        assert_eq!(labels.len(), 20, "{labels:?}");
        assert_eq!(labels[0], ("reporter".to_string(), reporter.to_string()));
        assert_eq!(labels[19].0, "destination_cluster");
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("source_workload"), Some("client-v1"));
        assert_eq!(get("destination_workload"), Some("server-v2"));
        assert_eq!(get("destination_service_name"), Some("server"));
        assert_eq!(get("request_protocol"), None);
        assert!(body.contains("# TYPE istio_request_messages_total counter\n"));
        promtool_accepts(&body);
    }
}

/// A gRPC stream held open longer than `tcp_reporting_duration` has its messages reported
/// while it lasts, on both sides (Istio's stats filter reports a gRPC stream's message counts
/// at each tick of that period once the metadata exchange found the peer:
/// `istio/proxy:source/extensions/filters/http/istio_stats/istio_stats.cc`); what the end of
/// the stream reports is only what came after, so nothing is counted twice.
#[test]
fn a_long_grpc_stream_reports_its_messages_every_reporting_period() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_reporting(&ports, None, true, Some("1s"));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let counts = |proxy: &RunningProxy| {
        let body = proxy.get("/stats/prometheus").body;
        let one = |family: &str| {
            let series = message_counts(&body, family);
            assert!(series.len() <= 1, "one series at most:\n{body}");
            series.first().map_or(0, |(labels, n)| {
                assert_eq!(labels.len(), 20, "{labels:?}");
                *n
            })
        };
        (
            one("istio_request_messages_total"),
            one("istio_response_messages_total"),
        )
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let mut c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let mut chat = c.open_chat().await.expect("a chat");
        for text in ["one", "two"] {
            assert_eq!(chat.say(text).await.expect("an echo"), text);
        }
        // Two periods pass with the call open.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        for (proxy, side) in [(&client, "source"), (&server, "destination")] {
            assert_eq!(counts(proxy), (2, 2), "{side}: while the call is open");
        }
        assert_eq!(chat.say("three").await.expect("an echo"), "three");
        assert!(chat.close().await.expect("the call ends").is_empty());
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    for (proxy, side) in [(&client, "source"), (&server, "destination")] {
        assert_eq!(counts(proxy), (3, 3), "{side}: after the call");
    }
}

/// A client-streaming call whose server answers only at its end: the server side, which
/// knows its peer from the request, reports the request messages every period while it
/// waits; the client side learns its peer from the response, so it reports nothing before
/// (Istio's `peerInfoRead` condition, `istio_stats.cc`).
#[test]
fn a_client_stream_is_reported_by_the_server_side_before_its_response() {
    let ports = Ports::new(&["client", "server", "client_admin", "server_admin", "app"]);
    let (client_yaml, server_yaml) = bootstraps_reporting(&ports, None, true, Some("1s"));
    let server = RunningProxy::start(Kind::Outrigger, &server_yaml, &[]);
    let client = RunningProxy::start(Kind::Outrigger, &client_yaml, &[]);
    let target = format!("http://127.0.0.1:{}", ports.get("client"));
    let requests = |proxy: &RunningProxy| {
        let body = proxy.get("/stats/prometheus").body;
        let series = message_counts(&body, "istio_request_messages_total");
        assert!(series.len() <= 1, "one series at most:\n{body}");
        series.first().map_or(0, |(_, n)| *n)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let _app = tests::grpc_echo::serve(ports.get("app"))
            .await
            .expect("the gRPC app listens");
        let c = tests::grpc_echo::EchoClient::connect(target)
            .await
            .expect("connect");
        let call = c.open_collect();
        call.send("one");
        call.send("two");
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        assert_eq!(requests(&server), 2, "destination: before the response");
        assert_eq!(requests(&client), 0, "source: its peer is not known yet");
        call.send("three");
        assert_eq!(call.finish().await.expect("an answer"), "received 3");
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(requests(&server), 3, "destination: after the call");
    assert_eq!(requests(&client), 3, "source: after the call");
}
