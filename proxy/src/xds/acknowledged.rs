//! Fields of xDS resources that are accepted without being acted on (see
//! `config/fields.rs`) are logged, as the bootstrap's are at startup, so that an ACK is never
//! read as "supported". Control planes resend the same resources on every push, so each field
//! of each resource is reported once.

use super::records::Kind;
use crate::config::fields::Acknowledged;
use std::collections::HashSet;

#[derive(Debug, Default)]
pub struct AcknowledgedFields {
    reported: HashSet<(Kind, String, String)>,
}

impl AcknowledgedFields {
    pub fn report(&mut self, kind: Kind, name: &str, acknowledged: Vec<Acknowledged>) {
        for ack in acknowledged {
            if self
                .reported
                .insert((kind, name.to_string(), ack.path.clone()))
            {
                tracing::warn!(target: "config", "{} '{name}': {} is accepted but not acted on: {}", kind.short(), ack.path, ack.reason);
            }
        }
    }

    /// Forgets a removed resource, so that a later one of the same name is reported afresh.
    pub fn forget(&mut self, kind: Kind, name: &str) {
        self.reported.retain(|(k, n, _)| !(*k == kind && n == name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(path: &str) -> Acknowledged {
        Acknowledged {
            path: path.to_string(),
            reason: "a reason",
        }
    }

    #[test]
    fn each_field_of_each_resource_is_reported_once_until_the_resource_goes() {
        let mut fields = AcknowledgedFields::default();
        fields.report(Kind::Cluster, "a", vec![ack("x"), ack("y")]);
        fields.report(Kind::Cluster, "a", vec![ack("x"), ack("y")]);
        fields.report(Kind::Listener, "a", vec![ack("x")]);
        assert_eq!(fields.reported.len(), 3);
        fields.forget(Kind::Cluster, "a");
        assert_eq!(fields.reported.len(), 1);
        fields.report(Kind::Cluster, "a", vec![ack("x")]);
        assert_eq!(fields.reported.len(), 2);
    }
}
