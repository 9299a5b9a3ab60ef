//! The project's own rules for a node's configuration, after the Compliance Operator's
//! `ocp4-moderate` KubeVirt rules: each a pure function of [`NodeFacts`].

use std::path::Path;

use super::facts::NodeFacts;
use super::{RuleResult, Status};

struct Rule {
    id: &'static str,
    title: &'static str,
    severity: &'static str,
    remediation: &'static str,
    eval: fn(&NodeFacts) -> (Status, String),
}

const RULES: &[Rule] = &[
    Rule {
        id: "virt-node-api-tls",
        title: "The node's TCP API is served over TLS",
        severity: "high",
        remediation: "serve the TCP listener with TLS, or drop --listen and use the unix socket only",
        eval: api_tls,
    },
    Rule {
        id: "virt-node-api-no-anonymous",
        title: "No anonymous access to the node's API",
        severity: "high",
        remediation: "give --token-file with --listen; keep the unix socket unwritable by other users (chmod o-w)",
        eval: no_anonymous,
    },
    Rule {
        id: "virt-node-state-dir-private",
        title: "The state directory is writable by its owner only",
        severity: "medium",
        remediation: "chmod go-w the state directory (--state-dir)",
        eval: state_private,
    },
    Rule {
        id: "virt-node-hostdisk-gated",
        title: "hostDisk is disabled or limited to dedicated directories",
        severity: "high",
        remediation: "drop --host-disk-dir, or point it at a directory holding only VM images (not /, /etc, /var, /home, ...)",
        eval: hostdisk_gated,
    },
    Rule {
        id: "virt-node-emulation-gated",
        title: "Software emulation is off (VMs run with hardware virtualization)",
        severity: "low",
        remediation: "run on a host with KVM and drop --allow-emulation (KubeVirt's useEmulation)",
        eval: emulation_gated,
    },
    Rule {
        id: "virt-node-imports-limited",
        title: "Imports cannot reach link-local addresses (a cloud's metadata service)",
        severity: "medium",
        remediation: "remove link-local addresses from --import-allow",
        eval: imports_limited,
    },
    Rule {
        id: "virt-node-launchers-confined",
        title: "Every launcher thread runs under a seccomp filter with no effective capabilities",
        severity: "high",
        remediation: "run launchers with confinement on (do not pass --no-confine); see docs/confinement.md",
        eval: launchers_confined,
    },
    Rule {
        id: "virt-node-launchers-jailed",
        title: "Every launcher runs in its own mount and pid namespaces, sees only its machine's files and runs as an unprivileged user",
        severity: "medium",
        remediation: "run launchers as root without --no-confine, --no-namespaces or --stay-root, so they jail themselves; a launcher stays root only for taps opened by name (hand it the pod network's namespace or tap descriptors); see docs/confinement.md",
        eval: launchers_jailed,
    },
    Rule {
        id: "virt-node-requests-audited",
        title: "Requests that change or reach into VMs are audited (who, what, when, result)",
        severity: "medium",
        remediation: "run a virt-node that writes <state>/audit.log (every release since the audit log landed)",
        eval: audited,
    },
];

/// The ids of the project's rules.
pub fn ids() -> Vec<&'static str> {
    RULES.iter().map(|r| r.id).collect()
}

/// Evaluates every rule against `facts`.
pub fn evaluate(facts: &NodeFacts) -> Vec<RuleResult> {
    RULES
        .iter()
        .map(|r| {
            let (status, detail) = (r.eval)(facts);
            RuleResult {
                id: r.id.into(),
                title: r.title.into(),
                severity: r.severity.into(),
                status,
                detail,
                remediation: r.remediation.into(),
            }
        })
        .collect()
}

fn api_tls(f: &NodeFacts) -> (Status, String) {
    match (&f.config.listen, f.config.tls) {
        (None, _) => (Status::NotApplicable, "no TCP listener (unix socket only)".into()),
        (Some(l), true) => (Status::Pass, format!("{l} speaks TLS")),
        (Some(l), false) => {
            (Status::Fail, format!("{l} serves plain HTTP: tokens and VM data cross the network in clear"))
        }
    }
}

