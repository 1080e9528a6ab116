//! Translation errors that name the field path, so `--mode validate`, a startup failure and
//! (later) an xDS NACK all point at the same place: `static_resources.listeners[0].address`.

use std::fmt;

/// A field path inside a resource, built while translating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn root(name: &str) -> Self {
        Self(name.to_string())
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{}", self.0, name))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{}]", self.0, i))
    }

    /// A map entry, written the way Envoy's validation messages do: `field["key"]`.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{:?}]", self.0, key))
    }

    pub fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.0.clone(),
            message: message.into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A configuration that Outrigger refuses, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, ConfigError>;
