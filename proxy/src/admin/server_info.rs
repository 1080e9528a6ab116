//! `/server_info`: an `envoy.admin.v3.ServerInfo` (version, state, uptime, command line
//! options, node), printed with default-valued fields as Envoy does.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--server_info

use super::{json, AdminResponse, Query};
use crate::cli::{DrainStrategy, IpVersion, Mode};
use crate::server::{Server, ServerState};
use xds_proto::pb::envoy::admin::v3::{
    command_line_options as clo, server_info::State, CommandLineOptions, ServerInfo,
};
use xds_proto::pb::envoy::config::core::v3::{node::UserAgentVersionType, BuildVersion, Node};
use xds_proto::pb::envoy::r#type::v3::SemanticVersion;
use xds_proto::pb::google::protobuf::Duration;

/// Envoy's version string shape: `<sha>/<version>/<status>/<build type>/<TLS library>`.
pub fn version() -> String {
    let build = if cfg!(debug_assertions) {
        "DEBUG"
    } else {
        "RELEASE"
    };
    format!(
        "outrigger/{}/Clean/{build}/rustls",
        env!("CARGO_PKG_VERSION")
    )
}

/// The state the admin API reports. As in Envoy, `/healthcheck/fail` makes a live server
/// report DRAINING.
pub fn state(server: &Server) -> ServerState {
    match server.state() {
        ServerState::Live if server.health_check_failed() => ServerState::Draining,
        state => state,
    }
}

/// The node as Outrigger presents it: the bootstrap's, with the user agent filled in the way
/// Envoy fills in its own.
pub fn node(server: &Server) -> Node {
    let mut node = server.bootstrap.node.clone().unwrap_or_default();
    node.user_agent_name = "outrigger".to_string();
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    node.user_agent_version_type =
        Some(UserAgentVersionType::UserAgentBuildVersion(BuildVersion {
            version: Some(SemanticVersion {
                major_number: parts.next().unwrap_or(0),
                minor_number: parts.next().unwrap_or(0),
                patch: parts.next().unwrap_or(0),
            }),
            metadata: None,
        }));
    node
}

pub fn handle(server: &Server, _: &Query) -> AdminResponse {
    let uptime = Duration {
        seconds: server.uptime().as_secs() as i64,
        nanos: 0,
    };
    let info = ServerInfo {
        version: version(),
        state: match state(server) {
            ServerState::Live => State::Live,
            ServerState::Draining => State::Draining,
            ServerState::PreInitializing => State::PreInitializing,
            ServerState::Initializing => State::Initializing,
        } as i32,
        uptime_current_epoch: Some(uptime),
        uptime_all_epochs: Some(uptime),
        hot_restart_version: "disabled".to_string(),
        command_line_options: Some(command_line_options(&server.options)),
        node: Some(node(server)),
        hot_restart_initializing: false,
    };
    json::message_response(&info, true)
}

fn seconds(s: u64) -> Option<Duration> {
    Some(Duration {
        seconds: s as i64,
        nanos: 0,
    })
}

fn command_line_options(o: &crate::cli::Options) -> CommandLineOptions {
    let concurrency = o.concurrency.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let flush = std::time::Duration::from_millis(o.file_flush_interval_msec);
    CommandLineOptions {
        base_id: u64::from(o.base_id),
        use_dynamic_base_id: o.use_dynamic_base_id,
        concurrency: concurrency as u32,
        config_path: o
            .config_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        config_yaml: o.config_yaml.clone().unwrap_or_default(),
        allow_unknown_static_fields: o.allow_unknown_static_fields,
        reject_unknown_dynamic_fields: o.reject_unknown_dynamic_fields,
        ignore_unknown_dynamic_fields: o.ignore_unknown_dynamic_fields,
        skip_deprecated_logs: o.skip_deprecated_logs,
        local_address_ip_version: match o.local_address_ip_version {
            IpVersion::V4 => clo::IpVersion::V4,
            IpVersion::V6 => clo::IpVersion::V6,
        } as i32,
        log_level: o.log_level.clone(),
        component_log_level: o.component_log_level.clone().unwrap_or_default(),
        log_format: o.log_format.clone().unwrap_or_default(),
        log_path: o
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        service_cluster: o.service_cluster.clone().unwrap_or_default(),
        service_node: o.service_node.clone().unwrap_or_default(),
        service_zone: o.service_zone.clone().unwrap_or_default(),
        file_flush_interval: Some(Duration {
            seconds: flush.as_secs() as i64,
            nanos: flush.subsec_nanos() as i32,
        }),
        file_flush_min_size: o.file_flush_min_size_kb.unwrap_or(0) as u32 * 1024,
        drain_time: seconds(o.drain_time_s),
        drain_strategy: match o.drain_strategy {
            DrainStrategy::Gradual => clo::DrainStrategy::Gradual,
            DrainStrategy::Immediate => clo::DrainStrategy::Immediate,
        } as i32,
        parent_shutdown_time: seconds(o.parent_shutdown_time_s),
        mode: match o.mode {
            Mode::Serve => clo::Mode::Serve,
            Mode::Validate => clo::Mode::Validate,
            Mode::InitOnly => clo::Mode::InitOnly,
        } as i32,
        disable_hot_restart: o.disable_hot_restart,
        restart_epoch: o.restart_epoch,
        enable_core_dump: o.enable_core_dump,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{json, server};
    use http::Method;

    #[test]
    fn server_info_has_envoys_shape() {
        let s = server();
        let v = json(handle(&s, &Method::GET, "/server_info"));
        assert_eq!(v["state"], "PRE_INITIALIZING");
        assert_eq!(v["hot_restart_version"], "disabled");
        assert_eq!(v["node"]["id"], "test-node");
        assert_eq!(v["node"]["locality"]["zone"], "z1");
        assert_eq!(v["node"]["user_agent_name"], "outrigger");
        let o = &v["command_line_options"];
        assert_eq!(o["mode"], "Serve");
        assert_eq!(o["drain_strategy"], "Gradual");
        assert_eq!(o["drain_time"], "600s");
        assert_eq!(o["log_level"], "info");
        // Defaults are printed, as Envoy prints them.
        assert_eq!(o["restart_epoch"], 0);
        assert_eq!(o["service_node"], "");
        assert_eq!(o["disabled_extensions"], serde_json::json!([]));
        assert!(v["uptime_current_epoch"]
            .as_str()
            .is_some_and(|u| u.ends_with('s')));
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys[..3], ["version", "state", "uptime_current_epoch"]);
    }
}
