//! QEMU as a [`MachineBackend`]: firmware-booted disks (SeaBIOS, OVMF with or without Secure Boot),
//! Windows-ready machines (Hyper-V enlightenments, SMM, TPM 2.0 through swtpm), VNC, and software
//! emulation (TCG) where hardware KVM is unusable.
//!
//! One machine is one `qemu-system-x86_64` process, started paused (`-S`) with its QMP monitor and
//! serial console connecting to unix sockets the backend listens on in the machine's run directory.
//! The backend negotiates QMP ([`qmp`]), relays the console, then resumes the vCPUs; from then on
//! QMP events drive the machine's status and event stream:
//!
//! | QMP | status | event |
//! | --- | --- | --- |
//! | first `RESUME` (after `cont`) | Running | `Started` |
//! | `STOP` | Paused | `Paused` |
//! | `RESUME` | Running | `Resumed` |
//! | `POWERDOWN` | | `PowerDownRequested` |
//! | `SHUTDOWN` guest-shutdown / guest-panic / host-* | Stopped on exit | `Ended(PowerOff / Failed / Stopped)` |
//! | `RESET` from the guest (a reboot) | Stopped on exit | `Ended(Reboot)`: the backend quits QEMU |
//!
//! A host-initiated [`Machine::reset`] (`system_reset`) keeps the machine running (and so does the
//! reset SeaBIOS itself makes right after one). The command line is built by [`cmdline::build`], a
//! pure function.

pub mod cmdline;
pub mod migration;
pub mod nic;
mod process;
pub mod qmp;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use self::cmdline::{Firmware, FirmwarePaths, Layout};
use self::process::{
    accept_within, collect_stderr, die_with_parent, new_run_dir, prepare_vars, start_swtpm, stderr_note,
    QemuProcessError, Resources,
};
use self::qmp::{Incoming, QmpClient, QmpError, QmpEvent, ShutdownCause};
use super::accel::{self, AccelDecision, HostVirt};
use super::migrate::{MigrateOptions, MigrationReport};
use super::{
    BootSpec, ConsoleSink, Machine, MachineBackend, MachineError, MachineEvent, MachineExit, MachineSpec,
    MachineStatus, Unsupported,
};
use crate::vmm::devices::lock;

const BACKEND: &str = "qemu";
/// Bytes of QEMU's stderr kept for error messages.
const STDERR_TAIL: usize = 4096;
/// A guest reset this soon after a host reset is the firmware's own (see `Inner::on_event`).
const FIRMWARE_RESET_WINDOW: Duration = Duration::from_secs(10);
/// Longest unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long an incoming migration may take before the destination gives up (the source resumes).
const INCOMING_TIMEOUT: Duration = Duration::from_secs(600);

/// How the backend runs QEMU.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The QEMU binary (looked up in `PATH` when it has no slash).
    pub qemu: PathBuf,
    /// The swtpm binary, for machines with a TPM.
    pub swtpm: PathBuf,
    /// The node allows software emulation (KubeVirt's `useEmulation`).
    pub allow_emulation: bool,
    /// Firmware images.
    pub firmware: FirmwarePaths,
    /// Where per-machine run directories go; `$XDG_RUNTIME_DIR` or the temporary directory if `None`.
    pub run_dir: Option<PathBuf>,
    /// How long [`Machine::stop`] lets QEMU quit before killing it.
    pub stop_grace: Duration,
    /// How long QEMU (and swtpm) may take to start and connect.
    pub start_timeout: Duration,
    /// How long a QMP command may take.
    pub qmp_timeout: Duration,
    /// Confine QEMU and swtpm (docs/confinement.md): QEMU's own seccomp sandbox
    /// ([`QEMU_SANDBOX`]), and both started with no capabilities and `no_new_privs`.
    pub confine: bool,
    /// An incoming migration may switch to post-copy (KubeVirt's `allowPostCopy`): the destination
    /// takes QEMU's `postcopy-ram` capability, which needs userfaultfd.
    pub incoming_post_copy: bool,
}

