//! The control plane's gRPC services: ADS and the per-type discovery services, each stream
//! serving the shared state in the state-of-the-world or delta variant and recording what the
//! proxy sends.

use super::*;

pub(super) struct Ads {
    pub(super) shared: Arc<Shared>,
    pub(super) service: &'static str,
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
    let mut failed = shared.fail_streams.subscribe();
    // Per type: the names subscribed, and the set version last sent.
    let mut subscribed: BTreeMap<String, (BTreeSet<String>, Option<u64>)> = BTreeMap::new();
    loop {
        tokio::select! {
            r = requests.next() => {
                let Some(Ok(r)) = r else { return };
                let mut state = shared.lock();
                let nonce_sent = r.response_nonce.is_empty()
                    || state.sent.contains(&(stream, r.type_url.clone(), r.response_nonce.clone()));
                state.requests.push(Recorded {
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
                    nonce_sent,
                });
                drop(state);
                let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
                let entry = subscribed.entry(r.type_url.clone()).or_insert((names.clone(), None));
                let first = entry.1.is_none();
                if first || entry.0 != names {
                    entry.0 = names;
                    send_sotw(&shared, &tx, stream, &r.type_url, &mut subscribed);
                }
            }
            _ = changed.changed() => {
                let types: Vec<String> = subscribed.keys().cloned().collect();
                for t in types {
                    let current = shared.lock().versions.get(&t).copied();
                    if current != subscribed[&t].1 {
                        send_sotw(&shared, &tx, stream, &t, &mut subscribed);
                    }
                }
            }
            _ = dropped.changed() => return,
            _ = failed.changed() => {
                let _ = tx.send(Err(tonic::Status::unavailable("the test control plane failed the stream")));
                return;
            }
        }
    }
}

fn send_sotw(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Result<DiscoveryResponse, tonic::Status>>,
    stream: usize,
    type_url: &str,
    subscribed: &mut BTreeMap<String, (BTreeSet<String>, Option<u64>)>,
) {
    let nonce = shared.next_nonce();
    let mut state = shared.lock();
    state
        .sent
        .insert((stream, type_url.to_string(), nonce.clone()));
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
    let mut failed = shared.fail_streams.subscribe();
    let mut types: BTreeMap<String, DeltaType> = BTreeMap::new();
    loop {
        tokio::select! {
            r = requests.next() => {
                let Some(Ok(r)) = r else { return };
                let mut state = shared.lock();
                let nonce_sent = r.response_nonce.is_empty()
                    || state.sent.contains(&(stream, r.type_url.clone(), r.response_nonce.clone()));
                state.requests.push(Recorded {
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
                    nonce_sent,
                });
                drop(state);
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
                    send_delta(&shared, &tx, stream, &r.type_url, &mut types, first);
                }
            }
            _ = changed.changed() => {
                let urls: Vec<String> = types.keys().cloned().collect();
                for url in urls {
                    send_delta(&shared, &tx, stream, &url, &mut types, false);
                }
            }
            _ = dropped.changed() => return,
            _ = failed.changed() => {
                let _ = tx.send(Err(tonic::Status::unavailable("the test control plane failed the stream")));
                return;
            }
        }
    }
}

fn send_delta(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Result<DeltaDiscoveryResponse, tonic::Status>>,
    stream: usize,
    type_url: &str,
    types: &mut BTreeMap<String, DeltaType>,
    always: bool,
) {
    let nonce = shared.next_nonce();
    let mut state = shared.lock();
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
    state
        .sent
        .insert((stream, type_url.to_string(), nonce.clone()));
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
