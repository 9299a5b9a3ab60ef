//! What `virtctl` prints, formatted the way `kubectl` does: `get` tables (`NAME AGE STATUS READY`
//! for VMs, `NAME AGE PHASE IP NODENAME READY` for VMIs, more with `-o wide`, a `NAMESPACE` column
//! across namespaces), YAML and JSON, ages like `5m30s`, and the one-line results of create,
//! apply and delete.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use virt_core::api::{self, ConditionStatus, ObjectMeta, SerializeError, Timestamp};
use virt_core::model::{Condition, VirtualMachine, VirtualMachineInstance};
use virt_storage::cdi::DataVolume;

use super::{ApplyOutcome, Kind};

/// Why an object could not be written out.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// YAML or JSON serialization failed.
    #[error("writing {what} as {format}: {source}")]
    Serialize {
        /// What was written (`VirtualMachine default/x`, `the list`).
        what: String,
        /// `yaml` or `json`.
        format: &'static str,
        /// The error.
        source: SerializeError,
    },
}

/// `get`'s output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The human table.
    #[default]
    Table,
    /// The human table with more columns.
    Wide,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// Now, in seconds since the epoch (for ages).
pub fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// kubectl's `HumanDuration`: `45s`, `2m5s`, `15m`, `3h20m`, `2d4h`, `300d`, `2y10d`, `9y`;
/// `<invalid>` for more than a second in the future.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = s / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// The AGE column: `<unknown>` without a creation timestamp.
pub fn age(created: Option<&Timestamp>, now: i64) -> String {
    match created {
        Some(t) => human_duration(now - t.unix_seconds()),
        None => "<unknown>".to_string(),
    }
}

/// Lays out rows like kubectl's tabwriter: left-aligned, three spaces between columns, each column
/// at least six wide, no trailing spaces; each line ends with `\n`.
pub fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let width = (widths[i] + 3).max(6);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn condition_status(c: Option<&Condition>) -> Option<&'static str> {
    c.map(|c| match c.status {
        ConditionStatus::True => "True",
        ConditionStatus::False => "False",
        ConditionStatus::Unknown => "Unknown",
    })
}

fn or_none(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("<none>").to_string()
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn sort_key(meta: &ObjectMeta) -> (String, String) {
    (meta.namespace.clone().unwrap_or_default(), name_of(meta))
}

/// The `kubectl get vm` table: `NAME AGE STATUS READY`; wide adds `RUNSTRATEGY`; across namespaces
/// a `NAMESPACE` column comes first. STATUS is `status.printableStatus`; READY the `Ready`
/// condition (`False` when absent). Rows are sorted by namespace and name.
pub fn vm_table(vms: &[VirtualMachine], wide: bool, all_namespaces: bool, now: i64) -> String {
    let mut header = vec!["NAME", "AGE", "STATUS", "READY"];
    if wide {
        header.push("RUNSTRATEGY");
    }
    let mut sorted: Vec<&VirtualMachine> = vms.iter().collect();
    sorted.sort_by_key(|vm| sort_key(&vm.metadata));
    let rows = sorted.into_iter().map(|vm| {
        let status = vm.status.as_ref();
        let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let mut row = vec![
            name_of(&vm.metadata),
            age(vm.metadata.creation_timestamp.as_ref(), now),
            or_none(status.and_then(|s| s.printable_status.as_deref())),
            condition_status(condition(conditions, "Ready")).unwrap_or("False").to_string(),
        ];
        if wide {
            row.push(vm.spec.effective_run_strategy().as_str().to_string());
        }
        (vm.metadata.namespace.as_deref(), row)
    });
    table(&header, rows, all_namespaces)
}

/// The `kubectl get vmi` table: `NAME AGE PHASE IP NODENAME READY`; wide adds `LIVE-MIGRATABLE`
/// and `PAUSED` (KubeVirt's priority columns); across namespaces a `NAMESPACE` column comes
/// first. IP is the first interface's address.
pub fn vmi_table(vmis: &[VirtualMachineInstance], wide: bool, all_namespaces: bool, now: i64) -> String {
    let mut header = vec!["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"];
    if wide {
        header.extend(["LIVE-MIGRATABLE", "PAUSED"]);
    }
    let mut sorted: Vec<&VirtualMachineInstance> = vmis.iter().collect();
    sorted.sort_by_key(|vmi| sort_key(&vmi.metadata));
    let rows = sorted.into_iter().map(|vmi| {
        let status = vmi.status.as_ref();
        let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let ip = status
            .and_then(|s| s.interfaces.first())
            .and_then(|i| i.ip_address.as_deref().or_else(|| i.ip_addresses.first().map(String::as_str)));
        let mut row = vec![
            name_of(&vmi.metadata),
            age(vmi.metadata.creation_timestamp.as_ref(), now),
            or_none(status.and_then(|s| s.phase).map(|p| p.as_str())),
            or_none(ip),
            or_none(status.and_then(|s| s.node_name.as_deref())),
            condition_status(condition(conditions, "Ready")).unwrap_or("False").to_string(),
        ];
        if wide {
            row.push(or_none(condition_status(condition(conditions, "LiveMigratable"))));
            row.push(or_none(condition_status(condition(conditions, "Paused"))));
        }
        (vmi.metadata.namespace.as_deref(), row)
    });
    table(&header, rows, all_namespaces)
}

/// The `kubectl get dv` table (CDI's printer columns): `NAME PHASE PROGRESS RESTARTS AGE`; across
/// namespaces a `NAMESPACE` column comes first. RESTARTS is empty until an import restarted.
pub fn dv_table(dvs: &[DataVolume], all_namespaces: bool, now: i64) -> String {
    let mut sorted: Vec<&DataVolume> = dvs.iter().collect();
    sorted.sort_by_key(|dv| sort_key(&dv.metadata));
    let rows = sorted.into_iter().map(|dv| {
        let status = dv.status.as_ref();
        let phase = status
            .and_then(|s| s.phase)
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let row = vec![
            name_of(&dv.metadata),
            phase,
            status.and_then(|s| s.progress.as_ref()).map(|p| p.0.clone()).unwrap_or_default(),
            status.and_then(|s| s.restart_count).map(|n| n.to_string()).unwrap_or_default(),
            age(dv.metadata.creation_timestamp.as_ref(), now),
        ];
        (dv.metadata.namespace.as_deref(), row)
    });
    table(&["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"], rows, all_namespaces)
}

fn table<'a>(
    header: &[&str],
    rows: impl Iterator<Item = (Option<&'a str>, Vec<String>)>,
    all_namespaces: bool,
) -> String {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    if all_namespaces {
        head.insert(0, "NAMESPACE".to_string());
    }
    out.push(head);
    for (namespace, mut row) in rows {
        if all_namespaces {
            row.insert(0, namespace.unwrap_or_default().to_string());
        }
        out.push(row);
    }
    render(&out)
}

/// kubectl's message for an empty list: `No resources found in NS namespace.` (or
/// `No resources found` across namespaces).
pub fn no_resources(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No resources found in {ns} namespace."),
        None => "No resources found".to_string(),
    }
}

