//! Filesystem subscriptions for LDS and CDS: a file holding a `DiscoveryResponse` (YAML, JSON
//! or binary protobuf, by extension), read at startup and again whenever it changes. Each
//! read is the whole set, as in the state of the world; a file that does not parse, or a
//! resource that does not translate, is logged and counted while the last good configuration
//! keeps serving.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/overview/xds_api#filesystem-subscriptions

use super::apply::{lock, SharedApplier, Update};
use super::records::{Kind, Records};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use xds_proto::pb::envoy::service::discovery::v3::DiscoveryResponse;
use xds_proto::{DocumentFormat, ParseOptions, XdsMessage};

/// How often the file is checked. Writers are expected to replace it atomically (a move), as
/// Envoy asks; a poll sees the new file whole.
const POLL: Duration = Duration::from_millis(500);

/// What identifies a version of the file on disk.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

pub struct FileSource {
    kind: Kind,
    path: PathBuf,
    applier: SharedApplier,
    records: Arc<Records>,
    last: Stamp,
}

impl FileSource {
    pub fn new(kind: Kind, path: PathBuf, applier: SharedApplier, records: Arc<Records>) -> Self {
        Self {
            kind,
            path,
            applier,
            records,
            last: None,
        }
    }

    /// Reads the file if it changed since the last read, and applies it.
    pub fn poll(&mut self) {
        let now = stamp(&self.path);
        if now.is_none() || now == self.last {
            return;
        }
        self.last = now;
        let started = std::time::Instant::now();
        match self.apply() {
            Ok(version) => {
                let applier = lock(&self.applier);
                applier.account(self.kind, &version, true, started);
                if applier.changed_anything() {
                    self.records.set_version(self.kind, &version);
                }
            }
            Err(e) => {
                tracing::warn!(target: "config", "{}: rejected: {e}", self.path.display());
                lock(&self.applier).account(self.kind, "", false, started);
            }
        }
    }

    fn apply(&self) -> Result<String, String> {
        let response = read(&self.path)?;
        if let Some(kind) = Kind::from_type_url(&response.type_url) {
            if kind != self.kind {
                return Err(format!(
                    "the file holds {} resources, not {}",
                    response.type_url,
                    self.kind.type_url()
                ));
            }
        }
        let mut updates = Vec::with_capacity(response.resources.len());
        for resource in response.resources {
            if resource.type_url != self.kind.type_url() {
                return Err(format!(
                    "a resource of type {} in a {} file",
                    resource.type_url,
                    self.kind.short()
                ));
            }
            updates.push(Update {
                name: super::resource_name(&resource),
                version: response.version_info.clone(),
                resource,
            });
        }
        let present: BTreeSet<&str> = updates.iter().map(|u| u.name.as_str()).collect();
        let mut applier = lock(&self.applier);
        let removed: Vec<String> = applier
            .dynamic_names(self.kind)
            .into_iter()
            .filter(|n| !present.contains(n.as_str()))
            .collect();
        let errors = applier.apply(self.kind, updates, &removed);
        if errors.is_empty() {
            Ok(response.version_info)
        } else {
            Err(errors.join("; "))
        }
    }

    /// Polls for the life of the proxy.
    pub async fn watch(mut self) {
        loop {
            tokio::time::sleep(POLL).await;
            self.poll();
        }
    }
}

fn read(path: &Path) -> Result<DiscoveryResponse, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let format = match extension {
        "yaml" | "yml" => DocumentFormat::Yaml,
        "json" => DocumentFormat::Json,
        "pb" => return DiscoveryResponse::decode_bytes(&bytes).map_err(|e| e.to_string()),
        other => {
            return Err(format!(
                "unknown file extension '{other}' (yaml, yml, json or pb)"
            ))
        }
    };
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    xds_proto::parse_document::<DiscoveryResponse>(&text, format, ParseOptions::default())
        .map(|p| p.value)
        .map_err(|e| e.to_string())
}
