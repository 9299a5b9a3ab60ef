//! Kubeconfig files, as kubectl reads them: the current (or a named) context's cluster (`server`,
//! `certificate-authority-data` or `certificate-authority`) and user (`token` or `tokenFile`), and
//! its namespace. The node writes one for its local user at `<state>/kubeconfig`.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

/// The environment variable naming the kubeconfig (the first file of a `:`-separated list is used).
pub const ENV_KUBECONFIG: &str = "KUBECONFIG";

/// A kubeconfig that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("kubeconfig {path}: {reason}")]
pub struct KubeconfigError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// What a context of a kubeconfig says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    /// The context's name.
    pub context: String,
    /// The cluster's `server` URL.
    pub server: String,
    /// The CA the server's certificate is checked against (PEM), if the cluster names one.
    pub ca_pem: Option<Vec<u8>>,
    /// The user's bearer token.
    pub token: Option<String>,
    /// The context's namespace.
    pub namespace: Option<String>,
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, field: &str) -> Option<&'a Value> {
    doc.get(list)?.as_array()?.iter().find(|e| e["name"].as_str() == Some(name)).map(|e| &e[field])
}

impl Kubeconfig {
    /// The file named by `flag` (`--kubeconfig`), else by `KUBECONFIG`; `None` when neither is set.
    pub fn path(flag: Option<&str>) -> Option<PathBuf> {
        let env = std::env::var(ENV_KUBECONFIG).ok();
        let pick = flag
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .or_else(|| env.and_then(|e| e.split(':').find(|p| !p.is_empty()).map(str::to_string)))?;
        Some(PathBuf::from(pick))
    }

    /// Reads `path`, using `context` or the file's `current-context`.
    pub fn load(path: &Path, context: Option<&str>) -> Result<Self, KubeconfigError> {
        let fail = |reason: String| KubeconfigError { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut docs = virt_core::api::parse_yaml(&text).map_err(|e| fail(e.to_string()))?;
        if docs.len() != 1 {
            return Err(fail(format!("expected one YAML document, found {}", docs.len())));
        }
        let doc = docs.remove(0);
        let context = match context.or_else(|| doc["current-context"].as_str()) {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => return Err(fail("no current-context (and no --context)".into())),
        };
        let ctx = named(&doc, "contexts", &context, "context")
            .ok_or_else(|| fail(format!("no context named {context:?}")))?;
        let cluster_name =
            ctx["cluster"].as_str().ok_or_else(|| fail(format!("context {context:?} names no cluster")))?;
        let cluster = named(&doc, "clusters", cluster_name, "cluster")
            .ok_or_else(|| fail(format!("no cluster named {cluster_name:?}")))?;
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| fail(format!("cluster {cluster_name:?} has no server")))?
            .to_string();
        let dir = path.parent().unwrap_or(Path::new("."));
        let ca_pem =
            match (cluster["certificate-authority-data"].as_str(), cluster["certificate-authority"].as_str())
            {
                (Some(data), _) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map_err(|e| fail(format!("certificate-authority-data of {cluster_name:?}: {e}")))?,
                ),
                (None, Some(file)) => {
                    let file = dir.join(file);
                    Some(
                        std::fs::read(&file)
                            .map_err(|e| fail(format!("certificate-authority {}: {e}", file.display())))?,
                    )
                }
                (None, None) => None,
            };
        let user = ctx["user"].as_str().and_then(|u| named(&doc, "users", u, "user"));
        let token = match user {
            Some(u) => match (u["token"].as_str(), u["tokenFile"].as_str()) {
                (Some(t), _) => Some(t.to_string()),
                (None, Some(file)) => {
                    let file = dir.join(file);
                    let t = std::fs::read_to_string(&file)
                        .map_err(|e| fail(format!("tokenFile {}: {e}", file.display())))?;
                    Some(t.trim().to_string())
                }
                (None, None) => None,
            },
            None => None,
        };
        let namespace = ctx["namespace"].as_str().map(str::to_string);
        Ok(Self { context, server, ca_pem, token, namespace })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_context_names_server_ca_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(dir.path().join("ca.crt"), b"PEM").unwrap();
        std::fs::write(
            &p,
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:8443\n    \
             certificate-authority-data: UEVN\n- name: d\n  cluster:\n    server: https://n:1\n    certificate-authority: ca.crt\n\
             users:\n- name: u\n  user:\n    token: tok\ncontexts:\n- name: a\n  context:\n    cluster: c\n    user: u\n    namespace: lab\n\
             - name: b\n  context:\n    cluster: d\n",
        )
        .unwrap();
        let a = Kubeconfig::load(&p, None).unwrap();
        assert_eq!(a.server, "https://127.0.0.1:8443");
        assert_eq!(a.ca_pem.as_deref(), Some(&b"PEM"[..]));
        assert_eq!((a.token.as_deref(), a.namespace.as_deref()), (Some("tok"), Some("lab")));
        let b = Kubeconfig::load(&p, Some("b")).unwrap();
        assert_eq!(
            (b.server.as_str(), b.ca_pem.as_deref(), b.token),
            ("https://n:1", Some(&b"PEM"[..]), None)
        );
        let e = Kubeconfig::load(&p, Some("zz")).unwrap_err().to_string();
        assert!(e.contains("no context named \"zz\"") && e.contains("config"), "{e}");
    }
}
