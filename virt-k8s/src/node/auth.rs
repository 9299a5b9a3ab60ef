//! Who may do what on the node's TCP listener: bearer tokens, each a user with one of KubeVirt's
//! roles (`kubevirt.io:view`, `kubevirt.io:edit`, `kubevirt.io:admin`) in a set of namespaces.
//!
//! A request is turned into Kubernetes' request attributes ([`RequestInfo`]: verb, API group,
//! resource, subresource, namespace, name) from its method and path, then checked against the
//! user's grant. Tokens are stored and compared as SHA-256 digests, in constant time over every user.
//! Refusals are Kubernetes' 401 and 403 `Status` answers, worded as the API server words them. The
//! unix socket is the local user's and is not checked.

use std::path::Path;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::api::status_response;

/// Errors loading users.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read.
    #[error("reading the users file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The users file is not what it should be.
    #[error("users file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with the field.
        message: String,
    },
}

/// KubeVirt's aggregated roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `kubevirt.io:view`: read everything, touch nothing (no consoles).
    View,
    /// `kubevirt.io:edit`: view, plus create/change/delete VMs and volumes, power actions, consoles.
    Edit,
    /// `kubevirt.io:admin`: edit; with every namespace, also namespaces and cluster-wide objects.
    Admin,
}

/// A user: a name, a token's digest, a role in some namespaces (`*`: all).
#[derive(Debug, Clone)]
pub struct User {
    /// The name shown in refusals and the audit log.
    pub name: String,
    token_sha256: [u8; 32],
    /// The role.
    pub role: Role,
    /// Namespaces the role applies in (`*` for every namespace).
    pub namespaces: Vec<String>,
}

impl User {
    /// A user with token `token`.
    pub fn new(name: &str, token: &str, role: Role, namespaces: Vec<String>) -> Self {
        Self { name: name.into(), token_sha256: Sha256::digest(token.as_bytes()).into(), role, namespaces }
    }

    fn in_namespace(&self, ns: &str) -> bool {
        self.namespaces.iter().any(|n| n == "*" || n == ns)
    }

    fn everywhere(&self) -> bool {
        self.namespaces.iter().any(|n| n == "*")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserEntry {
    name: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_sha256: Option<String>,
    role: Role,
    namespaces: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersDoc {
    users: Vec<UserEntry>,
}

/// The users of a listener.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
}

impl Users {
    /// No users yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `user`.
    pub fn with(mut self, user: User) -> Self {
        self.users.push(user);
        self
    }

    /// Whether there is no user (a TCP listener then refuses to start).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Reads a users file (YAML or JSON):
    /// `users: [{name, token | tokenSha256, role: view|edit|admin, namespaces: [..|"*"]}]`.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let shown = path.display().to_string();
        let invalid = |message: String| AuthError::Invalid { path: shown.clone(), message };
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::Read { path: shown.clone(), source })?;
        let docs = virt_core::api::parse_yaml(&text).map_err(|e| invalid(e.to_string()))?;
        let [doc] = docs.as_slice() else { return Err(invalid("expected one document".into())) };
        let doc: UsersDoc = serde_path_to_error::deserialize(doc.clone())
            .map_err(|e| invalid(format!("{}: {}", e.path(), e.inner())))?;
        let mut users = Users::new();
        for (i, u) in doc.users.into_iter().enumerate() {
            let at = |f: &str| format!("users[{i}].{f}");
            let digest = match (u.token, u.token_sha256) {
                (Some(t), None) if !t.trim().is_empty() => Sha256::digest(t.trim().as_bytes()).into(),
                (None, Some(h)) => hex32(&h)
                    .ok_or_else(|| invalid(format!("{}: expected 64 hex digits", at("tokenSha256"))))?,
                _ => {
                    return Err(invalid(format!(
                        "{}: give exactly one of token and tokenSha256",
                        at("token")
                    )))
                }
            };
            if u.namespaces.is_empty() {
                return Err(invalid(format!("{}: name at least one namespace, or \"*\"", at("namespaces"))));
            }
            if u.name.is_empty() || users.users.iter().any(|o| o.name == u.name) {
                return Err(invalid(format!("{}: empty or repeated name {:?}", at("name"), u.name)));
            }
            users.users.push(User {
                name: u.name,
                token_sha256: digest,
                role: u.role,
                namespaces: u.namespaces,
            });
        }
        Ok(users)
    }

