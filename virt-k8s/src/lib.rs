//! virt-k8s: KubeVirt's API surface over the crates below: the local node (store, lifecycle
//! controller, launchers, REST API) today; kube-rs CRDs and controllers for a cluster later.

pub mod node;
