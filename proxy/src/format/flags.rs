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

/// A set of response flags that remembers the order they were set in: Envoy 1.40 renders
/// them in that order (an HTTP retry that ran out writes `URX,UF`, the limit being noted
/// before the failure; the TCP proxy's `UF,URX` the other way round).
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFlags {
    bits: u32,
    /// Up to 12 flags in the order set, 5 bits each (index + 1; 0 ends the list).
    order: u64,
}

impl PartialEq for ResponseFlags {
    fn eq(&self, other: &Self) -> bool {
        self.bits == other.bits
    }
}

impl Eq for ResponseFlags {}

const ORDERED: usize = 12;

/// Equal sets hash alike, whatever order their flags were set in.
impl std::hash::Hash for ResponseFlags {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bits.hash(state);
    }
}

impl ResponseFlags {
    pub const NONE: Self = Self { bits: 0, order: 0 };

    /// The flag with short name `name` (`"UF"`), if Envoy has one.
    pub fn named(name: &str) -> Option<Self> {
        NAMES.iter().position(|n| *n == name).map(|i| Self {
            bits: 1 << i,
            order: i as u64 + 1,
        })
    }

    /// The flags in the order they were set.
    fn ordered(self) -> impl Iterator<Item = usize> {
        (0..ORDERED)
            .map(move |slot| ((self.order >> (slot * 5)) & 0x1f) as usize)
            .take_while(|i| *i != 0)
            .map(|i| i - 1)
    }

    /// These flags, then those of `other` not set yet.
    pub fn with(self, other: Self) -> Self {
        let mut out = self;
        for i in other.ordered() {
            if out.bits & (1 << i) != 0 {
                continue;
            }
            out.bits |= 1 << i;
            let used = out.ordered().count();
            if used < ORDERED {
                out.order |= (i as u64 + 1) << (used * 5);
            }
        }
        // Flags past the ordered list still count (and render after it).
        out.bits |= other.bits;
        out
    }

    pub fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// Whether any flag of `other` is set.
    pub fn intersects(self, other: Self) -> bool {
        self.bits & other.bits != 0
    }

    pub fn short_string(self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    /// `URX,UF`, or `-` when no flag is set (in text and JSON alike, as Envoy writes it).
    pub fn write(self, out: &mut String) {
        if self.is_empty() {
            out.push('-');
            return;
        }
        let mut written = 0u32;
        let unordered = (0..NAMES.len()).filter(|i| self.bits & (1 << i) != 0);
        for i in self.ordered().chain(unordered) {
            if written & (1 << i) != 0 {
                continue;
            }
            if written != 0 {
                out.push(',');
            }
            written |= 1 << i;
            let _ = out.write_str(NAMES[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_render_in_the_order_they_were_set() {
        let named = |n| ResponseFlags::named(n).expect("known flag");
        let mut out = String::new();
        named("URX").with(named("UF")).write(&mut out);
        assert_eq!(out, "URX,UF");
        out.clear();
        named("UF")
            .with(named("URX"))
            .with(named("UF"))
            .write(&mut out);
        assert_eq!(out, "UF,URX");
        assert_eq!(
            named("UF").with(named("URX")),
            named("URX").with(named("UF"))
        );
        out.clear();
        ResponseFlags::NONE.write(&mut out);
        assert_eq!(out, "-");
        assert!(ResponseFlags::named("XX").is_none());
        assert!(named("NR").intersects(named("NR").with(named("UH"))));
    }
}
