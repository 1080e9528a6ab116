use super::*;

fn ctx(headers: &HeaderMap) -> Context<'_> {
    Context {
        downstream_remote: Some("10.0.0.1:5555".parse().expect("addr")),
        downstream_local: Some("10.0.0.2:8080".parse().expect("addr")),
        upstream_remote: None,
        start: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_763_786_096_123),
        protocol: Some(http::Version::HTTP_11),
        request_headers: Some(HeaderSource::Map(headers)),
        stream: None,
        downstream_tls: None,
    }
}

#[test]
fn operators_render_like_envoy() {
    let mut headers = HeaderMap::new();
    headers.insert("x-b", http::HeaderValue::from_static("bee-value"));
    let t = Template::parse("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT% %PROTOCOL% %REQ(x-a?x-b):3% %UPSTREAM_REMOTE_ADDRESS% 100%% %START_TIME% [%START_TIME(%Y/%m/%d %H:%M:%S.%3f %s)%]")
            .expect("parses");
    assert_eq!(
            t.render(&ctx(&headers)),
            "10.0.0.1 8080 HTTP/1.1 bee  100% 2025-11-22T04:34:56.123Z [2025/11/22 04:34:56.123 1763786096]"
        );
    assert_eq!(
        Template::parse("plain 50%%").expect("parses").literal(),
        Some("plain 50%")
    );
    assert_eq!(
        Template::parse("plain").expect("parses").literal(),
        Some("plain")
    );
    assert!(Template::parse("%NOPE%")
        .expect_err("unknown")
        .contains("%NOPE%"));
    assert!(Template::parse("%DOWNSTREAM_REMOTE_ADDRESS").is_err());
}

/// Istio's default text format (meshConfig accessLogFormat, `EnvoyTextLogFormat`).
const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

fn finished() -> StreamInfo {
    let mut response = HeaderMap::new();
    response.insert(
        "x-envoy-upstream-service-time",
        HeaderValue::from_static("6"),
    );
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    StreamInfo {
        method: Some(http::Method::GET),
        path: Some(http::uri::PathAndQuery::from_static("/backend/x?q=1")),
        authority: Some(HeaderValue::from_static("example.com")),
        scheme: Some("http"),
        response_code: 200,
        response_code_details: Some("via_upstream".into()),
        bytes_received: 12,
        bytes_sent: 335,
        duration: Some(Duration::from_micros(7_900)),
        request_duration: Some(Duration::ZERO),
        response_duration: Some(Duration::from_millis(6)),
        upstream_host: Some(http::uri::Authority::from_static("10.0.0.9:80")),
        upstream_cluster: Some(Arc::from("outbound|80||svc")),
        upstream_local_address: Some("10.0.0.2:40000".parse().expect("addr")),
        route_name: Some(Arc::from("default")),
        connection_id: Some(7),
        response_headers: keep_all(&response),
        response_trailers: Some(trailers),
        ..StreamInfo::default()
    }
}

/// Every header of `map`, as an access log that reads them all keeps them.
fn keep_all(map: &HeaderMap) -> KeptHeaders {
    let names: Vec<HeaderName> = map.keys().cloned().collect();
    KeptHeaders::keep(map, &names)
}

fn log_ctx<'a>(headers: &'a HeaderMap, info: &'a StreamInfo) -> Context<'a> {
    Context {
        stream: Some(info),
        ..ctx(headers)
    }
}

#[test]
fn istios_default_format_renders_like_envoy() {
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    headers.insert("x-request-id", HeaderValue::from_static("abc"));
    let info = finished();
    let mut out = String::new();
    Template::parse(ISTIO)
        .expect("parses")
        .render_log(&log_ctx(&headers, &info), false, &mut out);
    assert_eq!(
            out,
            "[2025-11-22T04:34:56.123Z] \"GET /backend/x?q=1 HTTP/1.1\" 200 - via_upstream - \"-\" 12 335 7 6 \"-\" \"curl/8\" \"abc\" \"example.com\" \"10.0.0.9:80\" outbound|80||svc 10.0.0.2:40000 10.0.0.2:8080 10.0.0.1:5555 - default\n"
        );
}

#[test]
fn missing_values_are_dashes_or_empty_and_flags_always_render() {
    let headers = HeaderMap::new();
    let info = StreamInfo {
        response_code: 404,
        response_flags: ResponseFlags::named("NR").expect("flag"),
        ..StreamInfo::default()
    };
    let t = Template::parse("%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_HOST%|%ROUTE_NAME%|%REQUEST_DURATION%|%RESP(x)%|%TRAILER(grpc-status)%")
            .expect("parses");
    let mut out = String::new();
    t.render_log(&log_ctx(&headers, &info), false, &mut out);
    assert_eq!(out, "404|NR|-|-|-|-|-");
    out.clear();
    t.render_log(&log_ctx(&headers, &info), true, &mut out);
    assert_eq!(out, "404|NR|||||");
    // In a header value nothing of the stream is known: everything renders empty.
    assert_eq!(t.render(&ctx(&headers)), "||||||");
}

