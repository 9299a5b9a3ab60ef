//! The guest agent client against the REAL agent: Debian's `qemu-ga` (package qemu-guest-agent,
//! installed by scripts/install-deps.sh) runs on this host with `-m unix-listen`, so every answer
//! the client parses is one the real agent wrote. Commands that would act on the host
//! (`guest-shutdown`, freezing) are blocked with `--block-rpcs`, which also exercises the agent's
//! refusals.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virt_core::agent::{Agent, AgentClient, AgentError, AgentOptions, ShutdownMode};

const BLOCKED: &str = "guest-shutdown,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw,\
guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,guest-exec,guest-file-open,guest-set-user-password,\
guest-ssh-add-authorized-keys,guest-ssh-remove-authorized-keys,guest-set-time,guest-set-vcpus,guest-set-memory-blocks";

fn qemu_ga() -> PathBuf {
    let p = PathBuf::from("/usr/sbin/qemu-ga");
    if !p.exists() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let st = Command::new("bash").arg(root.join("scripts/install-deps.sh")).status().unwrap();
        assert!(st.success(), "scripts/install-deps.sh failed");
    }
    assert!(p.exists(), "qemu-ga is missing after scripts/install-deps.sh (package qemu-guest-agent)");
    p
}

/// A real qemu-ga listening on a unix socket in its own directory; killed on drop.
struct RealAgent {
    child: Child,
    dir: PathBuf,
}

impl RealAgent {
    fn start(tag: &str) -> RealAgent {
        let dir = std::env::temp_dir().join(format!("virt-qga-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("qga.sock");
        let child = Command::new(qemu_ga())
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(&dir)
            .arg("-f")
            .arg(dir.join("qga.pid"))
            .args(["-b", BLOCKED])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qga.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(
                Instant::now() < deadline,
                "qemu-ga made no socket: {}",
                std::fs::read_to_string(dir.join("qga.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RealAgent { child, dir }
    }

    fn connect(&self) -> UnixStream {
        UnixStream::connect(self.dir.join("qga.sock")).unwrap()
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn os_release(key: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(|v| v.trim_matches('"').to_string()))
}

#[test]
fn every_command_against_the_real_qemu_ga() {
    let agent = RealAgent::start("cmds");
    let mut c = AgentClient::new(agent.connect()).unwrap().with_timeout(Duration::from_secs(20));
    c.sync().unwrap();
    c.ping().unwrap();
    let info = c.info().unwrap();
    assert!(info.version.starts_with(|ch: char| ch.is_ascii_digit()), "{info:?}");
    let names: Vec<&str> = info.supported_commands.iter().map(|c| c.name.as_str()).collect();
    for want in ["guest-get-osinfo", "guest-network-get-interfaces", "guest-get-fsinfo", "guest-shutdown"] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let shutdown = info.supported_commands.iter().find(|c| c.name == "guest-shutdown").unwrap();
    assert!(!shutdown.enabled && !shutdown.success_response, "{shutdown:?}");

    let os = c.os_info().unwrap();
    assert_eq!(os.id, os_release("ID"), "{os:?}");
    assert_eq!(os.version_id, os_release("VERSION_ID"), "{os:?}");
    assert_eq!(os.machine.as_deref(), Some(std::env::consts::ARCH), "{os:?}");
    let uname = Command::new("uname").arg("-r").output().unwrap();
    assert_eq!(os.kernel_release.as_deref(), Some(String::from_utf8_lossy(&uname.stdout).trim()));

    let host = c.host_name().unwrap();
    let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host, want.trim());
    let tz = c.timezone().unwrap();
    assert!(tz.zone.is_some(), "{tz:?}");

    let ifaces = c.network_interfaces().unwrap();
    let lo = ifaces.iter().find(|i| i.name == "lo").unwrap_or_else(|| panic!("no lo in {ifaces:?}"));
    assert!(lo.ip_addresses.iter().any(|a| a.ip_address == "127.0.0.1" && a.prefix == 8), "{lo:?}");

    // Users and file systems depend on the host (no utmp in a container, mounts it cannot stat):
    // what matters is that the real answers parse, or are the agent's own refusals.
    match c.users() {
        Ok(u) => eprintln!("users: {u:?}"),
        Err(AgentError::Refused { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    match c.fs_info() {
        Ok(f) => eprintln!("{} file systems, first {:?}", f.len(), f.first()),
        Err(AgentError::Refused { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(c.fsfreeze_status().unwrap(), "thawed");

    // Blocked here, so the real agent's refusal comes back (and the stream stays in step).
    let e = c.fsfreeze_freeze().unwrap_err();
    assert!(matches!(&e, AgentError::Refused { desc, .. } if desc.contains("disabled")), "{e:?}");
    let e = c.shutdown(ShutdownMode::Powerdown, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(&e, AgentError::Refused { .. }), "{e:?}");
    c.ping().unwrap();
}

#[test]
fn garbage_sent_to_the_real_agent_is_recovered_from() {
    use std::io::Write;
    let agent = RealAgent::start("garbage");
    let mut raw = agent.connect();
    // Half a command and binary noise: the agent's parser is in the middle of something.
    raw.write_all(b"{\"execute\": \"guest-get-osin\x01\x02 [[[ {").unwrap();
    let mut c = AgentClient::new(raw).unwrap().with_timeout(Duration::from_secs(20));
    c.sync().unwrap();
    assert!(c.os_info().unwrap().id.is_some());
}

#[test]
fn the_poller_reports_the_real_agent() {
    let agent = RealAgent::start("poller");
    let opts = AgentOptions {
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let a = Agent::start("qga-test", agent.connect(), opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !a.connected() {
        assert!(Instant::now() < deadline, "the agent never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = a.report();
    assert_eq!(r.os.as_ref().and_then(|o| o.id.clone()), os_release("ID"), "{r:?}");
    assert!(r.guest_agent_version.is_some() && !r.supported_commands.is_empty(), "{r:?}");
    assert!(r.hostname.is_some() && r.timezone.is_some(), "{r:?}");
    assert_eq!(r.fs_freeze_status.as_deref(), Some("thawed"));
    assert!(r.interfaces.iter().all(|i| i.interface_name != "lo"), "{r:?}");
    // Blocked in this agent: the refusal is an error, not a lost connection.
    assert!(matches!(a.shutdown(ShutdownMode::Reboot), Err(AgentError::Refused { .. })));
    assert!(a.connected());
    // The agent goes away: the report says so within a poll.
    drop(agent);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.connected() {
        assert!(Instant::now() < deadline, "still connected after the agent died");
        std::thread::sleep(Duration::from_millis(50));
    }
}