    /// The user whose token is `token`. Every user's digest is compared, in constant time, so the
    /// answer's timing says nothing about which digest nearly matched.
    pub fn authenticate(&self, token: &str) -> Option<&User> {
        let d: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for u in &self.users {
            let diff = u.token_sha256.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 && found.is_none() {
                found = Some(u);
            }
        }
        found
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Kubernetes' request attributes of an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// The API group (`""` for core).
    pub group: String,
    /// The resource (plural), empty for non-resource paths such as `/version`.
    pub resource: String,
    /// The subresource (`start`, `console`, `status`, ...).
    pub subresource: Option<String>,
    /// The namespace, for namespaced requests (and for a Namespace itself).
    pub namespace: Option<String>,
    /// The object's name.
    pub name: Option<String>,
}

impl RequestInfo {
    /// Resolves `method` + `path` (+ `query`) as the Kubernetes API server does.
    pub fn from_request(method: &str, path: &str, query: &str) -> Self {
        let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
        let (group, rest): (String, &[&str]) = match parts.as_slice() {
            ["api", _v, rest @ ..] => (String::new(), rest),
            ["apis", g, _v, rest @ ..] => ((*g).to_string(), rest),
            _ => (String::new(), &[]),
        };
        let (namespace, rest): (Option<String>, &[&str]) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_string()), rest),
            ["namespaces", ns] => (Some((*ns).to_string()), &["namespaces", ns][..]),
            _ => (None, rest),
        };
        let resource = rest.first().map(|s| (*s).to_string()).unwrap_or_default();
        let name = rest.get(1).map(|s| (*s).to_string());
        let subresource = rest.get(2).map(|s| (*s).to_string());
        let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match (method, name.is_some()) {
            ("GET" | "HEAD", _) if watch => "watch",
            ("GET" | "HEAD", true) => "get",
            ("GET" | "HEAD", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => "unknown",
        };
        Self { verb: verb.into(), group, resource, subresource, namespace, name }
    }

    fn is_read(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
}

/// Whether `user` may make the request `r`.
pub fn allowed(user: &User, r: &RequestInfo) -> bool {
    if r.resource.is_empty() {
        // Discovery, /version, /openapi, the web console's pages: any authenticated user reads.
        return r.is_read();
    }
    let interactive = matches!(r.subresource.as_deref(), Some("console" | "vnc" | "portforward"));
    let cluster_object = r.namespace.is_none() || r.resource == "namespaces";
    if cluster_object {
        return if r.is_read() && r.namespace.is_none() {
            // Lists across namespaces need every namespace.
            user.everywhere()
        } else if r.is_read() {
            user.in_namespace(r.namespace.as_deref().unwrap_or_default())
        } else {
            user.role == Role::Admin && user.everywhere()
        };
    }
    let ns = r.namespace.as_deref().unwrap_or_default();
    if !user.in_namespace(ns) {
        return false;
    }
    match user.role {
        // As KubeVirt's view role: no Secrets (they hold keys and credentials).
        Role::View => r.is_read() && !interactive && r.resource != "secrets",
        Role::Edit | Role::Admin => true,
    }
}

/// The 403 text, as the Kubernetes API server writes it.
fn forbidden_message(user: &User, r: &RequestInfo) -> String {
    let resource = match &r.subresource {
        Some(s) => format!("{}/{s}", r.resource),
        None => r.resource.clone(),
    };
    let what = match (&r.name, r.group.is_empty()) {
        (Some(n), true) => format!("{} {n:?}", r.resource),
        (Some(n), false) => format!("{}.{} {n:?}", r.resource, r.group),
        (None, true) => r.resource.clone(),
        (None, false) => format!("{}.{}", r.resource, r.group),
    };
    let scope = match &r.namespace {
        Some(ns) if r.resource != "namespaces" => format!(" in the namespace {ns:?}"),
        _ => " at the cluster scope".into(),
    };
    format!(
        "{what} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?}{scope}",
        user.name, r.verb, r.group
    )
}

