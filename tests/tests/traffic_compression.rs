//! Differential tests for the compressor filter with gzip: which responses are compressed
//! (content length, content type, Cache-Control, ETag, Content-Encoding, status, HEAD), how
//! `Accept-Encoding` is negotiated, the headers a compressed response carries, streamed and
//! HTTP/2 responses, and the compressor's stats — against Envoy. curl decodes the bodies
//! (`--compressed`), so what is compared is the content, not the compressed bytes (zlib
//! implementations differ in those).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/compressor_filter

use tests::differential::{check, one_vhost, Known, Scenario, Side};
use tests::scripted::Behaviour;
use tests::upstream::Reply;

const DOC: &str =
    "https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/compressor_filter";
const API: &str = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/compressor/v3/compressor.proto";

const KNOWN: &[Known] = &[];

const TEXT: &str = "compress me, compress me, compress me, compress me, compress me\n";

/// Direct responses of each kind; everything else goes to upstream `a`.
fn routes() -> String {
    one_vhost(&format!(
        r#"
- match: {{ prefix: "/text" }}
  direct_response: {{ status: 200, body: {{ inline_string: "{text}" }} }}
- match: {{ prefix: "/tiny" }}
  direct_response: {{ status: 200, body: {{ inline_string: "tiny" }} }}
- match: {{ prefix: "/teapot" }}
  direct_response: {{ status: 418, body: {{ inline_string: "{text}" }} }}
- match: {{ prefix: "/empty" }}
  direct_response: {{ status: 200 }}
- match: {{ prefix: "/" }}
  route: {{ cluster: backend }}
"#,
        text = TEXT.trim_end()
    ))
}

/// A gzip compressor filter with `response` (fields of ResponseDirectionConfig, the inside of
/// a flow mapping) and `extra` (more Compressor fields, likewise).
fn compressor(library: &str, response: &str, extra: &str) -> String {
    format!(
        "- name: envoy.filters.http.compressor\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor, compressor_library: {{ name: {library}, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip }} }}, response_direction_config: {{ {response} }}{extra} }}\n"
    )
}

fn scenario(name: &'static str, doc: &'static str, filters: &str) -> Scenario {
    Scenario::http(name, doc, &routes()).filters(filters)
}

/// The compressor stats after the steps before. The compressed byte count depends on the
/// deflate implementation (Envoy's zlib and Outrigger's miniz_oxide choose different
/// encodings of the same data), so only whether it is zero is compared.
fn compressor_stats(side: &Side) -> String {
    let stats = side
        .proxy
        .get("/stats?filter=^http.traffic.compressor.")
        .body;
    let mut lines: Vec<String> = stats
        .lines()
        .map(|l| match l.split_once("total_compressed_bytes: ") {
            Some((name, n)) if n != "0" => format!("{name}total_compressed_bytes: > 0"),
            _ => l.to_string(),
        })
        .collect();
    lines.sort();
    lines.iter().map(|l| format!("  {l}\n")).collect()
}

fn accept(value: &'static str) -> [&'static str; 3] {
    ["--compressed", "-H", value]
}

