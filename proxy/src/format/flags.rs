//! Envoy's response flags as a bit set, rendered in Envoy's order (`UF,URX`).
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#config-access-log-format-response-flags

use std::fmt::Write;

/// Every short name Envoy 1.40 knows, in the order it renders them. `response_flag_filter`
/// accepts exactly these.
pub const NAMES: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    pub const NONE: Self = Self(0);

    /// The flag with short name `name` (`"UF"`), if Envoy has one.
    pub fn named(name: &str) -> Option<Self> {
        NAMES.iter().position(|n| *n == name).map(|i| Self(1 << i))
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    pub fn short_string(self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    /// `UF,URX`, or `-` when no flag is set (in text and JSON alike, as Envoy writes it).
    pub fn write(self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut first = true;
        for (i, name) in NAMES.iter().enumerate() {
            if self.0 & (1 << i) != 0 {
                if !first {
                    out.push(',');
                }
                first = false;
                let _ = out.write_str(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_envoy_order() {
        let named = |n| ResponseFlags::named(n).expect("known flag");
        let mut out = String::new();
        named("URX").with(named("UF")).write(&mut out);
        assert_eq!(out, "UF,URX");
        out.clear();
        ResponseFlags::NONE.write(&mut out);
        assert_eq!(out, "-");
        assert!(ResponseFlags::named("XX").is_none());
        assert!(named("NR").intersects(named("NR").with(named("UH"))));
    }
}
