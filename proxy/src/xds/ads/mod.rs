//! The discovery streams: the aggregated one carrying every type (ADS), or a per-type one (a
//! non-aggregated `api_config_source`), in the state-of-the-world or the incremental (delta)
//! variant.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol
//!
//! Protocol points that matter to a control plane such as istiod:
//! - every response is answered by exactly one request: an ACK (its version and nonce) or a
//!   NACK (the previous version, its nonce and an `error_detail` naming each refused resource);
//! - the node goes in the first request of each stream, or in every request unless
//!   `set_node_on_first_message_only`;
//! - subscription order follows Envoy: CDS, then EDS for the clusters it names, then LDS once
//!   the clusters are warm, then RDS for the route tables the listeners name;
//! - after a reconnect every started type is requested again with what the proxy holds (the
//!   accepted version; in delta, `initial_resource_versions`), and the proxy serves its last
//!   accepted configuration throughout.

mod agent_types;
mod inbound;
mod progress;
mod services;
use super::agent_types::AgentType;
use super::apply::{lock, Applier, SharedApplier};
use super::records::{Kind, Records};
use crate::config::dynamic::{AdsConfig, ConfigSource};
use crate::config::grpc_target::GrpcTarget;
use crate::config::listener::Listener;
use crate::server::{Server, ServerState};
use crate::stats::Gauge;
use crate::upstream::ClusterManager;
use inbound::{next_response, Inbound, Response};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use xds_proto::pb::envoy::config::core::v3::Node;
use xds_proto::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use xds_proto::pb::google::rpc::Status;

/// gRPC `INTERNAL`, the code Envoy puts in a NACK's `error_detail`.
const NACK_CODE: i32 = 13;
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often warming and initial-fetch deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

/// What the proxy has asked for and accepted, per type; it outlives streams.
#[derive(Debug, Default)]
struct Subscription {
    /// Requested at least once (it is requested again on every new stream).
    started: bool,
    /// Resource names, for the non-wildcard types.
    names: BTreeSet<String>,
    /// The last accepted `version_info` (state of the world).
    version: String,
    /// Delta: each resource's version from the last response accepted that sent it, for
    /// `initial_resource_versions` when a new stream opens. Like Envoy, this is what was
    /// received, even a resource that repeated what is held, and not what is active.
    held: BTreeMap<String, String>,
    /// The nonce of the last response on the current stream.
    nonce: String,
}

/// The two wire variants behind one interface.
enum Outbound {
    Sotw(mpsc::UnboundedSender<DiscoveryRequest>),
    Delta(mpsc::UnboundedSender<DeltaDiscoveryRequest>),
}

/// What a stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The aggregated stream: CDS, EDS, LDS, RDS and the secrets named with `ads: {}`; it
    /// drives the server's initialisation.
    Aggregated,
    /// A `SecretDiscoveryService` stream of its own (`api_config_source`, Istio's `sds-grpc`):
    /// the secrets named with that source.
    Secrets,
    /// One type over its own discovery service (`api_config_source`): CDS or LDS (wildcard,
    /// no name), or one EDS or RDS resource. Envoy 1.40 opens a stream per subscription, and a
    /// subscription per cluster (EDS) or route table (RDS), even when they share a source.
    Single(Kind, Option<String>),
}

pub struct AdsClient {
    role: Role,
    ads: AdsConfig,
    node: Node,
    server: Arc<Server>,
    clusters: Arc<ClusterManager>,
    applier: SharedApplier,
    records: Arc<Records>,
    static_listeners: Vec<Arc<Listener>>,
    cds: Option<ConfigSource>,
    lds: Option<ConfigSource>,
    subscriptions: BTreeMap<Kind, Subscription>,
    connected: Arc<Gauge>,
    /// `control_plane.identifier`: who answered last (ADS only, like `connected`).
    identifier: Arc<crate::stats::TextReadout>,
    /// The secrets TLS contexts name, with where each comes from.
    secrets: Arc<crate::config::tls::SecretSlots>,
    /// Whether the node went out on the current stream.
    node_sent: bool,
    /// Types the agent consumes (NDS, PCDS), with the last version each accepted.
    agent_types: Vec<AgentType>,
    agent_versions: BTreeMap<String, String>,
    /// Whether the agent types were asked for on the current stream.
    agent_requested: bool,
    /// The answer to the last CDS response on this stream, held while clusters warm.
    held_cds: Option<HeldAnswer>,
}

