//! The scan's results as API objects: one `ComplianceCheckResult` (`compliance.openshift.io/v1alpha1`,
//! the shape the OpenShift Compliance Operator writes) per rule. `virt-compliance` keeps the last
//! scan's objects in `<state>/compliance/checkresults.json` (replaced whole, atomically); the node
//! serves them read-only (`node::compliance_api`), so `kubectl get compliancecheckresults -n
//! openshift-compliance -l compliance.openshift.io/check-status=FAIL` works as on OpenShift.
//!
//! As the operator does: the name is the scan's name and the rule's (`virt-node-api-tls`;
//! `debian-` + the XCCDF rule id without `xccdf_org.ssgproject.content_rule_`, `_` as `-`); labels
//! `compliance.openshift.io/check-status` (`PASS`, `FAIL`, `NOT-APPLICABLE`, `ERROR`),
//! `check-severity` and `scan-name`; top-level `id`, `status`, `severity`, `description`. This
//! node adds `detail` (what was seen) and `remediation` (the operator keeps fixes in separate
//! `ComplianceRemediation` objects).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use virt_core::api::Timestamp;

use super::{Report, RuleResult, Status};

/// `apiVersion` of the objects.
pub const API_VERSION: &str = "compliance.openshift.io/v1alpha1";
/// `kind` of the objects.
pub const KIND: &str = "ComplianceCheckResult";
/// The namespace the objects live in (the Compliance Operator's).
pub const NAMESPACE: &str = "openshift-compliance";
/// The scan name of the node's own rules.
pub const NODE_SCAN: &str = "virt-node";
/// The scan name of OpenSCAP's rules (the operating system's content).
pub const OS_SCAN: &str = "debian";
const XCCDF_RULE: &str = "xccdf_org.ssgproject.content_rule_";
const LABEL_STATUS: &str = "compliance.openshift.io/check-status";
const LABEL_SEVERITY: &str = "compliance.openshift.io/check-severity";
const LABEL_SCAN: &str = "compliance.openshift.io/scan-name";
const ANNOTATION_RULE: &str = "compliance.openshift.io/rule";

/// Why the objects could not be kept or read; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    /// Writing failed.
    #[error("writing the compliance check results {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("reading the compliance check results {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a JSON array of objects.
    #[error("the compliance check results {path} are not a JSON array of objects: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
}

/// Where the objects are kept under the node's state directory.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("compliance").join("checkresults.json")
}

/// `PASS`, `FAIL`, `NOT-APPLICABLE` or `ERROR`, as the operator spells them.
pub fn status_word(s: Status) -> &'static str {
    match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::NotApplicable => "NOT-APPLICABLE",
        Status::Error => "ERROR",
    }
}

/// The scan a rule belongs to and the rule's name within it.
fn scan_and_rule(id: &str) -> (&'static str, String) {
    match id.strip_prefix(XCCDF_RULE) {
        Some(rule) => (OS_SCAN, rule.replace('_', "-")),
        None => (NODE_SCAN, id.strip_prefix("virt-node-").unwrap_or(id).to_string()),
    }
}

/// A DNS-1123 subdomain made of `s`: lower case, anything else than `[a-z0-9.-]` as `-`, at most
/// 253 characters, starting and ending alphanumeric.
fn dns_name(s: &str) -> String {
    let mapped: String = s
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .take(253)
        .collect();
    mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// The object of one result, created at `created`.
pub fn check_result(r: &RuleResult, created: &Timestamp) -> Value {
    let (scan, rule) = scan_and_rule(&r.id);
    json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": dns_name(&format!("{scan}-{rule}")),
            "namespace": NAMESPACE,
            "creationTimestamp": created.as_str(),
            "labels": {
                LABEL_STATUS: status_word(r.status),
                LABEL_SEVERITY: r.severity,
                LABEL_SCAN: scan,
            },
            "annotations": { ANNOTATION_RULE: rule },
        },
        "id": r.id,
        "status": status_word(r.status),
        "severity": r.severity,
        "description": r.title,
        "detail": r.detail,
        "remediation": r.remediation,
    })
}

/// Every result of `report` as an object (two results that map to one name keep the first).
pub fn check_results(report: &Report, created: &Timestamp) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    report
        .results
        .iter()
        .map(|r| check_result(r, created))
        .filter(|o| seen.insert(o["metadata"]["name"].as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Replaces the kept objects with those of `report` (written beside, then renamed into place).
pub fn store(state_dir: &Path, report: &Report) -> Result<PathBuf, ObjectsError> {
    let file = path(state_dir);
    let write = |source| ObjectsError::Write { path: file.clone(), source };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    let objects = check_results(report, &Timestamp::now());
    let text = serde_json::to_vec_pretty(&objects).map_err(|e| write(std::io::Error::other(e)))?;
    let tmp = file.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(write)?;
    std::fs::rename(&tmp, &file).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        write(e)
    })?;
    Ok(file)
}

/// The kept objects; none before the first scan.
pub fn load(state_dir: &Path) -> Result<Vec<Value>, ObjectsError> {
    let file = path(state_dir);
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ObjectsError::Read { path: file, source }),
    };
    let objects: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&text).map_err(|source| ObjectsError::Parse { path: file, source })?;
    Ok(objects.into_iter().map(Value::Object).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, status: Status) -> RuleResult {
        RuleResult {
            id: id.into(),
            title: "t".into(),
            severity: "high".into(),
            status,
            detail: "seen".into(),
            remediation: "fix it".into(),
        }
    }

    #[test]
    fn objects_are_named_and_labelled_as_the_compliance_operator_does() {
        let t = Timestamp::from_unix(0).unwrap();
        let o = check_result(&result("virt-node-api-tls", Status::Fail), &t);
        assert_eq!(o["metadata"]["name"], "virt-node-api-tls");
        assert_eq!(o["metadata"]["namespace"], NAMESPACE);
        assert_eq!(o["metadata"]["labels"][LABEL_STATUS], "FAIL");
        assert_eq!(o["metadata"]["labels"][LABEL_SCAN], "virt-node");
        assert_eq!(o["metadata"]["annotations"][ANNOTATION_RULE], "api-tls");
        assert_eq!((o["status"].as_str(), o["severity"].as_str()), (Some("FAIL"), Some("high")));
        assert_eq!(o["remediation"], "fix it");
        let o = check_result(
            &result("xccdf_org.ssgproject.content_rule_package_sudo_installed", Status::NotApplicable),
            &t,
        );
        assert_eq!(o["metadata"]["name"], "debian-package-sudo-installed");
        assert_eq!(o["status"], "NOT-APPLICABLE");
        assert_eq!(dns_name("_A_b!c_"), "a-b-c");
    }

    #[test]
    fn stored_objects_load_back_and_no_file_is_no_objects() {
        let d = std::env::temp_dir().join(format!("ccr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        assert!(load(&d).unwrap().is_empty());
        let report = Report {
            profile: None,
            results: vec![result("virt-node-a", Status::Pass), result("virt-node-a", Status::Fail)],
        };
        store(&d, &report).unwrap();
        let back = load(&d).unwrap();
        assert_eq!(back.len(), 1, "one object per name");
        assert_eq!(back[0]["status"], "PASS");
        std::fs::write(path(&d), "{}").unwrap();
        assert!(load(&d).unwrap_err().to_string().contains("checkresults.json"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
