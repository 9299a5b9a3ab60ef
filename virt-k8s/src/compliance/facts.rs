//! What the rules look at: the node's effective configuration (written by the node at start to
//! `<state>/node-effective.json`), file modes in the state directory, and the launcher processes
//! running on the machine (their threads' seccomp mode and effective capabilities).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The node's effective configuration, as it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveConfig {
    /// The node's name.
    pub node_name: String,
    /// The TCP listener, if any.
    pub listen: Option<String>,
    /// Whether the TCP listener speaks TLS.
    pub tls: bool,
    /// Whether TCP clients need a bearer token.
    pub token_required: bool,
    /// The unix socket.
    pub socket: PathBuf,
    /// Software emulation allowed.
    pub allow_emulation: bool,
    /// Directories hostDisk images may live in.
    pub host_disk_dirs: Vec<PathBuf>,
    /// Addresses imports may reach despite the rules.
    pub import_allow: Vec<String>,
    /// Where requests are audited (`None`: not audited).
    pub audit_log: Option<PathBuf>,
}

/// Errors gathering facts.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The effective configuration is missing or unreadable.
    #[error("reading the node's effective configuration {path}: {message} (has a virt-node started on this state directory?)")]
    Config {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

/// One thread of a running launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadFacts {
    /// Thread id.
    pub tid: u32,
    /// Thread name.
    pub name: String,
    /// `Seccomp:` of /proc/PID/task/TID/status (0 none, 1 strict, 2 filter).
    pub seccomp: u8,
    /// `CapEff:` as a bit mask.
    pub cap_eff: u64,
}

/// A running launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherFacts {
    /// Process id.
    pub pid: u32,
    /// Its threads.
    pub threads: Vec<ThreadFacts>,
    /// Its jail, as the host sees it (docs/confinement.md).
    pub jail: JailFacts,
}

/// What the host sees of a launcher's jail.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JailFacts {
    /// A mount namespace other than init's (`/proc/PID/ns/mnt` differs from `/proc/1/ns/mnt`).
    pub own_mount_ns: bool,
    /// A pid namespace other than init's.
    pub own_pid_ns: bool,
    /// Its real uid.
    pub uid: u32,
    /// `/etc/shadow` is in its view (`/proc/PID/root/etc/shadow` exists).
    pub sees_shadow: bool,
}

impl JailFacts {
    /// Reads the jail of `pid` from /proc.
    pub fn of(pid: u32) -> JailFacts {
        let ns = |p: &str, k: &str| std::fs::read_link(format!("/proc/{p}/ns/{k}")).ok();
        let own = |k: &str| match (ns(&pid.to_string(), k), ns("1", k)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|v| v.split_whitespace().next().and_then(|u| u.parse().ok()))
            })
            .unwrap_or(0);
        JailFacts {
            own_mount_ns: own("mnt"),
            own_pid_ns: own("pid"),
            uid,
            sees_shadow: Path::new(&format!("/proc/{pid}/root/etc/shadow")).exists(),
        }
    }
}

/// Everything the project's rules evaluate.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The state directory.
    pub state_dir: PathBuf,
    /// The effective configuration.
    pub config: EffectiveConfig,
    /// Mode bits of the state directory.
    pub state_mode: Option<u32>,
    /// Mode bits of the unix socket.
    pub socket_mode: Option<u32>,
    /// Launchers running under this state directory.
    pub launchers: Vec<LauncherFacts>,
}

/// The file the node writes its effective configuration to.
pub fn effective_config_path(state_dir: &Path) -> PathBuf {
    state_dir.join("node-effective.json")
}

fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).ok().map(|m| m.permissions().mode() & 0o7777)
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// The threads of process `pid`.
pub fn threads_of(pid: u32) -> Vec<ThreadFacts> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
        out.push(ThreadFacts {
            tid,
            name: status_field(&status, "Name:").unwrap_or("").to_string(),
            seccomp: status_field(&status, "Seccomp:").and_then(|s| s.parse().ok()).unwrap_or(0),
            cap_eff: status_field(&status, "CapEff:")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .unwrap_or(0),
        });
    }
    out.sort_by_key(|t| t.tid);
    out
}

/// Launchers of `state_dir`: the pids in `vmis/*/launcher.pid` that are alive.
fn launchers(state_dir: &Path) -> Vec<LauncherFacts> {
    let Ok(dirs) = std::fs::read_dir(state_dir.join("vmis")) else { return Vec::new() };
    let mut out = Vec::new();
    for d in dirs.flatten() {
        let Ok(pid) = std::fs::read_to_string(d.path().join("launcher.pid")) else { continue };
        let Ok(pid) = pid.trim().parse::<u32>() else { continue };
        let threads = threads_of(pid);
        if !threads.is_empty() {
            out.push(LauncherFacts { pid, threads, jail: JailFacts::of(pid) });
        }
    }
    out
}

impl NodeFacts {
    /// Gathers the facts of the node on `state_dir`.
    pub fn gather(state_dir: &Path) -> Result<Self, FactsError> {
        let path = effective_config_path(state_dir);
        let err = |message: String| FactsError::Config { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let config: EffectiveConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        Ok(Self {
            state_dir: state_dir.to_path_buf(),
            state_mode: mode(state_dir),
            socket_mode: mode(&config.socket),
            launchers: launchers(state_dir),
            config,
        })
    }
}
