//! gRPC health checks: `grpc.health.v1.Health/Check` over an HTTP/2 connection, healthy when
//! the call ends with gRPC status OK and the answer says SERVING; any other answer is an
//! active failure, a broken connection or stream a network one.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto#envoy-v3-api-msg-config-core-v3-healthcheck-grpchealthcheck
//! The service: https://github.com/grpc/grpc/blob/master/doc/health-checking.md

use super::probe::{Connection, Prober};
use super::state::Outcome;
use crate::config::health_check::GrpcCheck;
use crate::upstream::Host;
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`; its `status` is an enum, SERVING being 1.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SERVING: i32 = 1;
const PATH: &str = "/grpc.health.v1.Health/Check";

impl Prober {
    pub(super) async fn grpc(
        &self,
        check: &GrpcCheck,
        host: &Host,
        conn: &mut Option<Connection>,
    ) -> Outcome {
        let usable = match conn {
            Some(Connection::Grpc(s)) => s.ready().await.is_ok(),
            _ => false,
        };
        if !usable {
            *conn = None;
            let Ok(stream) = self.connect(host).await else {
                return Outcome::Network;
            };
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
            {
                Ok((send, driver)) => {
                    tokio::spawn(driver);
                    *conn = Some(Connection::Grpc(send));
                }
                Err(_) => return Outcome::Network,
            }
        }
        let Some(request) = request(check, &self.default_host, self.timeout) else {
            return Outcome::Network;
        };
        let Some(Connection::Grpc(send)) = conn else {
            return Outcome::Network;
        };
        let Ok(response) = send.send_request(request).await else {
            *conn = None;
            return Outcome::Network;
        };
        let (parts, body) = response.into_parts();
        let Ok(body) = body.collect().await else {
            *conn = None;
            return Outcome::Network;
        };
        let trailers = body.trailers().cloned();
        let message = body.to_bytes();
        let is_grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        // The status comes in the trailers, or in the headers of a trailers-only answer.
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        let serving = parts.status == http::StatusCode::OK
            && is_grpc
            && status == Some(0)
            && decode(&message).is_some_and(|r| r.status == SERVING);
        if serving {
            Outcome::Healthy { degraded: false }
        } else {
            Outcome::Unhealthy { exclude: false }
        }
    }
}

/// A request body of one frame whose length is not announced: Envoy's gRPC checks carry no
/// `content-length`.
pub struct CallBody(Option<Bytes>);

impl http_body::Body for CallBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// The check's call: the service name framed as one gRPC message, the check's timeout as
/// `grpc-timeout` (Envoy sends both), the metadata added.
fn request(
    check: &GrpcCheck,
    default_authority: &str,
    timeout: std::time::Duration,
) -> Option<http::Request<CallBody>> {
    let authority = check.authority.as_deref().unwrap_or(default_authority);
    let message = HealthCheckRequest {
        service: check.service.clone(),
    }
    .encode_to_vec();
    // One uncompressed gRPC message: flag, big-endian length, the message.
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).ok()?);
    framed.put_slice(&message);
    let mut request = http::Request::post(format!("http://{authority}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "Envoy/HC")
        .body(CallBody(Some(framed.freeze())))
        .ok()?;
    let headers = request.headers_mut();
    crate::http::set_grpc_timeout(headers, timeout);
    for (name, value, append) in &check.metadata {
        if *append {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
    Some(request)
}

/// The one message of an answer; None for a compressed, cut or garbled one.
fn decode(body: &[u8]) -> Option<HealthCheckResponse> {
    let (&compressed, rest) = body.split_first()?;
    let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..4 + length)?;
    if compressed != 0 {
        return None;
    }
    HealthCheckResponse::decode(message).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_framed_message_with_the_service() {
        let check = GrpcCheck {
            service: "svc".into(),
            authority: None,
            metadata: vec![],
        };
        let r =
            request(&check, "cluster", std::time::Duration::from_millis(300)).expect("a request");
        assert_eq!(r.headers()["grpc-timeout"], "300m");
        assert_eq!(
            r.uri().to_string(),
            "http://cluster/grpc.health.v1.Health/Check"
        );
        assert_eq!(r.headers()["content-type"], "application/grpc");
    }

    #[test]
    fn answers_decode_only_when_whole_and_uncompressed() {
        let encoded = HealthCheckResponse { status: SERVING }.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        framed.extend_from_slice(&encoded);
        assert_eq!(decode(&framed).map(|r| r.status), Some(SERVING));
        assert!(decode(&framed[..framed.len() - 1]).is_none());
        framed[0] = 1;
        assert!(decode(&framed).is_none());
        assert!(decode(&[]).is_none());
    }
}
