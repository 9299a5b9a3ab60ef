//! Kubernetes adapter: CRDs, controllers and the node agent (not built yet).

pub mod client;
