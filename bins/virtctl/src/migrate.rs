//! `virtctl migrate NAME [--wait]` and `virtctl migrate-cancel NAME`, as KubeVirt's virtctl:
//! a `VirtualMachineInstanceMigration` created for the VMI, or the unfinished one deleted
//! (docs/virtctl.md, docs/migration.md). Parsing and printing only: the requests are
//! `virt_k8s::client::migration`'s.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::Value;
use virt_k8s::client::migration::{migration_finished, migration_phase};
use virt_k8s::client::NodeClient;

use crate::target::{client, Target};
use crate::{fail, fail_client};

/// `virtctl migrate NAME`: prints KubeVirt's line and the migration's name; with `wait`, each
/// phase until it ended, then the measured downtime (status 1 if it failed).
pub fn migrate(target: Target, ns: &str, name: &str, wait: bool, timeout: Duration) -> ExitCode {
    let c = match client(target) {
        Ok(c) => c,
        Err(e) => return fail_client(&e),
    };
    let created = match c.migrate(ns, name) {
        Ok(v) => v,
        Err(e) => return fail_client(&e),
    };
    let vmim = created.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    println!("VM {name} was scheduled to migrate");
    println!("virtualmachineinstancemigration.kubevirt.io/{vmim} created");
    if !wait {
        return ExitCode::SUCCESS;
    }
    wait_for(&c, ns, &vmim, timeout)
}

fn wait_for(c: &NodeClient, ns: &str, vmim: &str, timeout: Duration) -> ExitCode {
    let deadline = Instant::now() + timeout;
    let mut shown = String::new();
    loop {
        let m = match c.get_migration(ns, vmim) {
            Ok(m) => m,
            Err(e) => return fail_client(&e),
        };
        let phase = migration_phase(&m).to_string();
        if phase != shown {
            println!("{vmim}: {phase}");
            shown = phase;
        }
        if migration_finished(&m) {
            return finished(&m);
        }
        if Instant::now() > deadline {
            return fail(format!(
                "migration {vmim} did not finish within {}s (phase {shown})",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn finished(m: &Value) -> ExitCode {
    let state = m.pointer("/status/migrationState").cloned().unwrap_or_default();
    if migration_phase(m) == "Succeeded" {
        let us =
            |k: &str| state.pointer(&format!("/migrationStats/{k}")).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "moved to {}: downtime {:.1} ms, total {:.1} ms{}",
            state.get("targetPod").and_then(Value::as_str).unwrap_or("?"),
            us("downtimeUs") as f64 / 1000.0,
            us("totalUs") as f64 / 1000.0,
            how_it_converged(&state)
        );
        return ExitCode::SUCCESS;
    }
    let why = m
        .pointer("/status/reason")
        .or_else(|| state.get("failureReason"))
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    fail(format!("the migration failed: {why}"))
}

/// What helped the migration finish, as `; ...` (empty when pre-copy converged unaided): the
/// vCPU throttle auto-converge reached, post-copy, or the guest paused to complete.
fn how_it_converged(state: &Value) -> String {
    let mut parts = Vec::new();
    let throttle =
        state.pointer("/migrationStats/cpuThrottlePercentage").and_then(Value::as_u64).unwrap_or(0);
    if throttle > 0 {
        parts.push(format!("vCPUs throttled to {throttle}% (auto-converge)"));
    }
    match state.get("mode").and_then(Value::as_str) {
        Some("PostCopy") => parts.push("switched to post-copy at the completion timeout".to_string()),
        Some("Paused") => {
            parts.push("the guest was paused to complete at the completion timeout".to_string())
        }
        _ => {}
    }
    parts.iter().map(|p| format!("; {p}")).collect()
}

/// `virtctl migrate-cancel NAME`.
pub fn migrate_cancel(target: Target, ns: &str, name: &str) -> ExitCode {
    let c = match client(target) {
        Ok(c) => c,
        Err(e) => return fail_client(&e),
    };
    match c.migrate_cancel(ns, name) {
        Ok(_) => {
            println!("VM {name} was scheduled to migrate-cancel");
            ExitCode::SUCCESS
        }
        Err(e) => fail_client(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_helped_a_migration_finish_is_said() {
        assert_eq!(how_it_converged(&json!({ "mode": "PreCopy", "migrationStats": {} })), "");
        let throttled = json!({ "mode": "PreCopy", "migrationStats": { "cpuThrottlePercentage": 99 } });
        assert_eq!(how_it_converged(&throttled), "; vCPUs throttled to 99% (auto-converge)");
        let post = json!({ "mode": "PostCopy", "migrationStats": { "cpuThrottlePercentage": 20 } });
        assert_eq!(
            how_it_converged(&post),
            "; vCPUs throttled to 20% (auto-converge); switched to post-copy at the completion timeout"
        );
        assert!(how_it_converged(&json!({ "mode": "Paused" })).contains("paused to complete"));
    }
}
