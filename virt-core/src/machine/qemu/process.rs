//! The processes and files of one QEMU machine: its run directory, OVMF's variable store, swtpm,
//! QEMU's stderr tail, the sockets QEMU connects to, and what dies with the launcher.

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cmdline, qmp, QemuOptions, MAX_SOCKET_PATH, STDERR_TAIL};
use crate::machine::MachineSpec;
use crate::vmm::devices::lock;

/// Why a QEMU machine did not start: a step of its process, files or sockets, each naming the
/// path, program or connection concerned (and QEMU's last words where it exited).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QemuProcessError {
    /// No accelerator the policy allows.
    #[error(transparent)]
    Accel(#[from] crate::machine::accel::NoAccelerator),
    /// The firmware or command line could not be made.
    #[error(transparent)]
    Config(#[from] cmdline::ConfigError),
    /// The run directory's sockets would exceed the unix socket path limit.
    #[error("run directory {} is too long for unix socket paths", dir.display())]
    RunDirTooLong {
        /// The run directory it would have made.
        dir: PathBuf,
    },
    /// A file system or socket step on a path failed (`create`, `chmod`, `listen on`, ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// To what.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The persistent EFI variable store does not match the firmware's template.
    #[error(
        "EFI variables {} hold {held} bytes but the firmware's template {} has {template_len}: made for another OVMF build",
        vars.display(),
        template.display()
    )]
    VarsMismatch {
        /// The machine's variable store.
        vars: PathBuf,
        /// Its size.
        held: u64,
        /// The firmware's template.
        template: PathBuf,
        /// The template's size.
        template_len: u64,
    },
    /// The variable store could not be made from the template.
    #[error("copy {} to {}: {source}", template.display(), vars.display())]
    CopyVars {
        /// The firmware's template.
        template: PathBuf,
        /// The machine's variable store.
        vars: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A program (QEMU, swtpm) could not be started.
    #[error("spawn {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A connection QEMU made (or the socket it came on) failed.
    #[error("{what}: {source}")]
    Socket {
        /// Which connection (`QMP monitor`, `serial console`, ...).
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Accepting a connection from QEMU failed.
    #[error("accept the {what} connection: {source}")]
    Accept {
        /// Which connection.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// QEMU exited before making a connection.
    #[error("QEMU exited ({status}) before connecting its {what}{note}")]
    ExitedEarly {
        /// Which connection.
        what: &'static str,
        /// How QEMU ended.
        status: ExitStatus,
        /// `; qemu said: ...`, or empty.
        note: String,
    },
    /// QEMU did not make a connection before the start timeout.
    #[error("QEMU did not connect its {what} in time{note}")]
    ConnectTimeout {
        /// Which connection.
        what: &'static str,
        /// `; qemu said: ...`, or empty.
        note: String,
    },
    /// swtpm was asked to start for a spec without a TPM (the machine is named by the caller's
    /// `MachineError::Start`).
    #[error("no TPM asked for")]
    NoTpm,
    /// swtpm exited before listening on its control socket.
    #[error("swtpm exited ({status}) before listening: {log}")]
    SwtpmExited {
        /// How it ended.
        status: ExitStatus,
        /// Its log.
        log: String,
    },
    /// swtpm did not listen in time.
    #[error("swtpm did not listen on {} in time: {log}", sock.display())]
    SwtpmTimeout {
        /// The socket it should have listened on.
        sock: PathBuf,
        /// Its log.
        log: String,
    },
    /// The QMP handshake failed.
    #[error("QMP handshake: {source}{note}")]
    Handshake {
        /// What QMP said.
        source: super::qmp::QmpError,
        /// `; qemu said: ...`, or empty.
        note: String,
    },
    /// A QMP command of the start failed (`start the vCPUs`).
    #[error("{op}: {source}")]
    Qmp {
        /// The step.
        op: &'static str,
        /// What QMP said.
        source: super::qmp::QmpError,
    },
    /// The incoming migration failed.
    #[error(transparent)]
    Migration(#[from] super::migration::QemuMigrationError),
    /// A thread of the machine could not be started.
    #[error("spawn the {what}: {source}")]
    Thread {
        /// Which thread (`console relay`, `waiter`).
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io_at(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> QemuProcessError {
    let path = path.to_path_buf();
    move |source| QemuProcessError::Io { op, path, source }
}

/// Processes and files a machine owns; dropping this kills the processes and removes the run dir.
pub(super) struct Resources {
    pub(super) run_dir: PathBuf,
    pub(super) qemu: Option<Arc<Mutex<Child>>>,
    pub(super) swtpm: Arc<Mutex<Option<Child>>>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Some(q) = &self.qemu {
            let mut c = lock(q);
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if let Some(mut s) = lock(&self.swtpm).take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

pub(super) fn new_run_dir(opts: &QemuOptions, name: &str) -> Result<PathBuf, QemuProcessError> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = opts
        .run_dir
        .clone()
        .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    let short: String = name.chars().take(16).collect();
    let dir = base.join(format!("vq-{short}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    if dir.join("serial.sock").as_os_str().len() > MAX_SOCKET_PATH {
        return Err(QemuProcessError::RunDirTooLong { dir });
    }
    std::fs::create_dir_all(&base).map_err(io_at("create", &base))?;
    std::fs::create_dir(&dir).map_err(io_at("create", &dir))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_at("chmod", &dir))?;
    }
    Ok(dir)
}

/// This machine's EFI variable store: the persistent file (made from the template the first time) or
/// a fresh copy in the run directory.
pub(super) fn prepare_vars(template: &Path, vars: &Path) -> Result<(), QemuProcessError> {
    let tlen = std::fs::metadata(template).map_err(io_at("read the EFI variables template", template))?.len();
    match std::fs::metadata(vars) {
        Ok(m) if m.len() == tlen => Ok(()),
        Ok(m) => Err(QemuProcessError::VarsMismatch {
            vars: vars.to_path_buf(),
            held: m.len(),
            template: template.to_path_buf(),
            template_len: tlen,
        }),
        Err(_) => {
            if let Some(parent) = vars.parent() {
                std::fs::create_dir_all(parent).map_err(io_at("create", parent))?;
            }
            std::fs::copy(template, vars).map(|_| ()).map_err(|source| QemuProcessError::CopyVars {
                template: template.to_path_buf(),
                vars: vars.to_path_buf(),
                source,
            })
        }
    }
}

/// Collects QEMU's stderr: logged line by line (lines bounded), the tail kept for error messages.
pub(super) fn collect_stderr(name: String, mut stderr: std::process::ChildStderr) -> Arc<Mutex<String>> {
    let tail = Arc::new(Mutex::new(String::new()));
    let t = tail.clone();
    let _ = std::thread::Builder::new().name(format!("{name}-qemu-stderr")).spawn(move || {
        crate::jail::enter_or_die(crate::jail::Role::Console);
        let mut split = qmp::LineSplitter::new(1024);
        let mut buf = [0u8; 4096];
        loop {
            let n = match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for line in split.push(&buf[..n]) {
                let s = match line {
                    Ok(l) => String::from_utf8_lossy(&l).trim_end().to_string(),
                    Err(e) => e.to_string(),
                };
                log::warn!("machine {name}: qemu: {s}");
                let mut t = lock(&t);
                t.push_str(&s);
                t.push('\n');
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(t.len());
                    t.drain(..cut);
                }
            }
        }
    });
    tail
}

pub(super) fn stderr_note(tail: &Mutex<String>) -> String {
    let t = lock(tail);
    if t.trim().is_empty() {
        String::new()
    } else {
        format!("; qemu said: {}", t.trim())
    }
}

/// Accepts one connection on `l` before `deadline`, failing early if `child` exits.
pub(super) fn accept_within(
    l: &UnixListener,
    what: &'static str,
    deadline: Instant,
    child: &Mutex<Child>,
    tail: &Mutex<String>,
) -> Result<UnixStream, QemuProcessError> {
    let sock = |source| QemuProcessError::Socket { what, source };
    l.set_nonblocking(true).map_err(sock)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(sock)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(source) => return Err(QemuProcessError::Accept { what, source }),
        }
        if let Ok(Some(status)) = lock(child).try_wait() {
            // Let the stderr thread catch up with QEMU's last words.
            std::thread::sleep(Duration::from_millis(100));
            return Err(QemuProcessError::ExitedEarly { what, status, note: stderr_note(tail) });
        }
        if Instant::now() >= deadline {
            return Err(QemuProcessError::ConnectTimeout { what, note: stderr_note(tail) });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Makes the child die with the thread that spawns it (the launcher's main thread), so that a
/// launcher killed with SIGKILL does not leave an unsupervised QEMU (or swtpm) running its guest;
/// with `confine`, the child also starts with no capabilities and `no_new_privs`.
pub(super) fn die_with_parent(cmd: &mut Command, confine: bool) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (prctl, capset), which are async-signal-safe; it allocates nothing and touches no memory of
    // the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if confine {
                crate::jail::drop_capabilities(0).map_err(crate::jail::CapsError::into_io)?;
            }
            Ok(())
        });
    }
}

pub(super) fn start_swtpm(
    opts: &QemuOptions,
    spec: &MachineSpec,
    dir: &Path,
    sock: &Path,
) -> Result<Child, QemuProcessError> {
    let Some(tpm) = &spec.tpm else { return Err(QemuProcessError::NoTpm) };
    let state = if tpm.persistent { tpm.state_dir.clone() } else { dir.join("tpm") };
    std::fs::create_dir_all(&state).map_err(io_at("create TPM state dir", &state))?;
    let log = dir.join("swtpm.log");
    let mut cmd = Command::new(&opts.swtpm);
    cmd.arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", cmdline::escape(&state.display().to_string())))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", cmdline::escape(&sock.display().to_string())))
        .arg("--log")
        .arg(format!("file={},level=1", cmdline::escape(&log.display().to_string())))
        // Exits when QEMU disconnects.
        .arg("--terminate")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd, opts.confine);
    let mut child =
        cmd.spawn().map_err(|source| QemuProcessError::Spawn { program: opts.swtpm.clone(), source })?;
    let deadline = Instant::now() + opts.start_timeout;
    while !sock.exists() {
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return Err(QemuProcessError::SwtpmExited { status, log: log_text().trim().to_string() });
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(QemuProcessError::SwtpmTimeout {
                sock: sock.to_path_buf(),
                log: log_text().trim().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child)
}