fn no_anonymous(f: &NodeFacts) -> (Status, String) {
    if f.config.listen.is_some() && !f.config.token_required {
        return (Status::Fail, "the TCP listener takes requests without a bearer token".into());
    }
    match f.socket_mode {
        Some(m) if m & 0o002 != 0 => (
            Status::Fail,
            format!("the unix socket {} is writable by every user (mode {m:o})", f.config.socket.display()),
        ),
        Some(m) => (Status::Pass, format!("unix socket mode {m:o}; TCP {}", tcp_words(f))),
        None => (Status::Pass, format!("unix socket not present (node stopped); TCP {}", tcp_words(f))),
    }
}

fn tcp_words(f: &NodeFacts) -> &'static str {
    if f.config.listen.is_some() {
        "requires a bearer token"
    } else {
        "not served"
    }
}

fn state_private(f: &NodeFacts) -> (Status, String) {
    match f.state_mode {
        Some(m) if m & 0o022 != 0 => {
            (Status::Fail, format!("{} has mode {m:o}: others can write to it", f.state_dir.display()))
        }
        Some(m) => (Status::Pass, format!("{} has mode {m:o}", f.state_dir.display())),
        None => (Status::Error, format!("cannot read {}", f.state_dir.display())),
    }
}

/// Directories whose files no VM should be given.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/root", "/home", "/var", "/var/lib",
    "/proc", "/sys", "/dev", "/run",
];

fn hostdisk_gated(f: &NodeFacts) -> (Status, String) {
    let dirs = &f.config.host_disk_dirs;
    if dirs.is_empty() {
        return (Status::Pass, "hostDisk is disabled".into());
    }
    let bad: Vec<String> = dirs
        .iter()
        .filter(|d| SYSTEM_DIRS.iter().any(|s| Path::new(s).starts_with(d.as_path())))
        .map(|d| d.display().to_string())
        .collect();
    let all: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    if bad.is_empty() {
        (Status::Pass, format!("hostDisk limited to {}", all.join(", ")))
    } else {
        (Status::Fail, format!("hostDisk allowed under system directories: {}", bad.join(", ")))
    }
}

fn emulation_gated(f: &NodeFacts) -> (Status, String) {
    if f.config.allow_emulation {
        (Status::Fail, "--allow-emulation is on: VMs may run under software emulation".into())
    } else {
        (Status::Pass, "software emulation is refused".into())
    }
}

fn imports_limited(f: &NodeFacts) -> (Status, String) {
    let link_local: Vec<&String> = f
        .config
        .import_allow
        .iter()
        .filter(|a| {
            a.starts_with("169.254.")
                || a.to_ascii_lowercase().starts_with("[fe8")
                || a.to_ascii_lowercase().starts_with("fe8")
        })
        .collect();
    if link_local.is_empty() {
        (Status::Pass, "link-local addresses and the node's own API are refused to imports".into())
    } else {
        let list: Vec<&str> = link_local.iter().map(|s| s.as_str()).collect();
        (Status::Fail, format!("--import-allow lets imports reach {}", list.join(", ")))
    }
}

fn launchers_jailed(f: &NodeFacts) -> (Status, String) {
    if f.launchers.is_empty() {
        return (Status::NotApplicable, "no launcher is running".into());
    }
    let mut loose = Vec::new();
    for l in &f.launchers {
        let j = &l.jail;
        let mut why = Vec::new();
        if !j.own_mount_ns {
            why.push("the host's mount namespace".to_string());
        }
        if !j.own_pid_ns {
            why.push("the host's pid namespace".to_string());
        }
        if j.sees_shadow {
            why.push("/etc/shadow in view".to_string());
        }
        if j.uid == 0 {
            why.push("uid 0".to_string());
        }
        if !why.is_empty() {
            loose.push(format!("{} ({})", l.pid, why.join(", ")));
        }
    }
    if loose.is_empty() {
        (
            Status::Pass,
            format!("{} launchers, each in its own namespaces under its own uid", f.launchers.len()),
        )
    } else {
        let n = loose.len();
        loose.truncate(5);
        (Status::Fail, format!("{n} of {} launchers not jailed: {}", f.launchers.len(), loose.join("; ")))
    }
}

