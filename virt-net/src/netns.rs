//! Network namespaces and the two tools the node drives in them: `ip` (one `ip -batch` process per
//! step, never one per link) and `nft` (one `nft -f -` per ruleset: a single atomic transaction).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Errors running a network tool or entering a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The tool could not be started.
    #[error("starting {tool}: {source}")]
    Spawn {
        /// The tool.
        tool: String,
        /// The error.
        source: std::io::Error,
    },
    /// The tool failed.
    #[error("{tool} failed ({status}): {stderr} (input: {input})")]
    Failed {
        /// The tool and its arguments.
        tool: String,
        /// Exit status.
        status: String,
        /// What it said.
        stderr: String,
        /// What it was given (first lines).
        input: String,
    },
    /// A namespace could not be entered.
    #[error("entering network namespace {path}: {source}")]
    Enter {
        /// The namespace file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The file of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

fn run(mut cmd: Command, tool: String, input: &str) -> Result<String, NetnsError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Spawn { tool: tool.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NetnsError::Spawn { tool: tool.clone(), source })?;
    if !out.status.success() {
        let input: String = input.lines().take(40).collect::<Vec<_>>().join("; ");
        return Err(NetnsError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            input,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates namespace `name` (`ip netns add`).
pub fn add(name: &str) -> Result<(), NetnsError> {
    let mut c = Command::new("ip");
    c.args(["netns", "add", name]);
    run(c, format!("ip netns add {name}"), "").map(drop)
}

/// Removes namespace `name`; a missing one is not an error. Its interfaces go with it (a veth's
/// peer in another namespace too).
pub fn delete(name: &str) -> Result<(), NetnsError> {
    if !exists(name) {
        return Ok(());
    }
    let mut c = Command::new("ip");
    c.args(["netns", "delete", name]);
    run(c, format!("ip netns delete {name}"), "").map(drop)
}

/// Runs `ip` commands (one per line, without the leading `ip`) in one process, in namespace `ns`
/// (`None`: this process's own namespace). Stops at the first failing command.
pub fn ip_batch(ns: Option<&str>, commands: &[String]) -> Result<(), NetnsError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(["-batch", "-"]);
    let input = commands.join("\n") + "\n";
    run(c, format!("ip -n {} -batch", ns.unwrap_or("(node)")), &input).map(drop)
}

/// Runs `ip` with `args` in namespace `ns` and returns what it printed.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<String, NetnsError> {
    let mut c = Command::new("ip");
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    c.args(args);
    run(c, format!("ip {}", args.join(" ")), "")
}

/// Applies an nftables script in namespace `ns` as one transaction (`nft -f -`): all of it or
/// nothing.
pub fn nft(ns: Option<&str>, script: &str) -> Result<(), NetnsError> {
    nft_cmd(ns, &["-f", "-"], script).map(drop)
}

/// Runs `nft ARGS` in namespace `ns` with `input` on stdin.
pub fn nft_cmd(ns: Option<&str>, args: &[&str], input: &str) -> Result<String, NetnsError> {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    c.args(args);
    run(c, format!("nft {} (netns {})", args.join(" "), ns.unwrap_or("node")), input)
}

/// Runs `f` on a thread that entered the network namespace at `path` (sockets it opens stay in
/// that namespace; processes it spawns start there).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let enter_err = |source| NetnsError::Enter { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(enter_err)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a descriptor we own, affecting only this (scoped) thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(enter_err(std::io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(enter_err(std::io::Error::other("the thread panicked"))))
    })
}

/// Enters the network namespace at `path` on the calling thread (for a long-running thread such as
/// a DHCP server, or in a child between fork and exec).
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let enter_err = |source| NetnsError::Enter { path: path.display().to_string(), source };
    let file = std::fs::File::open(path).map_err(enter_err)?;
    // SAFETY: setns on a descriptor we own; it changes only the calling thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(enter_err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Writes a sysctl under `/proc/sys/net` inside namespace `path` (`key` like `ipv4/ip_forward`).
pub fn sysctl(path: &Path, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    run_in(path, || {
        for (key, value) in settings {
            let file = Path::new("/proc/sys/net").join(key);
            std::fs::write(&file, value)
                .map_err(|source| NetnsError::Enter { path: file.display().to_string(), source })?;
        }
        Ok(())
    })?
}
