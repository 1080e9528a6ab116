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

mod streams;
use streams::Ads;
pub use streams::IDENTIFIER;

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
    /// Whether `response_nonce` is one this stream sent in a response of this type (always
    /// true for a request that answers nothing).
    pub nonce_sent: bool,
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
    /// (stream, type, nonce) of every response sent.
    sent: BTreeSet<(usize, String, String)>,
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
    /// Bumped to end every open stream with an error status.
    fail_streams: watch::Sender<u64>,
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
            fail_streams: watch::channel(0).0,
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

    /// The nonce of the last response of `type_url` sent, on any stream.
    pub fn last_nonce(&self, type_url: &str) -> Option<String> {
        self.shared
            .lock()
            .sent
            .iter()
            .filter(|(_, t, _)| t == type_url)
            .map(|(_, _, nonce)| nonce)
            .max_by_key(|nonce| nonce.parse::<u64>().unwrap_or(0))
            .cloned()
    }

    /// Ends every open stream with `UNAVAILABLE`, as a control plane that restarts does.
    pub fn fail_streams(&self) {
        self.shared.fail_streams.send_modify(|n| *n += 1);
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