/// The user a request was made as (a request and response extension, for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// Wraps `routes`: a bearer token naming a user is required (401), and the user's role must allow
/// the request in its namespace (403).
pub fn layer(users: Arc<Users>, routes: Router) -> Router {
    routes.layer(axum::middleware::from_fn(move |mut req: Request, next: Next| {
        let users = users.clone();
        async move {
            let token = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            let Some(user) = users.authenticate(token).filter(|_| !token.is_empty()) else {
                return status_response(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "a bearer token is required (Authorization: Bearer <token>)",
                );
            };
            let info = RequestInfo::from_request(
                req.method().as_str(),
                req.uri().path(),
                req.uri().query().unwrap_or(""),
            );
            let principal = Principal(user.name.clone());
            if !allowed(user, &info) {
                log::info!(target: "virt_k8s::audit", "denied {} {} to {}", info.verb, req.uri().path(), user.name);
                let mut resp = status_response(StatusCode::FORBIDDEN, "Forbidden", &forbidden_message(user, &info));
                resp.extensions_mut().insert(principal);
                return resp;
            }
            req.extensions_mut().insert(principal.clone());
            let mut resp = next.run(req).await;
            resp.extensions_mut().insert(principal);
            resp
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(method: &str, path: &str) -> RequestInfo {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        RequestInfo::from_request(method, p, q)
    }

    #[test]
    fn paths_resolve_to_kubernetes_attributes() {
        let r = info("PUT", "/apis/subresources.kubevirt.io/v1/namespaces/dev/virtualmachines/vm1/start");
        assert_eq!(
            r,
            RequestInfo {
                verb: "update".into(),
                group: "subresources.kubevirt.io".into(),
                resource: "virtualmachines".into(),
                subresource: Some("start".into()),
                namespace: Some("dev".into()),
                name: Some("vm1".into()),
            }
        );
        assert_eq!(
            info("GET", "/apis/kubevirt.io/v1/namespaces/dev/virtualmachines?watch=true").verb,
            "watch"
        );
        assert_eq!(info("GET", "/apis/kubevirt.io/v1/virtualmachines").namespace, None);
        let ns = info("DELETE", "/api/v1/namespaces/dev");
        assert_eq!(
            (ns.resource.as_str(), ns.namespace.as_deref(), ns.verb.as_str()),
            ("namespaces", Some("dev"), "delete")
        );
        assert_eq!(info("GET", "/version").resource, "");
    }

    #[test]
    fn roles_and_namespaces_decide() {
        let view = User::new("v", "t1", Role::View, vec!["dev".into()]);
        let edit = User::new("e", "t2", Role::Edit, vec!["dev".into()]);
        let admin = User::new("a", "t3", Role::Admin, vec!["*".into()]);
        let vm = "/apis/kubevirt.io/v1/namespaces/dev/virtualmachines";
        let console = "/apis/subresources.kubevirt.io/v1/namespaces/dev/virtualmachineinstances/x/console";
        assert!(allowed(&view, &info("GET", vm)));
        assert!(!allowed(&view, &info("POST", vm)));
        assert!(!allowed(&view, &info("GET", console)));
        assert!(!allowed(&view, &info("GET", "/apis/kubevirt.io/v1/namespaces/prod/virtualmachines")));
        assert!(!allowed(&view, &info("GET", "/apis/kubevirt.io/v1/virtualmachines")), "all namespaces");
        assert!(allowed(&view, &info("GET", "/api/v1/namespaces/dev")));
        assert!(allowed(&edit, &info("POST", vm)));
        assert!(allowed(&edit, &info("GET", console)));
        assert!(!allowed(&edit, &info("DELETE", "/api/v1/namespaces/dev")));
        assert!(!allowed(&edit, &info("POST", "/api/v1/namespaces")));
        assert!(allowed(&admin, &info("POST", "/api/v1/namespaces")));
        assert!(allowed(&admin, &info("GET", "/apis/kubevirt.io/v1/virtualmachines")));
        assert!(allowed(&view, &info("GET", "/apis")));
        assert!(!allowed(&view, &info("POST", "/version")));
        let msg = forbidden_message(&view, &info("DELETE", &format!("{vm}/vm1")));
        assert_eq!(
            msg,
            "virtualmachines.kubevirt.io \"vm1\" is forbidden: User \"v\" cannot delete resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"dev\""
        );
    }

    #[test]
    fn users_files_are_strict_and_tokens_match_by_digest() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("users.yaml");
        let digest: String = Sha256::digest(b"s3cret").iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            &p,
            format!("users:\n- {{name: alice, token: tok-a, role: edit, namespaces: [dev]}}\n- {{name: bob, tokenSha256: {digest}, role: view, namespaces: ['*']}}\n"),
        )
        .unwrap();
        let users = Users::load(&p).unwrap();
        assert_eq!(users.authenticate("tok-a").map(|u| u.name.as_str()), Some("alice"));
        assert_eq!(users.authenticate("s3cret").map(|u| u.name.as_str()), Some("bob"));
        assert!(users.authenticate("tok-b").is_none());
        for (bad, want) in [
            (
                "users:\n- {name: a, token: x, role: root, namespaces: [dev]}\n",
                "users[0].role: unknown variant `root`",
            ),
            ("users:\n- {name: a, role: view, namespaces: [dev]}\n", "users[0].token"),
            ("users:\n- {name: a, token: x, role: view, namespaces: []}\n", "users[0].namespaces"),
            ("users:\n- {name: a, token: x, role: view, namespaces: [d], extra: 1}\n", "extra"),
            ("users:\n- {name: a, tokenSha256: abc, role: view, namespaces: [d]}\n", "users[0].tokenSha256"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = Users::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
