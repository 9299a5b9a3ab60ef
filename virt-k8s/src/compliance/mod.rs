//! A compliance scan of a node, in the spirit of the OpenShift Compliance Operator: OpenSCAP with
//! the SCAP Security Guide's content for the operating system ([`openscap`]), plus the project's own
//! rules for the node's configuration ([`rules`]), in the manner of the `ocp4-moderate` KubeVirt
//! rules (TLS on, no anonymous access, hostDisk and emulation gated, launchers confined, requests
//! audited). Every result carries the rule's id, a severity, pass / fail / not-applicable, what was
//! seen, and the remediation.

pub mod facts;
pub mod objects;
pub mod openscap;
pub mod rules;

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The outcome of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The rule holds.
    Pass,
    /// The rule is broken.
    Fail,
    /// The rule does not apply here (e.g. a TLS rule on a node without a TCP listener).
    NotApplicable,
    /// The rule could not be evaluated.
    Error,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotApplicable => "N/A",
            Status::Error => "ERROR",
        })
    }
}

/// One rule's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    /// The rule's id (`virt-node-...` for the project's rules, XCCDF ids for OpenSCAP's).
    pub id: String,
    /// What the rule asks, in one line.
    pub title: String,
    /// `high`, `medium`, `low` or `unknown`.
    pub severity: String,
    /// The outcome.
    pub status: Status,
    /// What was seen.
    pub detail: String,
    /// How to fix a failure.
    pub remediation: String,
}

/// A whole scan.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The OpenSCAP profile evaluated, if OpenSCAP ran.
    pub profile: Option<String>,
    /// Every result, the project's rules first.
    pub results: Vec<RuleResult>,
}

impl Report {
    /// How many results have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    /// The exit status for scripts: 0 when nothing failed, 1 when a rule failed, 2 when a rule
    /// could not be evaluated (and none failed).
    pub fn exit_code(&self) -> u8 {
        if self.count(Status::Fail) > 0 {
            1
        } else if self.count(Status::Error) > 0 {
            2
        } else {
            0
        }
    }

    /// A text table: one line per rule, failures followed by their remediation, then totals.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            out.push_str(&format!("{:<6} {:<8} {}  {}\n", r.status.to_string(), r.severity, r.id, r.title));
            if r.status == Status::Fail || r.status == Status::Error {
                out.push_str(&format!("         seen: {}\n", r.detail));
                if !r.remediation.is_empty() {
                    out.push_str(&format!("         fix:  {}\n", r.remediation));
                }
            }
        }
        out.push_str(&format!(
            "{} rules: {} pass, {} fail, {} not applicable, {} error{}\n",
            self.results.len(),
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::NotApplicable),
            self.count(Status::Error),
            self.profile.as_ref().map(|p| format!(" (OpenSCAP profile {p})")).unwrap_or_default()
        ));
        out
    }
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Run OpenSCAP too (the project's rules always run).
    pub openscap: bool,
    /// The OpenSCAP profile ([`openscap::DEFAULT_PROFILE`] when `None`).
    pub profile: Option<String>,
    /// Where re-targeted content and OpenSCAP's results XML go.
    pub work_dir: PathBuf,
}

/// Errors of a scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The node's facts could not be gathered.
    #[error(transparent)]
    Facts(#[from] facts::FactsError),
    /// OpenSCAP could not run.
    #[error(transparent)]
    Scap(#[from] openscap::ScapError),
}

/// Scans the node on `state_dir`: the project's rules, then OpenSCAP's.
pub fn scan(state_dir: &Path, opts: &ScanOptions) -> Result<Report, ScanError> {
    let facts = facts::NodeFacts::gather(state_dir)?;
    let mut results = rules::evaluate(&facts);
    let mut profile = None;
    if opts.openscap {
        let version = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
        let content = openscap::content_for(&version, Path::new(openscap::CONTENT_DIR), &opts.work_dir)?;
        let p = opts.profile.clone().unwrap_or_else(|| openscap::DEFAULT_PROFILE.to_string());
        results.extend(openscap::evaluate(&content, &p, &opts.work_dir.join("oscap-results.xml"))?);
        profile = Some(match content.note {
            Some(n) => format!("{p}; {n}"),
            None => p,
        });
    }
    Ok(Report { profile, results })
}
