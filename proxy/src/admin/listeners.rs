//! `/listeners`: each bound listener as `name::address`, or (`?format=json`)
//! `envoy.admin.v3.Listeners` with each listener's local address.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--listeners

use super::{json, text, AdminResponse, Query};
use crate::config::address::Endpoint;
use crate::server::Server;
use http::StatusCode;
use xds_proto::pb::envoy::admin::v3::{ListenerStatus, Listeners};

pub fn handle(server: &Server, query: &Query) -> AdminResponse {
    let listeners = server.bound_listeners();
    if query.get("format") == Some("json") {
        let statuses = Listeners {
            listener_statuses: listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    local_address: Some(super::config_dump::address_proto(&endpoint(&l.address))),
                    ..Default::default()
                })
                .collect(),
        };
        return json::message_response(&statuses, false);
    }
    let body: String = listeners
        .iter()
        .map(|l| format!("{}::{}\n", l.name, l.address))
        .collect();
    text(StatusCode::OK, body)
}

/// A bound address is `ip:port` or a socket path.
fn endpoint(address: &str) -> Endpoint {
    match address.parse() {
        Ok(socket) => Endpoint::Tcp(socket),
        Err(_) => Endpoint::Unix(address.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{body, json, server};
    use crate::server::BoundListener;
    use http::Method;

    #[test]
    fn text_and_json() {
        let s = server();
        for (name, address) in [("http", "127.0.0.1:19080"), ("uds", "/tmp/admin.sock")] {
            s.add_bound_listener(BoundListener {
                name: name.into(),
                address: address.into(),
                inbound: false,
            });
        }
        let b = body(handle(&s, &Method::GET, "/listeners"));
        assert_eq!(b, "http::127.0.0.1:19080\nuds::/tmp/admin.sock\n");
        let v = json(handle(&s, &Method::GET, "/listeners?format=json"));
        assert_eq!(
            v,
            serde_json::json!({"listener_statuses": [
                {"name": "http", "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 19080}}},
                {"name": "uds", "local_address": {"pipe": {"path": "/tmp/admin.sock"}}},
            ]})
        );
    }
}
