//! Policies in the shapes istiod generates for AuthorizationPolicies, decided against requests
//! and connections.

use super::*;
use crate::config::error::FieldPath;
use crate::tls::CertNames;
use xds_proto::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use xds_proto::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

fn http(yaml: &str) -> crate::config::error::Result<Rbac> {
    let proto = xds_proto::parse_document::<HttpRbac>(
        yaml,
        xds_proto::DocumentFormat::Yaml,
        xds_proto::ParseOptions::default(),
    )
    .expect("an RBAC filter config")
    .value;
    crate::config::rbac::translate_http_rbac(&proto, &FieldPath::root("rbac"), &mut Vec::new())
}

fn network(yaml: &str) -> crate::config::error::Result<Rbac> {
    let proto = xds_proto::parse_document::<NetworkRbac>(
        yaml,
        xds_proto::DocumentFormat::Yaml,
        xds_proto::ParseOptions::default(),
    )
    .expect("an RBAC filter config")
    .value;
    crate::config::rbac::translate_network_rbac(&proto, &FieldPath::root("rbac"), &mut Vec::new())
        .map(|(rules, _)| rules)
}

struct Request {
    headers: http::HeaderMap,
    method: &'static str,
    path: &'static str,
    authority: &'static str,
}

fn request(method: &'static str, path: &'static str) -> Request {
    Request {
        headers: http::HeaderMap::new(),
        method,
        path,
        authority: "httpbin.foo:8000",
    }
}

fn peer(uri: &str) -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3",
        cipher: "TLS_AES_128_GCM_SHA256",
        peer: Some(CertNames {
            uri_sans: vec![uri.to_string()],
            ..Default::default()
        }),
        local: Arc::new(CertNames::default()),
    }
}

/// The enforced decision for `r` from 10.0.0.1 to 10.0.0.2:8000, with `tls`.
fn allowed(rbac: &Rbac, r: &Request, tls: Option<&TlsInfo>) -> bool {
    let head = RequestHead {
        headers: &r.headers,
        method: Some(r.method),
        authority: Some(r.authority),
        path: Some(r.path),
        scheme: Some("http"),
    };
    let f = Facts {
        request: Some(&head),
        local: Some("10.0.0.2:8000".parse().expect("an address")),
        direct_remote: Some("10.0.0.1:40000".parse().expect("an address")),
        remote: Some("10.0.0.1".parse().expect("an address")),
        tls,
        server_name: None,
        metadata: None,
    };
    rbac.enforced.as_ref().expect("rules").decide(&f).allowed
}

