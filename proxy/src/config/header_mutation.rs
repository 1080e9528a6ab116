//! `*_headers_to_add` / `*_headers_to_remove`, compiled to header names and values.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-headervalueoption
//! Values are literal for now; `%VAR%` substitutions come with the data-path issue and are
//! refused until then rather than sent verbatim.
#![allow(deprecated)] // `append` is deprecated but still honoured by Envoy.

use super::error::{FieldPath, Result};
use http::{HeaderName, HeaderValue};
use xds_proto::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderMutation {
    pub remove: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderValue, AppendAction)>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Envoy removes first, then adds.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, action) in &self.add {
            match action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(name.clone(), value.clone());
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(name.clone(), value.clone());
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
        }
    }
}

/// `direction` is "request" or "response", naming the fields `<direction>_headers_to_add`.
pub fn header_mutation(
    add: &[HeaderValueOption],
    remove: &[String],
    path: &FieldPath,
    direction: &str,
) -> Result<HeaderMutation> {
    let add_path = path.field(&format!("{direction}_headers_to_add"));
    let remove_path = path.field(&format!("{direction}_headers_to_remove"));
    let mut mutation = HeaderMutation::default();
    for (i, name) in remove.iter().enumerate() {
        let p = remove_path.index(i);
        let name = header_name(name, &p)?;
        if name.as_str().starts_with(':') || name == http::header::HOST {
            return Err(p.error("pseudo-headers and host cannot be removed"));
        }
        mutation.remove.push(name);
    }
    for (i, option) in add.iter().enumerate() {
        let p = add_path.index(i);
        let header = option
            .header
            .as_ref()
            .ok_or_else(|| p.field("header").error("is required"))?;
        let name = header_name(&header.key, &p.field("header").field("key"))?;
        if header.key.starts_with(':') || name == http::header::HOST {
            return Err(p.error(":-prefixed or host headers may not be modified"));
        }
        if !header.raw_value.is_empty() {
            return Err(p
                .field("header")
                .field("raw_value")
                .error("raw_value is not supported; use value"));
        }
        if header.value.replace("%%", "").contains('%') {
            return Err(p
                .field("header")
                .field("value")
                .error("%VARIABLE% substitutions are not supported yet"));
        }
        if header.value.is_empty() && !option.keep_empty_value {
            // Envoy drops headers whose value is empty unless keep_empty_value is set.
            continue;
        }
        let value = HeaderValue::from_str(&header.value.replace("%%", "%")).map_err(|_| {
            p.field("header")
                .field("value")
                .error("invalid header value")
        })?;
        let action = match (
            &option.append,
            HeaderAppendAction::try_from(option.append_action),
        ) {
            (Some(_), Ok(a)) if a != HeaderAppendAction::AppendIfExistsOrAdd => {
                return Err(p.error("append and append_action cannot both be set"))
            }
            (Some(append), _) if !append.value => AppendAction::OverwriteIfExistsOrAdd,
            (_, Ok(HeaderAppendAction::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
            (_, Ok(HeaderAppendAction::AddIfAbsent)) => AppendAction::AddIfAbsent,
            (_, Ok(HeaderAppendAction::OverwriteIfExistsOrAdd)) => {
                AppendAction::OverwriteIfExistsOrAdd
            }
            (_, Ok(HeaderAppendAction::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
            (_, Err(_)) => return Err(p.field("append_action").error("unknown append action")),
        };
        mutation.add.push((name, value, action));
    }
    Ok(mutation)
}

fn header_name(name: &str, path: &FieldPath) -> Result<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| path.error(format!("invalid header name {name:?}")))
}
