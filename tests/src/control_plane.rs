//! A test control plane: a real tonic ADS server (state of the world and delta) that serves
//! whatever resources a test sets, pushes changes to connected proxies, records every request
//! they send, and can drop its streams or stop, so tests watch a proxy follow the protocol.
//!
//! Serving rules, as a management server such as istiod follows them:
//! - state of the world: a type's current resources (those named, for EDS/RDS; all, for
//!   CDS/LDS) are sent when a stream first asks for the type, when its names change, and on
//!   every change of the type; an ACK or NACK of the latest nonce gets no answer;
//! - delta: added or changed resources (per-resource versions) and removed names are sent; the
//!   first request of a type on a stream is always answered, even with nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use xds_proto::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use xds_proto::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    },
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use xds_proto::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use xds_proto::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use xds_proto::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use xds_proto::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use xds_proto::pb::google::protobuf::Any;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Istio's NDS: one unnamed resource, subscribed wildcard by the agent.
pub const NAME_TABLE: &str = "type.googleapis.com/istio.networking.nds.v1.NameTable";

fn is_wildcard(type_url: &str) -> bool {
    type_url == CLUSTER || type_url == LISTENER || type_url == NAME_TABLE
}

/// One request a proxy sent, as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub delta: bool,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    /// The NACK's `error_detail.message`.
    pub error: Option<String>,
    pub has_node: bool,
    /// State of the world: `resource_names`; delta: `resource_names_subscribe`.
    pub names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_versions: BTreeMap<String, String>,
    /// Which stream (counted from 1) it came on.
    pub stream: usize,
    /// The gRPC service the stream is on: `ADS`, or the per-type service (`CDS`, `LDS`,
    /// `RDS`, `EDS`, `SDS`) a non-aggregated `api_config_source` opens.
    pub service: &'static str,
}

impl Recorded {
    /// An ACK or NACK (it answers a response).
    pub fn answers(&self) -> bool {
        !self.response_nonce.is_empty()
    }
    pub fn short_type(&self) -> &str {
        self.type_url.rsplit('.').next().unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    /// Per type: name → (version, resource).
    resources: BTreeMap<String, BTreeMap<String, (u64, Any)>>,
    /// Per type: the version of the whole set (state of the world `version_info`).
    versions: BTreeMap<String, u64>,
    requests: Vec<Recorded>,
    nonce: u64,
    streams: usize,
    authorizations: Vec<String>,
}

/// How [`ControlPlane::start_istiod`] serves.
pub struct IstiodOptions {
    pub tls: Arc<rustls::ServerConfig>,
    /// The token every stream must present; None accepts any.
    pub token: Option<String>,
    /// Adds more services (e.g. the CA) beside ADS.
    pub add: Option<AddServices>,
}

pub type AddServices = Box<dyn FnOnce(tonic::service::Routes) -> tonic::service::Routes + Send>;

/// Records each stream's `authorization` and refuses a wrong one, as istiod authenticates
/// the projected service-account token.
#[derive(Clone)]
struct TokenCheck {
    want: Option<String>,
    shared: Arc<Shared>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let seen = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        self.shared.lock().authorizations.push(seen.clone());
        match &self.want {
            Some(want) if *want != seen => Err(tonic::Status::unauthenticated(
                "authentication failure: the token is missing or wrong",
            )),
            _ => Ok(request),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped on every change, so streams push.
    changed: watch::Sender<u64>,
    /// Bumped to end every open stream.
    drop_streams: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn next_nonce(&self) -> String {
        let mut state = self.lock();
        state.nonce += 1;
        state.nonce.to_string()
    }
}

/// A running control plane; stops when dropped.
pub struct ControlPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ControlPlane {
    /// Starts on a free port of 127.0.0.1.
    pub fn start() -> ControlPlane {
        Self::start_on(0)
    }

    /// Starts on the Unix socket `path` (as Istio's agent serves `./etc/istio/proxy/XDS`).
    pub fn start_unix(path: &std::path::Path) -> ControlPlane {
        let runtime = Self::runtime();
        let _ = std::fs::remove_file(path);
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(path).expect("bind the control plane's socket")
        };
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        Self::serve(runtime, incoming, SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the control plane")
    }

    /// Starts on `port` (to come back where a stopped one was).
    pub fn start_on(port: u16) -> ControlPlane {
        let runtime = Self::runtime();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .expect("bind the control plane");
        let addr = listener.local_addr().expect("a bound address");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Self::serve(runtime, incoming, addr)
    }