/// `kubectl get -o yaml|json` of objects: one object as itself when `single`, otherwise a
/// `v1 List` of them. JSON is pretty-printed; both end with a newline.
pub fn objects<T: Serialize>(items: &[T], single: bool, format: Format) -> Result<String, OutputError> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct List<'a, T> {
        api_version: &'static str,
        items: &'a [T],
        kind: &'static str,
        metadata: ListMeta,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ListMeta {
        resource_version: &'static str,
    }
    let list = List { api_version: "v1", items, kind: "List", metadata: ListMeta { resource_version: "" } };
    let (text, what, name) = match (format, single, items.first()) {
        (Format::Json, true, Some(one)) => (api::to_json(one), "the object", "json"),
        (Format::Json, _, _) => (api::to_json(&list), "the list", "json"),
        (_, true, Some(one)) => (api::to_yaml(one), "the object", "yaml"),
        (_, _, _) => (api::to_yaml(&list), "the list", "yaml"),
    };
    let mut text =
        text.map_err(|source| OutputError::Serialize { what: what.to_string(), format: name, source })?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// `virtualmachine.kubevirt.io/NAME created` (or `configured`, `unchanged`), as kubectl prints it.
pub fn applied(kind: Kind, name: &str, outcome: ApplyOutcome) -> String {
    format!("{}/{name} {outcome}", kind.qualified())
}