/// QEMU's seccomp sandbox for a confined machine: no obsolete calls, no privilege changes, no new
/// processes, no scheduler or resource control.
pub const QEMU_SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

impl Default for QemuOptions {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".into(),
            swtpm: "swtpm".into(),
            allow_emulation: false,
            firmware: FirmwarePaths::default(),
            run_dir: None,
            stop_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(30),
            confine: false,
            incoming_post_copy: false,
        }
    }
}

/// Runs machines in QEMU processes.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    opts: QemuOptions,
    host: HostVirt,
}

/// `prog` itself when it names a file, else the first match in `PATH`.
fn find_program(prog: &Path) -> Option<PathBuf> {
    if prog.components().count() > 1 {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(prog)).find(|p| p.is_file())
}

impl QemuBackend {
    /// A backend with `opts` on the probed host.
    pub fn new(opts: QemuOptions) -> Self {
        Self { opts, host: HostVirt::probe() }
    }

    /// Overrides the probed host (tests, or hosts whose KVM the probe misjudges).
    pub fn with_host(mut self, host: HostVirt) -> Self {
        self.host = host;
        self
    }

    /// The accelerator `spec` would run on here, and why; an error when it cannot run.
    pub fn decide(&self, spec: &MachineSpec) -> Result<AccelDecision, accel::NoAccelerator> {
        accel::decide(&self.host, spec.accel, self.opts.allow_emulation)
    }

    /// The command line (program first) `spec` would run with, with sockets under `run_dir`.
    pub fn command_line(&self, spec: &MachineSpec, run_dir: &Path) -> Result<Vec<String>, CommandLineError> {
        let d = self.decide(spec)?;
        let fw = self.opts.firmware.resolve(&spec.boot)?;
        let layout = layout_in(run_dir, fw, spec);
        let mut v = vec![self.opts.qemu.display().to_string()];
        v.extend(cmdline::build(spec, d.accelerator, &layout)?);
        Ok(v)
    }
}

/// Why no QEMU command line can be made for a spec on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandLineError {
    /// No accelerator the node allows.
    #[error(transparent)]
    Accel(#[from] accel::NoAccelerator),
    /// A field QEMU cannot be configured for, or missing firmware.
    #[error(transparent)]
    Config(#[from] cmdline::ConfigError),
}

fn layout_in(dir: &Path, firmware: Firmware, spec: &MachineSpec) -> Layout {
    let efi_vars = match (&firmware, &spec.boot) {
        (Firmware::Ovmf { .. }, BootSpec::Efi { vars: Some(v), .. }) => Some(v.clone()),
        (Firmware::Ovmf { .. }, _) => Some(dir.join("efivars.fd")),
        _ => None,
    };
    Layout {
        qmp_socket: dir.join("qmp.sock"),
        serial_socket: dir.join("serial.sock"),
        agent_socket: dir.join("qga.sock"),
        tpm_socket: spec.tpm.as_ref().map(|_| dir.join("swtpm.sock")),
        firmware,
        efi_vars,
        vnc_socket: dir.join("vnc.sock"),
        vhost_net: std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-net").is_ok(),
    }
}

impl MachineBackend for QemuBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn supports(&self, spec: &MachineSpec) -> Result<(), Unsupported> {
        self.command_line(spec, Path::new("/run/virt-qemu/check")).map_err(|e| match e {
            CommandLineError::Config(cmdline::ConfigError::Unsupported { field, value, why }) => {
                Unsupported::spec(field, format!("{value:?}: {why}"))
            }
            other => Unsupported::Host(other.to_string()),
        })?;
        if find_program(&self.opts.qemu).is_none() {
            return Err(Unsupported::Host(format!(
                "{} not found: install Debian's qemu-system-x86 package",
                self.opts.qemu.display()
            )));
        }
        if spec.tpm.is_some() && find_program(&self.opts.swtpm).is_none() {
            return Err(Unsupported::Host(format!(
                "{} not found: install Debian's swtpm package",
                self.opts.swtpm.display()
            )));
        }
        Ok(())
    }

    fn start(&self, spec: &MachineSpec, console: ConsoleSink) -> Result<Box<dyn Machine>, MachineError> {
        self.supports(spec).map_err(|why| MachineError::Unsupported {
            machine: spec.name.clone(),
            backend: BACKEND,
            what: why.to_string(),
        })?;
        start(&self.opts, &self.host, spec, console, None)
            .map(|m| Box::new(m) as Box<dyn Machine>)
            .map_err(|e| MachineError::Start { machine: spec.name.clone(), source: e.into() })
    }

    fn start_incoming(
        &self,
        spec: &MachineSpec,
        console: ConsoleSink,
        stream: &mut UnixStream,
    ) -> Result<Box<dyn Machine>, MachineError> {
        self.supports(spec).map_err(|why| MachineError::Unsupported {
            machine: spec.name.clone(),
            backend: BACKEND,
            what: why.to_string(),
        })?;
        start(&self.opts, &self.host, spec, console, Some(stream))
            .map(|m| Box::new(m) as Box<dyn Machine>)
            .map_err(|e| MachineError::Start {
                machine: spec.name.clone(),
                source: super::StartStep::boxed("incoming migration", e),
            })
    }
}

