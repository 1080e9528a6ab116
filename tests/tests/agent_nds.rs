//! NDS over ADS: the proxy library runs an ADS bootstrap in-process with the DNS proxy's
//! consumer registered (as the sidecar command will), against the test control plane, state of
//! the world and delta. The name table is asked for after the first LDS request, ACKed, handed
//! to the DNS proxy (dig sees it), an undecodable one is NACKed while the last good table keeps
//! answering, and a new stream asks again. An Envoy bootstrap alone never asks for NDS.

use outrigger::agent::dns::{DnsConfig, DnsProxy, NameInfo, NameTable, NAME_TABLE_TYPE_URL};
use std::time::{Duration, Instant};
use tests::control_plane::{ControlPlane, Recorded, LISTENER, NAME_TABLE};
use tests::dns::dig;
use tests::free_port;
use tests::xds_resources::ads_bootstrap;
use xds_proto::pb::google::protobuf::Any;

fn table(ip: &str) -> NameTable {
    let mut t = NameTable::default();
    t.table.insert(
        "productpage.ns1.svc.cluster.local".into(),
        NameInfo {
            ips: vec![ip.into()],
            registry: "Kubernetes".into(),
            shortname: "productpage".into(),
            namespace: "ns1".into(),
            alt_hosts: Vec::new(),
        },
    );
    t
}

fn packed(t: &NameTable) -> Vec<(String, Any)> {
    vec![(
        String::new(),
        Any {
            type_url: NAME_TABLE_TYPE_URL.into(),
            value: outrigger::agent::dns::nds::encode(t),
        },
    )]
}

fn nds(requests: &[Recorded]) -> Vec<&Recorded> {
    requests
        .iter()
        .filter(|r| r.type_url == NAME_TABLE)
        .collect()
}

async fn wait_for(
    cp: &ControlPlane,
    what: &str,
    done: impl Fn(&[Recorded]) -> bool,
) -> Vec<Recorded> {
    tokio::task::block_in_place(|| cp.wait_for(Duration::from_secs(15), what, done))
}

async fn answer(addr: std::net::SocketAddr, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = dig(addr, "productpage", "A", &[]).await;
        if r.data("A") == [want] {
            return;
        }
        assert!(Instant::now() < deadline, "wanted {want}, got {}", r.output);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The control plane runs its own runtime, so it starts outside the test's.
fn nds_over_ads(delta: bool) {
    let cp = ControlPlane::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(run(&cp, delta));
}

async fn run(cp: &ControlPlane, delta: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "search ns1.svc.cluster.local\nnameserver 127.0.0.1\n",
    )
    .expect("write resolv.conf");
    let mut config = DnsConfig::new("ns1", "ns1.svc.cluster.local");
    config.addr = "127.0.0.1:0".into();
    config.resolv_conf = resolv;
    config.upstream_port = free_port();
    let dns = DnsProxy::start(config).await.expect("start the DNS proxy");
    let addr = dns.udp_addrs()[0];

    let yaml = ads_bootstrap(free_port(), cp.port(), delta);
    let options = <outrigger::cli::Options as clap::Parser>::parse_from([
        "outrigger",
        "--config-yaml",
        &yaml,
    ]);
    let consumer = dns.nds_consumer();
    std::thread::spawn(move || outrigger::server::main_with(options, vec![consumer]));

    // NDS is asked for, wildcard and fresh, right after the first LDS request.
    let requests = wait_for(cp, "an NDS request", |r| !nds(r).is_empty()).await;
    let first_lds = requests.iter().position(|r| r.type_url == LISTENER);
    let first_nds = requests.iter().position(|r| r.type_url == NAME_TABLE);
    assert!(first_lds < first_nds, "{requests:#?}");
    let request = nds(&requests)[0];
    assert!(request.names.is_empty() && request.response_nonce.is_empty());
    assert!(!dns.is_ready());

    cp.set(NAME_TABLE, packed(&table("10.0.0.9")));
    answer(addr, "10.0.0.9").await;
    assert!(dns.is_ready());
    let good = cp.version(NAME_TABLE);
    let requests = wait_for(cp, "the NDS ACK", |r| {
        nds(r).iter().any(|q| q.answers() && q.error.is_none())
    })
    .await;
    let ack = nds(&requests).into_iter().find(|q| q.answers()).cloned();
    let ack = ack.expect("an ACK");
    if !delta {
        assert_eq!(ack.version_info, good);
    }

    // Undecodable: NACKed with the last good version, and the old table keeps answering.
    cp.set(
        NAME_TABLE,
        vec![(
            String::new(),
            Any {
                type_url: NAME_TABLE_TYPE_URL.into(),
                value: vec![0x0a, 0xff, 0xff, 0x01],
            },
        )],
    );
    let requests = wait_for(cp, "the NDS NACK", |r| {
        nds(r).iter().any(|q| q.error.is_some())
    })
    .await;
    let nack = nds(&requests)
        .into_iter()
        .find(|q| q.error.is_some())
        .cloned()
        .expect("a NACK");
    assert!(
        nack.error.as_deref().unwrap_or("").contains("name table"),
        "{nack:?}"
    );
    if !delta {
        assert_eq!(nack.version_info, good);
    }
    answer(addr, "10.0.0.9").await;

    cp.set(NAME_TABLE, packed(&table("10.0.0.10")));
    answer(addr, "10.0.0.10").await;

    // A new stream asks again.
    cp.drop_streams();
    wait_for(cp, "NDS on the second stream", |r| {
        nds(r).iter().any(|q| q.stream >= 2 && !q.answers())
    })
    .await;
    answer(addr, "10.0.0.10").await;
}

#[test]
fn nds_state_of_the_world() {
    nds_over_ads(false);
}

#[test]
fn nds_delta() {
    nds_over_ads(true);
}
