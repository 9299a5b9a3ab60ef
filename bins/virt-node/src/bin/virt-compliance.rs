//! `virt-compliance`: scans this node (the project's rules and OpenSCAP) and prints the results.
//! Parsing and printing only; the scan is `virt_k8s::compliance`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use virt_k8s::compliance::{self, ScanOptions};

/// Checks the node's configuration (TLS, anonymous access, hostDisk and emulation gates, launcher
/// confinement, audit) and runs OpenSCAP's profile for the operating system.
///
/// Exit status: 0 nothing failed, 1 a rule failed, 2 a rule or the scan could not be evaluated.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The node's state directory.
    #[arg(long, env = "VIRT_NODE_STATE", default_value = "/var/lib/virt-node")]
    state_dir: PathBuf,
    /// The OpenSCAP profile (default: ANSSI DAT-NT28 average, the closest to "moderate" for Debian).
    #[arg(long)]
    profile: Option<String>,
    /// Evaluate the project's rules only.
    #[arg(long)]
    no_openscap: bool,
    /// Output format.
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
    /// Where OpenSCAP's results and re-targeted content go (default: <state-dir>/compliance).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Do not keep the results as the node's ComplianceCheckResult objects
    /// (<state-dir>/compliance/checkresults.json, served by the node's API).
    #[arg(long)]
    no_store: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = ScanOptions {
        openscap: !a.no_openscap,
        profile: a.profile,
        work_dir: a.work_dir.unwrap_or_else(|| a.state_dir.join("compliance")),
    };
    let report = match compliance::scan(&a.state_dir, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("virt-compliance: {e}");
            return ExitCode::from(2);
        }
    };
    if !a.no_store {
        if let Err(e) = compliance::objects::store(&a.state_dir, &report) {
            eprintln!("virt-compliance: {e}");
            return ExitCode::from(2);
        }
    }
    if a.output == "json" {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("virt-compliance: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print!("{}", report.to_text());
    }
    ExitCode::from(report.exit_code())
}
