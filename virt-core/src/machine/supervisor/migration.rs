//! Live migration through the launcher's sockets (docs/migration.md).
//!
//! The destination launcher (`virt-launcher --incoming`) listens on [`MIGRATE_SOCKET`] in its run
//! directory for one connection and starts the machine from the migration arriving on it. Whoever
//! drives the migration (the node, a test) connects to it and hands the connected stream to the
//! source launcher with a `migrateOut` request on the source's control socket, the descriptor
//! attached to the request line (`SCM_RIGHTS`): the source, confined to its own run directory,
//! never opens another launcher's files. `migrateCancel` on another connection makes the source
//! abandon the migration before the destination is ready; the source then runs on.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::protocol::{Reply, Request};
use super::CONTROL_SOCKET;
use crate::machine::migrate::{MigrateOptions, MigrationReport};

/// The destination launcher's migration socket, in its run directory.
pub const MIGRATE_SOCKET: &str = "migrate.sock";

/// The answer to a successful `migrateOut`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateReply {
    /// Always true (failures are [`Reply`]s).
    pub ok: bool,
    /// What the source measured.
    pub report: MigrationReport,
}

/// Why a migration request through the sockets failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateRequestError {
    /// A socket could not be reached or used.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The launcher answered something that is not a reply.
    #[error("launcher at {path}: unreadable answer {answer:?}")]
    Answer {
        /// The control socket.
        path: PathBuf,
        /// What it said.
        answer: String,
    },
    /// The launcher refused or the migration failed; the source runs on.
    #[error("launcher at {path}: {error}")]
    Refused {
        /// The control socket.
        path: PathBuf,
        /// Its error.
        error: String,
    },
}

/// Connects to the destination launcher's [`MIGRATE_SOCKET`] in `run_dir`, waiting up to
/// `timeout` for it to appear.
pub fn connect_destination(run_dir: &Path, timeout: Duration) -> Result<UnixStream, MigrateRequestError> {
    let path = run_dir.join(MIGRATE_SOCKET);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(&path) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(MigrateRequestError::Io { what: "connecting to", path, source: e })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Asks the source launcher in `run_dir` to migrate its machine over `dest` (a stream connected to
/// the destination); returns when the migration ended. On error the source runs on.
pub fn migrate_out(
    run_dir: &Path,
    dest: &UnixStream,
    opts: &MigrateOptions,
) -> Result<MigrationReport, MigrateRequestError> {
    let path = run_dir.join(CONTROL_SOCKET);
    let io = |what, source| MigrateRequestError::Io { what, path: path.clone(), source };
    let s = UnixStream::connect(&path).map_err(|e| io("connecting to", e))?;
    let req = Request::MigrateOut(opts.clone());
    let mut line = serde_json::to_vec(&req).unwrap_or_default();
    line.push(b'\n');
    send_with_fd(&s, &line, dest.as_raw_fd()).map_err(|e| io("sending the request to", e))?;
    let answer = read_answer(&s).map_err(|e| io("reading the answer from", e))?;
    if let Ok(r) = serde_json::from_str::<MigrateReply>(&answer) {
        return Ok(r.report);
    }
    refused(&path, &answer)
}

/// Asks the source launcher in `run_dir` to abandon its running migration (`migrateCancel`).
pub fn migrate_cancel(run_dir: &Path) -> Result<(), MigrateRequestError> {
    let path = run_dir.join(CONTROL_SOCKET);
    let io = |what, source| MigrateRequestError::Io { what, path: path.clone(), source };
    let mut s = UnixStream::connect(&path).map_err(|e| io("connecting to", e))?;
    s.write_all(b"{\"op\":\"migrateCancel\"}\n").map_err(|e| io("sending the request to", e))?;
    let answer = read_answer(&s).map_err(|e| io("reading the answer from", e))?;
    refused(&path, &answer)
}

fn read_answer(s: &UnixStream) -> std::io::Result<String> {
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer)
}

fn refused<T: Default>(path: &Path, answer: &str) -> Result<T, MigrateRequestError> {
    match serde_json::from_str::<Reply>(answer) {
        Ok(r) if r.ok => Ok(T::default()),
        Ok(r) => Err(MigrateRequestError::Refused {
            path: path.to_path_buf(),
            error: r.error.unwrap_or_else(|| "refused".into()),
        }),
        Err(_) => Err(MigrateRequestError::Answer { path: path.to_path_buf(), answer: answer.trim().into() }),
    }
}

/// Sends `data` on `s` with `fd` attached (`SCM_RIGHTS`).
pub(crate) fn send_with_fd(s: &UnixStream, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, room for one header and one descriptor, so
    // CMSG_FIRSTHDR is non-null and CMSG_DATA stays inside `cbuf`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: msg points at the live iovec and control buffer above; s is an open socket.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (n as usize) < data.len() {
        // The descriptor went with the first byte; the rest is ordinary data.
        (&*s).write_all(&data[n as usize..])?;
    }
    Ok(())
}

/// Reads from `s` into `buf` like `read`, keeping any descriptors that came with the bytes in
/// `fds` (closed if more than a few arrive at once).
pub(super) fn recv_with_fds(
    s: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> std::io::Result<usize> {
    const MAX_FDS: usize = 4;
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at the live iovec and control buffer; the kernel writes within their sizes.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed headers;
    // CMSG_FIRSTHDR/NXTHDR walk within them and each SCM_RIGHTS payload holds descriptors now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fds.len() < MAX_FDS {
                        fds.push(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}
