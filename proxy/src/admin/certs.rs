//! `/certs`: the certificates of every TLS context in use, as `envoy.admin.v3.Certificates` —
//! per context its CA bundle (every certificate of it) and the leaf of its own chain, with the
//! file each came from (`<inline>` otherwise). Only certificates: no key is ever reachable
//! from here.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--certs

use super::{json, AdminResponse, Query};
use crate::config::tls::CertOrigin;
use crate::server::Server;
use crate::tls::x509::CertInfo;
use std::time::SystemTime;
use xds_proto::pb::envoy::admin::v3::{
    subject_alternate_name::Name, Certificate, CertificateDetails, Certificates,
    SubjectAlternateName,
};

pub fn handle(server: &Server, _: &Query) -> AdminResponse {
    let now = SystemTime::now();
    let certificates = server
        .tls_contexts
        .certificates()
        .into_iter()
        .map(|c| Certificate {
            ca_cert: c
                .ca
                .iter()
                .flat_map(|(_, v)| v.ca_info.iter().map(|i| details(&v.ca_origin, i, now)))
                .collect(),
            cert_chain: c
                .own
                .iter()
                .filter_map(|(_, own)| Some(details(&own.origin, own.leaf.as_ref()?, now)))
                .collect(),
        })
        .collect();
    // Envoy prints this message with its zero values (`"days_until_expiration": "0"`, `[]`).
    json::message_response(&Certificates { certificates }, true)
}

fn details(origin: &CertOrigin, info: &CertInfo, now: SystemTime) -> CertificateDetails {
    // Envoy lists DNS names, then URIs, then IP addresses (no email addresses).
    let sans = &info.sans;
    let subject_alt_names = sans
        .dns
        .iter()
        .map(|d| Name::Dns(d.clone()))
        .chain(sans.uri.iter().map(|u| Name::Uri(u.clone())))
        .chain(sans.ip.iter().map(|ip| Name::IpAddress(ip.to_string())))
        .map(|name| SubjectAlternateName { name: Some(name) })
        .collect();
    CertificateDetails {
        path: origin.path.to_string(),
        serial_number: info.serial.clone(),
        subject_alt_names,
        days_until_expiration: info.days_left(now),
        valid_from: Some(json::timestamp(info.not_before)),
        expiration_time: Some(json::timestamp(info.not_after)),
        ocsp_details: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{json, server};
    use http::Method;

    /// The test bootstrap's TLS cluster has an inline certificate and no CA: one context,
    /// its leaf `<inline>` with its dates and SANs, and its expiry gauge named by Envoy's
    /// hash of (empty) `inline_bytes`.
    #[test]
    fn lists_the_contexts_certificates_and_their_gauges() {
        let s = server();
        let v = json(handle(&s, &Method::GET, "/certs"));
        let contexts = v["certificates"].as_array().expect("a list");
        assert_eq!(contexts.len(), 1, "{v}");
        assert_eq!(contexts[0]["ca_cert"], serde_json::json!([]));
        let leaf = &contexts[0]["cert_chain"][0];
        assert_eq!(leaf["path"], "<inline>");
        assert_eq!(
            leaf["subject_alt_names"],
            serde_json::json!([{"dns": "example.com"}])
        );
        // rcgen's default validity: 1975 to 4096.
        assert_eq!(leaf["valid_from"], "1975-01-01T00:00:00Z");
        assert_eq!(leaf["expiration_time"], "4096-01-01T00:00:00Z");
        assert!(leaf["days_until_expiration"].is_string(), "{leaf}");
        assert!(leaf["serial_number"]
            .as_str()
            .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())));
        let body = super::super::test_support::body(handle(&s, &Method::GET, "/certs"));
        assert!(!body.contains("PRIVATE KEY"));
        let gauge = s.stats.find(
            "cluster.tls_backend.ssl.certificate.unnamed_cert_e3b0c442.expiration_unix_time_seconds",
        );
        let Some(crate::stats::Metric::Gauge(g)) = gauge else {
            panic!("no expiry gauge");
        };
        assert_eq!(g.value(), 67_090_118_400);
    }
}
