//! [`AgentMachine`]: a machine with its guest agent watched, as the launcher serves it.

use std::sync::Arc;
use std::time::Duration;

use super::{Agent, AgentError, AgentReport, ShutdownMode};
use crate::machine::accel::AccelDecision;
use crate::machine::{Machine, MachineError, MachineEvent, MachineExit, MachineStatus};

/// A machine and the [`Agent`] on its agent channel. Graceful power-down asks the agent while it
/// is connected and falls back to the ACPI power button when it is not or when it refuses (as
/// KubeVirt's launcher does); everything else goes to the machine.
pub struct AgentMachine {
    name: String,
    inner: Arc<dyn Machine>,
    agent: Agent,
}

impl AgentMachine {
    /// Wraps `inner` (named `name`) with `agent`.
    pub fn new(name: &str, inner: Arc<dyn Machine>, agent: Agent) -> Self {
        Self { name: name.to_string(), inner, agent }
    }

    /// The agent.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    fn agent_err(&self, op: &'static str, e: AgentError) -> MachineError {
        let absent = matches!(e, AgentError::NotConnected { .. });
        MachineError::Agent { machine: self.name.clone(), op, why: e.to_string(), absent }
    }
}

impl Machine for AgentMachine {
    fn status(&self) -> MachineStatus {
        self.inner.status()
    }
    fn pause(&self) -> Result<(), MachineError> {
        self.inner.pause()
    }
    fn resume(&self) -> Result<(), MachineError> {
        self.inner.resume()
    }
    fn power_down(&self) -> Result<(), MachineError> {
        if self.inner.status() == MachineStatus::Running && self.agent.connected() {
            match self.agent.shutdown(ShutdownMode::Powerdown) {
                Ok(()) => {
                    log::info!("machine {}: asked the guest agent to power off", self.name);
                    return Ok(());
                }
                Err(e) => log::warn!("machine {}: {e}; pressing the ACPI power button instead", self.name),
            }
        }
        self.inner.power_down()
    }
    fn reset(&self) -> Result<(), MachineError> {
        self.inner.reset()
    }
    fn migrate_out(
        &self,
        stream: std::os::unix::net::UnixStream,
        opts: &crate::machine::migrate::MigrateOptions,
    ) -> Result<crate::machine::migrate::MigrationReport, MachineError> {
        self.inner.migrate_out(stream, opts)
    }
    fn migrate_cancel(&self) -> Result<(), MachineError> {
        self.inner.migrate_cancel()
    }
    fn stop(&self) -> Result<(), MachineError> {
        self.inner.stop()
    }
    fn console_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        self.inner.console_input(bytes)
    }
    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
        self.inner.wait(timeout)
    }
    fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
        self.inner.next_event(timeout)
    }
    fn vnc_socket(&self) -> Option<std::path::PathBuf> {
        self.inner.vnc_socket()
    }
    fn accelerator(&self) -> AccelDecision {
        self.inner.accelerator()
    }
    fn guest_agent(&self) -> Option<AgentReport> {
        Some(self.agent.report())
    }
    fn guest_shutdown(&self, mode: ShutdownMode) -> Result<(), MachineError> {
        self.agent.shutdown(mode).map_err(|e| self.agent_err("guest-shutdown", e))
    }
    fn guest_set_credentials(&self, credentials: super::GuestCredentials) -> Result<(), MachineError> {
        self.agent.set_credentials(credentials);
        Ok(())
    }
    fn guest_fs_freeze(&self, freeze: bool) -> Result<String, MachineError> {
        let r = if freeze {
            self.agent.freeze().map_err(|e| self.agent_err("guest-fsfreeze-freeze", e))
        } else {
            self.agent.thaw().map_err(|e| self.agent_err("guest-fsfreeze-thaw", e))
        };
        r?;
        self.agent.freeze_status().map_err(|e| self.agent_err("guest-fsfreeze-status", e))
    }
}