fn scenarios() -> Vec<Scenario> {
    let plain = compressor("text", "", "");
    vec![
        scenario("negotiation", DOC, &plain)
            .curl("/text", &["--compressed"])
            .get("/text")
            .curl("/text", &accept("accept-encoding: gzip"))
            .curl("/text", &accept("accept-encoding: identity"))
            .curl("/text", &accept("accept-encoding: gzip;q=0"))
            .curl("/text", &accept("accept-encoding: gzip;q=0.5, identity;q=0.8"))
            .curl("/text", &accept("accept-encoding: *"))
            .curl("/text", &accept("accept-encoding: br"))
            .curl("/text", &accept("accept-encoding: gzip;q=nonsense"))
            .curl("/text", &["--compressed", "-I"])
            .custom(compressor_stats),
        scenario("what_is_not_compressed", DOC, &plain)
            .curl("/tiny", &["--compressed"])
            .curl("/empty", &["--compressed"])
            .curl("/teapot", &["--compressed"])
            .custom(compressor_stats),
        scenario("http2", DOC, &plain)
            .curl("/text", &["--compressed", "--http2-prior-knowledge"])
            .curl("/upstream", &["--compressed", "--http2-prior-knowledge"]),
        scenario("upstream_json", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![
                    ("content-type".into(), "application/json; charset=utf-8".into()),
                    ("etag".into(), "\"v1\"".into()),
                ],
                body: format!("{{\"text\": \"{}\"}}", TEXT.trim_end()),
            }))
            .curl("/json", &["--compressed"]),
        scenario("upstream_weak_etag_kept", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![
                    ("content-type".into(), "text/html".into()),
                    ("etag".into(), "W/\"v1\"".into()),
                ],
                body: TEXT.into(),
            }))
            .curl("/html", &["--compressed"]),
        scenario("upstream_no_transform", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![
                    ("content-type".into(), "text/plain".into()),
                    ("cache-control".into(), "max-age=10, no-transform".into()),
                ],
                body: TEXT.into(),
            }))
            .curl("/x", &["--compressed"]),
        scenario("upstream_already_encoded", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![
                    ("content-type".into(), "text/plain".into()),
                    ("content-encoding".into(), "identity".into()),
                ],
                body: TEXT.into(),
            }))
            .curl("/x", &["--compressed"]),
        scenario("upstream_unlisted_type", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![("content-type".into(), "image/png".into())],
                body: TEXT.into(),
            }))
            .curl("/x", &["--compressed"]),
        scenario("upstream_without_content_type", DOC, &plain)
            .upstream(Behaviour::Reply(Reply {
                status: 200,
                headers: vec![],
                body: TEXT.into(),
            }))
            .curl("/x", &["--compressed"]),
        scenario("streamed_body", DOC, &plain)
            .upstream(Behaviour::Stream(200_000))
            .curl("/stream", &["--compressed"])
            .custom(compressor_stats),
        scenario(
            "configured_types_length_and_statuses",
            API,
            &compressor(
                "custom",
                "common_config: { min_content_length: 100, content_type: [ application/json ] }, uncompressible_response_codes: [ 418 ]",
                "",
            ),
        )
        .curl("/text", &["--compressed"])
        .custom(compressor_stats),
        scenario(
            "remove_accept_encoding_and_etag_options",
            API,
            &compressor(
                "etags",
                "remove_accept_encoding_header: true, disable_on_etag_header: true",
                "",
            ),
        )
        .upstream(Behaviour::Reply(Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("etag".into(), "\"strong\"".into()),
            ],
            body: TEXT.into(),
        }))
        .curl("/x", &["--compressed"])
        .custom(compressor_stats),
        scenario(
            "weaken_etag",
            API,
            &compressor("weak", "weaken_etag_on_compress: true", ""),
        )
        .upstream(Behaviour::Reply(Reply {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("etag".into(), "\"strong\"".into()),
            ],
            body: TEXT.into(),
        }))
        .curl("/x", &["--compressed"]),
        scenario(
            "two_gzip_compressors",
            DOC,
            &format!(
                "{}{}",
                compressor("first", "", ""),
                compressor("second", "", ", choose_first: true")
            ),
        )
        .curl("/text", &["--compressed"])
        .curl("/text", &accept("accept-encoding: *"))
        .custom(compressor_stats),
        scenario(
            "disabled_by_runtime_flag",
            API,
            &compressor(
                "disabled",
                "common_config: { enabled: { default_value: false, runtime_key: compression.off } }",
                "",
            ),
        )
        .curl("/text", &["--compressed"])
        .custom(compressor_stats),
    ]
}

#[test]
fn compression_matches_envoy() {
    check("compression_matches_envoy", &scenarios(), KNOWN);
}
