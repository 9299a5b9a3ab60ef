//! Kubernetes `Status` objects: how the node reports a refused request.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A `meta/v1` `Status` as the node sends it with an error code:
/// `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"...","reason":"NotFound","code":404}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `Success` or `Failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// What went wrong, for people.
    #[serde(default)]
    pub message: String,
    /// What went wrong, for programs: `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...
    #[serde(default)]
    pub reason: String,
    /// The HTTP code.
    #[serde(default)]
    pub code: u16,
    /// Extra details (the object's name and kind, the invalid fields), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl Status {
    /// Decodes a response body as a `Status`: `Some` only when the body is a JSON object with
    /// `"kind": "Status"`. A missing `code` is taken from the HTTP status line (`http_code`).
    pub fn from_body(body: &[u8], http_code: u16) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        if value.get("kind").and_then(Value::as_str) != Some("Status") {
            return None;
        }
        let mut status: Status = serde_json::from_value(value).ok()?;
        if status.code == 0 {
            status.code = http_code;
        }
        Some(status)
    }

    /// Whether the reason is `NotFound` (or, without a reason, the code is 404).
    pub fn is_not_found(&self) -> bool {
        self.reason == "NotFound" || (self.reason.is_empty() && self.code == 404)
    }
}

impl fmt::Display for Status {
    /// `message (Reason, HTTP code)`, leaving out what the node did not send.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = if self.message.is_empty() { "the request failed" } else { &self.message };
        match (self.reason.is_empty(), self.code) {
            (true, 0) => write!(f, "{message}"),
            (true, code) => write!(f, "{message} (HTTP {code})"),
            (false, 0) => write!(f, "{message} ({})", self.reason),
            (false, code) => write!(f, "{message} ({}, HTTP {code})", self.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_node_status() {
        let body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure",
            "message":"virtualmachines.kubevirt.io \"x\" not found","reason":"NotFound","code":404}"#;
        let s = Status::from_body(body, 404).unwrap();
        assert_eq!(s.reason, "NotFound");
        assert_eq!(s.code, 404);
        assert!(s.is_not_found());
        assert_eq!(s.to_string(), r#"virtualmachines.kubevirt.io "x" not found (NotFound, HTTP 404)"#);
    }

    #[test]
    fn code_from_the_status_line_and_partial_statuses() {
        let s = Status::from_body(br#"{"kind":"Status","message":"busy","reason":"Conflict"}"#, 409).unwrap();
        assert_eq!((s.code, s.to_string().as_str()), (409, "busy (Conflict, HTTP 409)"));
        let s = Status::from_body(br#"{"kind":"Status"}"#, 500).unwrap();
        assert_eq!(s.to_string(), "the request failed (HTTP 500)");
        assert!(!s.is_not_found());
    }

    #[test]
    fn other_bodies_are_not_statuses() {
        assert_eq!(Status::from_body(b"not found", 404), None);
        assert_eq!(Status::from_body(br#"{"kind":"VirtualMachine"}"#, 200), None);
        assert_eq!(Status::from_body(br#"{"kind":"Status","code":"x"}"#, 400), None);
    }
}
