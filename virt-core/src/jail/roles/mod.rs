//! The allowlists, one file per thread role. Each list names the system calls a thread of that role
//! makes once the guest runs (found by running the launcher's, virt-core's and the node's tests under
//! the filters; see docs/confinement.md). Names are the kernel's (x86_64).

pub mod base;
pub mod console;
pub mod control;
pub mod main;
pub mod vcpu;
pub mod worker;
