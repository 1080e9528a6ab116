//! Mesh expansion on a VM: `outrigger proxy sidecar` started with nothing but the files
//! `istioctl x workload entry configure` writes, placed as Istio's VM guide places them
//! (`cluster.env` under /var/lib/istio/envoy, `mesh.yaml` as /etc/istio/config/mesh, the token,
//! the root certificate in /etc/certs). It must take its identity and namespace from
//! `cluster.env`, get a certificate with the token, keep it in `./etc/certs` (istio-start.sh's
//! PROV_CERT and OUTPUT_CERTS), and serve configuration from istiod.
//! Istio: shared/reference/istio-contract.md §9.

use serde_json::json;
use std::time::Duration;
use tests::control_plane::{ControlPlane, IstiodOptions, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use tests::curl;
use tests::fake_ca::FakeCa;
use tests::sidecar::Sidecar;
use tests::xds_resources::{
    backend_cluster, backend_endpoints, backend_listener, route_to_backend,
};
use tests::{free_port, Upstream};

const VM_ID: &str = "spiffe://cluster.local/ns/vm-ns/sa/vm-sa";

#[test]
fn a_vm_joins_the_mesh_from_istioctls_files() {
    let ca = FakeCa::new("vm-token", VM_ID);
    let (cert, key) = ca.issue_for_names(&["istiod.istio-system.svc"]);
    let service = ca.service();
    let istiod = ControlPlane::start_istiod(IstiodOptions {
        tls: tests::tls_incoming::server_config(cert.as_bytes(), key.as_bytes()),
        token: Some("vm-token".into()),
        add: Some(Box::new(move |routes| routes.add_service(service))),
    });
    let app = Upstream::start("from the VM's app");
    let listener = free_port();
    istiod.set(CLUSTER, vec![backend_cluster()]);
    istiod.set(ENDPOINT, vec![backend_endpoints(app.port())]);
    istiod.set(LISTENER, vec![backend_listener("127.0.0.1", listener)]);
    istiod.set(ROUTE, vec![route_to_backend()]);

    let root = ca.root_pem();
    let mesh = format!(
        "defaultConfig:\n  discoveryAddress: 127.0.0.1:{}\n  proxyMetadata:\n    ISTIOD_SAN: istiod.istio-system.svc\n",
        istiod.port()
    );
    let mut sidecar = Sidecar::start(
        json!({}),
        // A VM has none of the pod variables (empty counts as unset, as in Istio).
        &[
            ("POD_NAME", ""),
            ("POD_NAMESPACE", ""),
            ("INSTANCE_IP", ""),
            ("SERVICE_ACCOUNT", ""),
        ],
        &[],
        move |dir| {
            for sub in [
                "var/lib/istio/envoy",
                "etc/istio/config",
                "etc/certs",
                "var/run/secrets/tokens",
            ] {
                std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
            }
            // As istioctl writes cluster.env: single-quoted values, some of them empty.
            std::fs::write(
                dir.join("var/lib/istio/envoy/cluster.env"),
                "CANONICAL_REVISION='v1'\nCANONICAL_SERVICE='vm-app'\nISTIO_INBOUND_PORTS='*'\n\
                 ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'\n\
                 ISTIO_METAJSON_LABELS='{\"app\":\"vm-app\",\"service.istio.io/canonical-name\":\"vm-app\",\"service.istio.io/canonical-revision\":\"v1\"}'\n\
                 ISTIO_META_CLUSTER_ID='Kubernetes'\nISTIO_META_DNS_CAPTURE='false'\nISTIO_META_MESH_ID=''\n\
                 ISTIO_META_NETWORK=''\nISTIO_META_WORKLOAD_NAME='vm-app'\nISTIO_NAMESPACE='vm-ns'\n\
                 ISTIO_SERVICE='vm-app.vm-ns'\nISTIO_SERVICE_CIDR='*'\nISTIO_SVC_IP='10.0.0.9'\n\
                 SERVICE_ACCOUNT='vm-sa'\nTRUST_DOMAIN='cluster.local'\n",
            )
            .expect("cluster.env");
            std::fs::write(dir.join("etc/istio/config/mesh"), mesh).expect("mesh");
            std::fs::write(dir.join("etc/certs/root-cert.pem"), root).expect("root");
            std::fs::write(dir.join("var/run/secrets/tokens/istio-token"), "vm-token")
                .expect("token");
        },
    );
    sidecar.wait_live(Duration::from_secs(30));

    let issued = ca.wait_for_issued(1, Duration::from_secs(10));
    assert_eq!(issued[0].csr_uri.as_deref(), Some(VM_ID), "{issued:?}");
    // istio-start.sh's OUTPUT_CERTS: the certificate survives a reboot of the VM.
    let certs = sidecar.dir().join("etc/certs");
    for file in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !certs.join(file).is_file() {
            assert!(
                std::time::Instant::now() < deadline,
                "no {file}\n{}",
                sidecar.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let dump = sidecar.admin("/config_dump?mask=bootstrap").json();
    let node = &dump["configs"][0]["bootstrap"]["node"];
    let id = node["id"].as_str().unwrap_or_default();
    assert!(
        id.starts_with("sidecar~10.0.0.9~") && id.ends_with(".vm-ns~vm-ns.svc.cluster.local"),
        "{id}"
    );
    assert_eq!(
        node["metadata"]["LABELS"]["service.istio.io/canonical-name"],
        "vm-app"
    );
    assert_eq!(node["metadata"]["NAMESPACE"], "vm-ns");
    assert_eq!(node["metadata"]["SERVICE_ACCOUNT"], "vm-sa");
    assert_eq!(
        curl::get(&format!("http://127.0.0.1:{listener}/")).body,
        "from the VM's app"
    );
}
