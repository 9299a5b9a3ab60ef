//! The node's audit log: one JSON line per request that changes something or reaches into a VM
//! (every verb but GET, plus the console, VNC and port-forward subresources) or that was refused
//! (401, 403), saying who (the TCP user, or the local user on the unix socket), what (verb and
//! path), when, and the answer's status code. Kubernetes'
//! audit log at its `Metadata` level is the model: bodies are never written.
//!
//! The file (`<state>/audit.log`) is appended to; when it passes [`MAX_BYTES`] it is rotated to
//! `audit.log.1` (one generation kept).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use serde::Serialize;

/// Size at which the log is rotated.
pub const MAX_BYTES: u64 = 64 << 20;

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Listener {
    /// The unix socket (the local user: whoever may open it).
    Unix,
    /// TCP with the bearer token.
    Tcp,
}

#[derive(Serialize)]
struct Record<'a> {
    time: &'a str,
    listener: Listener,
    user: &'a str,
    verb: &'a str,
    path: &'a str,
    code: u16,
}

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<Arc<Self>> {
        let file = open_append(path)?;
        Ok(Arc::new(Self { path: path.to_path_buf(), file: Mutex::new(Some(file)) }))
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, listener: Listener, user: Option<&str>, verb: &str, path: &str, code: u16) {
        let time = virt_core::api::Timestamp::now();
        let user = user.unwrap_or(match listener {
            Listener::Unix => "local-user",
            Listener::Tcp => "anonymous",
        });
        let rec = Record { time: time.as_str(), listener, user, verb, path, code };
        let Ok(mut line) = serde_json::to_vec(&rec) else { return };
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let too_big = guard.as_ref().and_then(|f| f.metadata().ok()).is_some_and(|m| m.len() > MAX_BYTES);
        if too_big {
            *guard = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            *guard = open_append(&self.path).ok();
        }
        if let Some(f) = guard.as_mut() {
            if let Err(e) = f.write_all(&line) {
                log::warn!("audit log {}: {e}", self.path.display());
            }
        }
    }

    /// Wraps `routes` so every audited request through `listener` is logged.
    pub fn layer(self: &Arc<Self>, routes: Router, listener: Listener) -> Router {
        let me = self.clone();
        routes.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let me = me.clone();
            async move {
                let verb = req.method().as_str().to_string();
                let path = req.uri().path().to_string();
                let audited = verb != "GET" || is_interactive(&path);
                let resp: Response = next.run(req).await;
                let refused = matches!(resp.status().as_u16(), 401 | 403);
                if audited || refused {
                    let user = resp.extensions().get::<super::auth::Principal>().map(|p| p.0.clone());
                    me.write(listener, user.as_deref(), &verb, &path, resp.status().as_u16());
                }
                resp
            }
        }))
    }
}

fn open_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Subresources that reach into a running VM.
fn is_interactive(path: &str) -> bool {
    ["/console", "/vnc", "/portforward"].iter().any(|s| path.ends_with(s) || path.contains(&format!("{s}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_json_lines_and_reads_are_not_audited() {
        let t = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&t.path().join("audit.log")).unwrap();
        log.write(
            Listener::Tcp,
            Some("alice"),
            "DELETE",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/a",
            200,
        );
        let text = std::fs::read_to_string(log.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["verb"], "DELETE");
        assert_eq!(v["listener"], "tcp");
        assert_eq!(v["user"], "alice");
        assert_eq!(v["code"], 200);
        assert!(is_interactive(
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/console"
        ));
        assert!(!is_interactive("/apis/kubevirt.io/v1/namespaces/d/virtualmachines"));
    }
}