    /// Starts as istiod's :15012 looks to a sidecar: TLS on a free port of 127.0.0.1, every
    /// stream required to carry `authorization: Bearer <token>` (when a token is given), and
    /// any other gRPC services `add` puts beside ADS (the CA).
    pub fn start_istiod(options: IstiodOptions) -> ControlPlane {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind the control plane");
        Self::start_istiod_on(listener, options)
    }

    /// [`Self::start_istiod`] on a socket bound elsewhere (in a test network namespace).
    pub fn start_istiod_on(
        listener: std::net::TcpListener,
        options: IstiodOptions,
    ) -> ControlPlane {
        let runtime = Self::runtime();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
        };
        let addr = listener.local_addr().expect("a bound address");
        let incoming = {
            let _guard = runtime.enter();
            crate::tls_incoming::incoming(listener, options.tls)
        };
        Self::serve_with(runtime, incoming, addr, options.token, options.add)
    }

    /// The `authorization` values the streams carried, in arrival order.
    pub fn authorizations(&self) -> Vec<String> {
        self.shared.lock().authorizations.clone()
    }

    fn serve<S, IO>(runtime: tokio::runtime::Runtime, incoming: S, addr: SocketAddr) -> ControlPlane
    where
        S: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        Self::serve_with(runtime, incoming, addr, None, None)
    }

