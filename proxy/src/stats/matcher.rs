//! `stats_config.stats_matcher`: which stats are created at all.
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#config-metrics-v3-statsmatcher
//! The matchers see the full stat name (before tag extraction), as Envoy's do.

use crate::config::matcher::StringMatcher;

#[derive(Debug, Clone, Default)]
pub enum StatsMatcher {
    /// No matcher, or `reject_all: false`.
    #[default]
    AcceptAll,
    /// `reject_all: true`.
    RejectAll,
    /// Only stats matching one of these are created.
    Inclusion(Vec<StringMatcher>),
    /// Stats matching one of these are not created.
    Exclusion(Vec<StringMatcher>),
}

impl StatsMatcher {
    /// True when the stat `name` is not to be created. Config time only.
    pub fn rejects(&self, name: &str) -> bool {
        match self {
            StatsMatcher::AcceptAll => false,
            StatsMatcher::RejectAll => true,
            StatsMatcher::Inclusion(list) => !list.iter().any(|m| m.matches(name)),
            StatsMatcher::Exclusion(list) => list.iter().any(|m| m.matches(name)),
        }
    }
}
