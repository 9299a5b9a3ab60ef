//! Embeds the console: `web/` (our pages, styles, scripts) and the pinned npm packages that
//! `scripts/console-assets.sh` fetches (xterm.js, noVNC), as one table of `include_bytes!`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// `(url path below /console/, file)` for every file of `dir` whose name passes `keep`.
fn tree(dir: &Path, url: &str, keep: impl Fn(&Path) -> bool) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
        .into_iter()
        .filter(|p| keep(p))
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            (format!("{url}/{rel}"), p)
        })
        .collect()
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("the crate lives in the workspace").to_path_buf();
    let script = root.join("scripts/console-assets.sh");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed={}", manifest.join("npm/package-lock.json").display());
    println!("cargo:rerun-if-changed={}", manifest.join("npm/package.json").display());
    println!("cargo:rerun-if-changed={}", manifest.join("web").display());
    println!("cargo:rerun-if-env-changed=VIRT_CONSOLE_CACHE");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if !out.status.success() {
        panic!(
            "{} failed ({}): {}\nThe web console embeds xterm.js and noVNC from npm at build time: install node and npm \
             (scripts/install-deps.sh) and reach the npm registry once; the packages are cached by the lockfile's hash.",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let modules = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let js = |p: &Path| p.extension().is_some_and(|e| e == "js" || e == "mjs" || e == "css");
    let license = |p: &Path| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("LICENSE"));
    let mut files = tree(&manifest.join("web"), "", |_| true);
    let xterm = modules.join("@xterm/xterm");
    files.push(("/vendor/xterm/xterm.mjs".into(), xterm.join("lib/xterm.mjs")));
    files.push(("/vendor/xterm/xterm.css".into(), xterm.join("css/xterm.css")));
    files.push(("/vendor/xterm/LICENSE".into(), xterm.join("LICENSE")));
    let fit = modules.join("@xterm/addon-fit");
    files.push(("/vendor/xterm/addon-fit.mjs".into(), fit.join("lib/addon-fit.mjs")));
    let novnc = modules.join("@novnc/novnc");
    files.extend(tree(&novnc.join("core"), "/vendor/novnc/core", js));
    files.extend(tree(&novnc.join("vendor"), "/vendor/novnc/vendor", |p| js(p) || license(p)));
    files.push(("/vendor/novnc/LICENSE.txt".into(), novnc.join("LICENSE.txt")));
    let mut src = String::from("/// Every embedded file: its path below `/console/` and its bytes.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for (url, path) in &files {
        assert!(path.is_file(), "{} is missing: is the npm cache complete?", path.display());
        let _ = writeln!(src, "    ({url:?}, include_bytes!({:?})),", path.display().to_string());
    }
    src.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(&dest, src).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
