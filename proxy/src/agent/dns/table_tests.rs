//! The lookup table against the cases Istio's agent answers: a pod in `ns1` with the domain
//! `ns1.svc.cluster.local` and the usual Kubernetes search list.

use super::*;

fn entry(ips: &[&str], registry: &str, short: &str, ns: &str) -> NameInfo {
    NameInfo {
        ips: ips.iter().map(|s| s.to_string()).collect(),
        registry: registry.into(),
        shortname: short.into(),
        namespace: ns.into(),
        alt_hosts: Vec::new(),
    }
}

fn context() -> LocalContext {
    LocalContext::new(
        "ns1",
        "ns1.svc.cluster.local",
        vec![
            "ns1.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
    )
}

fn name_table() -> NameTable {
    let mut t = NameTable::default();
    let mut add = |host: &str, info: NameInfo| {
        t.table.insert(host.into(), info);
    };
    add("www.google.com", entry(&["1.1.1.1"], "External", "", ""));
    add(
        "productpage.ns1.svc.cluster.local",
        entry(&["9.9.9.9"], "Kubernetes", "productpage", "ns1"),
    );
    add(
        "example.ns2.svc.cluster.local",
        entry(&["10.10.10.10"], "Kubernetes", "example", "ns2"),
    );
    add(
        "details.ns2.svc.cluster.remote",
        entry(
            &["11.11.11.11", "12.12.12.12"],
            "Kubernetes",
            "details",
            "ns2",
        ),
    );
    let mut alt = entry(&["15.15.15.15"], "Kubernetes", "svc-with-alt", "ns1");
    alt.alt_hosts = vec!["svc-with-alt.ns1.svc.clusterset.local".into()];
    add("svc-with-alt.ns1.svc.cluster.local", alt);
    add(
        "ipv6.localhost",
        entry(&["2001:db8::ff00:42:8329"], "External", "", ""),
    );
    add(
        "dual.localhost",
        entry(&["2.2.2.2", "2001:db8::ff00:42:8329"], "External", "", ""),
    );
    add("ipv4.localhost", entry(&["2.2.2.2"], "External", "", ""));
    add("*.b.wildcard", entry(&["11.11.11.11"], "External", "", ""));
    add("*.wildcard", entry(&["10.10.10.10"], "External", "", ""));
    add(
        "*.svc.mesh.company.net",
        entry(&["10.1.2.3"], "External", "", ""),
    );
    add(
        "example.localhost.",
        entry(&["3.3.3.3"], "External", "", ""),
    );
    add("bad.ips", entry(&["not-an-ip"], "External", "", ""));
    add(
        "autoallocated.example.com",
        entry(&["240.240.0.1", "2001:2::1"], "External", "", ""),
    );
    t
}

fn table() -> LookupTable {
    LookupTable::build(&name_table(), &context())
}

fn a(name: &str, ip: &str) -> Answer {
    Answer::Address {
        name: name.into(),
        ip: ip.parse().expect("test ip"),
    }
}

fn cname(name: &str, target: &str) -> Answer {
    Answer::Cname {
        name: name.into(),
        target: target.into(),
    }
}

const A: Option<AddressType> = Some(AddressType::A);
const AAAA: Option<AddressType> = Some(AddressType::Aaaa);

#[test]
fn fqdn_and_external_hosts() {
    let t = table();
    assert_eq!(
        t.lookup(A, "www.google.com."),
        Some(vec![a("www.google.com.", "1.1.1.1")])
    );
    assert_eq!(
        t.lookup(A, "productpage.ns1.svc.cluster.local."),
        Some(vec![a("productpage.ns1.svc.cluster.local.", "9.9.9.9")])
    );
    // A host that already ends in a dot keeps its name.
    assert_eq!(
        t.lookup(A, "example.localhost."),
        Some(vec![a("example.localhost.", "3.3.3.3")])
    );
    assert_eq!(t.lookup(A, "www.bing.com."), None);
    assert_eq!(t.lookup(A, "bad.ips."), None);
}

#[test]
fn kubernetes_short_forms() {
    let t = table();
    for q in ["productpage.", "productpage.ns1.", "productpage.ns1.svc."] {
        assert_eq!(t.lookup(A, q), Some(vec![a(q, "9.9.9.9")]), "{q}");
    }
    for q in [
        "example.ns2.",
        "example.ns2.svc.",
        "example.ns2.svc.cluster.local.",
    ] {
        assert_eq!(t.lookup(A, q), Some(vec![a(q, "10.10.10.10")]), "{q}");
    }
    // The bare short name exists only for the pod's own namespace.
    assert_eq!(t.lookup(A, "example."), None);
    // A service of another cluster domain is known only by its full name.
    assert!(t.lookup(A, "details.ns2.svc.cluster.remote.").is_some());
    assert_eq!(t.lookup(A, "details.ns2."), None);
    for q in [
        "svc-with-alt.",
        "svc-with-alt.ns1.",
        "svc-with-alt.ns1.svc.",
        "svc-with-alt.ns1.svc.cluster.local.",
        "svc-with-alt.ns1.svc.clusterset.local.",
    ] {
        assert_eq!(t.lookup(A, q), Some(vec![a(q, "15.15.15.15")]), "{q}");
    }
    // Only `svc.ns.<first domain label>` is built, not every suffix of the domain.
    assert_eq!(t.lookup(A, "productpage.ns1.svc.cluster."), None);
}

#[test]
fn first_search_suffix_is_a_cname_to_the_host() {
    let t = table();
    assert_eq!(
        t.lookup(A, "www.google.com.ns1.svc.cluster.local."),
        Some(vec![
            cname("www.google.com.ns1.svc.cluster.local.", "www.google.com."),
            a("www.google.com.", "1.1.1.1"),
        ])
    );
    assert_eq!(
        t.lookup(A, "productpage.ns1.ns1.svc.cluster.local."),
        Some(vec![
            cname("productpage.ns1.ns1.svc.cluster.local.", "productpage.ns1."),
            a("productpage.ns1.", "9.9.9.9"),
        ])
    );
    // Known, but no IPv6: NODATA, and the CNAME is not sent alone.
    assert_eq!(
        t.lookup(AAAA, "productpage.ns1.ns1.svc.cluster.local."),
        Some(vec![])
    );
    // A name already under the first suffix gets no expansion: it goes upstream.
    assert_eq!(
        t.lookup(
            A,
            "productpage.ns1.svc.cluster.local.ns1.svc.cluster.local."
        ),
        None
    );
    // Only the first search suffix is short-cut.
    assert_eq!(t.lookup(A, "www.google.com.svc.cluster.local."), None);
}

#[test]
fn address_families() {
    let t = table();
    assert_eq!(
        t.lookup(A, "dual.localhost."),
        Some(vec![a("dual.localhost.", "2.2.2.2")])
    );
    assert_eq!(
        t.lookup(AAAA, "dual.localhost."),
        Some(vec![a("dual.localhost.", "2001:db8::ff00:42:8329")])
    );
    assert_eq!(t.lookup(A, "ipv6.localhost."), Some(vec![]));
    assert_eq!(t.lookup(AAAA, "ipv4.localhost."), Some(vec![]));
    // Auto-allocated addresses are ordinary table addresses.
    assert_eq!(
        t.lookup(AAAA, "autoallocated.example.com."),
        Some(vec![a("autoallocated.example.com.", "2001:2::1")])
    );
    // Other types are not answered here, even for a known host.
    assert_eq!(t.lookup(None, "www.google.com."), None);
}

#[test]
fn wildcards() {
    let t = table();
    assert_eq!(
        t.lookup(A, "foo.wildcard."),
        Some(vec![a("foo.wildcard.", "10.10.10.10")])
    );
    // The most specific wildcard wins.
    assert_eq!(
        t.lookup(A, "a.b.wildcard."),
        Some(vec![a("a.b.wildcard.", "11.11.11.11")])
    );
    assert_eq!(
        t.lookup(A, "foo.foons.svc.mesh.company.net."),
        Some(vec![a("foo.foons.svc.mesh.company.net.", "10.1.2.3")])
    );
    // Under the search suffix: a CNAME to the wildcard name, which then owns the address.
    assert_eq!(
        t.lookup(A, "foo.wildcard.ns1.svc.cluster.local."),
        Some(vec![
            cname("foo.wildcard.ns1.svc.cluster.local.", "*.wildcard."),
            a("*.wildcard.", "10.10.10.10"),
        ])
    );
    assert_eq!(t.lookup(A, "wildcard."), None);
}

#[test]
fn context_strips_the_namespace_from_the_domain() {
    let c = LocalContext::new("ns1", "ns1.svc.cluster.local", Vec::new());
    assert_eq!(c.domain, "svc.cluster.local");
    assert_eq!(c.domain_parts, ["svc", "cluster", "local"]);
    let c = LocalContext::new("ns1", "svc.cluster.local", Vec::new());
    assert_eq!(c.domain, "svc.cluster.local");
    // No domain: Kubernetes hosts are known by their full name only.
    let c = LocalContext::new("ns1", "", Vec::new());
    let hosts = c.alt_hosts(
        "productpage.ns1.svc.cluster.local",
        &entry(&["9.9.9.9"], "Kubernetes", "productpage", "ns1"),
    );
    assert_eq!(
        hosts.into_iter().collect::<Vec<_>>(),
        ["productpage.ns1.svc.cluster.local."]
    );
}

#[test]
fn no_search_list_means_no_cnames() {
    let t = LookupTable::build(
        &name_table(),
        &LocalContext::new("ns1", "ns1.svc.cluster.local", Vec::new()),
    );
    assert_eq!(t.lookup(A, "www.google.com.ns1.svc.cluster.local."), None);
    assert!(t.lookup(A, "productpage.").is_some());
}
