//! The agent's DNS proxy (pilot-agent's :15053) run in-process on a free port with a name
//! table, queried with `dig` over UDP and TCP: table hosts and their short names, AAAA and
//! NODATA, the search-suffix CNAME, truncation, forwarding of everything else to a scripted
//! upstream named in a temporary resolv.conf, table swaps, and malformed packets.

use outrigger::agent::dns::{DnsConfig, DnsProxy, NameInfo, NameTable};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tests::dns::{dig, ScriptedDns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEARCH: &str = "search ns1.svc.cluster.local svc.cluster.local cluster.local";

fn info(ips: &[&str], registry: &str, short: &str, ns: &str) -> NameInfo {
    NameInfo {
        ips: ips.iter().map(|s| s.to_string()).collect(),
        registry: registry.into(),
        shortname: short.into(),
        namespace: ns.into(),
        alt_hosts: Vec::new(),
    }
}

fn name_table() -> NameTable {
    let mut t = NameTable::default();
    t.table.insert(
        "productpage.ns1.svc.cluster.local".into(),
        info(&["10.0.0.9"], "Kubernetes", "productpage", "ns1"),
    );
    t.table.insert(
        "reviews.ns2.svc.cluster.local".into(),
        info(&["10.0.0.10"], "Kubernetes", "reviews", "ns2"),
    );
    t.table.insert(
        "dual.example.com".into(),
        info(&["240.240.0.1", "2001:db8::1"], "External", "", ""),
    );
    let many: Vec<String> = (1..=60).map(|i| format!("10.1.0.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    t.table.insert(
        "headless.ns1.svc.cluster.local".into(),
        info(&many, "Kubernetes", "headless", "ns1"),
    );
    t
}

struct Setup {
    proxy: DnsProxy,
    upstream: ScriptedDns,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A proxy for a pod in `ns1` whose resolv.conf names the scripted upstream(s).
async fn setup(extra_nameservers: &[&str], tweak: impl FnOnce(&mut DnsConfig)) -> Setup {
    let upstream = ScriptedDns::start(
        Ipv4Addr::LOCALHOST,
        &[("www.example.org.", Ipv4Addr::new(93, 184, 216, 34))],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    let mut text = format!("{SEARCH}\nnameserver 127.0.0.1\n");
    for ns in extra_nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    text.push_str("options ndots:5\n");
    std::fs::write(&resolv, text).expect("write resolv.conf");
    let mut config = DnsConfig::new("ns1", "ns1.svc.cluster.local");
    config.addr = "127.0.0.1:0".into();
    config.resolv_conf = resolv;
    config.upstream_port = upstream.addr.port();
    tweak(&mut config);
    let proxy = DnsProxy::start(config).await.expect("start the DNS proxy");
    let addr = proxy.udp_addrs()[0];
    assert_eq!(proxy.tcp_addrs()[0], addr, "UDP and TCP share the port");
    Setup {
        proxy,
        upstream,
        addr,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_table_and_forwards_the_rest() {
    let s = setup(&[], |_| {}).await;
    // Before the table arrives: SERVFAIL, not ready, nothing forwarded.
    assert!(!s.proxy.is_ready());
    assert_eq!(s.proxy.ndsz(), None);
    let early = dig(s.addr, "www.example.org", "A", &[]).await;
    assert_eq!(early.status, "SERVFAIL", "{}", early.output);
    assert!(s.upstream.asked().is_empty());

    let mut ready = s.proxy.ready();
    s.proxy.update(name_table());
    assert!(*ready.borrow_and_update());
    assert!(s.proxy.is_ready());

    for transport in [&[][..], &["+tcp"][..]] {
        for name in [
            "productpage.ns1.svc.cluster.local",
            "productpage.ns1",
            "productpage.ns1.svc",
            "productpage",
        ] {
            let r = dig(s.addr, name, "A", transport).await;
            assert_eq!(r.status, "NOERROR", "{name} {transport:?}: {}", r.output);
            assert!(r.has_flag("aa"), "{}", r.output);
            assert_eq!(r.data("A"), ["10.0.0.9"], "{name}: {}", r.output);
            assert!(r.answers[0].contains(" 30 "), "TTL 30: {}", r.output);
        }
        // Another namespace's service: `svc.ns` yes, the bare short name goes upstream.
        let r = dig(s.addr, "reviews.ns2", "A", transport).await;
        assert_eq!(r.data("A"), ["10.0.0.10"], "{}", r.output);
        let r = dig(s.addr, "reviews", "A", transport).await;
        assert_eq!(r.status, "NXDOMAIN", "{}", r.output);

        let r = dig(s.addr, "dual.example.com", "AAAA", transport).await;
        assert_eq!(r.data("AAAA"), ["2001:db8::1"], "{}", r.output);
        // A known host without an address of the family: NOERROR with nothing (NODATA).
        let r = dig(
            s.addr,
            "productpage.ns1.svc.cluster.local",
            "AAAA",
            transport,
        )
        .await;
        assert_eq!(
            (r.status.as_str(), r.answers.len()),
            ("NOERROR", 0),
            "{}",
            r.output
        );
        assert!(r.has_flag("aa"));

        // The resolver's first search expansion: a CNAME to the real name, chained.
        let r = dig(
            s.addr,
            "dual.example.com.ns1.svc.cluster.local",
            "A",
            transport,
        )
        .await;
        assert_eq!(r.data("CNAME"), ["dual.example.com."], "{}", r.output);
        assert_eq!(r.data("A"), ["240.240.0.1"], "{}", r.output);

        // Unknown names and other types go upstream, over the client's transport.
        let r = dig(s.addr, "www.example.org", "A", transport).await;
        assert_eq!(r.data("A"), ["93.184.216.34"], "{}", r.output);
        assert!(
            r.has_flag("ra"),
            "the upstream's flags pass through: {}",
            r.output
        );
        let r = dig(s.addr, "nowhere.example.org", "A", transport).await;
        assert_eq!(r.status, "NXDOMAIN", "{}", r.output);
        let r = dig(
            s.addr,
            "productpage.ns1.svc.cluster.local",
            "TXT",
            transport,
        )
        .await;
        assert_eq!(r.status, "NXDOMAIN", "TXT is forwarded: {}", r.output);
    }
    let asked = s.upstream.asked();
    let forwarded = |name: &str, transport: &str| {
        asked
            .iter()
            .filter(|a| a.name == name && a.transport == transport)
            .count()
    };
    assert_eq!(forwarded("www.example.org.", "udp"), 1, "{asked:?}");
    assert_eq!(forwarded("www.example.org.", "tcp"), 1, "{asked:?}");
    assert_eq!(forwarded("reviews.", "udp"), 1, "{asked:?}");
    assert_eq!(forwarded("productpage.", "udp"), 0, "{asked:?}");
    assert!(asked
        .iter()
        .any(|a| a.name == "productpage.ns1.svc.cluster.local." && a.qtype == "TXT"));

    // 25 queries, one before the table; 4 per transport went upstream (the early one
    // did not: SERVFAIL before the table is not an upstream request).
    let m = s.proxy.metrics();
    assert_eq!(m.requests(), 1 + 2 * 12);
    assert_eq!(m.upstream_requests(), 2 * 4);
    assert_eq!(m.upstream_failures(), 0);
    let text = m.render_prometheus();
    assert!(
        text.contains("istio_agent_dns_requests_total 25\n"),
        "{text}"
    );

    let ndsz: serde_json::Value =
        serde_json::from_str(&s.proxy.ndsz().expect("a table")).expect("ndsz is JSON");
    let table = &ndsz["table"];
    assert_eq!(
        table["productpage.ns1.svc.cluster.local"]["shortname"],
        "productpage"
    );
    assert_eq!(table["productpage."]["ips"][0], "10.0.0.9");
    assert_eq!(table["reviews.ns2.svc."]["registry"], "Kubernetes");
    assert!(table.get("reviews.").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_over_udp_and_full_answers_over_tcp() {
    let s = setup(&[], |_| {}).await;
    s.proxy.update(name_table());
    // 60 table addresses do not fit 512 bytes: TC, and dig (told to ignore it) shows a part.
    let udp = dig(s.addr, "headless", "A", &["+noedns", "+ignore"]).await;
    assert!(udp.has_flag("tc"), "{}", udp.output);
    let kept = udp.data("A").len();
    assert!(kept > 0 && kept < 60, "{}", udp.output);
    // With EDNS's larger buffer, or over TCP, everything.
    let edns = dig(s.addr, "headless", "A", &["+bufsize=4096"]).await;
    assert_eq!(edns.data("A").len(), 60, "{}", edns.output);
    let tcp = dig(s.addr, "headless", "A", &["+tcp"]).await;
    assert_eq!(tcp.data("A").len(), 60, "{}", tcp.output);
    // dig retries a truncated reply over TCP by itself.
    let retried = dig(s.addr, "headless", "A", &["+noedns"]).await;
    assert_eq!(retried.data("A").len(), 60, "{}", retried.output);

    // The same for an upstream answer: over UDP the upstream itself can only send what the
    // query allows (it overflows 512 bytes: SERVFAIL, as Istio's agent answers); over TCP all.
    let big_tcp = dig(s.addr, "big.test", "A", &["+tcp"]).await;
    assert_eq!(big_tcp.data("A").len(), 64, "{}", big_tcp.output);
    let big_udp = dig(s.addr, "big.test", "A", &["+noedns", "+ignore"]).await;
    assert_eq!(big_udp.status, "SERVFAIL", "{}", big_udp.output);
    let big_edns = dig(s.addr, "big.test", "A", &["+bufsize=4096"]).await;
    assert_eq!(big_edns.data("A").len(), 64, "{}", big_edns.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_table_answers_the_next_query() {
    let s = setup(&[], |_| {}).await;
    s.proxy.update(name_table());
    let before = dig(s.addr, "productpage", "A", &[]).await;
    assert_eq!(before.data("A"), ["10.0.0.9"]);
    let mut next = NameTable::default();
    next.table.insert(
        "productpage.ns1.svc.cluster.local".into(),
        info(&["10.0.0.99"], "Kubernetes", "productpage", "ns1"),
    );
    next.table.insert(
        "new.ns1.svc.cluster.local".into(),
        info(&["10.0.0.50"], "Kubernetes", "new", "ns1"),
    );
    s.proxy.update(next);
    let after = dig(s.addr, "productpage", "A", &["+tcp"]).await;
    assert_eq!(after.data("A"), ["10.0.0.99"], "{}", after.output);
    let added = dig(s.addr, "new", "A", &[]).await;
    assert_eq!(added.data("A"), ["10.0.0.50"], "{}", added.output);
    // Gone from the table: now an upstream question.
    let gone = dig(s.addr, "reviews.ns2", "A", &[]).await;
    assert_eq!(gone.status, "NXDOMAIN", "{}", gone.output);
}

/// Sends one datagram and returns the reply, if one comes within a second.
async fn udp_exchange(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket.send_to(packet, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf[..n].to_vec())
}

fn rcode(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_get_formerr_or_silence_and_the_server_lives_on() {
    let s = setup(&[], |_| {}).await;
    s.proxy.update(name_table());
    // Shorter than a header, and a response (QR set): dropped without a reply.
    assert_eq!(udp_exchange(s.addr, &[1, 2, 3]).await, None);
    let response = [0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    assert_eq!(udp_exchange(s.addr, &response).await, None);
    // Two questions in the header: FORMERR with the id kept.
    let two = [0x12, 0x34, 0x01, 0, 0, 2, 0, 0, 0, 0, 0, 0];
    let reply = udp_exchange(s.addr, &two).await.expect("a FORMERR reply");
    assert_eq!((reply[0], reply[1], rcode(&reply)), (0x12, 0x34, 1));
    // One question announced, its name cut off in the middle: FORMERR.
    let cut = [0x00, 0x07, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, b'a', b'b'];
    let reply = udp_exchange(s.addr, &cut).await.expect("a FORMERR reply");
    assert_eq!(rcode(&reply), 1);
    // An UPDATE (opcode 5): NOTIMP.
    let update = [0x00, 0x08, 0x28, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    let reply = udp_exchange(s.addr, &update).await.expect("a NOTIMP reply");
    assert_eq!(rcode(&reply), 4);
    // Random bytes of every length, then garbage over TCP (a bogus length, then a close).
    for len in 0..64usize {
        let junk: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(37) ^ len as u8)
            .collect();
        let _ = udp_exchange_nowait(s.addr, &junk).await;
    }
    let mut tcp = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    tcp.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await;
    drop(tcp);
    let mut idle = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    idle.write_all(&[0x40]).await.expect("write");
    drop(idle);
    // Still serving, both transports.
    let r = dig(s.addr, "productpage", "A", &[]).await;
    assert_eq!(r.data("A"), ["10.0.0.9"], "{}", r.output);
    let r = dig(s.addr, "productpage", "A", &["+tcp"]).await;
    assert_eq!(r.data("A"), ["10.0.0.9"], "{}", r.output);
}

async fn udp_exchange_nowait(server: SocketAddr, packet: &[u8]) -> std::io::Result<()> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(packet, server).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_failures_and_parallel_forwarding() {
    // A second nameserver on 127.0.0.2 (same port) that never answers.
    let s = setup(&["127.0.0.2"], |c| {
        c.forward_parallel = true;
        c.forward_timeout = Duration::from_secs(30);
    })
    .await;
    let _silent = tokio::net::UdpSocket::bind(("127.0.0.2", s.upstream.addr.port()))
        .await
        .expect("bind the silent nameserver");
    s.proxy.update(name_table());
    // In parallel the live nameserver's answer wins at once, whichever is first in the list.
    for _ in 0..4 {
        let r = dig(s.addr, "www.example.org", "A", &[]).await;
        assert_eq!(r.data("A"), ["93.184.216.34"], "{}", r.output);
    }
    drop(s);

    // Serially, with a short timeout, a name nobody answers: SERVFAIL once every nameserver
    // timed out, counted as an upstream failure.
    let s = setup(&[], |c| c.forward_timeout = Duration::from_millis(300)).await;
    s.proxy.update(name_table());
    let r = dig(s.addr, "silent.test", "A", &[]).await;
    assert_eq!(r.status, "SERVFAIL", "{}", r.output);
    assert_eq!(s.proxy.metrics().upstream_failures(), 1);
    let r = dig(s.addr, "silent.test", "A", &["+tcp"]).await;
    assert_eq!(r.status, "SERVFAIL", "{}", r.output);
    assert_eq!(s.proxy.metrics().upstream_failures(), 2);
}
