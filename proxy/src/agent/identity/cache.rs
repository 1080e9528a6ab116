//! Keeping the workload certificate current: issue one from the CA at start, renew it when the
//! grace part of its lifetime is reached, retry CA failures with jittered exponential backoff
//! for ever; or, with mounted certificates, serve the files and re-read them when they change.
//! Each new secret is published on a `watch` channel (SDS pushes from it) and, with
//! `OUTPUT_CERTS`, written out.

use super::caclient::CaClient;
use super::config::{Backoff, CaConfig, IdentityConfig};
use super::{csr, files, IdentityError, SecretWatch, WorkloadSecret};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Never renew more often than this, whatever the CA returns: a certificate issued already
/// (nearly) expired must not turn the loop into a request storm.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps the identity; dropping it stops the work (the last secret stays readable on the
/// receivers already taken).
pub struct WorkloadIdentity {
    secrets: SecretWatch,
    task: tokio::task::JoinHandle<()>,
}

impl WorkloadIdentity {
    /// Starts on the current tokio runtime.
    pub fn start(config: IdentityConfig) -> WorkloadIdentity {
        let (tx, secrets) = watch::channel(None);
        let task = tokio::spawn(run(config, tx));
        WorkloadIdentity { secrets, task }
    }

    /// A receiver of every new secret.
    pub fn subscribe(&self) -> SecretWatch {
        self.secrets.clone()
    }

    /// The secret now, if there is one yet.
    pub fn current(&self) -> Option<Arc<WorkloadSecret>> {
        self.secrets.borrow().clone()
    }

    /// Waits for the first secret.
    pub async fn ready(&self) -> Option<Arc<WorkloadSecret>> {
        let mut rx = self.secrets.clone();
        let ready = rx.wait_for(Option::is_some).await.ok()?.clone();
        ready
    }
}

impl Drop for WorkloadIdentity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(config: IdentityConfig, tx: watch::Sender<Option<Arc<WorkloadSecret>>>) {
    let publisher = Publisher {
        tx,
        output: writes_output(&config)
            .then(|| config.output_dir.clone())
            .flatten(),
        mode: config.output_mode,
    };
    let files_present =
        files::present(&config.files.cert_chain) && files::present(&config.files.key);
    match &config.ca {
        Some(ca) if !(files_present && reads_files(&config)) => {
            issue_loop(&config, ca, publisher).await
        }
        _ => {
            tracing::info!(target: "secret", "serving the certificate files {}", config.files.cert_chain.display());
            file_loop(&config, publisher).await
        }
    }
}

/// Istio never reads the well-known files when `OUTPUT_CERTS` writes into the same
/// directory: it would serve its own output and never renew.
fn reads_files(config: &IdentityConfig) -> bool {
    let Some(out) = &config.output_dir else {
        return true;
    };
    let dir = config.files.cert_chain.parent().unwrap_or(Path::new("."));
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(dir) != canonical(out)
}

fn writes_output(config: &IdentityConfig) -> bool {
    config.output_dir.is_some()
}

struct Publisher {
    tx: watch::Sender<Option<Arc<WorkloadSecret>>>,
    output: Option<std::path::PathBuf>,
    mode: u32,
}

impl Publisher {
    /// Publishes `secret` unless its content is what is already published.
    fn publish(&self, secret: WorkloadSecret) {
        let same = |current: &Option<Arc<WorkloadSecret>>| {
            current.as_ref().is_some_and(|c| {
                c.cert_chain_pem == secret.cert_chain_pem
                    && c.private_key_pem == secret.private_key_pem
                    && c.root_pem == secret.root_pem
            })
        };
        if same(&self.tx.borrow()) {
            return;
        }
        if let Some(dir) = &self.output {
            if let Err(e) = files::write_out(dir, self.mode, &secret) {
                tracing::warn!(target: "secret", "cannot write the certificates out: {e}");
            }
        }
        self.tx.send_replace(Some(Arc::new(secret)));
    }

    fn current(&self) -> Option<Arc<WorkloadSecret>> {
        self.tx.borrow().clone()
    }
}

async fn issue_loop(config: &IdentityConfig, ca: &CaConfig, publisher: Publisher) {
    let mut client = CaClient::new(ca.clone());
    let mut retry = Retry::new(ca.backoff);
    // A root bundle among the well-known files is served as ROOTCA in place of the CA's.
    let root_file = reads_files(config).then_some(config.files.root.as_path());
    loop {
        let secret = loop {
            match issue(config, &mut client).await {
                Ok(secret) => break secret,
                Err(e) => {
                    let wait = retry.next();
                    tracing::warn!(target: "secret", "cannot get a workload certificate from {}: {e}; retrying in {wait:?}", ca.address);
                    tokio::time::sleep(wait).await;
                }
            }
        };
        retry.reset();
        let delay = rotation_delay(
            secret.received,
            secret.not_after,
            config.grace_ratio,
            config.grace_ratio_jitter,
            unit_random(),
            SystemTime::now(),
        )
        .max(MIN_RENEWAL_INTERVAL);
        tracing::info!(
            target: "secret",
            "workload certificate for {} issued, valid for {:?}, renewing in {delay:?}",
            config.spiffe_id(),
            secret.not_after.duration_since(SystemTime::now()).unwrap_or_default()
        );
        let root_stamp = root_file.map(files::stamp);
        publisher.publish(with_root_file(secret, root_file));
        let deadline = tokio::time::Instant::now() + delay;
        // While waiting, follow the root file, whose rotation is independent of ours.
        let (Some(path), Some(mut seen)) = (root_file, root_stamp) else {
            tokio::time::sleep_until(deadline).await;
            continue;
        };
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + config.file_poll))
                .await;
            let now = files::stamp(path);
            if now != seen {
                seen = now;
                if let Some(current) = publisher.current() {
                    publisher.publish(with_root_file((*current).clone(), Some(path)));
                }
            }
        }
    }
}

