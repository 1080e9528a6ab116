//! Hedged attempts (`hedge_policy.hedge_on_per_try_timeout`): when an attempt's per-try
//! timeout fires it is not cancelled; a retry starts beside it (after the back-off, if the
//! policy allows one) and the first usable response wins, the others are reset. As Envoy 1.40
//! does (checked against it): an error answer that comes before its attempt's per-try timeout
//! is retried as usual; after it (a hedge already under way) it is dropped; a per-try timeout
//! that cannot be retried leaves URX on whatever answer wins; the route timeout ends every
//! attempt still in flight, each counted as a timeout; the expected timeout told upstream is
//! the route's, not the per-try one; and hedged per-try timeouts are not counted in
//! `upstream_rq_per_try_timeout`.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-hedgepolicy-hedge-on-per-try-timeout
//! and https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_routing#request-hedging

use super::attempt::{failed_attempt, send_attempt, Attempts, Prepared};
use super::forward::{answered, attempt_count_in_response, count_host_response};
use super::replay_body::Replay;
use super::retry::{Attempt, Decision, RetryState};
use super::router::Outcome;
use super::upstream_failure::{count_failure, failure_reply};
use crate::format::ResponseFlags;
use crate::upstream::UpstreamIncoming;
use crate::upstream::{Host, HostResult, UpstreamError};
use http::Response;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamIncoming>, UpstreamError>> + Send + 'a>>;

/// An attempt in flight.
struct InFlight<'a> {
    attempt: u32,
    host: Arc<Host>,
    started: Instant,
    /// When its per-try timeout fires; None once it has.
    per_try_at: Option<Instant>,
    send: Sending<'a>,
}

/// What woke the loop.
enum Event {
    Done(usize, Result<Response<UpstreamIncoming>, UpstreamError>),
    Timer,
}

