//! Logging with Envoy's levels and component names. Each component logs under its own
//! `tracing` target (`upstream`, `router`, `admin`, ...), so `--component-log-level` and the
//! admin `/logging` endpoint can change one component's level while running.

use std::collections::BTreeMap;
use std::sync::Mutex;
use tracing_subscriber::{
    filter::EnvFilter, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt, Registry,
};

/// The components Outrigger logs under, by Envoy's names.
pub const COMPONENTS: &[&str] = &[
    "admin",
    // Not Envoy's: the sidecar agent's duties (`outrigger proxy sidecar`).
    "agent",
    "config",
    "connection",
    "conn_handler",
    "dns",
    "filter",
    "hc",
    "http",
    "http2",
    "init",
    "main",
    "misc",
    "pool",
    "router",
    "runtime",
    "secret",
    "stats",
    "upstream",
];

/// Envoy's level names. `warning` and `critical` map onto tracing's `warn` and `error`.
pub const LEVELS: &[&str] = &[
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

fn tracing_level(level: &str) -> Option<&'static str> {
    Some(match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("unknown log level {0:?} (expected one of trace, debug, info, warning, error, critical, off)")]
    Level(String),
    #[error("unknown logger {0:?}")]
    Component(String),
    #[error("malformed component log level {0:?} (expected component:level)")]
    Malformed(String),
}

/// The live log levels: one per component, changed through `/logging`.
pub struct LogControl {
    levels: Mutex<BTreeMap<&'static str, &'static str>>,
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("levels", &self.levels())
            .finish()
    }
}

impl LogControl {
    /// Installs the global subscriber writing to `log_path` or stderr.
    pub fn install(
        level: &str,
        components: Option<&str>,
        log_path: Option<&std::path::Path>,
    ) -> Result<Self, LogError> {
        let control = Self::detached(level, components)?;
        let (filter, handle) = reload::Layer::new(control.filter());
        let writer: Box<dyn Fn() -> Box<dyn std::io::Write> + Send + Sync> = match log_path {
            Some(path) => {
                let path = path.to_path_buf();
                Box::new(move || {
                    match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                    {
                        Ok(f) => Box::new(f) as Box<dyn std::io::Write>,
                        Err(_) => Box::new(std::io::stderr()),
                    }
                })
            }
            None => Box::new(|| Box::new(std::io::stderr())),
        };
        let layer = fmt::layer().with_writer(writer).with_ansi(false);
        // Ignore a second install (tests may start several servers in one process).
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
        Ok(Self {
            handle: Some(handle),
            ..control
        })
    }

    /// Levels without a subscriber (for tests and `--mode validate`).
    pub fn detached(level: &str, components: Option<&str>) -> Result<Self, LogError> {
        let all = canonical(level)?;
        let mut levels: BTreeMap<&'static str, &'static str> =
            COMPONENTS.iter().map(|c| (*c, all)).collect();
        for item in components
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
        {
            let (name, lvl) = item
                .split_once(':')
                .ok_or_else(|| LogError::Malformed(item.to_string()))?;
            let slot = levels
                .iter_mut()
                .find(|(c, _)| **c == name)
                .ok_or_else(|| LogError::Component(name.to_string()))?;
            *slot.1 = canonical(lvl)?;
        }
        Ok(Self {
            levels: Mutex::new(levels),
            handle: None,
        })
    }

    pub fn levels(&self) -> Vec<(&'static str, &'static str)> {
        self.lock().iter().map(|(c, l)| (*c, *l)).collect()
    }

    /// `/logging?level=L`: every component.
    pub fn set_all(&self, level: &str) -> Result<(), LogError> {
        let level = canonical(level)?;
        self.lock().values_mut().for_each(|l| *l = level);
        self.reload();
        Ok(())
    }

    /// `/logging?component=level`.
    pub fn set_component(&self, component: &str, level: &str) -> Result<(), LogError> {
        let level = canonical(level)?;
        {
            let mut levels = self.lock();
            let slot = levels
                .get_mut(component)
                .ok_or_else(|| LogError::Component(component.to_string()))?;
            *slot = level;
        }
        self.reload();
        Ok(())
    }

    fn filter(&self) -> EnvFilter {
        // Events from dependencies (hyper, h2, tonic) are shown at warn and above only.
        let mut directives = String::from("warn");
        for (component, level) in self.lock().iter() {
            if let Some(l) = tracing_level(level) {
                directives.push_str(&format!(",{component}={l}"));
            }
        }
        EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
    }

    fn reload(&self) {
        if let Some(handle) = &self.handle {
            let _ = handle.reload(self.filter());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, &'static str>> {
        self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn canonical(level: &str) -> Result<&'static str, LogError> {
    let level = level.to_ascii_lowercase();
    let level = if level == "warn" {
        "warning".to_string()
    } else {
        level
    };
    LEVELS
        .iter()
        .copied()
        .find(|l| *l == level)
        .ok_or(LogError::Level(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_levels_parse_and_change() {
        let control =
            LogControl::detached("info", Some("upstream:debug,router:warn")).expect("valid");
        let levels = control.levels();
        assert!(levels.contains(&("upstream", "debug")));
        assert!(levels.contains(&("router", "warning")));
        assert!(levels.contains(&("admin", "info")));
        control
            .set_component("admin", "trace")
            .expect("known component");
        assert!(control.levels().contains(&("admin", "trace")));
        assert!(control.set_component("nope", "info").is_err());
        assert!(control.set_all("loud").is_err());
        assert!(LogControl::detached("info", Some("upstream")).is_err());
    }
}
