//! kubectl's server-side printing: a list or an object answered as a `meta.k8s.io/v1` `Table`
//! (when the request accepts `application/json;as=Table`), with the registry's printer columns
//! (KubeVirt's: VM `AGE STATUS READY`, VMI `AGE PHASE IP NODENAME READY`, DV `PHASE PROGRESS
//! RESTARTS AGE`). Dates are printed as kubectl prints ages (`5s`, `3m2s`, `4h`, `2d3h`, as `client::output` prints them).

use serde_json::{json, Value};
use virt_core::api::Timestamp;

use crate::client::output::human_duration;
use crate::registry::Resource;

/// Whether an `Accept` header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=Table"))
}

/// What a row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// Nothing.
    None,
    /// The object's metadata as a `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl Include {
    /// From the `includeObject` query parameter.
    pub fn parse(v: Option<&str>) -> Self {
        match v {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

fn age(v: &Value, now: i64) -> Value {
    match v.as_str().map(Timestamp::parse) {
        Some(Ok(t)) => Value::String(human_duration(now - t.unix_seconds())),
        _ => Value::Null,
    }
}

fn columns(r: &Resource) -> Value {
    let mut cols = vec![json!({
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    })];
    for c in r.columns {
        let ty = if c.type_ == "date" { "string" } else { c.type_ };
        let mut col = json!({ "name": c.name, "type": ty, "format": "", "description": c.description, "priority": c.priority });
        if c.type_ == "date" {
            col["format"] = json!("date");
        }
        cols.push(col);
    }
    Value::Array(cols)
}

fn row(r: &Resource, object: &Value, include: Include, now: i64) -> Value {
    let mut cells = vec![object.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
    for c in r.columns {
        let cell = (c.cell)(object);
        cells.push(if c.type_ == "date" { age(&cell, now) } else { cell });
    }
    let mut row = json!({ "cells": cells });
    match include {
        Include::None => {}
        Include::Object => row["object"] = object.clone(),
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        }
    }
    row
}

/// A Table of `objects` (the items of a list, or one object).
pub fn table(r: &Resource, objects: &[Value], resource_version: &str, include: Include) -> Value {
    let now = Timestamp::now().unix_seconds();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": resource_version },
        "columnDefinitions": columns(r),
        "rows": objects.iter().map(|o| row(r, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    #[test]
    fn a_vm_row_has_kubevirts_columns() {
        let vm = registry::parse("vm").unwrap();
        let obj = json!({
            "metadata": { "name": "testvm", "creationTimestamp": Timestamp::now().as_str() },
            "status": { "printableStatus": "Running", "conditions": [{ "type": "Ready", "status": "True" }] },
        });
        let t = table(vm, &[obj], "7", Include::Metadata);
        let names: Vec<&str> =
            t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Name", "Age", "Status", "Ready"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "testvm");
        assert!(cells[1].as_str().unwrap().ends_with('s'), "{cells}");
        assert_eq!((cells[2].as_str(), cells[3].as_str()), (Some("Running"), Some("True")));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert!(wanted("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"));
        assert!(!wanted("application/json"));
    }
}