#[test]
fn allow_policy_needs_a_matching_permission_and_principal() {
    let rbac = http(
        r#"
rules:
  policies:
    ns[foo]-policy[httpbin]-rule[0]:
      permissions:
      - andRules:
          rules:
          - orRules: { rules: [ { header: { name: ":method", stringMatch: { exact: GET } } } ] }
          - orRules: { rules: [ { urlPath: { path: { prefix: /info } } } ] }
          - notRule: { orRules: { rules: [ { destinationPort: 9000 } ] } }
      principals:
      - andIds:
          ids:
          - orIds:
              ids:
              - authenticated: { principalName: { exact: spiffe://cluster.local/ns/foo/sa/sleep } }
              - authenticated: { principalName: { safeRegex: { regex: ".*/ns/bar/.*" } } }
"#,
    )
    .expect("valid policies");
    let sleep = peer("spiffe://cluster.local/ns/foo/sa/sleep");
    let bar = peer("spiffe://cluster.local/ns/bar/sa/any");
    let other = peer("spiffe://cluster.local/ns/baz/sa/x");
    assert!(allowed(&rbac, &request("GET", "/info?x=1"), Some(&sleep)));
    assert!(allowed(&rbac, &request("GET", "/info/more"), Some(&bar)));
    assert!(!allowed(&rbac, &request("POST", "/info"), Some(&sleep)));
    assert!(!allowed(&rbac, &request("GET", "/other"), Some(&sleep)));
    assert!(!allowed(&rbac, &request("GET", "/info"), Some(&other)));
    // Plaintext: no principal is authenticated.
    assert!(!allowed(&rbac, &request("GET", "/info"), None));
}

#[test]
fn deny_policy_and_the_first_matching_policy_by_name() {
    let rbac = http(
        r#"
rules:
  action: DENY
  policies:
    b-admin: { permissions: [ { urlPath: { path: { prefix: /admin } } } ], principals: [ { any: true } ] }
    a-header:
      permissions: [ { any: true } ]
      principals: [ { header: { name: x-user, safeRegexMatch: { regex: "^evil$|^evil,.*" } } } ]
"#,
    )
    .expect("valid policies");
    let mut r = request("GET", "/admin/x");
    assert!(!allowed(&rbac, &r, None));
    assert!(allowed(&rbac, &request("GET", "/public"), None));
    r.headers
        .insert("x-user", http::HeaderValue::from_static("evil"));
    let head = RequestHead {
        headers: &r.headers,
        method: Some("GET"),
        authority: Some("h"),
        path: Some("/admin/x"),
        scheme: None,
    };
    let f = Facts {
        request: Some(&head),
        local: None,
        direct_remote: None,
        remote: None,
        tls: None,
        server_name: None,
        metadata: None,
    };
    let decision = rbac.enforced.as_ref().expect("rules").decide(&f);
    assert_eq!(
        decision,
        Decision {
            allowed: false,
            policy: Some(&Arc::from("a-header"))
        }
    );
}

#[test]
fn addresses_ports_and_metadata() {
    let rbac = http(
        r#"
rules:
  policies:
    p:
      permissions:
      - andRules:
          rules:
          - destinationIp: { addressPrefix: 10.0.0.0, prefixLen: 24 }
          - destinationPortRange: { start: 8000, end: 8001 }
      principals:
      - andIds:
          ids:
          - remoteIp: { addressPrefix: 10.0.0.1, prefixLen: 32 }
          - directRemoteIp: { addressPrefix: 10.0.0.0, prefixLen: 8 }
          - notId:
              metadata:
                filter: istio_authn
                path: [ { key: request.auth.principal } ]
                value: { stringMatch: { exact: someone } }
"#,
    )
    .expect("valid policies");
    assert!(allowed(&rbac, &request("GET", "/"), None));
    // The request principal comes from JWT metadata, which nothing sets: never matched.
    let requires_jwt = http(
        r#"
rules:
  policies:
    p:
      permissions: [ { any: true } ]
      principals:
      - metadata:
          filter: istio_authn
          path: [ { key: request.auth.principal } ]
          value: { stringMatch: { safeRegex: { regex: ".+" } } }
"#,
    )
    .expect("valid policies");
    assert!(!allowed(&requires_jwt, &request("GET", "/"), None));
}

#[test]
fn authenticated_without_a_name_is_any_tls_connection() {
    let rbac = http(
        "rules: { policies: { p: { permissions: [ { any: true } ], principals: [ { authenticated: {} } ] } } }",
    )
    .expect("valid policies");
    assert!(allowed(
        &rbac,
        &request("GET", "/"),
        Some(&peer("spiffe://x"))
    ));
    assert!(!allowed(&rbac, &request("GET", "/"), None));
}

#[test]
fn invalid_policies_are_refused_with_their_path() {
    let err = |yaml: &str| http(yaml).expect_err("refused").to_string();
    assert!(
        err("rules: { policies: { p: { permissions: [], principals: [ { any: true } ] } } }")
            .contains("rbac.rules.policies[\"p\"].permissions")
    );
    assert!(err(
        "rules: { policies: { p: { permissions: [ { any: false } ], principals: [ { any: true } ] } } }"
    )
    .contains("any"));
    assert!(err("rules: { policies: { p: { permissions: [ { destinationPortRange: { start: 90, end: 80 } } ], principals: [ { any: true } ] } } }")
        .contains("cannot be greater or equal"));
    assert!(err("rules: { policies: { p: { permissions: [ { any: true } ], principals: [ { filterState: { key: k, stringMatch: { exact: v } } } ] } } }")
        .contains("filter_state"));
    assert!(err("track_per_rule_stats: true").contains("track_per_rule_stats"));
    // The network filter sees no request.
    let e = network("statPrefix: tcp.\nrules: { policies: { p: { permissions: [ { header: { name: x, presentMatch: true } } ], principals: [ { any: true } ] } } }")
        .expect_err("refused")
        .to_string();
    assert!(e.contains("header"), "{e}");
}

#[test]
fn a_connection_is_decided_without_a_request() {
    let rbac = network(
        r#"
statPrefix: tcp.
rules:
  action: DENY
  policies:
    p:
      permissions: [ { requestedServerName: { suffix: .internal } } ]
      principals: [ { authenticated: { principalName: { prefix: "spiffe://cluster.local/ns/bad/" } } } ]
"#,
    )
    .expect("valid policies");
    let bad = peer("spiffe://cluster.local/ns/bad/sa/x");
    let decide = |sni: Option<&str>, tls: Option<&TlsInfo>| {
        let f = Facts {
            request: None,
            local: None,
            direct_remote: None,
            remote: None,
            tls,
            server_name: sni,
            metadata: None,
        };
        rbac.enforced.as_ref().expect("rules").decide(&f).allowed
    };
    assert!(!decide(Some("db.internal"), Some(&bad)));
    assert!(decide(Some("db.public"), Some(&bad)));
    assert!(decide(Some("db.internal"), None));
}

/// Envoy's `ValueMatcher` kinds on the JWT payload as the JWT filter writes it.
#[test]
fn metadata_matchers_read_the_jwt_payload() {
    use crate::config::rbac::ValueRule;
    use crate::metadata::DynamicMetadata;
    let mut md = DynamicMetadata::default();
    let payload = serde_json::json!({ "payload": {
        "iss": "https://a", "sub": "alice", "exp": 1.5e9, "admin": true, "nothing": null,
        "groups": ["dev", "admins"], "nested": { "team": "blue" } } });
    md.merge(
        "envoy.filters.http.jwt_authn",
        payload.as_object().cloned().unwrap_or_default(),
    );
    let rbac = http(
        r#"
rules:
  policies:
    p:
      permissions: [ { any: true } ]
      principals:
      - andIds:
          ids:
          - metadata:
              filter: envoy.filters.http.jwt_authn
              path: [ { key: payload }, { key: iss } ]
              value: { stringMatch: { exact: "https://a" } }
          - metadata:
              filter: envoy.filters.http.jwt_authn
              path: [ { key: payload }, { key: groups } ]
              value: { orMatch: { valueMatchers: [ { listMatch: { oneOf: { stringMatch: { exact: admins } } } }, { stringMatch: { exact: admins } } ] } }
          - metadata:
              filter: envoy.filters.http.jwt_authn
              path: [ { key: payload }, { key: nested }, { key: team } ]
              value: { stringMatch: { prefix: bl } }
          - metadata:
              filter: envoy.filters.http.jwt_authn
              path: [ { key: payload }, { key: sub } ]
              value: { stringMatch: { exact: bob } }
              invert: true
"#,
    )
    .expect("valid policies");
    let r = request("GET", "/");
    let head = RequestHead {
        headers: &r.headers,
        method: Some(r.method),
        authority: Some(r.authority),
        path: Some(r.path),
        scheme: Some("http"),
    };
    let decide = |metadata| {
        let f = Facts {
            request: Some(&head),
            local: None,
            direct_remote: None,
            remote: None,
            tls: None,
            server_name: None,
            metadata,
        };
        rbac.enforced.as_ref().expect("rules").decide(&f).allowed
    };
    assert!(decide(Some(&md)));
    assert!(!decide(None));
    let value = |path: &[&str]| {
        md.value(
            "envoy.filters.http.jwt_authn",
            &path.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    };
    assert!(ValueRule::DoubleRange(1e9, 2e9).matches(value(&["payload", "exp"])));
    assert!(!ValueRule::DoubleExact(1.0).matches(value(&["payload", "exp"])));
    assert!(ValueRule::Bool(true).matches(value(&["payload", "admin"])));
    assert!(ValueRule::Null.matches(value(&["payload", "nothing"])));
    assert!(ValueRule::Present(true).matches(value(&["payload", "sub"])));
    assert!(!ValueRule::Present(true).matches(value(&["payload", "missing"])));
    assert!(!ValueRule::Present(false).matches(value(&["payload", "missing"])));
    // A string matcher never matches a list, nor a list matcher a string.
    assert!(!ValueRule::ListOneOf(Box::new(ValueRule::Present(true)))
        .matches(value(&["payload", "sub"])));
}
