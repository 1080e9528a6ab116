//! The gRPC method a stream calls: the aggregated service, or the discovery service of one
//! type. The messages are the same on all of them; only the method path differs.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#rpc-services

use super::super::records::Kind;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use xds_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Aggregated,
    Of(Kind),
}

impl Service {
    /// The service's two methods: state of the world, then delta.
    fn methods(self) -> (&'static str, &'static str) {
        match self {
            Service::Aggregated => (
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            ),
            Service::Of(Kind::Cluster) => (
                "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
                "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters",
            ),
            Service::Of(Kind::Listener) => (
                "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
                "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners",
            ),
            Service::Of(Kind::Route) => (
                "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
                "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes",
            ),
            Service::Of(Kind::Endpoint) => (
                "/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
                "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints",
            ),
            Service::Of(Kind::Secret) => (
                "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
                "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
            ),
        }
    }
}

type Result<T> = std::result::Result<tonic::Response<Streaming<T>>, tonic::Status>;

/// One channel, every service's methods over it.
pub struct Clients {
    channel: Channel,
}

impl Clients {
    pub fn new(channel: Channel) -> Self {
        Self { channel }
    }

    pub async fn sotw<S>(
        &mut self,
        service: Service,
        request: tonic::Request<S>,
    ) -> Result<DiscoveryResponse>
    where
        S: tokio_stream::Stream<Item = DiscoveryRequest> + Send + 'static,
    {
        self.call(service.methods().0, request).await
    }

    pub async fn delta<S>(
        &mut self,
        service: Service,
        request: tonic::Request<S>,
    ) -> Result<DeltaDiscoveryResponse>
    where
        S: tokio_stream::Stream<Item = DeltaDiscoveryRequest> + Send + 'static,
    {
        self.call(service.methods().1, request).await
    }

    /// A bidirectional stream on `method`, as the generated clients open one.
    async fn call<S, Req, Resp>(
        &mut self,
        method: &'static str,
        request: tonic::Request<S>,
    ) -> Result<Resp>
    where
        S: tokio_stream::Stream<Item = Req> + Send + 'static,
        Req: prost::Message + Send + 'static,
        Resp: prost::Message + Default + Send + 'static,
    {
        // Envoy takes whatever the control plane holds: no limit on a response's size.
        let mut grpc =
            tonic::client::Grpc::new(self.channel.clone()).max_decoding_message_size(usize::MAX);
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("service was not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(method);
        grpc.streaming(request, path, tonic_prost::ProstCodec::default())
            .await
    }
}
