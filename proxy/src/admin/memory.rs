//! `/memory`: `envoy.admin.v3.Memory`. Envoy reads these from tcmalloc; Outrigger uses the
//! system allocator, so they come from `/proc/self/status` and are approximations:
//! `allocated` = RssAnon (resident anonymous memory: heap, stacks), `heap_size` = VmData
//! (virtual size of data, heap and anonymous mappings), `total_physical_bytes` = VmRSS;
//! `pageheap_unmapped`, `pageheap_free` and `total_thread_cache` have no equivalent and are 0.
//! https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--memory

use super::{json, AdminResponse, Query};
use crate::server::Server;
use xds_proto::pb::envoy::admin::v3::Memory;

pub fn handle(_: &Server, _: &Query) -> AdminResponse {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    json::message_response(&from_status(&status), true)
}

fn from_status(status: &str) -> Memory {
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|k| k * 1024)
            .unwrap_or(0)
    };
    Memory {
        allocated: kib("RssAnon"),
        heap_size: kib("VmData"),
        pageheap_unmapped: 0,
        pageheap_free: 0,
        total_thread_cache: 0,
        total_physical_bytes: kib("VmRSS"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::handle;
    use super::super::test_support::{json, server};
    use super::*;
    use http::Method;

    #[test]
    fn memory_fields() {
        let m = from_status("VmData:\t  2048 kB\nVmRSS:\t 1024 kB\nRssAnon:\t 512 kB\n");
        assert_eq!(
            (m.allocated, m.heap_size, m.total_physical_bytes),
            (512 * 1024, 2048 * 1024, 1024 * 1024)
        );
        let v = json(handle(&server(), &Method::GET, "/memory"));
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "allocated",
                "heap_size",
                "pageheap_unmapped",
                "pageheap_free",
                "total_thread_cache",
                "total_physical_bytes"
            ]
        );
        assert_eq!(v["pageheap_free"], "0");
    }
}
