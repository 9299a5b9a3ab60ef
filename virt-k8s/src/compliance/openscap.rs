//! OpenSCAP (`oscap` from Debian's `openscap-scanner`) with the SCAP Security Guide's Debian content
//! (`ssg-debian`). Debian ships no "moderate" profile for Debian; the default here is ANSSI
//! DAT-NT28 "average" (intermediate), the closest in intent. Bookworm's `ssg-debian` carries content
//! for Debian 10 and 11 only: on a newer Debian the newest content is applied with its platform
//! check widened to this release (written to a cache file; the report says so).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{RuleResult, Status};

/// The default profile: ANSSI DAT-NT28 average (intermediate).
pub const DEFAULT_PROFILE: &str = "xccdf_org.ssgproject.content_profile_anssi_np_nt28_average";

/// Where Debian's `ssg-debian` installs its data streams.
pub const CONTENT_DIR: &str = "/usr/share/xml/scap/ssg/content";

/// Errors running OpenSCAP.
#[derive(Debug, thiserror::Error)]
pub enum ScapError {
    /// `oscap` is not installed.
    #[error(
        "oscap not found: install Debian's openscap-scanner and ssg-debian (scripts/install-deps.sh does)"
    )]
    NotInstalled,
    /// No content for this system.
    #[error("no SCAP Security Guide content for Debian in {dir}: install ssg-debian")]
    NoContent {
        /// Where it was looked for.
        dir: String,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// `oscap` failed (exit status 1: an error, not failed rules).
    #[error("oscap xccdf eval --profile {profile} failed: {stderr}")]
    Failed {
        /// The profile.
        profile: String,
        /// What it printed.
        stderr: String,
    },
}

/// The data stream to evaluate and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The data stream file.
    pub path: PathBuf,
    /// A note when the content was made for another release.
    pub note: Option<String>,
}

fn debian_major(version: &str) -> Option<u32> {
    version.trim().split(['.', '/']).next()?.parse().ok()
}

/// Picks the content for the Debian release `version` (the text of `/etc/debian_version`) from
/// `dir`, re-targeting the newest older content into `cache` when there is none for it.
pub fn content_for(version: &str, dir: &Path, cache: &Path) -> Result<Content, ScapError> {
    let want = debian_major(version);
    let mut have: Vec<u32> = std::fs::read_dir(dir)
        .map_err(|_| ScapError::NoContent { dir: dir.display().to_string() })?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ssg-debian")?.strip_suffix("-ds.xml")?.parse().ok()
        })
        .collect();
    have.sort_unstable();
    let path_of = |n: u32| dir.join(format!("ssg-debian{n}-ds.xml"));
    if let Some(w) = want.filter(|w| have.contains(w)) {
        return Ok(Content { path: path_of(w), note: None });
    }
    let Some(&newest) = have.last() else {
        return Err(ScapError::NoContent { dir: dir.display().to_string() });
    };
    let Some(w) = want.filter(|w| *w > newest) else {
        return Ok(Content { path: path_of(newest), note: None });
    };
    let src = path_of(newest);
    let text = std::fs::read_to_string(&src).map_err(|source| ScapError::Io {
        what: "reading",
        path: src.display().to_string(),
        source,
    })?;
    // The platform check reads /etc/debian_version against `^11.[0-9]+$`.
    let from = format!(">^{newest}.[0-9]+$<");
    let to = format!(">^({newest}|{w}).[0-9]+$<");
    let out = cache.join(format!("ssg-debian{newest}-for-debian{w}-ds.xml"));
    std::fs::create_dir_all(cache).map_err(|source| ScapError::Io {
        what: "creating",
        path: cache.display().to_string(),
        source,
    })?;
    std::fs::write(&out, text.replace(&from, &to)).map_err(|source| ScapError::Io {
        what: "writing",
        path: out.display().to_string(),
        source,
    })?;
    Ok(Content {
        path: out,
        note: Some(format!(
            "Debian {w} has no SCAP Security Guide content in ssg-debian; the Debian {newest} content is applied"
        )),
    })
}