/// Whether a CDS answer waits: clusters warm after the server's initialisation (the initial
/// clusters warm as part of it, and their CDS answer goes out at once, as Envoy's does).
fn holds_cds_answer(applier: &Applier) -> bool {
    applier.init.clusters_initialized() && applier.clusters_warming()
}

/// An ACK or NACK not sent yet. Envoy pauses its CDS answers while clusters warm (until their
/// endpoints arrive or their initial fetch times out) and then sends the latest, so a control
/// plane sees a cluster update applied only once its clusters can serve.
/// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/cluster_manager#cluster-warming
struct HeldAnswer {
    version: String,
    nonce: String,
    error: Option<String>,
}

impl AdsClient {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        role: Role,
        ads: AdsConfig,
        node: Node,
        server: Arc<Server>,
        clusters: Arc<ClusterManager>,
        applier: SharedApplier,
        records: Arc<Records>,
        config: &crate::config::Config,
    ) -> Self {
        let store = &server.stats;
        let aggregated = role == Role::Aggregated;
        if aggregated {
            // Envoy's names; Outrigger neither rate limits requests nor queues them.
            store.gauge("control_plane.pending_requests").set(0);
            store.counter("control_plane.rate_limit_enforced");
        }
        Self {
            // `control_plane.*` describes the ADS stream; other streams have a detached gauge.
            connected: if aggregated {
                store.gauge("control_plane.connected_state")
            } else {
                Arc::default()
            },
            identifier: if aggregated {
                store.text_readout("control_plane.identifier")
            } else {
                Arc::default()
            },
            role: role.clone(),
            ads,
            node,
            clusters,
            applier,
            records,
            static_listeners: if aggregated {
                config.listeners.clone()
            } else {
                Vec::new()
            },
            // What this stream carries: kinds read from files, or carried by a stream of their
            // own, are not asked for on the aggregated one.
            cds: config.dynamic.cds.clone().filter(|s| match &role {
                Role::Aggregated => s.path.is_none() && s.grpc.is_none(),
                Role::Single(kind, _) => *kind == Kind::Cluster,
                Role::Secrets => false,
            }),
            lds: config.dynamic.lds.clone().filter(|s| match &role {
                Role::Aggregated => s.path.is_none() && s.grpc.is_none(),
                Role::Single(kind, _) => *kind == Kind::Listener,
                Role::Secrets => false,
            }),
            secrets: config.secret_slots.clone(),
            subscriptions: Kind::ALL
                .into_iter()
                .map(|k| (k, Subscription::default()))
                .collect(),
            node_sent: false,
            agent_types: if aggregated {
                server.agent_types.list()
            } else {
                Vec::new()
            },
            agent_versions: BTreeMap::new(),
            agent_requested: false,
            held_cds: None,
            server,
        }
    }

    /// Runs for the life of the proxy: connects, serves the stream, and after any failure
    /// reconnects with jittered exponential backoff. Never gives up; never stops the proxy.
    pub async fn run(mut self) {
        self.connected.set(0);
        // What to ask for first: CDS (LDS follows once the clusters are warm), or the one
        // resource of a per-type EDS or RDS stream.
        if self.cds.is_some() {
            self.start(Kind::Cluster);
        }
        if let Role::Single(kind, Some(name)) = &self.role {
            let (kind, name) = (*kind, name.clone());
            self.sub(kind).names.insert(name);
            self.start(kind);
        }
        self.progress_init();
        // A stream opens only once it has something to ask for (an LDS stream of its own
        // waits for the clusters).
        while !self.subscriptions.values().any(|s| s.started)
            && matches!(self.role, Role::Single(..))
        {
            tokio::time::sleep(TICK).await;
            self.applier().expire_warming();
            self.progress_init();
        }
        let mut backoff = BACKOFF_BASE;
        loop {
            if self.retired() {
                tracing::debug!(target: "config", "{:?} is no longer needed: its stream ends", self.role);
                return;
            }
            let mut received = false;
            let outcome = self.session(&mut received).await;
            // Like Envoy, any response on a stream resets the backoff, whether the stream then
            // ends cleanly or fails (istiod restarts, its maximum connection age): otherwise a
            // long-lived proxy's reconnects creep towards the 30 s maximum.
            if received {
                backoff = BACKOFF_BASE;
            }
            match outcome {
                Ok(()) => {
                    tracing::info!(target: "config", "ADS stream closed by the control plane");
                }
                Err(e) => {
                    tracing::warn!(target: "config", "ADS stream to {} failed: {e}", self.ads.target);
                }
            }
            // Envoy counts a stream that ended, cleanly or not, as a failed update of every
            // subscription it carried.
            if !self.retired() {
                let applier = self.applier();
                for (kind, sub) in &self.subscriptions {
                    if sub.started {
                        applier.count_stream_failure(*kind, &sub.names);
                    }
                }
            }
            self.connected.set(0);
            let wait = Duration::from_millis(crate::random::below(backoff.as_millis() as u64 + 1));
            let until = Instant::now() + wait;
            // Warming and initial fetch deadlines keep running while disconnected.
            while Instant::now() < until && !self.retired() {
                tokio::time::sleep(until.saturating_duration_since(Instant::now()).min(TICK)).await;
                self.applier().expire_warming();
                self.progress_init();
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn applier(&self) -> std::sync::MutexGuard<'_, Applier> {
        lock(&self.applier)
    }

    fn start(&mut self, kind: Kind) {
        self.sub(kind).started = true;
        if matches!(kind, Kind::Cluster | Kind::Listener) {
            self.applier().init.start(kind);
        }
    }

    /// A per-resource stream whose resource no cluster or listener names any more: Envoy
    /// drops the subscription, and with it the stream.
    fn retired(&self) -> bool {
        let Role::Single(kind, Some(name)) = &self.role else {
            return false;
        };
        let key = (Some(self.ads.clone()), name.clone());
        let applier = self.applier();
        match kind {
            Kind::Endpoint => !applier.wants_endpoints(&self.ads, name),
            Kind::Route => !applier.route_sources(&self.static_listeners).contains(&key),
            _ => false,
        }
    }

    fn sub(&mut self, kind: Kind) -> &mut Subscription {
        self.subscriptions.entry(kind).or_default()
    }

    /// One stream, from connect to its end; `received` is set once a response arrives on it.
    async fn session(&mut self, received: &mut bool) -> Result<(), String> {
        let channel = self.channel()?;
        let mut client = services::Clients::new(channel);
        self.node_sent = false;
        self.agent_requested = false;
        // A held answer's nonce belongs to the stream that ended.
        self.held_cds = None;
        for sub in self.subscriptions.values_mut() {
            sub.nonce.clear();
        }
        let (outbound, mut inbound) = if self.ads.delta {
            let (tx, rx) = mpsc::unbounded_channel();
            let request = self.with_metadata(UnboundedReceiverStream::new(rx));
            // The first requests go into the channel before the call so they open the stream.
            let out = Outbound::Delta(tx);
            self.send_initial(&out);
            let stream = client
                .delta(self.service(), request)
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            (out, Inbound::Delta(stream))
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            let request = self.with_metadata(UnboundedReceiverStream::new(rx));
            let out = Outbound::Sotw(tx);
            self.send_initial(&out);
            let stream = client
                .sotw(self.service(), request)
                .await
                .map_err(|s| s.to_string())?
                .into_inner();
            (out, Inbound::Sotw(stream))
        };
        self.connected.set(1);
        tracing::info!(target: "config", "ADS stream to {} established ({})", self.ads.target, if self.ads.delta { "delta" } else { "state of the world" });
        let mut tick = tokio::time::interval(TICK);
        loop {
            let next = tokio::select! {
                next = next_response(&mut inbound, &self.applier) => next,
                _ = tick.tick() => {
                    self.applier().expire_warming();
                    self.progress(&outbound);
                    if self.retired() {
                        return Ok(());
                    }
                    continue;
                }
            };
            match next {
                Ok(Some(response)) => {
                    *received = true;
                    self.handle(response, &outbound);
                    self.progress(&outbound);
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The gRPC service this stream calls.
    fn service(&self) -> services::Service {
        match self.role {
            Role::Aggregated => services::Service::Aggregated,
            Role::Secrets => services::Service::Of(Kind::Secret),
            Role::Single(kind, _) => services::Service::Of(kind),
        }
    }

    fn with_metadata<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        for (key, value) in &self.ads.initial_metadata {
            if let (Ok(k), Ok(v)) = (
                key.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                value.parse(),
            ) {
                request.metadata_mut().insert(k, v);
            }
        }
        if let Some(path) = &self.ads.bearer_token_file {
            match std::fs::read_to_string(path) {
                Ok(token) => match format!("Bearer {}", token.trim()).parse() {
                    Ok(v) => {
                        request.metadata_mut().insert("authorization", v);
                    }
                    Err(_) => {
                        tracing::warn!(target: "config", "the token in {} is not a valid header value", path.display());
                    }
                },
                // Istio sends no token when the file is absent (a VM authenticates with its
                // certificate instead).
                Err(e) => {
                    tracing::debug!(target: "config", "no token for the control plane ({}: {e})", path.display());
                }
            }
        }
        request
    }

    /// A channel over the bootstrap's static gRPC cluster, through its own connector (TCP or
    /// a Unix socket, relative paths included), or to a `google_grpc` target.
    fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let name = match &self.ads.target {
            GrpcTarget::Cluster(name) => name,
            GrpcTarget::Google(google) => return super::google_grpc::channel(google),
        };
        let cluster = self
            .clusters
            .by_name(name)
            .ok_or_else(|| format!("no cluster '{name}'"))?;
        let host = cluster
            .choose_host(None, None, None)
            .ok_or_else(|| format!("cluster '{name}' has no hosts"))?;
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", host.authority))
                .map_err(|e| e.to_string())?
                .connect_timeout(cluster.config.connect_timeout)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_while_idle(true);
        Ok(endpoint.connect_with_connector_lazy(cluster.pool.connector()))
    }

    fn node_for_request(&mut self) -> Option<Node> {
        if self.node_sent && self.ads.set_node_on_first_message_only {
            return None;
        }
        self.node_sent = true;
        Some(self.node.clone())
    }

    fn send_initial(&mut self, out: &Outbound) {
        for kind in Kind::ALL {
            if self.subscriptions[&kind].started {
                self.send_subscription(kind, out, true);
            }
        }
    }

    /// A request stating the subscription of `kind`: the opening request of a stream, or a
    /// change of names. Wildcard types subscribe with no names.
    fn send_subscription(&mut self, kind: Kind, out: &Outbound, opening: bool) {
        self.send_kind_subscription(kind, out, opening);
        // pilot-agent asks for its own types once per stream, after the first LDS request.
        if kind == Kind::Listener && !self.agent_requested {
            self.agent_requested = true;
            self.request_agent_types(out);
        }
    }

    fn send_kind_subscription(&mut self, kind: Kind, out: &Outbound, opening: bool) {
        let node = self.node_for_request();
        let sub = &self.subscriptions[&kind];
        let names: Vec<String> = if kind.is_wildcard() {
            Vec::new()
        } else {
            sub.names.iter().cloned().collect()
        };
        match out {
            Outbound::Sotw(tx) => {
                let _ = tx.send(DiscoveryRequest {
                    version_info: sub.version.clone(),
                    node,
                    resource_names: names,
                    type_url: kind.type_url().to_string(),
                    response_nonce: sub.nonce.clone(),
                    ..Default::default()
                });
            }
            Outbound::Delta(tx) => {
                let initial_resource_versions = if opening {
                    self.subscriptions[&kind]
                        .held
                        .iter()
                        .map(|(name, version)| (name.clone(), version.clone()))
                        .collect()
                } else {
                    HashMap::new()
                };
                let _ = tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: kind.type_url().to_string(),
                    resource_names_subscribe: names,
                    initial_resource_versions,
                    ..Default::default()
                });
            }
        }
    }

    fn handle(&mut self, response: Response, out: &Outbound) {
        if let Some(identifier) = &response.control_plane {
            self.identifier.set(identifier);
        }
        if let Some(agent_type) = self
            .agent_types
            .iter()
            .find(|t| t.type_url == response.type_url)
            .cloned()
        {
            self.handle_agent_type(&agent_type, response, out);
            return;
        }
        let Some(kind) = Kind::from_type_url(&response.type_url) else {
            tracing::warn!(target: "config", "refusing (NACK) a response of unknown type {}", response.type_url);
            let node = self.node_for_request();
            self.send_ack(
                out,
                &response.type_url,
                String::new(),
                &response.nonce,
                node,
                Some(format!("unknown type URL {}", response.type_url)),
            );
            return;
        };
        let started = Instant::now();
        let received: Vec<(String, String)> = response
            .updates
            .iter()
            .map(|u| (u.name.clone(), u.version.clone()))
            .collect();
        let errors = self
            .applier()
            .apply(kind, response.updates, &response.removed);
        self.applier()
            .account(kind, &response.version, errors.is_empty(), started);
        let changed = self.applier().changed_anything();
        self.applier().init.responded(kind);
        let sub = self.subscriptions.entry(kind).or_default();
        sub.nonce = response.nonce.clone();
        let error = if errors.is_empty() {
            sub.version = response.version.clone();
            if self.ads.delta {
                sub.held.extend(received);
                for name in &response.removed {
                    sub.held.remove(name);
                }
            }
            if changed {
                self.records.set_version(kind, &response.version);
            }
            None
        } else {
            Some(errors.join("\n"))
        };
        let version = sub.version.clone();
        if kind == Kind::Cluster && (self.held_cds.is_some() || holds_cds_answer(&self.applier())) {
            // Sent by `progress` once no cluster warms; a later response's answer replaces it.
            self.held_cds = Some(HeldAnswer {
                version,
                nonce: response.nonce,
                error,
            });
            return;
        }
        let node = self.node_for_request();
        self.send_ack(out, kind.type_url(), version, &response.nonce, node, error);
    }

    fn send_ack(
        &self,
        out: &Outbound,
        type_url: &str,
        version: String,
        nonce: &str,
        node: Option<Node>,
        error: Option<String>,
    ) {
        let error_detail = error.map(|message| Status {
            code: NACK_CODE,
            message,
            details: Vec::new(),
        });
        match out {
            Outbound::Sotw(tx) => {
                let kind = Kind::from_type_url(type_url);
                let names = match kind {
                    Some(k) if !k.is_wildcard() => {
                        self.subscriptions[&k].names.iter().cloned().collect()
                    }
                    _ => Vec::new(),
                };
                let _ = tx.send(DiscoveryRequest {
                    version_info: version,
                    node,
                    resource_names: names,
                    type_url: type_url.to_string(),
                    response_nonce: nonce.to_string(),
                    error_detail,
                    ..Default::default()
                });
            }
            Outbound::Delta(tx) => {
                let _ = tx.send(DeltaDiscoveryRequest {
                    node,
                    type_url: type_url.to_string(),
                    response_nonce: nonce.to_string(),
                    error_detail,
                    ..Default::default()
                });
            }
        }
    }
}
