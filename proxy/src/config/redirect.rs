//! Redirect route actions.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#config-route-v3-redirectaction

use super::error::{FieldPath, Result};
use xds_proto::pb::envoy::config::route::v3 as proto;

#[derive(Debug)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: RedirectPath,
    pub status: http::StatusCode,
    pub strip_query: bool,
}

#[derive(Debug)]
pub enum RedirectPath {
    Keep,
    Replace(String),
    PrefixRewrite(String),
}

pub fn translate_redirect(r: &proto::RedirectAction, path: &FieldPath) -> Result<Redirect> {
    use proto::redirect_action::{
        PathRewriteSpecifier as P, RedirectResponseCode as C, SchemeRewriteSpecifier as S,
    };
    let status = match C::try_from(r.response_code) {
        Ok(C::MovedPermanently) => http::StatusCode::MOVED_PERMANENTLY,
        Ok(C::Found) => http::StatusCode::FOUND,
        Ok(C::SeeOther) => http::StatusCode::SEE_OTHER,
        Ok(C::TemporaryRedirect) => http::StatusCode::TEMPORARY_REDIRECT,
        Ok(C::PermanentRedirect) => http::StatusCode::PERMANENT_REDIRECT,
        Err(_) => {
            return Err(path
                .field("response_code")
                .error(format!("unknown response code {}", r.response_code)))
        }
    };
    // Envoy's validation: redirect parts become a Location header, so no NUL, CR or LF.
    let header_safe = |value: &str, field: &str| {
        if value.contains(['\0', '\r', '\n']) {
            Err(path
                .field(field)
                .error("value must not contain NUL, CR or LF"))
        } else {
            Ok(())
        }
    };
    header_safe(&r.host_redirect, "host_redirect")?;
    if let Some(S::SchemeRedirect(s)) = &r.scheme_rewrite_specifier {
        header_safe(s, "scheme_redirect")?;
    }
    match &r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => header_safe(p, "path_redirect")?,
        Some(P::PrefixRewrite(p)) => header_safe(p, "prefix_rewrite")?,
        _ => {}
    }
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let path_rewrite = match &r.path_rewrite_specifier {
        None => RedirectPath::Keep,
        Some(P::PathRedirect(p)) => RedirectPath::Replace(p.clone()),
        Some(P::PrefixRewrite(p)) => RedirectPath::PrefixRewrite(p.clone()),
        Some(_) => return Err(path.error("regex path rewrites in redirects are not supported yet")),
    };
    // A uint32 in Envoy's API, not range-checked: it is written into Location as given.
    let port = (r.port_redirect != 0).then_some(r.port_redirect);
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port,
        path: path_rewrite,
        status,
        strip_query: r.strip_query,
    })
}
