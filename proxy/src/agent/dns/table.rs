//! The lookup table built from a name table, with Istio's agent semantics (pkg/dns/client):
//! which names a host answers under (FQDN, `svc.ns`, `svc` in the pod's namespace, `svc.ns.svc`,
//! alt hosts), the CNAME short-cut for the first resolv.conf search suffix, wildcards, and
//! NODATA for a known host asked for an address family it does not have. Pure: no I/O.

use super::nds::{NameInfo, NameTable, KUBERNETES_REGISTRY};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The TTL of every local answer: short, so clients that cache see new addresses soon.
pub const TTL_SECONDS: u32 = 30;

/// Where the proxy sits, which decides the names a Kubernetes host also answers under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalContext {
    /// The pod's namespace: short names (`svc.`) exist only for services in it.
    pub namespace: String,
    /// The DNS domain without a leading namespace label (`svc.cluster.local`).
    pub domain: String,
    /// `domain` split on dots; its first label forms `svc.ns.<label>.`.
    pub domain_parts: Vec<String>,
    /// resolv.conf's search list; only the first entry gets the CNAME short-cut.
    pub search: Vec<String>,
}

impl LocalContext {
    /// `domain` as pilot-agent's `--domain` gives it (`ns.svc.cluster.local`): a leading label
    /// equal to the namespace is dropped, as it would make every alt host redundant.
    pub fn new(namespace: &str, domain: &str, search: Vec<String>) -> Self {
        let mut parts: Vec<String> = domain.split('.').map(str::to_string).collect();
        if parts.first().map(String::as_str) == Some(namespace) {
            parts.remove(0);
        }
        Self {
            namespace: namespace.to_string(),
            domain: parts.join("."),
            domain_parts: parts,
            search,
        }
    }

    /// The names (each ending in a dot) a table entry answers under.
    pub fn alt_hosts(&self, hostname: &str, info: &NameInfo) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if info.registry != KUBERNETES_REGISTRY {
            if hostname.ends_with('.') {
                out.insert(hostname.to_string());
            } else {
                out.insert(format!("{hostname}."));
            }
            return out;
        }
        // Istio gives a Kubernetes host that already ends in a dot no names at all.
        if hostname.ends_with('.') {
            return out;
        }
        out.insert(format!("{hostname}."));
        // A service of another cluster domain gets no short names: `name.ns` could clash
        // across clusters. The test is a plain suffix, as Istio's is.
        let Some(first) = self.domain_parts.first() else {
            return out;
        };
        if self.domain.is_empty() || !hostname.ends_with(&self.domain) {
            return out;
        }
        let (short, ns) = (&info.shortname, &info.namespace);
        out.insert(format!("{short}.{ns}."));
        if self.namespace == *ns {
            out.insert(format!("{short}."));
        }
        out.insert(format!("{short}.{ns}.{first}."));
        for alt in &info.alt_hosts {
            out.insert(format!("{alt}."));
        }
        out
    }

    /// Calls `apply` with the names and the parsed addresses of every usable entry (one with
    /// at least one address that parses), in host name order.
    pub fn for_each_entry(
        &self,
        table: &NameTable,
        mut apply: impl FnMut(&BTreeSet<String>, &[Ipv4Addr], &[Ipv6Addr]),
    ) {
        for (hostname, info) in &table.table {
            let hosts = self.alt_hosts(hostname, info);
            let (v4, v6) = split_ips(&info.ips);
            if v4.is_empty() && v6.is_empty() {
                continue;
            }
            apply(&hosts, &v4, &v6);
        }
    }
}

/// Parses addresses, dropping what does not parse, split by family (a v4-mapped v6 address
/// stays v6, as Go's netip has it).
pub fn split_ips(ips: &[String]) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for ip in ips {
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => v4.push(a),
            Ok(IpAddr::V6(a)) => v6.push(a),
            Err(_) => tracing::debug!(target: "dns", "ignoring unparsable IP address {ip:?}"),
        }
    }
    (v4, v6)
}

/// The query types answered locally; anything else goes upstream even for a known host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressType {
    A,
    Aaaa,
}

