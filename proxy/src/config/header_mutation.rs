//! `*_headers_to_add` / `*_headers_to_remove`, compiled to header names and values. Values
//! with command operators (`%DOWNSTREAM_REMOTE_ADDRESS%`, ...) are compiled templates
//! rendered per request; plain values are ready-made header values.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/base.proto#config-core-v3-headervalueoption
#![allow(deprecated)] // `append` is deprecated but still honoured by Envoy.

use super::error::{FieldPath, Result};
use crate::format::{Context, Template};
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

#[derive(Debug, Clone)]
pub enum HeaderTemplate {
    Literal(HeaderValue),
    /// Rendered per request; an empty result drops the header unless `keep_empty`.
    Formatted {
        template: Template,
        keep_empty: bool,
    },
}

#[derive(Debug, Clone, Default)]
pub struct HeaderMutation {
    pub remove: Vec<HeaderName>,
    pub add: Vec<(HeaderName, HeaderTemplate, AppendAction)>,
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Whether a value reads request headers; the caller then passes a copy of them in the
    /// context (so they are read as they were before this mutation).
    pub fn reads_request_headers(&self) -> bool {
        self.add.iter().any(|(_, v, _)| matches!(v, HeaderTemplate::Formatted { template, .. } if template.reads_request_headers()))
    }

    /// Envoy removes first, then adds. Templates read `ctx`; those that read the headers being
    /// changed see them before this mutation (all values are rendered first).
    pub fn apply(&self, headers: &mut http::HeaderMap, ctx: &Context<'_>) {
        if self.is_empty() {
            return;
        }
        let rendered: Vec<Option<HeaderValue>> = self
            .add
            .iter()
            .map(|(_, value, _)| match value {
                HeaderTemplate::Literal(v) => Some(v.clone()),
                HeaderTemplate::Formatted {
                    template,
                    keep_empty,
                } => {
                    let text = template.render(ctx);
                    if text.is_empty() && !keep_empty {
                        None
                    } else {
                        HeaderValue::from_str(&text).ok()
                    }
                }
            })
            .collect();
        for name in &self.remove {
            headers.remove(name);
        }
        for ((name, _, action), value) in self.add.iter().zip(rendered) {
            let Some(value) = value else { continue };
            match action {
                AppendAction::AppendIfExistsOrAdd => {
                    headers.append(name.clone(), value);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(name) {
                        headers.insert(name.clone(), value);
                    }
                }
                AppendAction::OverwriteIfExistsOrAdd => {
                    headers.insert(name.clone(), value);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(name) {
                        headers.insert(name.clone(), value);
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
        let value_path = p.field("header").field("value");
        let template =
            Template::parse_header_value(&header.value).map_err(|e| value_path.error(e))?;
        let value = match template.literal() {
            // Envoy drops headers whose value is empty unless keep_empty_value is set.
            Some("") if !option.keep_empty_value => continue,
            Some(text) => HeaderTemplate::Literal(
                HeaderValue::from_str(text)
                    .map_err(|_| value_path.error("invalid header value"))?,
            ),
            None => HeaderTemplate::Formatted {
                template,
                keep_empty: option.keep_empty_value,
            },
        };
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
