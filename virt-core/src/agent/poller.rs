//! The launcher's agent thread: every `interval` it syncs with the guest agent and, when that
//! works, asks for what KubeVirt shows (guest-info, OS, host name, time zone, interfaces, users,
//! file systems, freeze state). The latest [`AgentReport`] is read without waiting for the guest.

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{AgentClient, ShutdownMode};
use super::credentials::CredentialSync;
use super::protocol::{self, AgentReport};
use super::AgentError;
use crate::vmm::devices::lock;

/// How the agent thread works.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Time between two polls.
    pub interval: Duration,
    /// Time one command may take.
    pub timeout: Duration,
    /// The longest answer line.
    pub max_reply: usize,
    /// How long `guest-shutdown` waits for a refusal before it counts as done.
    pub shutdown_wait: Duration,
    /// SSH keys and passwords to keep in the guest (`qemuGuestAgent` access credentials).
    pub credentials: super::GuestCredentials,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: super::client::DEFAULT_TIMEOUT,
            max_reply: super::client::MAX_REPLY,
            shutdown_wait: Duration::from_secs(1),
            credentials: super::GuestCredentials::default(),
        }
    }
}

struct Shared {
    name: String,
    opts: AgentOptions,
    client: Mutex<AgentClient>,
    report: Mutex<AgentReport>,
    credentials: Mutex<CredentialSync>,
    stop: AtomicBool,
    /// Wakes the thread for a poll now.
    poke: (Mutex<bool>, std::sync::Condvar),
}

/// A guest agent watched by a thread; dropping it ends the thread (within one command's timeout).
pub struct Agent {
    shared: Arc<Shared>,
}

impl Agent {
    /// Starts watching the agent on `channel` for machine `name`.
    pub fn start(name: &str, channel: UnixStream, opts: AgentOptions) -> Result<Agent, AgentError> {
        let client = AgentClient::new(channel)?.with_timeout(opts.timeout).with_max_reply(opts.max_reply);
        let keys = opts.credentials.clone();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            opts,
            client: Mutex::new(client),
            report: Mutex::new(AgentReport::default()),
            credentials: Mutex::new(CredentialSync::new(keys)),
            stop: AtomicBool::new(false),
            poke: (Mutex::new(false), std::sync::Condvar::new()),
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name(format!("{name}-agent"))
            .spawn(move || {
                #[cfg(target_arch = "x86_64")]
                crate::jail::enter_or_die(crate::jail::Role::Control);
                run(&sh)
            })
            .map_err(|source| AgentError::Io { op: "spawn the agent thread", source })?;
        Ok(Agent { shared })
    }

    /// The latest report (`connected: false` until the agent first answers).
    pub fn report(&self) -> AgentReport {
        lock(&self.shared.report).clone()
    }

    /// Whether the agent answered the last poll.
    pub fn connected(&self) -> bool {
        lock(&self.shared.report).connected
    }

    /// Replaces the SSH keys and passwords kept in the guest (a Secret changed); written at the next
    /// poll.
    pub fn set_credentials(&self, keys: super::GuestCredentials) {
        lock(&self.shared.credentials).set(keys);
        self.poll_now();
    }

    /// Asks for a poll now (the thread does it when it is free).
    pub fn poll_now(&self) {
        let (m, cv) = &self.shared.poke;
        *lock(m) = true;
        cv.notify_all();
    }

    fn with_client<T>(
        &self,
        command: &str,
        f: impl FnOnce(&mut AgentClient) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        if !self.connected() {
            return Err(AgentError::NotConnected { command: command.into() });
        }
        let r = f(&mut lock(&self.shared.client));
        if let Err(e) = &r {
            if !matches!(e, AgentError::Refused { .. }) {
                lock(&self.shared.report).connected = false;
                self.poll_now();
            }
        }
        r
    }

    /// `guest-shutdown` with `mode`; [`AgentError::NotConnected`] when the agent is not answering.
    pub fn shutdown(&self, mode: ShutdownMode) -> Result<(), AgentError> {
        let wait = self.shared.opts.shutdown_wait;
        self.with_client("guest-shutdown", |c| c.shutdown(mode, wait))
    }

    /// `guest-fsfreeze-freeze`: the number of file systems frozen.
    pub fn freeze(&self) -> Result<u64, AgentError> {
        let r = self.with_client("guest-fsfreeze-freeze", AgentClient::fsfreeze_freeze);
        self.refresh_freeze();
        r
    }

    /// `guest-fsfreeze-thaw`: the number of file systems thawed.
    pub fn thaw(&self) -> Result<u64, AgentError> {
        let r = self.with_client("guest-fsfreeze-thaw", AgentClient::fsfreeze_thaw);
        self.refresh_freeze();
        r
    }

    /// `guest-fsfreeze-status`.
    pub fn freeze_status(&self) -> Result<String, AgentError> {
        self.with_client("guest-fsfreeze-status", AgentClient::fsfreeze_status)
    }

    fn refresh_freeze(&self) {
        if let Ok(s) = self.freeze_status() {
            lock(&self.shared.report).fs_freeze_status = Some(s);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.poll_now();
    }
}

fn run(sh: &Shared) {
    let mut was = false;
    while !sh.stop.load(Ordering::SeqCst) {
        let mut report = poll(sh);
        if report.connected {
            report.access_credentials = lock(&sh.credentials).sync(&mut lock(&sh.client));
        } else {
            lock(&sh.credentials).lost();
        }
        let now = report.connected;
        if now != was {
            log::info!("machine {}: guest agent {}", sh.name, if now { "connected" } else { "disconnected" });
            was = now;
        }
        let closed = lock(&sh.client).closed();
        *lock(&sh.report) = report;
        if closed {
            log::info!("machine {}: the guest agent's channel closed", sh.name);
            return;
        }
        let (m, cv) = &sh.poke;
        let mut poked = lock(m);
        if !*poked && !sh.stop.load(Ordering::SeqCst) {
            poked =
                cv.wait_timeout(poked, sh.opts.interval).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        *poked = false;
    }
}

/// One poll. A failed sync or a command that times out or lies ends it as "not connected"; a
/// refused command (disabled in the guest, unsupported on its OS) just leaves its field empty.
fn poll(sh: &Shared) -> AgentReport {
    poll_client(&sh.name, &mut lock(&sh.client))
}

/// One poll of the agent on `c` (for machine `name`): what [`Agent`]'s thread does each interval.
pub(crate) fn poll_client(name: &str, c: &mut AgentClient) -> AgentReport {
    let mut r = AgentReport::default();
    if let Err(e) = c.sync() {
        log::debug!("machine {name}: {e}");
        return r;
    }
    macro_rules! ask {
        ($call:expr) => {
            match $call {
                Ok(v) => Some(v),
                Err(AgentError::Refused { .. }) => None,
                Err(e) => {
                    log::debug!("machine {name}: {e}");
                    return AgentReport::default();
                }
            }
        };
    }
    if let Some(i) = ask!(c.info()) {
        (r.guest_agent_version, r.supported_commands) = i.into();
    }
    r.os = ask!(c.os_info()).map(Into::into);
    r.hostname = ask!(c.host_name()).map(protocol::clip);
    r.timezone = ask!(c.timezone()).map(protocol::timezone_text);
    r.interfaces = ask!(c.network_interfaces()).map(protocol::interfaces).unwrap_or_default();
    r.user_list = ask!(c.users()).map(protocol::users).unwrap_or_default();
    r.filesystems = ask!(c.fs_info()).map(protocol::filesystems).unwrap_or_default();
    r.fs_freeze_status = ask!(c.fsfreeze_status());
    r.connected = true;
    r
}
