//! Redaction of secrets in dumped config, as Envoy does it: every field annotated
//! `(udpa.annotations.sensitive) = true` (private keys, passwords, generic secrets, ...) has
//! each string or bytes value inside it replaced by `[redacted]`, also inside `Any`s.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump

use prost::{Message, Name};
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use std::collections::HashSet;
use std::sync::LazyLock;

const REDACTED: &str = "[redacted]";

/// Fields Envoy's API annotates sensitive. envoy-types' descriptor set carries no field
/// options, so the annotation cannot be read from the pool; this list is the fallback, and
/// any annotations the pool does carry are added to it.
const KNOWN_SENSITIVE: &[&str] = &[
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.private_key",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.pkcs12",
    "envoy.extensions.transport_sockets.tls.v3.TlsCertificate.password",
    "envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys.keys",
    "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secret",
    "envoy.extensions.transport_sockets.tls.v3.GenericSecret.secrets",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.SslCredentials.private_key",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.CallCredentials.access_token",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.CallCredentials.google_refresh_token",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.CallCredentials.ServiceAccountJWTAccessCredentials.json_key",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.CallCredentials.GoogleIAMCredentials.authorization_token",
    "envoy.config.core.v3.GrpcService.GoogleGrpc.CallCredentials.StsService.subject_token_path",
    "envoy.extensions.filters.http.basic_auth.v3.BasicAuth.users",
    "envoy.extensions.common.aws.v3.InlineCredentialProvider.secret_access_key",
    "envoy.extensions.common.aws.v3.InlineCredentialProvider.session_token",
];

/// Full names of the sensitive fields.
static SENSITIVE: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let pool = xds_proto::descriptor_pool();
    let mut out: HashSet<String> = KNOWN_SENSITIVE.iter().map(|s| s.to_string()).collect();
    if let Some(extension) = pool.get_extension_by_name("udpa.annotations.sensitive") {
        out.extend(
            pool.all_messages()
                .flat_map(|m| m.fields().collect::<Vec<_>>())
                .filter(|f| f.options().get_extension(&extension).as_bool() == Some(true))
                .map(|f| f.full_name().to_string()),
        );
    }
    out
});

/// A copy of `message` with its sensitive fields redacted. A message that does not round-trip
/// through reflection (it always should) is withheld rather than leaked.
pub fn redacted<M: Message + Name + Default>(message: &M) -> M {
    let Some(descriptor) = xds_proto::descriptor_pool().get_message_by_name(&M::full_name()) else {
        return M::default();
    };
    let Ok(mut dynamic) = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
    else {
        return M::default();
    };
    redact_message(&mut dynamic, false);
    M::decode(dynamic.encode_to_vec().as_slice()).unwrap_or_default()
}

fn redact_message(message: &mut DynamicMessage, sensitive: bool) {
    if message.descriptor().full_name() == "google.protobuf.Any" {
        redact_any(message, sensitive);
        return;
    }
    for (field, value) in message.fields_mut() {
        let sensitive = sensitive || SENSITIVE.contains(field.full_name());
        redact_value(value, sensitive);
    }
}

fn redact_value(value: &mut Value, sensitive: bool) {
    match value {
        Value::String(s) if sensitive => *s = REDACTED.to_string(),
        Value::Bytes(b) if sensitive => *b = bytes::Bytes::from_static(REDACTED.as_bytes()),
        Value::Message(m) => redact_message(m, sensitive),
        Value::List(items) => items.iter_mut().for_each(|v| redact_value(v, sensitive)),
        Value::Map(entries) => entries
            .values_mut()
            .for_each(|v| redact_value(v, sensitive)),
        _ => {}
    }
}

/// Unpacks an `Any` of a known type, redacts it and packs it back. Unknown payloads are left
/// alone unless the whole `Any` sits under a sensitive field, when they are dropped.
fn redact_any(any: &mut DynamicMessage, sensitive: bool) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let payload = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let inner = xds_proto::descriptor_pool()
        .get_message_by_name(xds_proto::type_name_of_url(&type_url))
        .and_then(|d| DynamicMessage::decode(d, payload).ok());
    match inner {
        Some(mut inner) => {
            redact_message(&mut inner, sensitive);
            any.set_field_by_name("value", Value::Bytes(inner.encode_to_vec().into()));
        }
        None if sensitive => any.set_field_by_name("value", Value::Bytes(Default::default())),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use xds_proto::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, TlsCertificate, UpstreamTlsContext,
    };

    #[test]
    fn private_keys_are_redacted_inside_any() {
        let inline = |s: &str| DataSource {
            specifier: Some(Specifier::InlineString(s.into())),
            ..Default::default()
        };
        let tls = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificates: vec![TlsCertificate {
                    certificate_chain: Some(inline("CERT")),
                    private_key: Some(inline("KEY")),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            sni: "example.com".into(),
            ..Default::default()
        };
        assert!(SENSITIVE
            .contains("envoy.extensions.transport_sockets.tls.v3.TlsCertificate.private_key"));
        let any = super::super::json::pack(&tls);
        let out: xds_proto::pb::google::protobuf::Any = redacted(&any);
        let out: UpstreamTlsContext = xds_proto::unpack(&out).expect("unpacks");
        let cert = &out.common_tls_context.expect("context").tls_certificates[0];
        assert_eq!(cert.private_key, Some(inline(REDACTED)));
        assert_eq!(cert.certificate_chain, Some(inline("CERT")));
        assert_eq!(out.sni, "example.com");
    }

    /// Every place a key can sit in a bootstrap: a static secret, a listener's and a cluster's
    /// transport socket (inside their `Any`s), inline as bytes or as a string.
    #[test]
    fn no_private_key_survives_in_a_redacted_bootstrap() {
        let yaml = r#"
static_resources:
  secrets:
  - name: default
    tls_certificate:
      certificate_chain: { inline_string: CERT }
      private_key: { inline_bytes: S0VZLUlOLUJZVEVT }
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 1 } }
    filter_chains:
    - filters: []
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates: [{ certificate_chain: { inline_string: CERT }, private_key: { inline_string: KEY-IN-LISTENER } }]
  clusters:
  - name: c
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_certificates: [{ certificate_chain: { inline_string: CERT }, private_key: { inline_string: KEY-IN-CLUSTER } }]
"#;
        let loaded = crate::bootstrap::load(&crate::bootstrap::Sources {
            config_yaml: Some(yaml),
            ..Default::default()
        })
        .expect("parses");
        let out = redacted(&loaded.bootstrap);
        let json = xds_proto::to_json_value(&out).expect("json").to_string();
        for key in ["KEY-IN-LISTENER", "KEY-IN-CLUSTER", "S0VZLUlOLUJZVEVT"] {
            assert!(!json.contains(key), "{key} leaked: {json}");
        }
        assert!(json.contains("CERT"));
    }
}