type Ended = (Mutex<Option<MachineExit>>, Condvar);

/// State shared by the machine handle, the QMP reader and the waiter thread.
struct Inner {
    name: String,
    status: Mutex<MachineStatus>,
    events_tx: Mutex<Sender<MachineEvent>>,
    /// Why the machine is ending, first cause wins (guest power-off, reboot, host stop).
    cause: Mutex<Option<MachineExit>>,
    ended: Ended,
    qmp: OnceLock<Arc<QmpClient>>,
    /// Kill QEMU at this instant if it has not exited (set by stop).
    kill_at: Mutex<Option<Instant>>,
    /// When the host last reset the machine (SeaBIOS answers a warm reset with a reset of its own).
    host_reset_at: Mutex<Option<Instant>>,
    /// QEMU's migration events, for the migration loops.
    migration: migration::MigrationEvents,
}

impl Inner {
    fn emit(&self, ev: MachineEvent) {
        let _ = lock(&self.events_tx).send(ev);
    }

    fn set_cause(&self, exit: MachineExit) {
        let mut c = lock(&self.cause);
        if c.is_none() {
            *c = Some(exit);
        }
    }

    /// Moves `from` -> `to` and emits `ev`, if the status is `from` (the QMP event and the command's
    /// return race; whichever comes first makes the transition).
    fn transition(&self, from: &MachineStatus, to: MachineStatus, ev: MachineEvent) {
        let mut s = lock(&self.status);
        if *s == *from {
            *s = to;
            self.emit(ev);
        }
    }

    fn on_qmp(&self, inc: Incoming) {
        match inc {
            Incoming::Event(ev, _) => self.on_event(ev),
            Incoming::Error(e) => log::warn!("machine {}: QMP: {e}", self.name),
            Incoming::Closed => log::debug!("machine {}: QMP closed", self.name),
        }
    }

