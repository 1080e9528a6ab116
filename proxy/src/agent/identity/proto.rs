//! Istio's certificate API (`istio.v1.auth.IstioCertificateService`), written by hand with
//! prost derives so no protoc runs at build time: the two messages, a unary client call, and a
//! tonic service wrapper that lets tests (a fake istiod) serve it.
//! Field numbers follow istio/api `security/v1alpha1/ca.proto` (tag 2 of the request was the
//! retired `subject_id`, so it stays unused).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{BoxFuture, StdError};
use xds_proto::pb::google::protobuf::Struct;

/// The gRPC path of the one method.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The service's full name, for routing.
pub const SERVICE_NAME: &str = "istio.v1.auth.IstioCertificateService";

/// A certificate signing request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; the CA may shorten it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque hints for the CA, e.g. `CertSigner`.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

/// The issued chain: leaf first, root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// One `CreateCertificate` call on `channel` (any tonic transport: a `Channel`, or a service in
/// tests).
pub async fn create_certificate<T>(
    channel: T,
    request: tonic::Request<IstioCertificateRequest>,
) -> Result<IstioCertificateResponse, tonic::Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("CA not ready: {}", e.into())))?;
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    grpc.unary(request, path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// What a CA implements to be served by [`CertificateServer`].
#[tonic::async_trait]
pub trait CertificateService: Send + Sync + 'static {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status>;
}

/// A tonic service (usable with `tonic::transport::Server::add_service` or a `Routes`) that
/// answers `CreateCertificate` with `T` and anything else with `Unimplemented`.
pub struct CertificateServer<T> {
    inner: Arc<T>,
}

impl<T> CertificateServer<T> {
    pub fn new(inner: T) -> Self {
        Self::from_arc(Arc::new(inner))
    }
    pub fn from_arc(inner: Arc<T>) -> Self {
        CertificateServer { inner }
    }
}

impl<T> Clone for CertificateServer<T> {
    fn clone(&self) -> Self {
        CertificateServer {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for CertificateServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

struct Unary<T>(Arc<T>);

impl<T: CertificateService> tonic::server::UnaryService<IstioCertificateRequest> for Unary<T> {
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<tonic::Response<IstioCertificateResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<IstioCertificateRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.create_certificate(request).await })
    }
}

impl<T, B> tower::Service<http::Request<B>> for CertificateServer<T>
where
    T: CertificateService,
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("unknown method").into_http())
            });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let codec =
                tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(Unary(inner), request).await)
        })
    }
}