pub(super) async fn hedged(mut a: Attempts<'_>, mut retry: RetryState<'_>) -> Outcome {
    let cluster = a.cluster;
    let priority = a.target.forward.priority;
    let deadline = a.route_timeout.map(|t| Instant::now() + t);
    let per_try = retry.per_try_timeout;
    let idle = retry.per_try_idle_timeout();
    let mut in_flight: Vec<InFlight<'_>> = Vec::new();
    // When the next attempt starts (the first at once).
    let mut next_at = Some(Instant::now());
    let mut attempt = 0u32;
    // URX or UO when a per-try timeout could not be followed by a hedge.
    let mut exhausted = ResponseFlags::NONE;
    let mut last_failure: Option<(UpstreamError, Arc<Host>)> = None;
    loop {
        let now = Instant::now();
        if next_at.is_some_and(|at| at <= now) {
            next_at = None;
            attempt += 1;
            // A hedged attempt is told the route's remaining time, not its per-try timeout.
            let expected = match attempt {
                1 => a.route_timeout,
                _ => deadline.map(|d| d.saturating_duration_since(now)),
            };
            match a.prepare(Some(&mut retry), expected, attempt, idle.is_some()) {
                Ok(Prepared {
                    host,
                    request,
                    sent,
                }) => {
                    cluster.stats.upstream_rq_active.inc();
                    host.stats.rq_active.fetch_add(1, Relaxed);
                    let for_send = host.clone();
                    let idle = idle.map(|d| (d, sent));
                    let use_h2 = a.use_h2;
                    let via = a.via;
                    in_flight.push(InFlight {
                        attempt,
                        host,
                        started: now,
                        per_try_at: per_try.map(|p| now + p),
                        send: Box::pin(async move {
                            send_attempt(cluster, &for_send, request, use_h2, priority, via, idle)
                                .await
                        }),
                    });
                }
                Err(outcome) if in_flight.is_empty() => return *outcome,
                // No host for the hedge: the attempts in flight may still answer.
                Err(_) => {}
            }
        }
        if in_flight.is_empty() && next_at.is_none() {
            // Every attempt failed and none is left to make.
            let (error, host) = match last_failure.take() {
                Some((e, h)) => (e, Some(h)),
                None => (UpstreamError::NoHealthyUpstream, None),
            };
            let mut outcome = failure_reply(
                cluster,
                error,
                &a.ctx.hcm,
                retry.retries > 0,
                a.target.origin,
            );
            outcome.info.upstream_host = host.map(|h| h.authority.clone());
            outcome.info.response_flags = outcome.info.response_flags.with(exhausted);
            return finish(&a, outcome, attempt);
        }
        let wake = in_flight
            .iter()
            .filter_map(|f| f.per_try_at)
            .chain(next_at)
            .chain(deadline)
            .min();
        let event = tokio::select! {
            (i, result) = first_done(&mut in_flight) => Event::Done(i, result),
            _ = sleep_until(wake) => Event::Timer,
        };
        let (i, result) = match event {
            Event::Done(i, result) => (i, result),
            Event::Timer => {
                let now = Instant::now();
                if deadline.is_some_and(|d| d <= now) {
                    return route_timeout(&a, in_flight, attempt, retry.retries > 0, exhausted);
                }
                for f in in_flight.iter_mut() {
                    if f.per_try_at.is_none_or(|at| at > now) {
                        continue;
                    }
                    f.per_try_at = None;
                    if next_at.is_some() {
                        continue;
                    }
                    let body_kept = a.replay.as_ref().is_none_or(Replay::retriable);
                    let breakers = cluster.breakers.priority(priority);
                    let admit = || breakers.try_acquire_retry().map(Some).ok_or(());
                    match retry.decide_admitted(
                        Attempt::PerTryTimeout,
                        body_kept,
                        &cluster.stats,
                        admit,
                    ) {
                        Decision::Retry(wait) => next_at = Some(now + wait),
                        Decision::LimitExceeded => exhausted = flag("URX"),
                        Decision::Overflow => exhausted = flag("UO"),
                        Decision::NoRetry => {}
                    }
                }
                continue;
            }
        };
        let done = in_flight.remove(i);
        cluster.stats.upstream_rq_active.dec();
        done.host.stats.rq_active.fetch_sub(1, Relaxed);
        match &result {
            Ok(response) => {
                cluster
                    .health
                    .report(&done.host, HostResult::Http(response.status().as_u16()));
                cluster.response_headers(&done.host, response.headers());
            }
            Err(e) => {
                if let Some(r) = HostResult::from_error(e) {
                    cluster.health.report(&done.host, r);
                }
            }
        }
        let others = !in_flight.is_empty() || next_at.is_some();
        let answer = match &result {
            Ok(response) => Some(Attempt::Response(response.status(), response.headers())),
            Err(e) => failed_attempt(e),
        };
        // After its per-try timeout a hedge is under way: a failed answer is dropped.
        let hedged_already = done.per_try_at.is_none() && per_try.is_some();
        let decision = match answer {
            Some(answer) if hedged_already && others && retry.retriable(answer) => None,
            Some(answer) => {
                let body_kept = a.replay.as_ref().is_none_or(Replay::retriable);
                let breakers = cluster.breakers.priority(priority);
                let admit = || breakers.try_acquire_retry().map(Some).ok_or(());
                Some(retry.decide_admitted(answer, body_kept, &cluster.stats, admit))
            }
            None => Some(Decision::NoRetry),
        };
        match (decision, result) {
            // Dropped, or retried: counted as a retried attempt, and the next one scheduled.
            (None | Some(Decision::Retry(_)), result) => {
                match &result {
                    Ok(response) => {
                        cluster.stats.responses.retried(response.status());
                        count_host_response(&done.host.stats, response.status());
                    }
                    Err(e) => count_failure(cluster, &done.host.stats, e),
                }
                if let Some(Decision::Retry(wait)) = decision {
                    if next_at.is_none() {
                        next_at = Some(Instant::now() + wait);
                    }
                }
            }
            // A failure that is not retried while others may still answer: wait for them.
            (Some(_), Err(e)) if others => {
                count_failure(cluster, &done.host.stats, &e);
                last_failure = Some((e, done.host));
            }
            (Some(d), Err(e)) => {
                count_failure(cluster, &done.host.stats, &e);
                let mut outcome =
                    failure_reply(cluster, e, &a.ctx.hcm, retry.retries > 0, a.target.origin);
                outcome.info.upstream_host = Some(done.host.authority.clone());
                outcome.info.response_flags = outcome
                    .info
                    .response_flags
                    .with(exhausted)
                    .with(decision_flag(d));
                return finish(&a, outcome, attempt);
            }
            (Some(d), Ok(response)) => {
                // The winner: the others are reset by dropping them.
                drop_all(&a, in_flight);
                if done.attempt > 1 && d == Decision::NoRetry {
                    cluster.stats.retry.upstream_rq_retry_success.inc();
                }
                let idle = idle.map(|d| (d, &cluster.stats.retry.upstream_rq_per_try_idle_timeout));
                let mut outcome = answered(&mut a, &done.host, response, done.started, idle);
                outcome.info.response_flags = outcome
                    .info
                    .response_flags
                    .with(exhausted)
                    .with(decision_flag(d));
                return finish(&a, outcome, attempt);
            }
        }
    }
}

