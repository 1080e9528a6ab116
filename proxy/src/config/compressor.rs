//! The compressor filter (`envoy.filters.http.compressor`) with the gzip library: which
//! responses it compresses and how. Brotli and zstd libraries are accepted but not
//! implemented: such a filter passes responses through (see [`translate_compressor`]).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/compressor_filter
//! and https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/http/compressor/v3/compressor.proto

use super::error::{FieldPath, Result};
use super::fields::{check, Acknowledged};
use super::matcher::{string_matcher, StringMatcher};
use super::resolver::Resolver;
use xds_proto::pb::envoy::extensions::compression::gzip::compressor::v3::gzip::CompressionLevel;
use xds_proto::pb::envoy::extensions::filters::http::compressor::v3::{
    compressor::CommonDirectionConfig, Compressor,
};
use xds_proto::Extension;

/// Envoy's content types compressed when the config lists none.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "application/javascript",
    "application/json",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/plain",
    "text/xml",
];

/// A gzip compressor filter's settings.
#[derive(Debug, Clone)]
pub struct GzipCompressor {
    /// `compressor_library.name`, which names the stats scope.
    pub library_name: String,
    /// zlib level 1..=9.
    pub level: u32,
    pub enabled: bool,
    pub min_content_length: u64,
    pub content_types: ContentTypes,
    pub disable_on_etag: bool,
    pub weaken_etag: bool,
    pub remove_accept_encoding: bool,
    pub uncompressible_statuses: Vec<u16>,
}

/// The content types a compressor takes, matched against the media type of `Content-Type`
/// (lower case, without parameters).
#[derive(Debug, Clone)]
pub enum ContentTypes {
    Listed(Vec<String>),
    Matchers(Vec<StringMatcher>),
}

impl ContentTypes {
    pub fn allows(&self, media_type: &str) -> bool {
        match self {
            ContentTypes::Listed(types) => types.iter().any(|t| t == media_type),
            ContentTypes::Matchers(matchers) => matchers.iter().any(|m| m.matches(media_type)),
        }
    }
}

/// A compressor filter: gzip, or a library Outrigger does not implement (kept in the chain so
/// its position is honoured, but it compresses nothing).
#[derive(Debug, Clone)]
pub enum CompressorFilter {
    Gzip(GzipCompressor),
    NotImplemented,
}

// The deprecated fields are still Envoy's API, and Istio sends `common_config.content_type`.
#[allow(deprecated)]
pub fn translate_compressor(
    c: &Compressor,
    path: &FieldPath,
    resolve: &Resolver<'_>,
    acks: &mut Vec<Acknowledged>,
) -> Result<CompressorFilter> {
    check(c, path, acks)?;
    let lib_path = path.field("compressor_library");
    let library = c
        .compressor_library
        .as_ref()
        .ok_or_else(|| lib_path.error("is required"))?;
    let any = library
        .typed_config
        .as_ref()
        .ok_or_else(|| lib_path.field("typed_config").error("is required"))?;
    let tc = lib_path.field("typed_config");
    let level = match super::extension::decode(any, &tc)? {
        Some(Extension::GzipCompressor(gzip)) => {
            check(&gzip, &tc, acks)?;
            match CompressionLevel::try_from(gzip.compression_level) {
                Ok(CompressionLevel::DefaultCompression) => 6,
                Ok(level) => level as u32,
                Err(_) => return Err(tc.field("compression_level").error("unknown level")),
            }
        }
        Some(Extension::BrotliCompressor(_)) | Some(Extension::ZstdCompressor(_)) => {
            acks.push(Acknowledged {
                path: tc.to_string(),
                reason: "brotli and zstd compression are not implemented: this compressor filter passes responses through (a gzip compressor filter in the same chain still compresses)",
            });
            return Ok(CompressorFilter::NotImplemented);
        }
        _ => return Err(super::extension::unregistered(&tc, &library.name, any)),
    };
    if c.request_direction_config.is_some() {
        return Err(path
            .field("request_direction_config")
            .error("request compression is not implemented"));
    }
    let response = c.response_direction_config.as_ref();
    let common = response.and_then(|r| r.common_config.as_ref());
    let common_path = path
        .field("response_direction_config")
        .field("common_config");
    // The deprecated top-level fields apply when the response direction does not say.
    let enabled = match common.and_then(|c| c.enabled.as_ref()) {
        Some(flag) => runtime_flag(flag, resolve),
        None => c
            .runtime_enabled
            .as_ref()
            .is_none_or(|flag| runtime_flag(flag, resolve)),
    };
    let min_content_length = common
        .and_then(|c| c.min_content_length)
        .or(c.content_length)
        .map_or(30, |v| u64::from(v.value));
    let listed = match common {
        Some(CommonDirectionConfig { content_type, .. }) if !content_type.is_empty() => {
            content_type.clone()
        }
        _ => c.content_type.clone(),
    };
    // Matchers take precedence over the list; with neither, Envoy's default list applies.
    let matchers = common.map(|c| &c.content_type_matcher[..]).unwrap_or(&[]);
    let content_types = if !matchers.is_empty() {
        ContentTypes::Matchers(
            matchers
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    string_matcher(m, &common_path.field("content_type_matcher").index(i))
                })
                .collect::<Result<_>>()?,
        )
    } else if listed.is_empty() {
        ContentTypes::Listed(
            DEFAULT_CONTENT_TYPES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    } else {
        ContentTypes::Listed(listed.iter().map(|t| media_type(t)).collect())
    };
    let uncompressible_statuses = response
        .map(|r| r.uncompressible_response_codes.clone())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, code)| {
            u16::try_from(code)
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| {
                    path.field("response_direction_config")
                        .field("uncompressible_response_codes")
                        .index(i)
                        .error("must be an HTTP status in [100, 600)")
                })
        })
        .collect::<Result<_>>()?;
    Ok(CompressorFilter::Gzip(GzipCompressor {
        library_name: library.name.clone(),
        level,
        enabled,
        min_content_length,
        content_types,
        disable_on_etag: response.map_or(c.disable_on_etag_header, |r| r.disable_on_etag_header),
        weaken_etag: response.is_some_and(|r| r.weaken_etag_on_compress),
        remove_accept_encoding: response.map_or(c.remove_accept_encoding_header, |r| {
            r.remove_accept_encoding_header
        }),
        uncompressible_statuses,
        // `choose_first` breaks ties between compressors of different encodings; among gzip
        // compressors (the only ones that act) it changes nothing.
    }))
}

/// A runtime feature flag: the runtime key's value when a static layer sets it, else the
/// default.
fn runtime_flag(
    flag: &xds_proto::pb::envoy::config::core::v3::RuntimeFeatureFlag,
    resolve: &Resolver<'_>,
) -> bool {
    match resolve.runtime(&flag.runtime_key) {
        Some(serde_json::Value::Bool(b)) => *b,
        _ => flag.default_value.as_ref().is_none_or(|b| b.value),
    }
}

/// `text/html; charset=utf-8` → `text/html`.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}
