//! `Cluster.outlier_detection` and `common_lb_config.healthy_panic_threshold`: the settings
//! of passive health checking, with Envoy's defaults and validation.
//! https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto
//! https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier

use super::error::{FieldPath, Result};
use super::values::optional_duration;
use std::time::Duration;
use xds_proto::pb::envoy::config::cluster::v3::{Cluster as ProtoCluster, OutlierDetection};

/// One cluster's outlier detection, defaults applied. Percentages are 0..=100.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    /// Up to this much (uniformly drawn per ejection) is added to an ejection's time.
    pub max_ejection_time_jitter: Duration,
    pub max_ejection_percent: u32,
    pub always_eject_one_host: bool,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failure: u32,
    pub consecutive_local_origin_failure: u32,
    pub split_external_local_origin_errors: bool,
    pub enforcing_consecutive_5xx: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub enforcing_consecutive_local_origin_failure: u32,
    pub enforcing_success_rate: u32,
    pub enforcing_local_origin_success_rate: u32,
    pub enforcing_failure_percentage: u32,
    pub enforcing_failure_percentage_local_origin: u32,
    pub success_rate_minimum_hosts: u64,
    pub success_rate_request_volume: u64,
    /// Divided by 1000 when applied (1900 means 1.9 standard deviations).
    pub success_rate_stdev_factor: u32,
    pub failure_percentage_threshold: u32,
    pub failure_percentage_minimum_hosts: u64,
    pub failure_percentage_request_volume: u64,
}

/// Envoy's default panic threshold: below 50% healthy hosts, balance over all of them.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 50.0;

/// `common_lb_config.healthy_panic_threshold` in percent (0 disables panic mode).
pub fn panic_threshold(c: &ProtoCluster, path: &FieldPath) -> Result<f64> {
    let Some(p) = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
    else {
        return Ok(DEFAULT_PANIC_THRESHOLD);
    };
    if !(0.0..=100.0).contains(&p.value) {
        return Err(path
            .field("common_lb_config")
            .field("healthy_panic_threshold")
            .field("value")
            .error("must be between 0 and 100"));
    }
    Ok(p.value)
}

pub fn translate(o: &OutlierDetection, path: &FieldPath) -> Result<OutlierConfig> {
    let OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        // Refused or acknowledged by the field table (config/fields.rs).
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host: _,
        monitors: _,
        always_eject_one_host,
        detect_degraded_hosts: _,
    } = o;
    let positive = |d: &Option<xds_proto::pb::google::protobuf::Duration>,
                    name: &str,
                    default: Duration|
     -> Result<Duration> {
        let p = path.field(name);
        match optional_duration(d.as_ref(), &p)? {
            Some(d) if d.is_zero() => Err(p.error("value must be greater than 0s")),
            Some(d) => Ok(d),
            None => Ok(default),
        }
    };
    let percent = |v: &Option<xds_proto::pb::google::protobuf::UInt32Value>,
                   name: &str,
                   default: u32|
     -> Result<u32> {
        match v {
            Some(v) if v.value > 100 => Err(path
                .field(name)
                .field("value")
                .error("value must be less than or equal to 100")),
            Some(v) => Ok(v.value),
            None => Ok(default),
        }
    };
    let count = |v: &Option<xds_proto::pb::google::protobuf::UInt32Value>, default: u32| {
        v.as_ref().map_or(default, |v| v.value)
    };
    let base_ejection_time = positive(
        base_ejection_time,
        "base_ejection_time",
        Duration::from_secs(30),
    )?;
    let max_ejection_time = positive(
        max_ejection_time,
        "max_ejection_time",
        Duration::from_secs(300),
    )?;
    if max_ejection_time < base_ejection_time {
        // Envoy refuses the cluster with this message.
        return Err(path.field("max_ejection_time").error(
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
        ));
    }
    Ok(OutlierConfig {
        interval: positive(interval, "interval", Duration::from_secs(10))?,
        base_ejection_time,
        max_ejection_time,
        max_ejection_time_jitter: optional_duration(
            max_ejection_time_jitter.as_ref(),
            &path.field("max_ejection_time_jitter"),
        )?
        .unwrap_or_default(),
        max_ejection_percent: percent(max_ejection_percent, "max_ejection_percent", 10)?,
        always_eject_one_host: always_eject_one_host.as_ref().is_some_and(|b| b.value),
        consecutive_5xx: count(consecutive_5xx, 5),
        consecutive_gateway_failure: count(consecutive_gateway_failure, 5),
        consecutive_local_origin_failure: count(consecutive_local_origin_failure, 5),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        enforcing_consecutive_5xx: percent(
            enforcing_consecutive_5xx,
            "enforcing_consecutive_5xx",
            100,
        )?,
        enforcing_consecutive_gateway_failure: percent(
            enforcing_consecutive_gateway_failure,
            "enforcing_consecutive_gateway_failure",
            0,
        )?,
        enforcing_consecutive_local_origin_failure: percent(
            enforcing_consecutive_local_origin_failure,
            "enforcing_consecutive_local_origin_failure",
            100,
        )?,
        enforcing_success_rate: percent(enforcing_success_rate, "enforcing_success_rate", 100)?,
        enforcing_local_origin_success_rate: percent(
            enforcing_local_origin_success_rate,
            "enforcing_local_origin_success_rate",
            100,
        )?,
        enforcing_failure_percentage: percent(
            enforcing_failure_percentage,
            "enforcing_failure_percentage",
            0,
        )?,
        enforcing_failure_percentage_local_origin: percent(
            enforcing_failure_percentage_local_origin,
            "enforcing_failure_percentage_local_origin",
            0,
        )?,
        success_rate_minimum_hosts: u64::from(count(success_rate_minimum_hosts, 5)),
        success_rate_request_volume: u64::from(count(success_rate_request_volume, 100)),
        success_rate_stdev_factor: count(success_rate_stdev_factor, 1900),
        failure_percentage_threshold: percent(
            failure_percentage_threshold,
            "failure_percentage_threshold",
            85,
        )?,
        failure_percentage_minimum_hosts: u64::from(count(failure_percentage_minimum_hosts, 5)),
        failure_percentage_request_volume: u64::from(count(failure_percentage_request_volume, 50)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xds_proto::pb::google::protobuf::{Duration as D, UInt32Value};

    #[test]
    fn defaults_follow_envoy() {
        let c = translate(&OutlierDetection::default(), &FieldPath::root("od")).expect("valid");
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.base_ejection_time, Duration::from_secs(30));
        assert_eq!(c.max_ejection_time, Duration::from_secs(300));
        assert_eq!((c.consecutive_5xx, c.max_ejection_percent), (5, 10));
        assert_eq!(
            (
                c.enforcing_consecutive_5xx,
                c.enforcing_consecutive_gateway_failure
            ),
            (100, 0)
        );
        assert_eq!(c.success_rate_stdev_factor, 1900);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let o = OutlierDetection {
            base_ejection_time: Some(D {
                seconds: 400,
                nanos: 0,
            }),
            ..Default::default()
        };
        let e = translate(&o, &FieldPath::root("od")).expect_err("max < base");
        assert!(e.to_string().contains("od.max_ejection_time"), "{e}");
        let o = OutlierDetection {
            max_ejection_percent: Some(UInt32Value { value: 101 }),
            ..Default::default()
        };
        let e = translate(&o, &FieldPath::root("od")).expect_err("over 100");
        assert!(e.to_string().contains("max_ejection_percent"), "{e}");
    }
}
