//! Istio agent duties done in process when Outrigger runs as `proxy sidecar`: what
//! pilot-agent does beside Envoy (workload identity, and more to come).

pub mod identity;
