//! `stats_config` → [`StatsConfig`]: tag extractors compiled and the stats matcher built once,
//! at load. https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto

use super::error::{FieldPath, Result};
use super::matcher::string_matcher;
use crate::stats::{tags::TagSpec, StatsConfig, StatsMatcher, TagProducer};
use xds_proto::pb::envoy::config::metrics::v3::{
    stats_matcher::StatsMatcher as Kind, tag_specifier::TagValue, StatsConfig as ProtoStatsConfig,
};
use xds_proto::pb::envoy::r#type::matcher::v3::ListStringMatcher;

/// Envoy's defaults when `config` is absent. `histogram_bucket_settings` is acknowledged by
/// the field policy (default buckets are used).
pub fn translate_stats_config(
    config: Option<&ProtoStatsConfig>,
    path: &FieldPath,
) -> Result<StatsConfig> {
    let Some(config) = config else {
        return Ok(StatsConfig::envoy_default());
    };
    let use_defaults = config.use_all_default_tags.as_ref().is_none_or(|b| b.value);
    let specs: Vec<TagSpec> = config
        .stats_tags
        .iter()
        .map(|t| match &t.tag_value {
            Some(TagValue::Regex(r)) if !r.is_empty() => TagSpec::Regex {
                name: t.tag_name.clone(),
                regex: r.clone(),
            },
            Some(TagValue::FixedValue(v)) => TagSpec::Fixed {
                name: t.tag_name.clone(),
                value: v.clone(),
            },
            _ => TagSpec::Builtin {
                name: t.tag_name.clone(),
            },
        })
        .collect();
    let tags =
        TagProducer::new(use_defaults, &specs).map_err(|e| path.field("stats_tags").error(e))?;
    let mpath = path.field("stats_matcher");
    let matcher = match config
        .stats_matcher
        .as_ref()
        .and_then(|m| m.stats_matcher.as_ref())
    {
        None | Some(Kind::RejectAll(false)) => StatsMatcher::AcceptAll,
        Some(Kind::RejectAll(true)) => StatsMatcher::RejectAll,
        Some(Kind::InclusionList(list)) => {
            StatsMatcher::Inclusion(patterns(list, &mpath.field("inclusion_list"))?)
        }
        Some(Kind::ExclusionList(list)) => {
            StatsMatcher::Exclusion(patterns(list, &mpath.field("exclusion_list"))?)
        }
    };
    Ok(StatsConfig { tags, matcher })
}

fn patterns(
    list: &ListStringMatcher,
    path: &FieldPath,
) -> Result<Vec<crate::config::matcher::StringMatcher>> {
    list.patterns
        .iter()
        .enumerate()
        .map(|(i, p)| string_matcher(p, &path.field("patterns").index(i)))
        .collect()
}
