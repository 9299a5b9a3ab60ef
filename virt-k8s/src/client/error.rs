//! [`ClientError`]: what a request to the node can fail with, and the hints shown with it.

use std::io;
use std::time::Duration;

use super::kubeconfig;
use super::ConsoleError;
use super::EndpointError;
use super::Status;

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A kubeconfig cannot be used.
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    /// A CA certificate cannot be used.
    #[error("the node's CA certificate: {0}")]
    Ca(String),
    /// No connection: no socket, connection refused, timed out.
    #[error("cannot reach the node at {endpoint}: {source}{}", unreachable_hint(source))]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why connecting failed.
        source: io::Error,
    },
    /// The node refused the request with a `Status`.
    #[error("{method} {path}: {status}")]
    Status {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The node's answer.
        status: Box<Status>,
    },
    /// The node answered an error without a `Status` body.
    #[error("{method} {path}: HTTP {code}: {body}")]
    Unexpected {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The HTTP code.
        code: u16,
        /// The start of the body, as text.
        body: String,
    },
    /// The HTTP exchange broke off.
    #[error("{method} {path} on {endpoint}: {reason}")]
    Http {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("{method} {path} on {endpoint}: no answer within {after:?}")]
    Timeout {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// The time allowed.
        after: Duration,
    },
    /// The node's answer is not the JSON expected.
    #[error("{method} {path}: cannot decode the node's answer: {message}")]
    Decode {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong, with the field path.
        message: String,
    },
    /// The object given cannot be sent (no kind, no name, a kind the node does not serve).
    #[error("{object}: {reason}")]
    Object {
        /// The object, as `Kind namespace/name` as far as known.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// The request cannot be built (a token that is not a valid header value).
    #[error("{method} {path}: {reason}")]
    Request {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The blocking client's runtime could not start.
    #[error("starting the node client's I/O runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The console websocket could not be opened.
    #[error("console of {namespace}/{name} on {endpoint}: {reason}")]
    WebSocket {
        /// The VMI's namespace.
        namespace: String,
        /// The VMI.
        name: String,
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The console session failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A port forward (`virtctl port-forward`, `ssh`) failed.
    #[error(transparent)]
    PortForward(#[from] super::portforward::PortForwardError),
    /// The local VNC proxy (`virtctl vnc`) failed.
    #[error("VNC proxy {what}: {reason}")]
    Vnc {
        /// What it was doing (e.g. `listening on 127.0.0.1:5900`).
        what: String,
        /// What failed.
        reason: String,
    },
}

impl ClientError {
    /// The node's `Status`, when it refused the request.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status { status, .. } => Some(status.as_ref()),
            _ => None,
        }
    }

    /// Whether the node said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(Status::is_not_found)
    }
}

pub(super) fn unreachable_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            "; is the node daemon running? Start it with `virt-node`, or point --server (or VIRT_NODE) \
             at a running node"
        }
        io::ErrorKind::PermissionDenied => {
            "; this user may not open the node's socket (run as root or as a member of its group)"
        }
        _ => "",
    }
}