fn launchers_confined(f: &NodeFacts) -> (Status, String) {
    if f.launchers.is_empty() {
        return (Status::NotApplicable, "no launcher is running".into());
    }
    let mut loose = Vec::new();
    let mut threads = 0;
    for l in &f.launchers {
        for t in &l.threads {
            threads += 1;
            if t.seccomp != 2 || t.cap_eff != 0 {
                loose.push(format!(
                    "{}/{} {:?} (seccomp {}, CapEff {:x})",
                    l.pid, t.tid, t.name, t.seccomp, t.cap_eff
                ));
            }
        }
    }
    if loose.is_empty() {
        (
            Status::Pass,
            format!("{} launchers, {threads} threads, all filtered with no capabilities", f.launchers.len()),
        )
    } else {
        let n = loose.len();
        loose.truncate(5);
        (Status::Fail, format!("{n} of {threads} launcher threads unconfined: {}", loose.join("; ")))
    }
}

fn audited(f: &NodeFacts) -> (Status, String) {
    match &f.config.audit_log {
        Some(p) if p.exists() => (Status::Pass, format!("requests are audited to {}", p.display())),
        Some(p) => (Status::Fail, format!("the audit log {} is missing", p.display())),
        None => (Status::Fail, "the node does not audit requests".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::facts::{EffectiveConfig, JailFacts, LauncherFacts, ThreadFacts};
    use super::*;

    fn facts(config: EffectiveConfig) -> NodeFacts {
        NodeFacts {
            state_dir: "/s".into(),
            config,
            state_mode: Some(0o700),
            socket_mode: Some(0o755),
            launchers: vec![],
        }
    }

    fn status(results: &[RuleResult], id: &str) -> Status {
        results.iter().find(|r| r.id == id).map(|r| r.status).unwrap_or(Status::Error)
    }

    #[test]
    fn each_rule_passes_and_fails_on_what_it_is_about() {
        let good = facts(EffectiveConfig {
            listen: Some("127.0.0.1:1".into()),
            tls: true,
            token_required: true,
            audit_log: Some("/".into()),
            ..Default::default()
        });
        let r = evaluate(&good);
        assert_eq!(r.len(), ids().len());
        assert!(r.iter().all(|r| matches!(r.status, Status::Pass | Status::NotApplicable)), "{r:#?}");
        assert_eq!(status(&r, "virt-node-launchers-confined"), Status::NotApplicable);

        let mut bad = good.clone();
        bad.config.tls = false;
        bad.config.allow_emulation = true;
        bad.config.host_disk_dirs = vec!["/var".into(), "/srv/vm-images".into()];
        bad.config.import_allow = vec!["169.254.169.254".into()];
        bad.config.audit_log = None;
        bad.state_mode = Some(0o777);
        bad.socket_mode = Some(0o777);
        bad.launchers = vec![LauncherFacts {
            pid: 7,
            threads: vec![
                ThreadFacts { tid: 7, name: "virt-launcher".into(), seccomp: 2, cap_eff: 0 },
                ThreadFacts { tid: 8, name: "vcpu0".into(), seccomp: 0, cap_eff: 0x1ff },
            ],
            jail: JailFacts { own_mount_ns: false, own_pid_ns: true, uid: 0, sees_shadow: true },
        }];
        let r = evaluate(&bad);
        for id in ids() {
            assert_eq!(status(&r, id), Status::Fail, "{id}: {r:#?}");
        }
        let confined = r.iter().find(|r| r.id == "virt-node-launchers-confined").map(|r| r.detail.clone());
        assert_eq!(
            confined.as_deref(),
            Some("1 of 2 launcher threads unconfined: 7/8 \"vcpu0\" (seccomp 0, CapEff 1ff)")
        );
        let jailed = r.iter().find(|r| r.id == "virt-node-launchers-jailed").map(|r| r.detail.clone());
        assert_eq!(
            jailed.as_deref(),
            Some("1 of 1 launchers not jailed: 7 (the host's mount namespace, /etc/shadow in view, uid 0)")
        );
        // hostDisk under a dedicated directory is fine.
        let mut ok = good;
        ok.config.host_disk_dirs = vec!["/srv/vm-images".into()];
        assert_eq!(status(&evaluate(&ok), "virt-node-hostdisk-gated"), Status::Pass);
    }
}