    fn serve_with<S, IO>(
        runtime: tokio::runtime::Runtime,
        incoming: S,
        addr: SocketAddr,
        token: Option<String>,
        add: Option<AddServices>,
    ) -> ControlPlane
    where
        S: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            drop_streams: watch::channel(0).0,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let check = TokenCheck {
            want: token.map(|t| format!("Bearer {t}")),
            shared: shared.clone(),
        };
        let service = tonic::service::interceptor::InterceptedService::new(
            AggregatedDiscoveryServiceServer::new(Ads {
                shared: shared.clone(),
                service: "ADS",
            }),
            check.clone(),
        );
        // The same server answers per-type streams (a non-aggregated `api_config_source`, and
        // Istio's `sds-grpc`), from the same resources.
        let per_type = |service| Ads {
            shared: shared.clone(),
            service,
        };
        let mut routes = tonic::service::Routes::new(service)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                SecretDiscoveryServiceServer::new(per_type("SDS")),
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                ClusterDiscoveryServiceServer::new(per_type("CDS")),
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                ListenerDiscoveryServiceServer::new(per_type("LDS")),
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                RouteDiscoveryServiceServer::new(per_type("RDS")),
                check.clone(),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                EndpointDiscoveryServiceServer::new(per_type("EDS")),
                check,
            ));
        if let Some(add) = add {
            routes = add(routes);
        }
        runtime.spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        ControlPlane {
            addr,
            shared,
            runtime: Some(runtime),
            stop: Some(stop),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces every resource of `type_url` with `resources` (name, payload). Resources whose
    /// payload changed get a new version; connected proxies are pushed the change.
    pub fn set(&self, type_url: &str, resources: Vec<(String, Any)>) {
        {
            let mut state = self.shared.lock();
            let version = state.versions.get(type_url).copied().unwrap_or(0) + 1;
            state.versions.insert(type_url.to_string(), version);
            let current = state.resources.entry(type_url.to_string()).or_default();
            let mut next = BTreeMap::new();
            for (name, any) in resources {
                let v = match current.get(&name) {
                    Some((v, old)) if *old == any => *v,
                    _ => version,
                };
                next.insert(name, (v, any));
            }
            *current = next;
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().requests.clone()
    }

    /// Waits until `done` holds for the requests received, and returns them; panics with the
    /// requests seen if it does not within `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if Instant::now() > deadline {
                panic!("control plane: timed out waiting for {what}; requests: {requests:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The version string the type's resources are at (state of the world).
    pub fn version(&self, type_url: &str) -> String {
        self.shared
            .lock()
            .versions
            .get(type_url)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    /// Ends every open stream (the proxies must reconnect).
    pub fn drop_streams(&self) {
        self.shared.drop_streams.send_modify(|n| *n += 1);
    }

    /// How many streams have been opened.
    pub fn streams(&self) -> usize {
        self.shared.lock().streams
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.drop_streams();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

struct Ads {
    shared: Arc<Shared>,
    service: &'static str,
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Responses<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = self.shared.clone();
        tokio::spawn(sotw_stream(shared, self.service, request.into_inner(), tx));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = self.shared.clone();
        tokio::spawn(delta_stream(shared, self.service, request.into_inner(), tx));
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// A per-type discovery service answered by the aggregated implementation: the streams carry
/// the same messages, only the gRPC method differs.
macro_rules! per_type_service {
    ($trait:path, $sotw_ty:ident, $delta_ty:ident, $sotw:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for Ads {
            type $sotw_ty = Responses<DiscoveryResponse>;
            type $delta_ty = Responses<DeltaDiscoveryResponse>;

            async fn $sotw(
                &self,
                request: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
            ) -> Result<tonic::Response<Self::$sotw_ty>, tonic::Status> {
                self.stream_aggregated_resources(request).await
            }

            async fn $delta(
                &self,
                request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<tonic::Response<Self::$delta_ty>, tonic::Status> {
                self.delta_aggregated_resources(request).await
            }

            async fn $fetch(
                &self,
                _: tonic::Request<DiscoveryRequest>,
            ) -> Result<tonic::Response<DiscoveryResponse>, tonic::Status> {
                Err(tonic::Status::unimplemented(
                    "the test control plane only streams",
                ))
            }
        }
    };
}

per_type_service!(
    SecretDiscoveryService,
    StreamSecretsStream,
    DeltaSecretsStream,
    stream_secrets,
    delta_secrets,
    fetch_secrets
);
per_type_service!(
    ClusterDiscoveryService,
    StreamClustersStream,
    DeltaClustersStream,
    stream_clusters,
    delta_clusters,
    fetch_clusters
);
per_type_service!(
    ListenerDiscoveryService,
    StreamListenersStream,
    DeltaListenersStream,
    stream_listeners,
    delta_listeners,
    fetch_listeners
);
per_type_service!(
    RouteDiscoveryService,
    StreamRoutesStream,
    DeltaRoutesStream,
    stream_routes,
    delta_routes,
    fetch_routes
);
per_type_service!(
    EndpointDiscoveryService,
    StreamEndpointsStream,
    DeltaEndpointsStream,
    stream_endpoints,
    delta_endpoints,
    fetch_endpoints
);

/// What every response says of who sent it (`control_plane.identifier`).
pub const IDENTIFIER: &str = "outrigger-test-control-plane";

fn identity() -> xds_proto::pb::envoy::config::core::v3::ControlPlane {
    xds_proto::pb::envoy::config::core::v3::ControlPlane {
        identifier: IDENTIFIER.to_string(),
    }
}

fn open_stream(shared: &Shared) -> usize {
    let mut state = shared.lock();
    state.streams += 1;
    state.streams
}

async fn sotw_stream(
    shared: Arc<Shared>,
    service: &'static str,
    mut requests: tonic::Streaming<DiscoveryRequest>,
    tx: mpsc::UnboundedSender<Result<DiscoveryResponse, tonic::Status>>,
) {
    let stream = open_stream(&shared);
    let mut changed = shared.changed.subscribe();
    let mut dropped = shared.drop_streams.subscribe();
    // Per type: the names subscribed, and the set version last sent.
    let mut subscribed: BTreeMap<String, (BTreeSet<String>, Option<u64>)> = BTreeMap::new();
    loop {
        tokio::select! {
            r = requests.next() => {
                let Some(Ok(r)) = r else { return };
                shared.lock().requests.push(Recorded {
                    delta: false,
                    type_url: r.type_url.clone(),
                    version_info: r.version_info.clone(),
                    response_nonce: r.response_nonce.clone(),
                    error: r.error_detail.as_ref().map(|e| e.message.clone()),
                    has_node: r.node.is_some(),
                    names: r.resource_names.clone(),
                    unsubscribe: Vec::new(),
                    initial_versions: BTreeMap::new(),
                    stream,
                    service,
                });
                let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
                let entry = subscribed.entry(r.type_url.clone()).or_insert((names.clone(), None));
                let first = entry.1.is_none();
                if first || entry.0 != names {
                    entry.0 = names;
                    send_sotw(&shared, &tx, &r.type_url, &mut subscribed);
                }
            }
            _ = changed.changed() => {
                let types: Vec<String> = subscribed.keys().cloned().collect();
                for t in types {
                    let current = shared.lock().versions.get(&t).copied();
                    if current != subscribed[&t].1 {
                        send_sotw(&shared, &tx, &t, &mut subscribed);
                    }
                }
            }
            _ = dropped.changed() => return,
        }
    }
}

fn send_sotw(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Result<DiscoveryResponse, tonic::Status>>,
    type_url: &str,
    subscribed: &mut BTreeMap<String, (BTreeSet<String>, Option<u64>)>,
) {
    let nonce = shared.next_nonce();
    let state = shared.lock();
    let version = state.versions.get(type_url).copied().unwrap_or(0);
    let Some(entry) = subscribed.get_mut(type_url) else {
        return;
    };
    let resources = state
        .resources
        .get(type_url)
        .map(|all| {
            all.iter()
                .filter(|(name, _)| is_wildcard(type_url) || entry.0.contains(*name))
                .map(|(_, (_, any))| any.clone())
                .collect()
        })
        .unwrap_or_default();
    entry.1 = Some(version);
    let _ = tx.send(Ok(DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: type_url.to_string(),
        nonce,
        control_plane: Some(identity()),
        ..Default::default()
    }));
}

/// Per type on a delta stream: wildcard or the names subscribed, and what the proxy holds.
#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    held: BTreeMap<String, u64>,
}

async fn delta_stream(
    shared: Arc<Shared>,
    service: &'static str,
    mut requests: tonic::Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, tonic::Status>>,
) {
    let stream = open_stream(&shared);
    let mut changed = shared.changed.subscribe();
    let mut dropped = shared.drop_streams.subscribe();
    let mut types: BTreeMap<String, DeltaType> = BTreeMap::new();
    loop {
        tokio::select! {
            r = requests.next() => {
                let Some(Ok(r)) = r else { return };
                shared.lock().requests.push(Recorded {
                    delta: true,
                    type_url: r.type_url.clone(),
                    version_info: String::new(),
                    response_nonce: r.response_nonce.clone(),
                    error: r.error_detail.as_ref().map(|e| e.message.clone()),
                    has_node: r.node.is_some(),
                    names: r.resource_names_subscribe.clone(),
                    unsubscribe: r.resource_names_unsubscribe.clone(),
                    initial_versions: r.initial_resource_versions.clone().into_iter().collect(),
                    stream,
                    service,
                });
                if r.response_nonce.is_empty() || !r.resource_names_subscribe.is_empty() || !r.resource_names_unsubscribe.is_empty() {
                    let first = !types.contains_key(&r.type_url);
                    let t = types.entry(r.type_url.clone()).or_default();
                    if first {
                        t.wildcard = is_wildcard(&r.type_url) && r.resource_names_subscribe.is_empty();
                        for (name, version) in &r.initial_resource_versions {
                            t.held.insert(name.clone(), version.parse().unwrap_or(0));
                        }
                    }
                    t.names.extend(r.resource_names_subscribe.iter().cloned());
                    for name in &r.resource_names_unsubscribe {
                        t.names.remove(name);
                        t.held.remove(name);
                    }
                    send_delta(&shared, &tx, &r.type_url, &mut types, first);
                }
            }
            _ = changed.changed() => {
                let urls: Vec<String> = types.keys().cloned().collect();
                for url in urls {
                    send_delta(&shared, &tx, &url, &mut types, false);
                }
            }
            _ = dropped.changed() => return,
        }
    }
}

fn send_delta(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    type_url: &str,
    types: &mut BTreeMap<String, DeltaType>,
    always: bool,
) {
    let nonce = shared.next_nonce();
    let state = shared.lock();
    let Some(t) = types.get_mut(type_url) else {
        return;
    };
    let empty = BTreeMap::new();
    let all = state.resources.get(type_url).unwrap_or(&empty);
    let mut resources = Vec::new();
    for (name, (version, any)) in all {
        if !(t.wildcard || t.names.contains(name)) {
            continue;
        }
        if t.held.get(name) != Some(version) {
            t.held.insert(name.clone(), *version);
            resources.push(Resource {
                name: name.clone(),
                version: version.to_string(),
                resource: Some(any.clone()),
                ..Default::default()
            });
        }
    }
    let removed: Vec<String> = t
        .held
        .keys()
        .filter(|name| !all.contains_key(*name))
        .cloned()
        .collect();
    for name in &removed {
        t.held.remove(name);
    }
    if resources.is_empty() && removed.is_empty() && !always {
        return;
    }
    let _ = tx.send(Ok(DeltaDiscoveryResponse {
        system_version_info: state
            .versions
            .get(type_url)
            .copied()
            .unwrap_or(0)
            .to_string(),
        resources,
        type_url: type_url.to_string(),
        removed_resources: removed,
        nonce,
        control_plane: Some(identity()),
        ..Default::default()
    }));
}
