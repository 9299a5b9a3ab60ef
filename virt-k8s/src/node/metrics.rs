//! `/metrics`: the node's figures in Prometheus text format (version 0.0.4), under KubeVirt's
//! metric names (docs/web-console.md lists them).
//!
//! Per-VM figures come from the VM's launcher process and its children (QEMU, when the VM runs
//! on it), read from `/proc` when the endpoint is scraped: CPU time per vCPU thread (`vcpuN` of
//! the native VMM, `CPU N/KVM` or `CPU N/TCG` of QEMU), resident memory, and the bytes and calls
//! of the processes' reads and writes (the guest's disk I/O goes through them). Nothing is
//! sampled in the background: a scrape costs a few small `/proc` reads per VM. Network figures
//! come from the VM's taps in its pod network namespace ([`netdev`]).

mod netdev;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use virt_core::api::Quantity;
use virt_core::model::{MigrationState, VirtualMachineInstance, VirtualMachineInstanceMigration, VmiPhase};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub use netdev::{guest_net_stats, parse_net_dev, NetStats};

/// What the launcher processes of one VM used so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcStats {
    /// CPU seconds of each vCPU thread, by vCPU index.
    pub vcpu_seconds: BTreeMap<u32, f64>,
    /// CPU seconds of every thread of the processes (vCPUs, devices, the launcher).
    pub cpu_seconds: f64,
    /// Resident memory of the processes.
    pub resident_bytes: u64,
    /// Bytes read and written by the processes (`rchar`, `wchar`).
    pub read_bytes: u64,
    /// See `read_bytes`.
    pub write_bytes: u64,
    /// Read and write calls (`syscr`, `syscw`).
    pub read_ops: u64,
    /// See `read_ops`.
    pub write_ops: u64,
    /// Each guest interface's counters (empty without a pod network).
    pub net: Vec<NetStats>,
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times.
fn ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, ppid, utime + stime in ticks, rss pages)` of a `stat` line.
fn parse_stat(line: &str) -> Option<(String, u32, u64, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = line.get(close + 2..)?.split_whitespace().collect();
    // Fields after the comm, 0-based: state 0, ppid 1, ..., utime 11, stime 12, ..., rss 21.
    let ppid = rest.get(1)?.parse().ok()?;
    let ut: u64 = rest.get(11)?.parse().ok()?;
    let st: u64 = rest.get(12)?.parse().ok()?;
    let rss: u64 = rest.get(21)?.parse().ok()?;
    Some((comm, ppid, ut + st, rss))
}

/// The vCPU index of a thread named like the native VMM's (`vcpu3`) or QEMU's (`CPU 3/KVM`).
fn vcpu_index(comm: &str) -> Option<u32> {
    if let Some(n) = comm.strip_prefix("vcpu") {
        return n.parse().ok();
    }
    comm.strip_prefix("CPU ")?.split('/').next()?.parse().ok()
}

/// `pid` and its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some((_, ppid, _, _)) =
                std::fs::read_to_string(e.path().join("stat")).ok().as_deref().and_then(parse_stat)
            {
                parent.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

/// The figures of the processes under `pid`, or `None` when it is gone.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let proc = Path::new("/proc");
    std::fs::metadata(proc.join(pid.to_string())).ok()?;
    let hz = ticks();
    let page = {
        // SAFETY: sysconf only reads a configuration value.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as u64
        } else {
            4096
        }
    };
    let mut s = ProcStats::default();
    for p in tree(pid) {
        let dir = proc.join(p.to_string());
        if let Some((_, _, t, rss)) =
            std::fs::read_to_string(dir.join("stat")).ok().as_deref().and_then(parse_stat)
        {
            s.cpu_seconds += t as f64 / hz;
            s.resident_bytes += rss * page;
        }
        if let Ok(rd) = std::fs::read_dir(dir.join("task")) {
            for t in rd.flatten() {
                let Some((comm, _, ticks, _)) =
                    std::fs::read_to_string(t.path().join("stat")).ok().as_deref().and_then(parse_stat)
                else {
                    continue;
                };
                if let Some(i) = vcpu_index(&comm) {
                    *s.vcpu_seconds.entry(i).or_default() += ticks as f64 / hz;
                }
            }
        }
        if let Ok(io) = std::fs::read_to_string(dir.join("io")) {
            for l in io.lines() {
                let Some((k, v)) = l.split_once(':') else { continue };
                let v: u64 = v.trim().parse().unwrap_or(0);
                match k {
                    "rchar" => s.read_bytes += v,
                    "wchar" => s.write_bytes += v,
                    "syscr" => s.read_ops += v,
                    "syscw" => s.write_ops += v,
                    _ => {}
                }
            }
        }
    }
    Some(s)
}

/// The launcher pid recorded in `run_dir` (`launcher.pid`).
pub fn launcher_pid(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(virt_core::machine::supervisor::PID_FILE)).ok()?.trim().parse().ok()
}

/// A label value escaped for the text format.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// One family: its help, type and samples (`labels`, value).
struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<(String, f64)>,
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The guest memory `vmi` asks for, in bytes.
fn guest_memory(vmi: &VirtualMachineInstance) -> Option<u64> {
    let v = serde_json::to_value(&vmi.spec).ok()?;
    let dom = v.get("domain")?;
    let q = dom
        .pointer("/memory/guest")
        .or_else(|| dom.pointer("/resources/requests/memory"))
        .and_then(|q| q.as_str())?;
    Quantity::parse(q).ok().map(|q| q.bytes())
}

type Add<'a> = dyn FnMut(&'static str, &'static str, &'static str, String, f64) + 'a;

/// KubeVirt's counts of migrations per phase (`kubevirt_vmi_migrations_in_<phase>_phase`).
fn migration_phases(migrations: &[VirtualMachineInstanceMigration], add: &mut Add<'_>) {
    let phase_of = |m: &VirtualMachineInstanceMigration| {
        m.status
            .as_ref()
            .and_then(|s| s.get("phase"))
            .and_then(|p| p.as_str())
            .unwrap_or("Pending")
            .to_string()
    };
    for (metric, help, phases) in [
        (
            "kubevirt_vmi_migrations_in_pending_phase",
            "Number of current pending migrations.",
            &["Pending"][..],
        ),
        (
            "kubevirt_vmi_migrations_in_scheduling_phase",
            "Number of current scheduling migrations.",
            &["Scheduling", "Scheduled", "PreparingTarget", "TargetReady"][..],
        ),
        (
            "kubevirt_vmi_migrations_in_running_phase",
            "Number of current running migrations.",
            &["Running"][..],
        ),
    ] {
        let n = migrations.iter().filter(|m| phases.contains(&phase_of(m).as_str())).count();
        add(metric, help, "gauge", String::new(), n as f64);
    }
}

/// The figures of a VMI's last migration (`status.migrationState`): KubeVirt's start and end
/// times, bytes processed, succeeded/failed, and the downtime, which KubeVirt does not report.
fn migration_figures(base: &str, m: &MigrationState, add: &mut Add<'_>) {
    if let Some(t) = &m.start_timestamp {
        add(
            "kubevirt_vmi_migration_start_time_seconds",
            "The time at which the migration started.",
            "gauge",
            base.to_string(),
            t.unix_seconds() as f64,
        );
    }
    if let Some(t) = &m.end_timestamp {
        add(
            "kubevirt_vmi_migration_end_time_seconds",
            "The time at which the migration ended.",
            "gauge",
            base.to_string(),
            t.unix_seconds() as f64,
        );
    }
    let done = m.completed == Some(true);
    let failed = m.failed == Some(true);
    add(
        "kubevirt_vmi_migration_succeeded",
        "Indicates if the VMI migration succeeded.",
        "gauge",
        base.to_string(),
        if done && !failed { 1.0 } else { 0.0 },
    );
    add(
        "kubevirt_vmi_migration_failed",
        "Indicates if the VMI migration failed.",
        "gauge",
        base.to_string(),
        if failed { 1.0 } else { 0.0 },
    );
    let stat = |k: &str| m.migration_stats.as_ref().and_then(|s| s.get(k)).and_then(|v| v.as_f64());
    if let Some(b) = stat("bytesSent") {
        add(
            "kubevirt_vmi_migration_data_processed_bytes",
            "The total Guest OS data processed and migrated to the new VM.",
            "gauge",
            base.to_string(),
            b,
        );
    }
    if let Some(us) = stat("downtimeUs") {
        add(
            "virtrs_vmi_migration_downtime_seconds",
            "How long the guest was paused by its last migration (not a KubeVirt metric).",
            "gauge",
            base.to_string(),
            us / 1e6,
        );
    }
}

/// The text for `vmis` and `migrations` on node `node`; `stats` gives a VMI's launcher figures
/// (None: not running here, or gone).
pub fn render(
    node: &str,
    vmis: &[VirtualMachineInstance],
    migrations: &[VirtualMachineInstanceMigration],
    stats: impl Fn(&VirtualMachineInstance) -> Option<ProcStats>,
) -> String {
    let mut families: BTreeMap<&'static str, Family> = BTreeMap::new();
    let mut add = |name: &'static str, help: &'static str, kind: &'static str, labels: String, v: f64| {
        families
            .entry(name)
            .or_insert_with(|| Family { help, kind, samples: Vec::new() })
            .samples
            .push((labels, v));
    };
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    for p in [
        VmiPhase::Pending,
        VmiPhase::Scheduling,
        VmiPhase::Scheduled,
        VmiPhase::Running,
        VmiPhase::Succeeded,
        VmiPhase::Failed,
    ] {
        phases.insert(p.as_str(), 0);
    }
    for vmi in vmis {
        let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending);
        *phases.entry(phase.as_str()).or_default() += 1;
    }
    for (phase, n) in &phases {
        add(
            "kubevirt_vmi_phase_count",
            "Sum of VMIs per phase and node.",
            "gauge",
            format!("node=\"{}\",phase=\"{}\"", esc(node), phase.to_lowercase()),
            *n as f64,
        );
    }
    migration_phases(migrations, &mut add);
    for vmi in vmis {
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        let name = vmi.metadata.name.as_deref().unwrap_or("");
        let base = format!("name=\"{}\",namespace=\"{}\",node=\"{}\"", esc(name), esc(ns), esc(node));
        let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending);
        add(
            "kubevirt_vmi_info",
            "Information about VirtualMachineInstances.",
            "gauge",
            format!("{base},phase=\"{}\"", phase.as_str().to_lowercase()),
            1.0,
        );
        if let Some(m) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) {
            migration_figures(&base, m, &mut add);
        }
        if phase != VmiPhase::Running {
            continue;
        }
        if let Some(mem) = guest_memory(vmi) {
            add(
                "kubevirt_vmi_memory_domain_bytes",
                "The amount of memory in bytes allocated to the domain.",
                "gauge",
                base.clone(),
                mem as f64,
            );
        }
        let Some(s) = stats(vmi) else { continue };
        add(
            "kubevirt_vmi_memory_resident_bytes",
            "Resident set size of the process running the domain.",
            "gauge",
            base.clone(),
            s.resident_bytes as f64,
        );
        add(
            "kubevirt_vmi_cpu_usage_seconds_total",
            "Total CPU time spent in all modes (sum of both vcpu and hypervisor usage).",
            "counter",
            base.clone(),
            s.cpu_seconds,
        );
        for (id, secs) in &s.vcpu_seconds {
            add(
                "kubevirt_vmi_vcpu_seconds_total",
                "Total amount of time spent in each state by each vcpu (cpu_time excluding hypervisor time).",
                "counter",
                format!("{base},id=\"{id}\",state=\"running\""),
                *secs,
            );
        }
        add(
            "kubevirt_vmi_vcpu_count",
            "The number of the VMI vCPUs.",
            "gauge",
            base.clone(),
            s.vcpu_seconds.len() as f64,
        );
        let drive = format!("{base},drive=\"all\"");
        add(
            "kubevirt_vmi_storage_read_traffic_bytes_total",
            "Storage read traffic in bytes (all reads of the VM's processes).",
            "counter",
            drive.clone(),
            s.read_bytes as f64,
        );
        add(
            "kubevirt_vmi_storage_write_traffic_bytes_total",
            "Storage write traffic in bytes (all writes of the VM's processes).",
            "counter",
            drive.clone(),
            s.write_bytes as f64,
        );
        add(
            "kubevirt_vmi_storage_iops_read_total",
            "Total number of I/O read operations.",
            "counter",
            drive.clone(),
            s.read_ops as f64,
        );
        add(
            "kubevirt_vmi_storage_iops_write_total",
            "Total number of I/O write operations.",
            "counter",
            drive,
            s.write_ops as f64,
        );
        for n in &s.net {
            let labels = format!("{base},interface=\"{}\"", esc(&n.interface));
            for (metric, help, v) in [
                (
                    "kubevirt_vmi_network_receive_bytes_total",
                    "Total network traffic received in bytes.",
                    n.rx_bytes,
                ),
                (
                    "kubevirt_vmi_network_transmit_bytes_total",
                    "Total network traffic transmitted in bytes.",
                    n.tx_bytes,
                ),
                (
                    "kubevirt_vmi_network_receive_packets_total",
                    "Total network traffic received packets.",
                    n.rx_packets,
                ),
                (
                    "kubevirt_vmi_network_transmit_packets_total",
                    "Total network traffic transmitted packets.",
                    n.tx_packets,
                ),
                (
                    "kubevirt_vmi_network_receive_errors_total",
                    "Total network received error packets.",
                    n.rx_errors,
                ),
                (
                    "kubevirt_vmi_network_transmit_errors_total",
                    "Total network transmitted error packets.",
                    n.tx_errors,
                ),
                (
                    "kubevirt_vmi_network_receive_packets_dropped_total",
                    "The total number of rx packets dropped on vNIC interfaces.",
                    n.rx_dropped,
                ),
                (
                    "kubevirt_vmi_network_transmit_packets_dropped_total",
                    "The total number of tx packets dropped on vNIC interfaces.",
                    n.tx_dropped,
                ),
            ] {
                add(metric, help, "counter", labels.clone(), v as f64);
            }
        }
    }
    let mut out = String::new();
    for (name, f) in &families {
        let _ = writeln!(out, "# HELP {name} {}", f.help);
        let _ = writeln!(out, "# TYPE {name} {}", f.kind);
        for (labels, v) in &f.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {}", num(*v));
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {}", num(*v));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(name: &str, phase: VmiPhase) -> VirtualMachineInstance {
        let mut v: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "d"},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "256Mi"}}},
        }))
        .unwrap();
        v.status =
            Some(virt_core::model::VirtualMachineInstanceStatus { phase: Some(phase), ..Default::default() });
        v
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let l = "42 (CPU 1/KVM) S 7 42 42 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 3 0 100 1000 77 18446744073709551615";
        let (comm, ppid, t, rss) = parse_stat(l).unwrap();
        assert_eq!((comm.as_str(), ppid, t, rss), ("CPU 1/KVM", 7, 200, 77));
        assert_eq!(vcpu_index("CPU 1/KVM"), Some(1));
        assert_eq!(vcpu_index("vcpu12"), Some(12));
        assert_eq!(vcpu_index("worker"), None);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn this_process_has_figures() {
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.resident_bytes > 0 && s.cpu_seconds >= 0.0, "{s:?}");
        assert!(proc_stats(u32::MAX - 1).is_none());
    }

    #[test]
    fn text_format_parses_with_a_prometheus_parser() {
        let mut moved = vmi("a", VmiPhase::Running);
        if let Some(st) = moved.status.as_mut() {
            st.migration_state = Some(
                serde_json::from_value(serde_json::json!({
                    "startTimestamp": "2026-12-05T08:00:00Z", "endTimestamp": "2026-12-05T08:00:02Z",
                    "completed": true, "failed": false,
                    "migrationStats": { "bytesSent": 4096, "downtimeUs": 1500 },
                }))
                .unwrap(),
            );
        }
        let vmis = [moved, vmi("b", VmiPhase::Pending)];
        let migration = |phase: &str| -> VirtualMachineInstanceMigration {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": "m", "namespace": "d"}, "spec": {"vmiName": "b"},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let migrations =
            [migration("Running"), migration("Pending"), migration("Scheduling"), migration("Succeeded")];
        let text = render("node-1", &vmis, &migrations, |v| {
            (v.metadata.name.as_deref() == Some("a")).then(|| ProcStats {
                vcpu_seconds: [(0, 1.5), (1, 0.25)].into_iter().collect(),
                cpu_seconds: 2.0,
                resident_bytes: 1 << 20,
                read_bytes: 10,
                write_bytes: 20,
                read_ops: 1,
                write_ops: 2,
                net: vec![NetStats {
                    interface: "default".into(),
                    rx_bytes: 300,
                    tx_packets: 4,
                    ..Default::default()
                }],
            })
        });
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let find = |metric: &str, label: &str, value: &str| {
            scrape.samples.iter().find(|s| s.metric == metric && s.labels.get(label) == Some(value)).map(
                |s| match s.value {
                    prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                },
            )
        };
        assert_eq!(find("kubevirt_vmi_phase_count", "phase", "running"), Some(1.0));
        assert_eq!(find("kubevirt_vmi_phase_count", "phase", "pending"), Some(1.0));
        assert_eq!(find("kubevirt_vmi_phase_count", "phase", "failed"), Some(0.0));
        assert_eq!(find("kubevirt_vmi_vcpu_seconds_total", "id", "1"), Some(0.25));
        assert_eq!(find("kubevirt_vmi_memory_resident_bytes", "name", "a"), Some(1048576.0));
        assert_eq!(find("kubevirt_vmi_memory_domain_bytes", "name", "a"), Some(268435456.0));
        assert_eq!(find("kubevirt_vmi_storage_write_traffic_bytes_total", "drive", "all"), Some(20.0));
        assert_eq!(find("kubevirt_vmi_info", "namespace", "d"), Some(1.0));
        assert_eq!(find("kubevirt_vmi_network_receive_bytes_total", "interface", "default"), Some(300.0));
        assert_eq!(find("kubevirt_vmi_network_transmit_packets_total", "interface", "default"), Some(4.0));
        assert!(find("kubevirt_vmi_phase_count", "node", "node-1").is_some());
        // A VMI that is not running has no per-VM figures.
        assert_eq!(find("kubevirt_vmi_memory_resident_bytes", "name", "b"), None);
        // Migrations: per phase, and the last one of each VMI.
        let total = |metric: &str| {
            scrape.samples.iter().find(|s| s.metric == metric).map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
        };
        assert_eq!(total("kubevirt_vmi_migrations_in_pending_phase"), Some(1.0));
        assert_eq!(total("kubevirt_vmi_migrations_in_scheduling_phase"), Some(1.0));
        assert_eq!(total("kubevirt_vmi_migrations_in_running_phase"), Some(1.0));
        assert_eq!(find("kubevirt_vmi_migration_succeeded", "name", "a"), Some(1.0));
        assert_eq!(find("kubevirt_vmi_migration_failed", "name", "a"), Some(0.0));
        assert_eq!(find("kubevirt_vmi_migration_data_processed_bytes", "name", "a"), Some(4096.0));
        assert_eq!(find("virtrs_vmi_migration_downtime_seconds", "name", "a"), Some(0.0015));
        let start = find("kubevirt_vmi_migration_start_time_seconds", "name", "a").unwrap();
        assert_eq!(find("kubevirt_vmi_migration_end_time_seconds", "name", "a"), Some(start + 2.0));
        assert_eq!(find("kubevirt_vmi_migration_succeeded", "name", "b"), None, "b never migrated");
    }
}