    fn on_event(&self, ev: QmpEvent) {
        log::debug!("machine {}: QMP event {ev:?}", self.name);
        match ev {
            QmpEvent::Resume => {
                self.transition(&MachineStatus::Starting, MachineStatus::Running, MachineEvent::Started);
                self.transition(&MachineStatus::Paused, MachineStatus::Running, MachineEvent::Resumed);
            }
            QmpEvent::Stop => {
                self.transition(&MachineStatus::Running, MachineStatus::Paused, MachineEvent::Paused)
            }
            QmpEvent::Powerdown => self.emit(MachineEvent::PowerDownRequested),
            QmpEvent::Shutdown { reason, .. } => self.set_cause(match reason {
                ShutdownCause::GuestShutdown => MachineExit::PowerOff,
                ShutdownCause::GuestReset => MachineExit::Reboot,
                ShutdownCause::GuestPanic => MachineExit::Failed("the guest panicked".into()),
                ShutdownCause::HostError => MachineExit::Failed("QEMU reported a host error".into()),
                _ => MachineExit::Stopped,
            }),
            QmpEvent::Reset { guest: true, .. }
                if lock(&self.host_reset_at).take().is_some_and(|t| t.elapsed() < FIRMWARE_RESET_WINDOW) =>
            {
                // SeaBIOS, finding itself already initialised after a warm reset, resets the machine
                // once more (through 0xcf9): part of the host's reset, not a guest reboot.
                log::debug!("machine {}: the firmware's reset after the host's", self.name);
            }
            QmpEvent::Reset { guest: true, reason } => {
                // The guest rebooted: the machine ends (the lifecycle decides whether to start it
                // again), as with -no-reboot, while a host system_reset keeps it running.
                self.set_cause(if reason == ShutdownCause::GuestPanic {
                    MachineExit::Failed("the guest panicked".into())
                } else {
                    MachineExit::Reboot
                });
                if let Some(q) = self.qmp.get() {
                    if let Err(e) = q.execute_detached("quit") {
                        log::warn!("machine {}: quit after the guest's reboot: {e}", self.name);
                    }
                }
            }
            QmpEvent::GuestPanicked { .. } => {
                self.set_cause(MachineExit::Failed("the guest panicked".into()))
            }
            ev @ (QmpEvent::Migration { .. } | QmpEvent::MigrationPass { .. }) => self.migration.record(&ev),
            _ => {}
        }
    }
}

/// A running QEMU machine.
pub struct QemuMachine {
    inner: Arc<Inner>,
    events: Mutex<Receiver<MachineEvent>>,
    serial: Mutex<UnixStream>,
    /// The host end of the guest agent's channel, until the launcher takes it.
    agent: Mutex<Option<UnixStream>>,
    vnc: Option<PathBuf>,
    decision: AccelDecision,
    stop_grace: Duration,
    /// A `migrate_out` is under way.
    migrating: Mutex<bool>,
    // Last: dropped after the handles above, it kills QEMU and swtpm and removes the run directory.
    _res: Resources,
}

