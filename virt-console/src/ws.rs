//! `/console/...`: embedded files, and console websockets forwarded to the API with the token of
//! the console's cookie.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

/// The cookie the console keeps the user's token in (`SameSite=Strict`, set by the login page),
/// read only for console websockets.
pub const TOKEN_COOKIE: &str = "virt-console-token";

/// Why a console websocket was refused before reaching the API.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    /// The path is not a console or VNC subresource.
    #[error("{0}: only a VMI's console and vnc subresources are reachable through the console")]
    NotConsole(String),
    /// The page that opened the socket is not the console's own.
    #[error("websocket from origin {origin:?} refused: the console's origin is {host:?}")]
    CrossOrigin {
        /// The `Origin` header.
        origin: String,
        /// The `Host` header.
        host: String,
    },
    /// The rewritten path is not a URI.
    #[error("{0}: not a valid request path")]
    BadPath(String),
}

impl IntoResponse for WsError {
    fn into_response(self) -> Response {
        let code = match self {
            WsError::CrossOrigin { .. } => StatusCode::FORBIDDEN,
            WsError::NotConsole(_) => StatusCode::NOT_FOUND,
            WsError::BadPath(_) => StatusCode::BAD_REQUEST,
        };
        (code, self.to_string()).into_response()
    }
}

/// `/console/ws/<API path>` goes to the API; anything else under `/console/` is a file; every
/// other path is the API's.
pub async fn or_asset(api: Router, req: Request) -> Response {
    let path = req.uri().path();
    let Some(below) = path.strip_prefix("/console/") else {
        return match api.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        };
    };
    let Some(rest) = path.strip_prefix("/console/ws") else {
        return super::serve(below, req.method());
    };
    match rewrite(rest.to_string(), req) {
        Ok(req) => match api.oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        },
        Err(e) => e.into_response(),
    }
}

/// Whether `path` is `/apis/subresources.kubevirt.io/<v>/namespaces/<ns>/virtualmachineinstances/<name>/(console|vnc)`.
fn is_console_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(
        parts.as_slice(),
        ["", "apis", "subresources.kubevirt.io", v, "namespaces", ns, "virtualmachineinstances", name, "console" | "vnc"]
            if !v.is_empty() && !ns.is_empty() && !name.is_empty()
    )
}

/// The API request for a console websocket: same-origin only, the path below `/console/ws`, the
/// cookie's token as `Authorization` unless the request has one.
fn rewrite(rest: String, mut req: Request) -> Result<Request, WsError> {
    if !is_console_path(&rest) {
        return Err(WsError::NotConsole(rest));
    }
    let h = req.headers();
    if let Some(origin) = h.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, h)| h);
        if origin_host != host {
            return Err(WsError::CrossOrigin { origin: origin.into(), host: host.into() });
        }
    }
    if !h.contains_key(header::AUTHORIZATION) {
        if let Some(token) = cookie(h, TOKEN_COOKIE) {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                req.headers_mut().insert(header::AUTHORIZATION, v);
            }
        }
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.clone(),
    };
    *req.uri_mut() = pq.parse::<Uri>().map_err(|_| WsError::BadPath(rest))?;
    Ok(req)
}

/// The value of cookie `name` (percent-decoded).
fn cookie(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_paths_only() {
        assert!(is_console_path(
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/console"
        ));
        assert!(is_console_path(
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/vnc"
        ));
        assert!(!is_console_path("/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/start"));
        assert!(!is_console_path("/apis/kubevirt.io/v1/namespaces/d/virtualmachineinstances/x"));
        assert!(!is_console_path(
            "/apis/subresources.kubevirt.io/v1/namespaces//virtualmachineinstances/x/vnc"
        ));
    }

    #[test]
    fn cookies_are_decoded() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; virt-console-token=s3%2Fcret%3D; b=2"));
        assert_eq!(cookie(&h, TOKEN_COOKIE).as_deref(), Some("s3/cret="));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
