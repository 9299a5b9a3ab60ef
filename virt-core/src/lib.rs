//! virt-core: the VM model, the hypervisor seam and the native KVM microVM.
//!
//! Layers, bottom up:
//! - [`api`]: strict YAML/JSON loading with field paths, object metadata, quantities, validation
//!   results: the machinery the KubeVirt model here and CDI's in virt-storage share.
//! - [`hypervisor`]: traits for a hypervisor, a VM and a vCPU, with the KVM implementation.
//! - [`block`]: the block-backend seam that virtio-blk uses (raw files here; qcow2 in virt-storage).
//! - [`model`]: KubeVirt's VirtualMachine, VirtualMachineInstance, instancetypes and preferences:
//!   loading, validation, what this node supports, instancetype resolution.
//! - [`lifecycle`]: run strategies, phases, conditions and events of VMs and VMIs, as a library.
//! - [`jail`]: confinement of a process running a machine: a seccomp filter per thread role,
//!   capabilities dropped, a cgroup (docs/confinement.md).
//! - [`vmm`]: the native VMM: memory layout, boot (bzImage, PVH vmlinux), ACPI, devices, vCPU loop.
//! - [`agent`]: the QEMU guest agent client and the launcher's agent poller (docs/guest-agent.md).
//! - [`fuzzing`]: entry points for the fuzz targets in `fuzz/` and the property tests.

#![warn(missing_docs)]
// Library code returns errors; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
pub mod agent;
pub mod api;
pub mod block;
pub mod fuzzing;
pub mod hypervisor;
#[cfg(target_arch = "x86_64")]
pub mod jail;
pub mod lifecycle;
pub mod machine;
pub mod model;
pub mod net;
pub mod vmm;
