//! The threshold state machine and interval choice, without sockets or sleeping.

use super::*;
use crate::config::health_check::{Checker, TcpCheck};

const OK: Outcome = Outcome::Healthy { degraded: false };
const BAD: Outcome = Outcome::Unhealthy { exclude: false };

fn config() -> HealthCheckConfig {
    HealthCheckConfig {
        timeout: Duration::from_secs(1),
        interval: Duration::from_millis(100),
        interval_jitter: Duration::ZERO,
        interval_jitter_percent: 0,
        initial_jitter: Duration::ZERO,
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        no_traffic_interval: Duration::from_secs(60),
        no_traffic_healthy_interval: Duration::from_secs(61),
        unhealthy_interval: Duration::from_millis(300),
        unhealthy_edge_interval: Duration::from_millis(400),
        healthy_edge_interval: Duration::from_millis(500),
        reuse_connection: true,
        always_log_failures: false,
        checker: Checker::Tcp(TcpCheck {
            send: Vec::new(),
            receive: Vec::new(),
        }),
    }
}

/// Feeds outcomes to a host starting failed, flipping its state as the session does.
fn run(outcomes: &[Outcome]) -> Vec<(Transition, bool)> {
    let mut counts = Counts::default();
    let mut failed = true;
    outcomes
        .iter()
        .map(|o| {
            let t = counts.apply(*o, failed, 2, 3);
            if t == Transition::Changed {
                failed = !failed;
            }
            (t, failed)
        })
        .collect()
}

#[test]
fn first_success_is_enough_then_thresholds_count() {
    use Transition::*;
    assert_eq!(
        run(&[
            OK,
            Outcome::Network,
            Outcome::Timeout,
            OK,
            Outcome::Network,
            Outcome::Network,
            Outcome::Timeout
        ]),
        vec![
            (Changed, false),
            (Pending, false),
            (Pending, false),
            // A success resets the failure count.
            (Unchanged, false),
            (Pending, false),
            (Pending, false),
            (Changed, true),
        ]
    );
}

#[test]
fn a_wrong_answer_fails_at_once_and_recovery_needs_the_threshold() {
    use Transition::*;
    assert_eq!(
        run(&[OK, BAD, BAD, OK, BAD, OK, OK, OK]),
        vec![
            (Changed, false),
            (Changed, true),
            (Unchanged, true),
            (Pending, true),
            // A failure resets the success count.
            (Unchanged, true),
            (Pending, true),
            (Changed, false),
            (Unchanged, false),
        ]
    );
}

#[test]
fn a_first_failure_keeps_counting_towards_recovery() {
    use Transition::*;
    // Starting failed, a failure changes nothing; the next success is not "first" any more.
    assert_eq!(
        run(&[Outcome::Network, OK, OK]),
        vec![(Unchanged, true), (Pending, true), (Changed, false)]
    );
}

#[test]
fn intervals_follow_traffic_result_and_edges() {
    let c = config();
    let ms = Duration::from_millis;
    assert_eq!(
        base_interval(&c, false, OK, Transition::Changed),
        ms(61_000)
    );
    assert_eq!(
        base_interval(&c, false, BAD, Transition::Changed),
        ms(60_000)
    );
    assert_eq!(base_interval(&c, true, OK, Transition::Unchanged), ms(100));
    assert_eq!(base_interval(&c, true, OK, Transition::Changed), ms(100));
    assert_eq!(base_interval(&c, true, OK, Transition::Pending), ms(500));
    assert_eq!(base_interval(&c, true, BAD, Transition::Unchanged), ms(300));
    assert_eq!(
        base_interval(&c, true, Outcome::Timeout, Transition::Pending),
        ms(400)
    );
}

#[test]
fn jitter_adds_percent_and_fixed_parts() {
    let mut c = config();
    let base = Duration::from_millis(1000);
    assert_eq!(with_jitter(&c, base, |_| unreachable!()), base);
    c.interval_jitter_percent = 10;
    c.interval_jitter = Duration::from_millis(50);
    let mut bounds = Vec::new();
    let d = with_jitter(&c, base, |b| {
        bounds.push(b);
        b - 1
    });
    assert_eq!(bounds, vec![100, 50]);
    assert_eq!(d, Duration::from_millis(1000 + 99 + 49));
    assert_eq!(
        with_jitter(&config(), Duration::ZERO, |_| 0),
        Duration::from_millis(1)
    );
}
