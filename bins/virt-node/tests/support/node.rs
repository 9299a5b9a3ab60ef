//! Test support shared by the node's end-to-end tests: a real `virt-node` process on a temporary
//! state directory, `virtctl` against it, and the cleanup of the launchers it leaves (by design a
//! launcher outlives its daemon). Each test file adds its own `impl NodeProc` helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A binary of this workspace, from the target directory these tests run from (`cargo test
/// --workspace` builds them all).
pub fn bin(name: &str) -> PathBuf {
    if name == "virt-node" {
        return PathBuf::from(env!("CARGO_BIN_EXE_virt-node"));
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Whether a test that runs confined launchers on /dev/kvm with a local registry can run here: root,
/// /dev/kvm, docker-registry and skopeo. If not, it fails under `VIRT_TESTS_REQUIRE_TOOLS` (CI) and
/// otherwise prints why it is skipped (scripts/install-deps.sh installs the tools).
/// `have` says whether a tool runs (the guest support's `have`).
pub fn can_run_confined_with_registry(have: impl Fn(&str) -> bool) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")));
    let missing = if !root || !Path::new("/dev/kvm").exists() {
        Some("needs root and /dev/kvm".to_string())
    } else {
        ["docker-registry", "skopeo"]
            .into_iter()
            .find(|t| !have(t))
            .map(|t| format!("{t} not installed (scripts/install-deps.sh installs it)"))
    };
    let Some(why) = missing else { return true };
    assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "{why}");
    eprintln!("{why}: skipping");
    false
}

/// A node daemon on a temporary state directory; killed when dropped, its launchers too.
pub struct NodeProc {
    pub child: Option<Child>,
    pub state: PathBuf,
    pub socket: PathBuf,
    /// A registry reached over plain HTTP (`--insecure-registry`).
    pub registry: Option<String>,
    /// More arguments for the daemon (`--listen`, `--node-name`, ...).
    pub args: Vec<String>,
    /// The launcher the daemon starts (default: this workspace's `virt-launcher`).
    pub launcher: Option<PathBuf>,
}

impl NodeProc {
    /// Starts a node on `state` (which should be a short path: unix sockets live below it).
    pub fn start(state: &Path, registry: Option<&str>) -> Self {
        Self::start_with(state, registry, &[])
    }

    /// [`NodeProc::start`] with more daemon arguments.
    pub fn start_with(state: &Path, registry: Option<&str>, args: &[&str]) -> Self {
        let mut n = Self {
            child: None,
            state: state.to_path_buf(),
            socket: state.join("node.sock"),
            registry: registry.map(str::to_string),
            args: args.iter().map(|a| a.to_string()).collect(),
            launcher: None,
        };
        n.spawn();
        n
    }

    /// A node not started yet: set `args`, then [`Self::spawn`].
    pub fn start_later(state: &Path) -> Self {
        Self {
            child: None,
            state: state.to_path_buf(),
            socket: state.join("node.sock"),
            registry: None,
            args: Vec::new(),
            launcher: None,
        }
    }

    /// Starts (again) the daemon process, waiting until it serves.
    pub fn spawn(&mut self) {
        // A killed daemon leaves its socket file behind.
        let _ = std::fs::remove_file(&self.socket);
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.state.join("node.log")).unwrap();
        let mut cmd = Command::new(bin("virt-node"));
        cmd.arg("--state-dir")
            .arg(&self.state)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--launcher")
            .arg(self.launcher.clone().unwrap_or_else(|| bin("virt-launcher")))
            .arg("--allow-emulation");
        if let Some(r) = &self.registry {
            cmd.arg("--insecure-registry").arg(r);
        }
        cmd.args(&self.args);
        let child = cmd.env("RUST_LOG", "info").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let t = Instant::now();
        while !self.socket.exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "virt-node did not come up: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the daemon logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("node.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (its launchers keep running).
    pub fn sigkill(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Runs virtctl against this node.
    pub fn virtctl(&self, args: &[&str]) -> Output {
        Command::new(bin("virtctl"))
            .arg("--server")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env_remove("VIRT_UPLOAD_TOKEN")
            .env_remove("VIRT_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// VMI `name` of the default namespace, as `virtctl get -o json` prints it.
    pub fn vmi(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["get", "vmi", name, "-o", "json"])).unwrap()
    }

    /// Waits until VMI `name` is in `phase`; fails with the VMI and the node's log after `within`,
    /// or at once when it failed (unless `Failed` is what is awaited).
    pub fn wait_vmi_phase(&self, name: &str, phase: &str, within: Duration) -> serde_json::Value {
        let t = Instant::now();
        loop {
            let v = self.vmi(name);
            if v["status"]["phase"] == phase {
                return v;
            }
            assert!(
                v["status"]["phase"] != "Failed",
                "VMI {name} Failed, awaiting {phase}: {v}\nnode log:\n{}",
                self.log()
            );
            assert!(
                t.elapsed() < within,
                "VMI {name} not {phase} within {within:?}: {v}\nnode log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs virtctl and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.virtctl(args);
        assert!(
            o.status.success(),
            "virtctl {args:?} failed ({}): {}{}\nnode log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        kill_launchers(&self.state);
    }
}

/// Ends the launchers (and their QEMUs) of the VMIs under `state`.
pub fn kill_launchers(state: &Path) {
    let Ok(dirs) = std::fs::read_dir(state.join("vmis")) else { return };
    for d in dirs.flatten() {
        let Ok(pid) = std::fs::read_to_string(d.path().join("launcher.pid")) else { continue };
        let Ok(pid) = pid.trim().parse::<i32>() else { continue };
        // The launcher leads its process group: end the group. procps' kill needs `--` before a
        // negative pid (`kill -KILL -PGID` exits 0 and kills nothing).
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}
