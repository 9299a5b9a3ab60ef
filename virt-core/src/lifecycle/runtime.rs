//! [`BackendRuntime`]: VMIs run in this process on machine backends (an embedding without a node
//! daemon). The node daemon's runtime, one launcher process per VMI, lives in virt-k8s.

use std::sync::Arc;

use super::{Key, LaunchError, LaunchStage, Runtime};
use crate::machine::accel::AccelPolicy;
use crate::machine::resolve::{machine_spec, VolumeFiles};
use crate::machine::{ConsoleSink, Machine, MachineBackend, MachineExit};
use crate::model::VirtualMachineInstance;

/// Makes the [`VolumeFiles`] of a VMI: where its volumes' files, kernel and state live. The
/// embedder's error (it should name the VMI or volume concerned) becomes the launch's
/// [`LaunchStage::Volumes`] failure, its source kept.
pub type VolumeFilesFactory = Arc<
    dyn Fn(&VirtualMachineInstance) -> Result<Box<dyn VolumeFiles>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// Where a VMI's serial console goes.
pub type ConsoleFactory = Arc<dyn Fn(&Key) -> ConsoleSink + Send + Sync>;

/// Runs VMIs in this process: resolves each into a machine and starts it on the first backend that
/// supports it.
pub struct BackendRuntime {
    backends: Vec<Arc<dyn MachineBackend>>,
    files: VolumeFilesFactory,
    consoles: ConsoleFactory,
    accel: AccelPolicy,
}

impl BackendRuntime {
    /// A runtime trying `backends` in order.
    pub fn new(
        backends: Vec<Arc<dyn MachineBackend>>,
        files: VolumeFilesFactory,
        consoles: ConsoleFactory,
        accel: AccelPolicy,
    ) -> Self {
        Self { backends, files, consoles, accel }
    }
}

impl Runtime for BackendRuntime {
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, LaunchError> {
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let files = (self.files)(vmi).map_err(LaunchError::at(LaunchStage::Volumes))?;
        let spec = machine_spec(&name, &vmi.spec, files.as_ref(), self.accel)
            .map_err(LaunchError::at(LaunchStage::Spec))?;
        let mut why = Vec::new();
        for b in &self.backends {
            match b.supports(&spec) {
                Ok(()) => {
                    let console = (self.consoles)(&Key::new(ns, name));
                    return b
                        .start(&spec, console)
                        .map(Arc::from)
                        .map_err(LaunchError::at(LaunchStage::Start));
                }
                Err(e) => why.push(format!("{}: {e}", b.name())),
            }
        }
        Err(LaunchError::new(
            LaunchStage::Backend,
            format!("no machine backend can run it ({})", why.join("; ")),
        ))
    }

    fn reattach(&self, _vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        // In-process machines end with the process.
        None
    }

    fn last_exit(&self, _vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        None
    }

    fn cleanup(&self, _vmi: &VirtualMachineInstance) {}
}