fn flag(name: &str) -> ResponseFlags {
    ResponseFlags::named(name).unwrap_or_default()
}

fn decision_flag(d: Decision) -> ResponseFlags {
    match d {
        Decision::LimitExceeded => flag("URX"),
        Decision::Overflow => flag("UO"),
        Decision::Retry(_) | Decision::NoRetry => ResponseFlags::NONE,
    }
}

/// The reply when the route timeout ends the request: every attempt in flight counts as a
/// timed-out request (Envoy counts `upstream_rq_timeout` and a 504 for each).
fn route_timeout(
    a: &Attempts<'_>,
    in_flight: Vec<InFlight<'_>>,
    attempts: u32,
    retried: bool,
    exhausted: ResponseFlags,
) -> Outcome {
    let cluster = a.cluster;
    let host = in_flight.last().map(|f| f.host.clone());
    if in_flight.is_empty() {
        cluster.stats.upstream_rq_timeout.inc();
    }
    for (i, f) in in_flight.iter().enumerate() {
        count_failure(cluster, &f.host.stats, &UpstreamError::Timeout);
        // `failure_reply` below charges the last one.
        if i + 1 < in_flight.len() {
            cluster
                .stats
                .responses
                .completed(http::StatusCode::GATEWAY_TIMEOUT, a.target.origin);
        }
    }
    drop_all(a, in_flight);
    let mut outcome = failure_reply(
        cluster,
        UpstreamError::Timeout,
        &a.ctx.hcm,
        retried,
        a.target.origin,
    );
    outcome.info.upstream_host = host.map(|h| h.authority.clone());
    outcome.info.response_flags = outcome.info.response_flags.with(exhausted);
    finish(a, outcome, attempts)
}

/// Resets the attempts still in flight (dropping a send drops its stream).
fn drop_all(a: &Attempts<'_>, in_flight: Vec<InFlight<'_>>) {
    for f in in_flight {
        a.cluster.stats.upstream_rq_active.dec();
        f.host.stats.rq_active.fetch_sub(1, Relaxed);
    }
}

fn finish(a: &Attempts<'_>, mut outcome: Outcome, attempts: u32) -> Outcome {
    if let Some(r) = &a.replay {
        r.release();
    }
    attempt_count_in_response(&mut outcome, a.target, attempts);
    outcome
}

/// The first attempt in flight to get its response head (pending while none is in flight).
async fn first_done(
    in_flight: &mut [InFlight<'_>],
) -> (usize, Result<Response<UpstreamIncoming>, UpstreamError>) {
    std::future::poll_fn(move |cx| {
        for (i, f) in in_flight.iter_mut().enumerate() {
            if let Poll::Ready(result) = f.send.as_mut().poll(cx) {
                return Poll::Ready((i, result));
            }
        }
        Poll::Pending
    })
    .await
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