#[test]
fn response_headers_trailers_and_truncation() {
    let headers = HeaderMap::new();
    let info = finished();
    let t = Template::parse(
            "%RESP(X-Envoy-Upstream-Service-Time)% %TRAILER(grpc-status)% %REQ(:PATH):8% %REQ(:SCHEME)% %CONNECTION_ID% %RESPONSE_DURATION% %UPSTREAM_CLUSTER%",
        )
        .expect("parses");
    let mut out = String::new();
    t.render_log(&log_ctx(&headers, &info), false, &mut out);
    assert_eq!(out, "6 0 /backend http 7 6 outbound|80||svc");
    assert!(t.reads_trailers());
    assert_eq!(
        t.response_header_names()
            .map(|n| n.as_str())
            .collect::<Vec<_>>(),
        ["x-envoy-upstream-service-time"]
    );
}

#[test]
fn details_and_failure_reasons_use_underscores() {
    let headers = HeaderMap::new();
    let info = StreamInfo {
            response_code: 503,
            response_code_details: Some(
                "upstream_reset_before_response_started{remote_connection_failure|delayed connect error: Connection refused}".into(),
            ),
            upstream_transport_failure_reason: Some(
                "delayed connect error: Connection refused".into(),
            ),
            ..StreamInfo::default()
        };
    let mut out = String::new();
    Template::parse("%RESPONSE_CODE_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON%")
        .expect("parses")
        .render_log(&log_ctx(&headers, &info), false, &mut out);
    assert_eq!(out, "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused} delayed_connect_error:_Connection_refused");
}

#[test]
fn json_keeps_types_sorts_keys_and_omits_when_asked() {
    use json::{JsonFormat, JsonNode};
    let t = |s: &str| JsonNode::Template(Template::parse(s).expect("parses"));
    let fields = || {
        vec![
            ("code".to_string(), t("%RESPONSE_CODE%")),
            ("agent".to_string(), t("%REQ(USER-AGENT)%")),
            ("route".to_string(), t("%ROUTE_NAME%")),
            (
                "mixed".to_string(),
                t("c=%RESPONSE_CODE% h=%UPSTREAM_HOST%"),
            ),
            ("quote".to_string(), t("%REQ(x-q)%")),
            (
                "nested".to_string(),
                JsonNode::Object(vec![
                    ("z".to_string(), JsonNode::Number(5.0)),
                    ("a".to_string(), JsonNode::Bool(true)),
                ]),
            ),
            ("empty".to_string(), t("")),
        ]
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-q", HeaderValue::from_static("say \"hi\"\\"));
    let info = StreamInfo {
        response_code: 200,
        ..StreamInfo::default()
    };
    let mut out = String::new();
    JsonFormat::new(fields(), false).render(&log_ctx(&headers, &info), &mut out);
    assert_eq!(
            out,
            "{\"agent\":null,\"code\":200,\"empty\":\"\",\"mixed\":\"c=200 h=-\",\"nested\":{\"a\":true,\"z\":5},\"quote\":\"say \\\"hi\\\"\\\\\",\"route\":null}\n"
        );
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    assert_eq!(parsed["quote"], "say \"hi\"\\");
    out.clear();
    JsonFormat::new(fields(), true).render(&log_ctx(&headers, &info), &mut out);
    assert_eq!(
            out,
            "{\"code\":200,\"empty\":\"\",\"mixed\":\"c=200 h=\",\"nested\":{\"a\":true,\"z\":5},\"quote\":\"say \\\"hi\\\"\\\\\"}\n"
        );
}

#[test]
fn header_values_refuse_operators_about_a_finished_stream() {
    assert!(Template::parse_header_value("%DOWNSTREAM_REMOTE_ADDRESS% %REQ(x-a?x-b)%").is_ok());
    for op in [
        "%RESPONSE_CODE%",
        "%RESP(x)%",
        "%REQ(:PATH)%",
        "%UPSTREAM_HOST%",
    ] {
        let err = Template::parse_header_value(op).expect_err(op);
        assert!(err.contains("not supported in header values"), "{err}");
    }
}

#[test]
fn unknown_and_unsupported_operators_are_refused() {
    for bad in [
        "%UPSTREAM_SERVICE_TIME%",
        "%REQ(a b)%",
        "%RESP(x):y%",
        "%FOO%",
    ] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn tls_operators_read_the_connection_and_are_missing_without_it() {
    let headers = HeaderMap::new();
    let t = Template::parse(
        "%DOWNSTREAM_PEER_URI_SAN% %DOWNSTREAM_LOCAL_URI_SAN% %DOWNSTREAM_PEER_DNS_SAN% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_TLS_CIPHER% %DOWNSTREAM_PEER_FINGERPRINT_256%",
    )
    .expect("parses");
    let logged = |c: &Context<'_>| {
        let mut out = String::new();
        t.render_log(c, false, &mut out);
        out
    };
    assert_eq!(logged(&ctx(&headers)), "- - - - - -");
    let tls = crate::tls::TlsInfo {
        version: "TLSv1.3",
        cipher: "TLS_AES_128_GCM_SHA256",
        peer: Some(crate::tls::CertNames {
            uri: "spiffe://td/ns/a/sa/b".into(),
            dns: "".into(),
            sha256: "ab12".into(),
            subject: "".into(),
            ..Default::default()
        }),
        local: std::sync::Arc::new(crate::tls::CertNames {
            uri: "spiffe://td/ns/c/sa/d".into(),
            ..Default::default()
        }),
    };
    let with = Context {
        downstream_tls: Some(&tls),
        ..ctx(&headers)
    };
    assert_eq!(
        logged(&with),
        "spiffe://td/ns/a/sa/b spiffe://td/ns/c/sa/d - TLSv1.3 TLS_AES_128_GCM_SHA256 ab12"
    );
}
