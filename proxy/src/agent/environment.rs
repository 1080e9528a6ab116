//! The process environment as the agent reads it: a snapshot taken once, so every part of the
//! agent sees the same values and tests can hand in their own.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
}

impl Environment {
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// The value, or None when unset or empty (Istio treats both alike).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn get_or<'a>(&'a self, name: &str, default: &'a str) -> &'a str {
        self.get(name).unwrap_or(default)
    }

    /// Go's `strconv.ParseBool` truth, as Istio's boolean variables use it.
    pub fn flag(&self, name: &str, default: bool) -> bool {
        match self.get(name) {
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
            _ => default,
        }
    }

    /// Every variable whose name starts with `prefix`, the prefix removed, in name order.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.vars
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// Sets every variable in this process's environment that differs there. Call it before
    /// any other thread starts: the environment is process-global.
    pub fn export_to_process(&self) {
        for (k, v) in &self.vars {
            if std::env::var(k).ok().as_deref() != Some(v.as_str()) {
                std::env::set_var(k, v);
            }
        }
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
    }
}
