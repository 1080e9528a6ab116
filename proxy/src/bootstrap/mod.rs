//! Reading a bootstrap the way Envoy does: `-c` (YAML or JSON by extension), `--config-yaml`
//! merged on top with protobuf merge semantics, node fields from the command line, and the
//! embedded default when nothing is given.

use std::path::Path;
use xds_proto::pb::envoy::config::bootstrap::v3::Bootstrap;
use xds_proto::pb::envoy::config::core::v3::{Locality, Node};
use xds_proto::{parse_document, DocumentFormat, ParseOptions, XdsMessage};

/// The bootstrap `outrigger` runs with no arguments: admin on 127.0.0.1:15000 and a demo
/// listener on 127.0.0.1:10000 that answers itself and proxies `/admin/` to the admin API.
pub const DEFAULT_BOOTSTRAP: &str = include_str!("default.yaml");

#[derive(Debug, Clone, Default)]
pub struct Sources<'a> {
    pub config_path: Option<&'a Path>,
    pub config_yaml: Option<&'a str>,
    pub allow_unknown_static_fields: bool,
    pub service_node: Option<&'a str>,
    pub service_cluster: Option<&'a str>,
    pub service_zone: Option<&'a str>,
}

#[derive(Debug)]
pub struct Loaded {
    pub bootstrap: Bootstrap,
    /// Unknown fields ignored because of `--allow-unknown-static-fields`.
    pub unknown_fields: Vec<String>,
    /// Whether the embedded default was used.
    pub is_default: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unable to read file: {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("unable to parse {origin} as a Bootstrap: {source}")]
    Parse {
        origin: String,
        source: xds_proto::ParseError,
    },
}

pub fn load(sources: &Sources<'_>) -> Result<Loaded, LoadError> {
    let options = ParseOptions {
        allow_unknown_fields: sources.allow_unknown_static_fields,
    };
    let mut unknown_fields = Vec::new();
    let mut parse = |text: &str, format: DocumentFormat, origin: &str| {
        parse_document::<Bootstrap>(text, format, options)
            .map(|p| {
                unknown_fields.extend(
                    p.unknown_fields
                        .into_iter()
                        .map(|f| format!("{origin}: {f}")),
                );
                p.value
            })
            .map_err(|source| LoadError::Parse {
                origin: origin.to_string(),
                source,
            })
    };
    let is_default = sources.config_path.is_none() && sources.config_yaml.is_none();
    let mut bootstrap = match sources.config_path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let name = path.to_string_lossy();
            parse(&text, DocumentFormat::from_path(&name), &name)?
        }
        None if is_default => parse(
            DEFAULT_BOOTSTRAP,
            DocumentFormat::Yaml,
            "the embedded default bootstrap",
        )?,
        None => Bootstrap::default(),
    };
    if let Some(yaml) = sources.config_yaml {
        let overlay = parse(yaml, DocumentFormat::Yaml, "--config-yaml")?;
        bootstrap = merge(&bootstrap, &overlay);
    }
    apply_node_flags(&mut bootstrap, sources);
    Ok(Loaded {
        bootstrap,
        unknown_fields,
        is_default,
    })
}

/// Protobuf `MergeFrom`, which Envoy applies to `--config-yaml`: set scalars replace, repeated
/// fields append, messages merge recursively. Decoding two concatenated encodings is exactly
/// that, by the protobuf wire format's definition.
pub fn merge(base: &Bootstrap, overlay: &Bootstrap) -> Bootstrap {
    let mut bytes = base.encode_bytes();
    bytes.extend_from_slice(&overlay.encode_bytes());
    // Both halves are valid encodings of the same message type, so their concatenation is too.
    Bootstrap::decode_bytes(&bytes).unwrap_or_else(|_| overlay.clone())
}

fn apply_node_flags(bootstrap: &mut Bootstrap, sources: &Sources<'_>) {
    let wants = sources.service_node.is_some()
        || sources.service_cluster.is_some()
        || sources.service_zone.is_some();
    if !wants {
        return;
    }
    let node = bootstrap.node.get_or_insert_with(Node::default);
    if let Some(id) = sources.service_node {
        node.id = id.to_string();
    }
    if let Some(cluster) = sources.service_cluster {
        node.cluster = cluster.to_string();
    }
    if let Some(zone) = sources.service_zone {
        node.locality.get_or_insert_with(Locality::default).zone = zone.to_string();
    }
}