/// Runs `oscap xccdf eval` with `profile` on `content`, results into `results_xml`.
pub fn evaluate(content: &Content, profile: &str, results_xml: &Path) -> Result<Vec<RuleResult>, ScapError> {
    let out = Command::new("oscap")
        .args(["xccdf", "eval", "--profile", profile, "--results"])
        .arg(results_xml)
        .arg(&content.path)
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ScapError::NotInstalled
            } else {
                ScapError::Io {
                    what: "running oscap on",
                    path: content.path.display().to_string(),
                    source: e,
                }
            }
        })?;
    // 0: all passed, 2: some rule failed; anything else is an error.
    if !matches!(out.status.code(), Some(0 | 2)) {
        return Err(ScapError::Failed {
            profile: profile.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let severities = std::fs::read_to_string(results_xml).map(|x| severities(&x)).unwrap_or_default();
    Ok(parse_text(&String::from_utf8_lossy(&out.stdout), &severities, profile, &content.path))
}

/// `idref` -> `severity` of each `<rule-result>` in an XCCDF results document.
fn severities(xml: &str) -> HashMap<String, String> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let end = tag[start..].find('"')? + start;
        Some(tag[start..end].to_string())
    };
    xml.match_indices("<rule-result ")
        .filter_map(|(i, _)| {
            let tag = &xml[i..i + xml[i..].find('>')?];
            Some((attr(tag, "idref")?, attr(tag, "severity")?))
        })
        .collect()
}

/// Parses oscap's text output: blocks of `Title`, `Rule`, (`Ident`), `Result` lines.
fn parse_text(text: &str, severities: &HashMap<String, String>, profile: &str, ds: &Path) -> Vec<RuleResult> {
    let mut out = Vec::new();
    let (mut title, mut rule) = (String::new(), String::new());
    for line in text.lines() {
        let line = line.replace('\r', "");
        let Some((key, value)) = line.split_once('\t') else { continue };
        match key {
            "Title" => title = value.trim().to_string(),
            "Rule" => rule = value.trim().to_string(),
            "Result" => {
                let status = match value.trim() {
                    "pass" | "fixed" | "informational" => Status::Pass,
                    "fail" => Status::Fail,
                    "notapplicable" | "notselected" | "notchecked" => Status::NotApplicable,
                    _ => Status::Error,
                };
                out.push(RuleResult {
                    id: rule.clone(),
                    title: title.clone(),
                    severity: severities.get(&rule).cloned().unwrap_or_else(|| "unknown".into()),
                    status,
                    detail: format!("oscap: {}", value.trim()),
                    remediation: format!(
                        "the SCAP Security Guide's fix: oscap xccdf generate fix --profile {profile} --rule {rule} {}",
                        ds.display()
                    ),
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_results_are_parsed() {
        let text = "--- Starting Evaluation ---\n\nTitle\r\tDisable SSH Root Login\nRule\r\txccdf_r_ssh\nIdent\r\tCCE-1\nResult\r\tfail\n\nTitle\r\tPartition\nRule\r\txccdf_r_part\nResult\r\tnotapplicable\n";
        let xml = r#"<rule-result idref="xccdf_r_ssh" role="full" severity="high" weight="1"><result>fail</result></rule-result>"#;
        let r = parse_text(text, &severities(xml), "p", Path::new("/ds.xml"));
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].id.as_str(), r[0].status, r[0].severity.as_str()),
            ("xccdf_r_ssh", Status::Fail, "high")
        );
        assert_eq!(r[0].title, "Disable SSH Root Login");
        assert_eq!((r[1].status, r[1].severity.as_str()), (Status::NotApplicable, "unknown"));
    }

    #[test]
    fn newer_releases_get_the_newest_content_retargeted() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("content");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ssg-debian10-ds.xml"), "<p>^10.[0-9]+$</p>").unwrap();
        std::fs::write(dir.join("ssg-debian11-ds.xml"), "<p>^11.[0-9]+$</p>").unwrap();
        let c = content_for("11.9\n", &dir, t.path()).unwrap();
        assert_eq!((c.path, c.note), (dir.join("ssg-debian11-ds.xml"), None));
        let c = content_for("12.11\n", &dir, &t.path().join("cache")).unwrap();
        assert_eq!(std::fs::read_to_string(&c.path).unwrap(), "<p>^(11|12).[0-9]+$</p>");
        assert!(c.note.unwrap().contains("Debian 12"));
        assert!(content_for("12", &t.path().join("none"), t.path()).is_err());
    }
}
