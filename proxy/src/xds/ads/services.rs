//! The gRPC method a stream calls: the aggregated service, or the discovery service of one
//! type. The messages are the same on all of them; only the method path differs.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#rpc-services

use super::super::records::Kind;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use xds_proto::pb::envoy::service::cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient;
use xds_proto::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds_proto::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use xds_proto::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use xds_proto::pb::envoy::service::listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient;
use xds_proto::pb::envoy::service::route::v3::route_discovery_service_client::RouteDiscoveryServiceClient;
use xds_proto::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Aggregated,
    Of(Kind),
}

type Result<T> = std::result::Result<tonic::Response<Streaming<T>>, tonic::Status>;

/// One channel, every service's client over it (clients are cheap handles).
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
        let ch = self.channel.clone();
        // Envoy sends whatever the control plane holds: no limit on a response's size.
        let max = usize::MAX;
        match service {
            Service::Aggregated => {
                AggregatedDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_aggregated_resources(request)
                    .await
            }
            Service::Of(Kind::Cluster) => {
                ClusterDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_clusters(request)
                    .await
            }
            Service::Of(Kind::Listener) => {
                ListenerDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_listeners(request)
                    .await
            }
            Service::Of(Kind::Route) => {
                RouteDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_routes(request)
                    .await
            }
            Service::Of(Kind::Endpoint) => {
                EndpointDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_endpoints(request)
                    .await
            }
            Service::Of(Kind::Secret) => {
                SecretDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .stream_secrets(request)
                    .await
            }
        }
    }

    pub async fn delta<S>(
        &mut self,
        service: Service,
        request: tonic::Request<S>,
    ) -> Result<DeltaDiscoveryResponse>
    where
        S: tokio_stream::Stream<Item = DeltaDiscoveryRequest> + Send + 'static,
    {
        let ch = self.channel.clone();
        let max = usize::MAX;
        match service {
            Service::Aggregated => {
                AggregatedDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_aggregated_resources(request)
                    .await
            }
            Service::Of(Kind::Cluster) => {
                ClusterDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_clusters(request)
                    .await
            }
            Service::Of(Kind::Listener) => {
                ListenerDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_listeners(request)
                    .await
            }
            Service::Of(Kind::Route) => {
                RouteDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_routes(request)
                    .await
            }
            Service::Of(Kind::Endpoint) => {
                EndpointDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_endpoints(request)
                    .await
            }
            Service::Of(Kind::Secret) => {
                SecretDiscoveryServiceClient::new(ch)
                    .max_decoding_message_size(max)
                    .delta_secrets(request)
                    .await
            }
        }
    }
}