/// One record of a local answer (class IN, TTL [`TTL_SECONDS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Cname { name: String, target: String },
    Address { name: String, ip: IpAddr },
}

/// Every name the table answers for, with its records prepared at build time so a query is a
/// couple of hash lookups.
#[derive(Debug, Default)]
pub struct LookupTable {
    /// Every known name: a query for one of these is answered here, if only with NODATA.
    all_hosts: HashSet<String>,
    v4: HashMap<String, Vec<Ipv4Addr>>,
    v6: HashMap<String, Vec<Ipv6Addr>>,
    /// `host.<first search suffix>.` → `host.`: the short-cut that spares a client's resolver
    /// walking its whole search list for a name it will find one query later.
    cname: HashMap<String, String>,
}

impl LookupTable {
    pub fn build(table: &NameTable, context: &LocalContext) -> Self {
        let mut out = LookupTable::default();
        let first_search = context.search.first();
        context.for_each_entry(table, |hosts, v4, v6| {
            for host in hosts {
                let h = host.to_ascii_lowercase();
                out.all_hosts.insert(h.clone());
                if !v4.is_empty() {
                    out.v4.insert(h.clone(), v4.to_vec());
                }
                if !v6.is_empty() {
                    out.v6.insert(h.clone(), v6.to_vec());
                }
                let Some(search) = first_search else {
                    continue;
                };
                if h.ends_with(&format!("{search}.")) {
                    continue;
                }
                let mut expanded = format!("{h}{search}").to_ascii_lowercase();
                if !search.ends_with('.') {
                    expanded.push('.');
                }
                // `svc.` + `ns.svc.cluster.local` may be a real name of this host already.
                if !hosts.contains(&expanded) {
                    out.cname.insert(expanded.clone(), h.clone());
                    out.all_hosts.insert(expanded);
                }
            }
        });
        out
    }

    /// How many names the table answers for (CNAME short-cuts included).
    pub fn len(&self) -> usize {
        self.all_hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all_hosts.is_empty()
    }

    /// The local answer for `hostname` (lower case, ending in a dot), or None when the query
    /// must go upstream: an unknown name, or a type other than A/AAAA. An empty answer is
    /// NODATA (NOERROR, nothing): never NXDOMAIN, which would make clients that ask A and AAAA
    /// together give up on the name.
    pub fn lookup(&self, qtype: Option<AddressType>, hostname: &str) -> Option<Vec<Answer>> {
        let question = hostname;
        let mut name = hostname.to_string();
        let mut wildcard = false;
        if !self.all_hosts.contains(&name) {
            // `a.b.example.com.` may be covered by `*.b.example.com.` or `*.example.com.`.
            let labels: Vec<&str> = hostname
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
                .collect();
            let found = (0..labels.len())
                .map(|i| format!("*.{}.", labels[i + 1..].join(".")))
                .find(|candidate| self.all_hosts.contains(candidate))?;
            wildcard = true;
            name = found;
        }
        let mut out = Vec::new();
        if let Some(target) = self.cname.get(&name) {
            out.push(Answer::Cname {
                name: question.to_string(),
                target: target.clone(),
            });
            name = target.clone();
        }
        let ips: Vec<IpAddr> = match qtype? {
            AddressType::A => self
                .v4
                .get(&name)
                .map(|v| v.iter().copied().map(IpAddr::V4).collect()),
            AddressType::Aaaa => self
                .v6
                .get(&name)
                .map(|v| v.iter().copied().map(IpAddr::V6).collect()),
        }
        .unwrap_or_default();
        if ips.is_empty() {
            // Known name, no address of that family: the CNAME is not sent alone either.
            return Some(Vec::new());
        }
        // A wildcard answers under the question's name, unless a CNAME points at the wildcard
        // name itself (the chained answer then names the target, as Istio's does).
        let owner = if wildcard && out.is_empty() {
            question.to_string()
        } else {
            name
        };
        out.extend(ips.into_iter().map(|ip| Answer::Address {
            name: owner.clone(),
            ip,
        }));
        Some(out)
    }
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