fn start(
    opts: &QemuOptions,
    host: &HostVirt,
    spec: &MachineSpec,
    console: ConsoleSink,
    incoming: Option<&mut UnixStream>,
) -> Result<QemuMachine, QemuProcessError> {
    let decision = accel::decide(host, spec.accel, opts.allow_emulation)?;
    let firmware = opts.firmware.resolve(&spec.boot)?;
    let dir = new_run_dir(opts, &spec.name)?;
    let mut res = Resources { run_dir: dir.clone(), qemu: None, swtpm: Arc::new(Mutex::new(None)) };
    let layout = layout_in(&dir, firmware.clone(), spec);
    if let (Firmware::Ovmf { vars_template, .. }, Some(vars)) = (&firmware, &layout.efi_vars) {
        prepare_vars(vars_template, vars)?;
    }
    if let Some(sock) = &layout.tpm_socket {
        *lock(&res.swtpm) = Some(start_swtpm(opts, spec, &dir, sock)?);
    }
    let bind = |p: &Path| {
        UnixListener::bind(p).map_err(|source| QemuProcessError::Io {
            op: "listen on",
            path: p.to_path_buf(),
            source,
        })
    };
    let qmp_l = bind(&layout.qmp_socket)?;
    let serial_l = bind(&layout.serial_socket)?;
    let agent_l = bind(&layout.agent_socket)?;
    let mut args = cmdline::build(spec, decision.accelerator, &layout)?;
    if incoming.is_some() {
        // With -S the guest stays paused after the state arrived, until `cont` below.
        args.extend(["-incoming".to_string(), "defer".to_string()]);
    }
    log::info!(
        "machine {}: {} ({}): {} {}",
        spec.name,
        BACKEND,
        decision.reason,
        opts.qemu.display(),
        args.join(" ")
    );
    let mut cmd = Command::new(&opts.qemu);
    cmd.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    if opts.confine {
        cmd.args(["-sandbox", QEMU_SANDBOX]);
    }
    die_with_parent(&mut cmd, opts.confine);
    let mut child =
        cmd.spawn().map_err(|source| QemuProcessError::Spawn { program: opts.qemu.clone(), source })?;
    let stderr = child.stderr.take().map(|s| collect_stderr(spec.name.clone(), s)).unwrap_or_default();
    let child = Arc::new(Mutex::new(child));
    res.qemu = Some(child.clone());

    let deadline = Instant::now() + opts.start_timeout;
    let qmp_s = accept_within(&qmp_l, "QMP monitor", deadline, &child, &stderr)?;
    let serial_s = accept_within(&serial_l, "serial console", deadline, &child, &stderr)?;
    let agent_s = accept_within(&agent_l, "guest agent channel", deadline, &child, &stderr)?;
    drop((qmp_l, serial_l, agent_l));

    let (tx, rx) = channel();
    let inner = Arc::new(Inner {
        name: spec.name.clone(),
        status: Mutex::new(MachineStatus::Starting),
        events_tx: Mutex::new(tx),
        cause: Mutex::new(None),
        ended: (Mutex::new(None), Condvar::new()),
        qmp: OnceLock::new(),
        kill_at: Mutex::new(None),
        host_reset_at: Mutex::new(None),
        migration: migration::MigrationEvents::default(),
    });
    let (done_tx, done_rx) = channel::<()>();
    let handler_inner = inner.clone();
    let (client, _reader) = QmpClient::connect(qmp_s, opts.qmp_timeout, move |inc| {
        let closed = inc == Incoming::Closed;
        handler_inner.on_qmp(inc);
        if closed {
            let _ = done_tx.send(());
        }
    })
    .map_err(|source| {
        // QEMU that fails to start (a missing disk, say) may close the monitor before it exits:
        // give it a moment to exit and its stderr thread to catch up, so that its words are in the
        // error rather than only the closed handshake.
        let wait_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < wait_until && matches!(lock(&child).try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        QemuProcessError::Handshake { source, note: stderr_note(&stderr) }
    })?;
    let g = client.greeting();
    log::debug!(
        "machine {}: QEMU {}.{}.{} {}",
        spec.name,
        g.version.major,
        g.version.minor,
        g.version.micro,
        g.package
    );
    let _ = inner.qmp.set(client.clone());

    spawn_console_relay(
        &spec.name,
        serial_s.try_clone().map_err(|source| QemuProcessError::Socket { what: "serial console", source })?,
        console,
    )?;

    let vnc = spec.graphics.then(|| layout.vnc_socket.clone());
    if let Some(v) = &vnc {
        // QEMU makes the socket with its own umask: only the owner (and root: the node relaying a
        // viewer) may connect, whatever the run directory's mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(v, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| QemuProcessError::Io { op: "chmod 0600", path: v.clone(), source })?;
    }

    spawn_waiter(inner.clone(), child, res.swtpm.clone(), done_rx, stderr)?;
    if let Some(stream) = incoming {
        migration::receive(&client, &inner.migration, stream, INCOMING_TIMEOUT, opts.incoming_post_copy)?;
    }
    client.cont().map_err(|source| QemuProcessError::Qmp { op: "start the vCPUs", source })?;
    // `cont` returns after RESUME was handled; make Started certain even if the event was lost.
    inner.transition(&MachineStatus::Starting, MachineStatus::Running, MachineEvent::Started);

    Ok(QemuMachine {
        inner,
        events: Mutex::new(rx),
        serial: Mutex::new(serial_s),
        agent: Mutex::new(Some(agent_s)),
        vnc,
        decision,
        stop_grace: opts.stop_grace,
        migrating: Mutex::new(false),
        _res: res,
    })
}

fn spawn_console_relay(
    name: &str,
    mut serial: UnixStream,
    mut sink: ConsoleSink,
) -> Result<(), QemuProcessError> {
    std::thread::Builder::new()
        .name(format!("{name}-console"))
        .spawn(move || {
            crate::jail::enter_or_die(crate::jail::Role::Console);
            let mut buf = [0u8; 4096];
            loop {
                match serial.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if sink.write_all(&buf[..n]).and_then(|_| sink.flush()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        })
        .map(|_| ())
        .map_err(|source| QemuProcessError::Thread { what: "console relay", source })
}

/// Waits for QEMU to exit (killing it when a stop's grace period ends), then for the QMP reader to
/// deliver QEMU's last events, then ends the machine.
fn spawn_waiter(
    inner: Arc<Inner>,
    child: Arc<Mutex<Child>>,
    swtpm: Arc<Mutex<Option<Child>>>,
    qmp_done: Receiver<()>,
    stderr: Arc<Mutex<String>>,
) -> Result<(), QemuProcessError> {
    std::thread::Builder::new()
        .name(format!("{}-wait", inner.name))
        .spawn(move || {
            crate::jail::enter_or_die(crate::jail::Role::Main);
            let status = loop {
                {
                    let mut c = lock(&child);
                    match c.try_wait() {
                        Ok(Some(st)) => break st.to_string(),
                        Ok(None) => {}
                        Err(e) => break format!("unknown status: {e}"),
                    }
                    if lock(&inner.kill_at).is_some_and(|t| Instant::now() >= t) {
                        log::warn!("machine {}: QEMU did not quit in time; killing it", inner.name);
                        let _ = c.kill();
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let _ = qmp_done.recv_timeout(Duration::from_secs(2));
            if let Some(mut s) = lock(&swtpm).take() {
                // swtpm --terminate ends when QEMU disconnects; make sure.
                if let Ok(None) = s.try_wait() {
                    std::thread::sleep(Duration::from_millis(200));
                    if let Ok(None) = s.try_wait() {
                        let _ = s.kill();
                    }
                }
                let _ = s.wait();
            }
            let exit = lock(&inner.cause).clone().unwrap_or_else(|| {
                MachineExit::Failed(format!(
                    "QEMU exited ({status}) without a shutdown event{}",
                    stderr_note(&stderr)
                ))
            });
            log::info!("machine {}: ended: {exit:?} (QEMU {status})", inner.name);
            *lock(&inner.status) = MachineStatus::Stopped(exit.clone());
            inner.emit(MachineEvent::Ended(exit.clone()));
            *lock(&inner.ended.0) = Some(exit);
            inner.ended.1.notify_all();
        })
        .map(|_| ())
        .map_err(|source| QemuProcessError::Thread { what: "waiter", source })
}

impl QemuMachine {
    fn qmp(&self, op: &'static str) -> Result<&Arc<QmpClient>, MachineError> {
        self.inner.qmp.get().ok_or_else(|| MachineError::Control {
            machine: self.inner.name.clone(),
            op,
            source: "QMP is not connected".into(),
        })
    }

    fn require(&self, op: &'static str, ok: impl Fn(&MachineStatus) -> bool) -> Result<(), MachineError> {
        let s = lock(&self.inner.status).clone();
        if ok(&s) {
            Ok(())
        } else {
            Err(MachineError::State { machine: self.inner.name.clone(), op, state: s })
        }
    }

    fn control(&self, op: &'static str) -> impl Fn(QmpError) -> MachineError + '_ {
        move |e| MachineError::Control { machine: self.inner.name.clone(), op, source: Box::new(e) }
    }

    fn live(s: &MachineStatus) -> bool {
        matches!(s, MachineStatus::Running | MachineStatus::Paused)
    }
}

impl Machine for QemuMachine {
    fn status(&self) -> MachineStatus {
        lock(&self.inner.status).clone()
    }

    fn pause(&self) -> Result<(), MachineError> {
        self.require("pause", |s| *s == MachineStatus::Running)?;
        self.qmp("pause")?.stop().map_err(self.control("pause"))?;
        self.inner.transition(&MachineStatus::Running, MachineStatus::Paused, MachineEvent::Paused);
        Ok(())
    }

    fn resume(&self) -> Result<(), MachineError> {
        self.require("resume", |s| *s == MachineStatus::Paused)?;
        self.qmp("resume")?.cont().map_err(self.control("resume"))?;
        self.inner.transition(&MachineStatus::Paused, MachineStatus::Running, MachineEvent::Resumed);
        Ok(())
    }

    fn power_down(&self) -> Result<(), MachineError> {
        self.require("power down", Self::live)?;
        self.qmp("power down")?.system_powerdown().map_err(self.control("power down"))
    }

    fn reset(&self) -> Result<(), MachineError> {
        self.require("reset", Self::live)?;
        *lock(&self.inner.host_reset_at) = Some(Instant::now());
        self.qmp("reset")?.system_reset().map_err(self.control("reset"))
    }

    fn stop(&self) -> Result<(), MachineError> {
        if matches!(self.status(), MachineStatus::Stopped(_)) {
            return Ok(());
        }
        self.inner.set_cause(MachineExit::Stopped);
        *lock(&self.inner.kill_at) = Some(Instant::now() + self.stop_grace);
        if let Ok(q) = self.qmp("stop") {
            if let Err(e) = q.quit() {
                // The waiter kills QEMU when the grace period ends.
                log::warn!("machine {}: quit: {e}", self.inner.name);
            }
        }
        Ok(())
    }

    fn console_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        lock(&self.serial).write_all(bytes).map_err(|e| MachineError::Control {
            machine: self.inner.name.clone(),
            op: "console input",
            source: Box::new(e),
        })
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
        let (m, cv) = &self.inner.ended;
        let mut g = lock(m);
        let deadline = timeout.map(|t| Instant::now() + t);
        while g.is_none() {
            match deadline {
                None => g = cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    g = cv.wait_timeout(g, d - now).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
                }
            }
        }
        g.clone()
    }

    fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
        lock(&self.events).recv_timeout(timeout).ok()
    }

    fn vnc_socket(&self) -> Option<PathBuf> {
        self.vnc.clone()
    }

    fn take_agent_channel(&self) -> Option<UnixStream> {
        lock(&self.agent).take()
    }

    fn accelerator(&self) -> AccelDecision {
        self.decision.clone()
    }

    fn migrate_out(
        &self,
        stream: UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, MachineError> {
        self.require("migrate", |s| *s == MachineStatus::Running)?;
        let q = self.qmp("migrate")?;
        {
            let mut m = lock(&self.migrating);
            if *m {
                return Err(MachineError::Control {
                    machine: self.inner.name.clone(),
                    op: "migrate",
                    source: "a migration is already running".into(),
                });
            }
            *m = true;
        }
        let r = migration::send(q, &self.inner.migration, stream, opts);
        *lock(&self.migrating) = false;
        let err = |e: migration::QemuMigrationError| MachineError::Control {
            machine: self.inner.name.clone(),
            op: "migrate",
            source: Box::new(e),
        };
        match r {
            Ok(report) => {
                // The guest runs on the destination now; QEMU here holds a stopped copy.
                self.stop()?;
                Ok(report)
            }
            Err(e @ migration::QemuMigrationError::PostCopyBroken(_)) => Err(err(e)),
            Err(e) => {
                // QEMU resumes a guest whose migration failed; make sure.
                if self.status() == MachineStatus::Paused {
                    let _ = q.cont();
                }
                Err(err(e))
            }
        }
    }

    fn migrate_cancel(&self) -> Result<(), MachineError> {
        if !*lock(&self.migrating) {
            return Ok(());
        }
        let q = self.qmp("migrate cancel")?;
        let msg = |m: String| MachineError::Control {
            machine: self.inner.name.clone(),
            op: "migrate cancel",
            source: m.into(),
        };
        match migration::active(q).map_err(|e| msg(e.to_string()))? {
            None => Err(msg("too late: the migration completed".into())),
            Some(s) if s.starts_with("postcopy") => Err(msg(
                "too late: the migration switched to post-copy and the guest runs on the destination".into(),
            )),
            Some(_) => q.execute("migrate_cancel", None).map(|_| ()).map_err(|e| msg(e.to_string())),
        }
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