/// `virtualmachine.kubevirt.io "NAME" deleted`, as kubectl prints it.
pub fn deleted(kind: Kind, name: &str) -> String {
    format!("{} {name:?} deleted", kind.qualified())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::model;

    const NOW: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z

    fn vm(yaml_status: &str, name: &str, ns: &str) -> VirtualMachine {
        let text = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: {name}\n  namespace: {ns}\n  \
             creationTimestamp: '2024-05-01T11:59:15Z'\nspec:\n  runStrategy: Manual\n  template:\n    spec:\n      \
             domain:\n        devices: {{}}\n{yaml_status}"
        );
        model::from_yaml(&text).unwrap()
    }

    #[test]
    fn human_durations_match_kubectl() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (45, "45s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (179 * 60, "179m"),
            (3 * 3600 + 20 * 60, "3h20m"),
            (5 * 3600, "5h"),
            (47 * 3600, "47h"),
            (52 * 3600, "2d4h"),
            (72 * 3600, "3d"),
            (300 * 86400, "300d"),
            (740 * 86400, "2y10d"),
            (3650 * 86400, "10y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
        assert_eq!(age(None, NOW), "<unknown>");
    }

    #[test]
    fn render_pads_like_tabwriter() {
        let rows = vec![
            vec!["NAME".to_string(), "AGE".to_string(), "STATUS".to_string()],
            vec!["a-long-name".to_string(), "5s".to_string(), "Running".to_string()],
        ];
        assert_eq!(render(&rows), "NAME          AGE   STATUS\na-long-name   5s    Running\n");
    }

    #[test]
    fn vm_tables() {
        let running = vm(
            "status:\n  printableStatus: Running\n  conditions:\n  - {type: Ready, status: 'True'}\n",
            "web",
            "prod",
        );
        let stopped = vm("status:\n  printableStatus: Stopped\n", "db", "default");
        let vms = [running, stopped];
        assert_eq!(
            vm_table(&vms, false, false, NOW),
            "NAME   AGE   STATUS    READY\ndb     45s   Stopped   False\nweb    45s   Running   True\n"
        );
        assert_eq!(
            vm_table(&vms, true, true, NOW),
            "NAMESPACE   NAME   AGE   STATUS    READY   RUNSTRATEGY\n\
             default     db     45s   Stopped   False   Manual\n\
             prod        web    45s   Running   True    Manual\n"
        );
        let bare = vm("", "new", "default");
        assert_eq!(
            vm_table(&[bare], false, false, NOW),
            "NAME   AGE   STATUS   READY\nnew    45s   <none>   False\n"
        );
    }

    #[test]
    fn vmi_tables() {
        let text = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: testvm\n  \
                    creationTimestamp: '2024-05-01T11:00:00Z'\nspec:\n  domain:\n    devices: {}\nstatus:\n  \
                    phase: Running\n  nodeName: node1\n  interfaces:\n  - {ipAddress: 10.0.2.2, name: default}\n  \
                    conditions:\n  - {type: Ready, status: 'True'}\n  - {type: LiveMigratable, status: 'False'}\n";
        let vmi: VirtualMachineInstance = model::from_yaml(text).unwrap();
        assert_eq!(
            vmi_table(std::slice::from_ref(&vmi), false, false, NOW),
            "NAME     AGE   PHASE     IP         NODENAME   READY\ntestvm   60m   Running   10.0.2.2   node1      True\n"
        );
        assert_eq!(
            vmi_table(&[vmi], true, false, NOW),
            "NAME     AGE   PHASE     IP         NODENAME   READY   LIVE-MIGRATABLE   PAUSED\n\
             testvm   60m   Running   10.0.2.2   node1      True    False             <none>\n"
        );
    }

    #[test]
    fn dv_tables() {
        let text = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: cirros\n  \
                    namespace: default\n  creationTimestamp: '2024-05-01T11:55:00Z'\nspec:\n  source:\n    \
                    blank: {}\n  storage:\n    resources:\n      requests:\n        storage: 1Gi\n\
                    status:\n  phase: ImportInProgress\n  progress: 45.20%\n  restartCount: 1\n";
        let dv: DataVolume = virt_storage::cdi::from_yaml(text).unwrap();
        let mut fresh = dv.clone();
        fresh.metadata.name = Some("new".into());
        fresh.status = None;
        assert_eq!(
            dv_table(&[dv, fresh], false, NOW),
            "NAME     PHASE              PROGRESS   RESTARTS   AGE\n\
             cirros   ImportInProgress   45.20%     1          5m\n\
             new                                               5m\n"
        );
    }

    #[test]
    fn yaml_json_and_result_lines() {
        let one = vm("", "web", "default");
        let json = objects(std::slice::from_ref(&one), true, Format::Json).unwrap();
        assert!(json.starts_with("{\n  \"apiVersion\": \"kubevirt.io/v1\""), "{json}");
        let yaml = objects(&[one], false, Format::Yaml).unwrap();
        assert!(yaml.starts_with("apiVersion: v1\nitems:\n"), "{yaml}");
        assert!(yaml.contains("kind: List"), "{yaml}");
        assert_eq!(
            applied(Kind::VirtualMachine, "web", ApplyOutcome::Created),
            "virtualmachine.kubevirt.io/web created"
        );
        assert_eq!(applied(Kind::Namespace, "n", ApplyOutcome::Unchanged), "namespace/n unchanged");
        assert_eq!(
            deleted(Kind::VirtualMachineInstance, "x"),
            "virtualmachineinstance.kubevirt.io \"x\" deleted"
        );
        assert_eq!(no_resources(Some("default")), "No resources found in default namespace.");
    }
}
