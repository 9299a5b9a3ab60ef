//! `PATCH` bodies: JSON merge patch (RFC 7386, `application/merge-patch+json`, what `kubectl patch
//! --type merge` and client-side `apply` send for custom resources) and JSON patch (RFC 6902,
//! `application/json-patch+json`).

use serde_json::Value;

/// A patch that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The body is not JSON of the expected shape.
    #[error("the patch body is not a valid {kind}: {reason}")]
    Body {
        /// `JSON merge patch` or `JSON patch`.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// A JSON patch operation failed.
    #[error("JSON patch operation {index} ({op} {path}): {reason}")]
    Operation {
        /// Index of the operation.
        index: usize,
        /// `add`, `remove`, ...
        op: String,
        /// Its path.
        path: String,
        /// Why.
        reason: &'static str,
    },
}

/// Applies an RFC 7386 merge patch to `target`.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// The parent of `pointer` and the last token.
fn split(pointer: &str) -> Option<(&str, String)> {
    let i = pointer.rfind('/')?;
    Some((&pointer[..i], unescape(&pointer[i + 1..])))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), &'static str> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, key) = split(path).ok_or("the path does not start with /")?;
    match doc.pointer_mut(parent).ok_or("the parent does not exist")? {
        Value::Object(m) => {
            m.insert(key, value);
            Ok(())
        }
        Value::Array(a) => {
            let i = if key == "-" { a.len() } else { key.parse().map_err(|_| "not an array index")? };
            if i > a.len() {
                return Err("the array index is out of range");
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err("the parent is neither an object nor an array"),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, &'static str> {
    let (parent, key) = split(path).ok_or("the path does not start with /")?;
    match doc.pointer_mut(parent).ok_or("the parent does not exist")? {
        Value::Object(m) => m.remove(&key).ok_or("the path does not exist"),
        Value::Array(a) => {
            let i: usize = key.parse().map_err(|_| "not an array index")?;
            if i >= a.len() {
                return Err("the array index is out of range");
            }
            Ok(a.remove(i))
        }
        _ => Err("the parent is neither an object nor an array"),
    }
}

/// Applies an RFC 6902 JSON patch to `target` (all or nothing).
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let body = |reason: &str| PatchError::Body { kind: "JSON patch", reason: reason.to_string() };
    let ops = patch.as_array().ok_or_else(|| body("expected an array of operations"))?;
    let mut doc = target.clone();
    for (index, op) in ops.iter().enumerate() {
        let name = op["op"].as_str().ok_or_else(|| body("an operation has no \"op\""))?;
        let path = op["path"].as_str().ok_or_else(|| body("an operation has no \"path\""))?;
        let fail = |reason| PatchError::Operation { index, op: name.into(), path: path.into(), reason };
        let value = || op.get("value").cloned().ok_or_else(|| fail("the operation has no \"value\""));
        let from = || op["from"].as_str().ok_or_else(|| fail("the operation has no \"from\""));
        match name {
            "add" => add(&mut doc, path, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut doc, path).map_err(fail)?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(fail)?;
                add(&mut doc, path, value()?).map_err(fail)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?).map_err(fail)?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "copy" => {
                let v = doc.pointer(from()?).cloned().ok_or_else(|| fail("\"from\" does not exist"))?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(fail("the value differs"));
                }
            }
            _ => return Err(fail("unknown operation")),
        }
    }
    *target = doc;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({ "spec": { "runStrategy": "Halted", "template": { "a": 1 } }, "x": [1] });
        merge(&mut doc, &json!({ "spec": { "runStrategy": "Always", "template": null }, "x": [2] }));
        assert_eq!(doc, json!({ "spec": { "runStrategy": "Always" }, "x": [2] }));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let mut doc = json!({ "spec": { "runStrategy": "Halted" }, "l": [1, 3] });
        let p = json!([
            { "op": "test", "path": "/spec/runStrategy", "value": "Halted" },
            { "op": "replace", "path": "/spec/runStrategy", "value": "Always" },
            { "op": "add", "path": "/l/1", "value": 2 },
            { "op": "add", "path": "/metadata", "value": { "labels": { "a/b": "c" } } },
            { "op": "copy", "from": "/metadata/labels/a~1b", "path": "/c" },
        ]);
        json_patch(&mut doc, &p).unwrap();
        assert_eq!(doc["spec"]["runStrategy"], "Always");
        assert_eq!(doc["l"], json!([1, 2, 3]));
        assert_eq!(doc["c"], "c");
        let before = doc.clone();
        let bad =
            json!([{ "op": "remove", "path": "/spec/runStrategy" }, { "op": "remove", "path": "/nope" }]);
        assert!(matches!(json_patch(&mut doc, &bad), Err(PatchError::Operation { index: 1, .. })));
        assert_eq!(doc, before, "a failed patch changes nothing");
    }
}
