//! virt-k8s: KubeVirt's API surface over the crates below: the local node (store, lifecycle
//! controller, launchers, REST API) and its client (`virtctl` and embedders); kube-rs CRDs and
//! controllers for a cluster later. Nothing below this crate knows Kubernetes' API.

pub mod client;
pub mod compliance;
pub mod fuzzing;
pub mod node;
pub mod registry;