/// `secret` with its root replaced by the bundle in `path`, when that file holds one.
fn with_root_file(mut secret: WorkloadSecret, path: Option<&Path>) -> WorkloadSecret {
    if let Some(path) = path.filter(|p| files::present(p)) {
        match files::read_root(path) {
            Ok(root) => secret.root_pem = root,
            Err(e) => tracing::warn!(target: "secret", "{e}; serving the CA's root"),
        }
    }
    secret
}

async fn issue(
    config: &IdentityConfig,
    client: &mut CaClient,
) -> Result<WorkloadSecret, IdentityError> {
    let pending = csr::new_request(&config.spiffe_id())?;
    let chain = client.sign(&pending.csr_pem, config.secret_ttl).await?;
    csr::accept(&chain, &pending)
}

async fn file_loop(config: &IdentityConfig, publisher: Publisher) {
    let mut seen = None;
    let mut last_error = None;
    loop {
        let now = files::stamps(&config.files);
        if seen.as_ref() != Some(&now) {
            let read = files::read_root(&config.files.root)
                .and_then(|root| files::read_key_cert(&config.files, root));
            match read {
                Ok(secret) => {
                    tracing::info!(target: "secret", "read the workload certificate from {}", config.files.cert_chain.display());
                    publisher.publish(secret);
                    seen = Some(now);
                    last_error = None;
                }
                Err(e) => {
                    // Half-written files are normal during a rotation: retry on the next poll,
                    // and say so once per distinct error.
                    let text = e.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(target: "secret", "cannot read the certificate files: {text}");
                        last_error = Some(text);
                    }
                }
            }
        }
        tokio::time::sleep(config.file_poll).await;
    }
}

/// How long until a certificate received at `received` and expiring at `not_after` is renewed,
/// Istio's way (`security/pkg/nodeagent/cache`): the grace ratio is moved up or down by
/// `unit_random × jitter` (the sign from the draw too), kept within [0, 1]; renewal is due
/// when that fraction of the lifetime (counted from reception, not from `notBefore`) is left.
/// `unit_random` is in [0, 1).
pub fn rotation_delay(
    received: SystemTime,
    not_after: SystemTime,
    grace_ratio: f64,
    jitter: f64,
    unit_random: f64,
    now: SystemTime,
) -> Duration {
    // One draw gives both the magnitude and the sign.
    let signed = unit_random * 2.0 - 1.0;
    let ratio = (grace_ratio + signed * jitter).clamp(0.0, 1.0);
    let lifetime = not_after.duration_since(received).unwrap_or_default();
    let grace = lifetime.mul_f64(ratio);
    let renew_at = not_after.checked_sub(grace).unwrap_or(received);
    renew_at.duration_since(now).unwrap_or_default()
}

fn unit_random() -> f64 {
    (crate::random::next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The retry schedule of one failure streak.
struct Retry {
    config: Backoff,
    interval: Duration,
}

impl Retry {
    fn new(config: Backoff) -> Retry {
        Retry {
            config,
            interval: config.initial,
        }
    }

    fn next(&mut self) -> Duration {
        let base = self.interval;
        self.interval = base
            .mul_f64(self.config.multiplier.max(1.0))
            .min(self.config.max);
        let factor = 1.0 + self.config.jitter.clamp(0.0, 1.0) * (unit_random() * 2.0 - 1.0);
        base.mul_f64(factor)
    }

    fn reset(&mut self) {
        self.interval = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_the_grace_ratio_of_the_lifetime_since_reception() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        // No jitter: half a day after reception.
        let d = rotation_delay(t0, t0 + day, 0.5, 0.0, 0.3, t0);
        assert_eq!(d, day / 2);
        // Later now: less left; past the renewal time: at once.
        assert_eq!(
            rotation_delay(t0, t0 + day, 0.5, 0.0, 0.3, t0 + day / 4),
            day / 4
        );
        assert_eq!(
            rotation_delay(t0, t0 + day, 0.5, 0.0, 0.3, t0 + day),
            Duration::ZERO
        );
        // Jitter moves the ratio by up to ±0.01 of the lifetime: about ±15 min over a day.
        let low = rotation_delay(t0, t0 + day, 0.5, 0.01, 0.0, t0);
        let high = rotation_delay(t0, t0 + day, 0.5, 0.01, 0.999_999, t0);
        assert!(low > day / 2 && low <= day / 2 + Duration::from_secs(865));
        assert!(high < day / 2 && high >= day / 2 - Duration::from_secs(865));
        // Ratios beyond [0, 1] are clamped.
        assert_eq!(
            rotation_delay(t0, t0 + day, 1.5, 0.0, 0.5, t0),
            Duration::ZERO
        );
        assert_eq!(rotation_delay(t0, t0 + day, -1.0, 0.0, 0.5, t0), day);
        // An already expired certificate: at once.
        assert_eq!(rotation_delay(t0, t0, 0.5, 0.0, 0.5, t0), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_maximum() {
        let mut retry = Retry::new(Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
            multiplier: 2.0,
            jitter: 0.5,
        });
        let waits: Vec<Duration> = (0..5).map(|_| retry.next()).collect();
        let bases = [100, 200, 400, 400, 400];
        for (wait, base) in waits.iter().zip(bases) {
            let base = Duration::from_millis(base);
            assert!(
                *wait >= base / 2 && *wait <= base * 3 / 2,
                "{wait:?} vs {base:?}"
            );
        }
        retry.reset();
        assert!(retry.next() <= Duration::from_millis(150));
    }
}
