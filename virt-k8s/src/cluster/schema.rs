//! Structural OpenAPI v3 schemas, as a Kubernetes 1.20 API server accepts them in a CRD, made from
//! the JSON schemas schemars derives for the project's types.
//!
//! schemars writes JSON Schema 2020-12: shared types under `$defs` behind `$ref`, `Option<T>` as
//! `anyOf [T, null]` or a type array, enums as `oneOf`/`const`. A CRD's schema must be
//! *structural*: no `$ref` or `$defs` (the API server answers `field not declared in schema`), one
//! `type` per node, no `additionalProperties` beside `properties`, and `anyOf`/`oneOf`/`allOf`
//! only for value checks. [`structural`] inlines every reference, turns nullable unions into
//! `nullable: true`, merges enum variants into one `enum` and object variants into one object, and
//! marks what is open (`serde_json::Value`, mixed unions, recursion) with
//! `x-kubernetes-preserve-unknown-fields`. [`check_structural`] states the rules it must meet.

use serde_json::{json, Map, Value};

/// Keys a CRD schema node may carry (apiextensions v1 `JSONSchemaProps`, minus the ones a CRD
/// refuses: `$ref`, `$schema`, `id`, `definitions`, `patternProperties`, `dependencies`,
/// `additionalItems`).
const ALLOWED_KEYS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "maxProperties",
    "minProperties",
    "multipleOf",
    "enum",
    "required",
    "items",
    "properties",
    "additionalProperties",
    "anyOf",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-embedded-resource",
];

/// Formats kept; others schemars writes (`uint32`, `uint`, …) are dropped.
const KEPT_FORMATS: &[&str] = &["int32", "int64", "float", "double", "date-time"];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// The structural form of schemars' `root` schema (see the module doc). `$defs` are resolved
/// within `root`.
pub fn structural(root: &Value) -> Value {
    let defs = root.get("$defs").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut stack = Vec::new();
    convert(root, &defs, &mut stack)
}

fn open() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    m
}

fn convert(node: &Value, defs: &Map<String, Value>, stack: &mut Vec<String>) -> Value {
    let Some(obj) = node.as_object() else {
        // `true` (any value) or `false`: open.
        return Value::Object(open());
    };
    let mut out = Map::new();
    if let Some(d) = obj.get("description") {
        out.insert("description".into(), d.clone());
    }

    if let Some(Value::String(r)) = obj.get("$ref") {
        let name = r.rsplit('/').next().unwrap_or(r).to_string();
        let target = match defs.get(&name) {
            Some(t) if !stack.contains(&name) => {
                stack.push(name.clone());
                let t = convert(t, defs, stack);
                stack.pop();
                t
            }
            // A recursive type (or a dangling reference): keep it open.
            _ => json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true }),
        };
        if let Value::Object(t) = target {
            for (k, v) in t {
                out.entry(k).or_insert(v);
            }
        }
        return finish(out);
    }

    if obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        out.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
        out.insert("anyOf".into(), json!([{ "type": "integer" }, { "type": "string" }]));
        return Value::Object(out);
    }

    let mut nullable = false;
    let mut variants: Vec<Value> = Vec::new();
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(vs)) = obj.get(key) {
            for v in vs {
                if v.get("type") == Some(&Value::String("null".into())) {
                    nullable = true;
                } else {
                    variants.push(convert(v, defs, stack));
                }
            }
        }
    }
    if let Some(Value::Array(vs)) = obj.get("allOf") {
        // allOf: every part holds; merge them.
        let parts: Vec<Value> = vs.iter().map(|v| convert(v, defs, stack)).collect();
        variants.push(merge_all(parts));
    }

    match obj.get("type") {
        Some(Value::String(t)) if t != "null" => {
            out.insert("type".into(), Value::String(t.clone()));
        }
        Some(Value::Array(ts)) => {
            let non_null: Vec<&Value> = ts.iter().filter(|t| t.as_str() != Some("null")).collect();
            nullable |= non_null.len() < ts.len();
            match non_null.as_slice() {
                [one] => {
                    out.insert("type".into(), (*one).clone());
                }
                _ => return finish_open(out),
            }
        }
        _ => {}
    }
    if let Some(c) = obj.get("const") {
        out.insert("enum".into(), json!([c]));
    }
    if let Some(Value::Array(e)) = obj.get("enum") {
        nullable |= e.iter().any(Value::is_null);
        let e: Vec<Value> = e.iter().filter(|v| !v.is_null()).cloned().collect();
        out.insert("enum".into(), Value::Array(e));
    }
    for k in [
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
    ] {
        if let Some(v) = obj.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(Value::String(f)) = obj.get("format") {
        if KEPT_FORMATS.contains(&f.as_str()) {
            out.insert("format".into(), Value::String(f.clone()));
        }
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        let props: Map<String, Value> =
            props.iter().map(|(k, v)| (k.clone(), convert(v, defs, stack))).collect();
        out.insert("properties".into(), Value::Object(props));
        if let Some(r) = obj.get("required") {
            out.insert("required".into(), r.clone());
        }
    }
    match obj.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(ap) if out.contains_key("properties") => {
            // Properties plus extra keys (a flattened map): keep the properties, let the rest in.
            let _ = ap;
            out.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
        }
        Some(Value::Bool(true)) => {
            out.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
        }
        Some(ap) => {
            out.insert("additionalProperties".into(), convert(ap, defs, stack));
        }
    }
    match obj.get("items") {
        Some(Value::Array(_)) => {
            out.insert("items".into(), Value::Object(open()));
        }
        Some(items) => {
            out.insert("items".into(), convert(items, defs, stack));
        }
        None if obj.contains_key("prefixItems") => {
            out.insert("items".into(), Value::Object(open()));
        }
        None => {}
    }

    if !variants.is_empty() {
        let merged = merge_variants(variants);
        match merged {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if k == "properties" {
                        let mine = out.entry("properties").or_insert_with(|| json!({}));
                        if let (Value::Object(mine), Value::Object(theirs)) = (mine, v) {
                            for (pk, pv) in theirs {
                                mine.entry(pk).or_insert(pv);
                            }
                        }
                    } else {
                        out.entry(k).or_insert(v);
                    }
                }
            }
            _ => return finish_open(out),
        }
    }
    if nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }
    finish(out)
}

/// Keeps `description` and marks the node open (no type).
fn finish_open(out: Map<String, Value>) -> Value {
    let mut m = open();
    if let Some(d) = out.get("description") {
        m.insert("description".into(), d.clone());
    }
    if out.get("nullable") == Some(&Value::Bool(true)) {
        m.insert("nullable".into(), Value::Bool(true));
    }
    Value::Object(m)
}

/// Infers a missing `type`; a node that says nothing about its values is open.
fn finish(mut out: Map<String, Value>) -> Value {
    let flagged = out.contains_key("x-kubernetes-preserve-unknown-fields")
        || out.contains_key("x-kubernetes-int-or-string");
    if !out.contains_key("type") && !flagged {
        let inferred = if out.contains_key("properties") || out.contains_key("additionalProperties") {
            Some("object")
        } else if out.contains_key("items") {
            Some("array")
        } else if let Some(Value::Array(e)) = out.get("enum") {
            enum_type(e)
        } else {
            None
        };
        match inferred {
            Some(t) => {
                out.insert("type".into(), Value::String(t.into()));
            }
            None => {
                out.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
            }
        }
    }
    // An object with properties and an open rest needs no additionalProperties.
    if out.contains_key("properties") {
        out.remove("additionalProperties");
    }
    Value::Object(out)
}

fn enum_type(values: &[Value]) -> Option<&'static str> {
    let t = |v: &Value| match v {
        Value::String(_) => Some("string"),
        Value::Bool(_) => Some("boolean"),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some("integer"),
        Value::Number(_) => Some("number"),
        _ => None,
    };
    let first = t(values.first()?)?;
    values.iter().all(|v| t(v) == Some(first)).then_some(first)
}

/// Merges `allOf` parts: properties and required lists are unioned.
fn merge_all(parts: Vec<Value>) -> Value {
    let mut out = Map::new();
    for p in parts {
        let Value::Object(p) = p else { continue };
        for (k, v) in p {
            match (k.as_str(), out.get_mut(&k), v) {
                ("properties", Some(Value::Object(mine)), Value::Object(theirs)) => {
                    for (pk, pv) in theirs {
                        mine.entry(pk).or_insert(pv);
                    }
                }
                ("required", Some(Value::Array(mine)), Value::Array(theirs)) => {
                    for r in theirs {
                        if !mine.contains(&r) {
                            mine.push(r);
                        }
                    }
                }
                (_, Some(_), _) => {}
                (_, None, v) => {
                    out.insert(k, v);
                }
            }
        }
    }
    finish(out)
}

/// One schema for the variants of a union, or None when they cannot share one (the caller then
/// leaves the node open): string enums merge into one enum, objects into one object whose
/// properties are all optional.
fn merge_variants(variants: Vec<Value>) -> Option<Value> {
    if variants.len() == 1 {
        return variants.into_iter().next();
    }
    let types: Vec<Option<&str>> = variants.iter().map(|v| v.get("type").and_then(Value::as_str)).collect();
    let first = types.first().copied().flatten()?;
    if types.iter().any(|t| *t != Some(first)) {
        return None;
    }
    match first {
        "string" | "integer" | "number" | "boolean" => {
            let mut values = Vec::new();
            for v in &variants {
                match v.get("enum") {
                    Some(Value::Array(e)) => values.extend(e.iter().cloned()),
                    // One variant takes any value of the type: no enum.
                    _ => return Some(json!({ "type": first })),
                }
            }
            Some(json!({ "type": first, "enum": values }))
        }
        "object" => {
            let mut props = Map::new();
            let mut open_rest = false;
            for v in variants {
                if let Some(Value::Object(p)) = v.get("properties") {
                    for (k, s) in p {
                        props.entry(k.clone()).or_insert_with(|| s.clone());
                    }
                }
                open_rest |= v.get("x-kubernetes-preserve-unknown-fields").is_some()
                    || v.get("additionalProperties").is_some();
            }
            let mut out = json!({ "type": "object", "properties": props });
            if open_rest {
                out["x-kubernetes-preserve-unknown-fields"] = Value::Bool(true);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Marks every object node of `node` (itself included) that lists its `properties`
/// `x-kubernetes-preserve-unknown-fields`, so the API server keeps fields it does not know
/// instead of pruning them as it decodes the request (before admission). The admission webhook
/// then sees them and refuses them by path, as the local node's strict loader does; the
/// properties stay, so the API server still checks the types of the known fields. Maps
/// (`additionalProperties`) take any key already and are only descended into.
pub fn keep_unknown_fields(node: &mut Value) {
    let Some(obj) = node.as_object_mut() else { return };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for v in props.values_mut() {
            keep_unknown_fields(v);
        }
        obj.insert("x-kubernetes-preserve-unknown-fields".into(), Value::Bool(true));
    }
    if let Some(v) = obj.get_mut("additionalProperties") {
        keep_unknown_fields(v);
    }
    if let Some(v) = obj.get_mut("items") {
        keep_unknown_fields(v);
    }
}

/// The rules of a structural schema a 1.20 API server enforces on a CRD, as problems with the path
/// of the node that breaks them (empty: structural).
pub fn check_structural(schema: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        problems.push("(root): type must be object".to_string());
    }
    check_node(schema, "", &mut problems);
    problems
}

fn check_node(node: &Value, path: &str, problems: &mut Vec<String>) {
    let at = if path.is_empty() { "(root)".to_string() } else { path.to_string() };
    let Some(obj) = node.as_object() else {
        problems.push(format!("{at}: a schema must be an object, found {node}"));
        return;
    };
    for k in obj.keys() {
        if !ALLOWED_KEYS.contains(&k.as_str()) {
            problems.push(format!("{at}.{k}: field not allowed in a CRD schema"));
        }
    }
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let open = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match obj.get("type") {
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {
            if t == "array" && !obj.contains_key("items") {
                problems.push(format!("{at}: an array needs items"));
            }
        }
        Some(t) => problems.push(format!("{at}.type: {t} is not one type name")),
        None if int_or_string || open => {}
        None => problems.push(format!("{at}.type: missing")),
    }
    if let Some(any) = obj.get("anyOf") {
        let expected = json!([{ "type": "integer" }, { "type": "string" }]);
        if !int_or_string || *any != expected {
            problems.push(format!("{at}.anyOf: only the int-or-string form is allowed"));
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{at}: properties and additionalProperties are exclusive"));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            check_node(v, &format!("{path}.properties.{k}"), problems);
        }
    }
    match obj.get("additionalProperties") {
        Some(Value::Object(_)) => {
            check_node(&obj["additionalProperties"], &format!("{path}.additionalProperties"), problems)
        }
        Some(v) => problems.push(format!("{at}.additionalProperties: must be a schema, found {v}")),
        None => {}
    }
    if let Some(items) = obj.get("items") {
        check_node(items, &format!("{path}.items"), problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_options_and_enums_become_structural() {
        let root = json!({
            "type": "object",
            "properties": {
                "a": { "anyOf": [{ "$ref": "#/$defs/A" }, { "type": "null" }] },
                "b": { "type": ["string", "null"] },
                "c": { "oneOf": [{ "type": "string", "const": "X" }, { "type": "string", "enum": ["Y"] }] },
                "d": true,
                "e": { "type": "object", "additionalProperties": { "type": "string" } },
                "f": { "$ref": "#/$defs/Rec" }
            },
            "$defs": {
                "A": { "type": "object", "properties": { "x": { "type": "integer", "format": "uint32" } },
                       "additionalProperties": false },
                "Rec": { "type": "object", "properties": { "next": { "$ref": "#/$defs/Rec" } } }
            }
        });
        let s = structural(&root);
        assert!(check_structural(&s).is_empty(), "{:?}", check_structural(&s));
        let p = &s["properties"];
        assert_eq!(p["a"]["nullable"], true);
        assert_eq!(p["a"]["properties"]["x"]["type"], "integer");
        assert!(p["a"]["properties"]["x"].get("format").is_none());
        assert_eq!(p["b"], json!({ "type": "string", "nullable": true }));
        assert_eq!(p["c"]["enum"], json!(["X", "Y"]));
        assert_eq!(p["d"]["x-kubernetes-preserve-unknown-fields"], true);
        assert_eq!(p["e"]["additionalProperties"]["type"], "string");
        assert_eq!(p["f"]["properties"]["next"]["x-kubernetes-preserve-unknown-fields"], true);
        assert!(!s.to_string().contains("$ref"));
    }

    #[test]
    fn kept_unknown_fields_mark_every_object_with_properties_and_stay_structural() {
        let root = json!({
            "type": "object",
            "properties": { "spec": { "type": "object", "properties": {
                "a": { "type": "object", "nullable": true, "properties": { "x": { "type": "string" } } },
                "l": { "type": "array", "items": { "type": "object", "properties": { "y": { "type": "integer" } } } },
                "m": { "type": "object", "additionalProperties": { "type": "object", "properties": { "z": { "type": "string" } } } },
                "s": { "type": "string" }
            } } }
        });
        let mut spec = root["properties"]["spec"].clone();
        keep_unknown_fields(&mut spec);
        let open = |v: &Value| v["x-kubernetes-preserve-unknown-fields"] == true;
        assert!(open(&spec) && open(&spec["properties"]["a"]), "{spec}");
        assert!(open(&spec["properties"]["l"]["items"]), "{spec}");
        assert!(open(&spec["properties"]["m"]["additionalProperties"]), "{spec}");
        // A map takes any key already; scalars and arrays are not objects.
        for k in ["m", "s", "l"] {
            assert!(spec["properties"][k].get("x-kubernetes-preserve-unknown-fields").is_none(), "{k}");
        }
        assert_eq!(spec["properties"]["a"]["properties"]["x"]["type"], "string", "types still checked");
        let mut whole = root.clone();
        whole["properties"]["spec"] = spec;
        assert!(check_structural(&whole).is_empty(), "{:?}", check_structural(&whole));
    }

    #[test]
    fn the_checker_names_what_a_1_20_server_refuses() {
        let bad = json!({
            "type": "object",
            "$defs": {},
            "properties": { "x": { "$ref": "#/$defs/X" }, "y": {}, "z": { "type": ["string", "null"] } }
        });
        let p = check_structural(&bad);
        assert!(p.iter().any(|p| p.contains("(root).$defs")), "{p:?}");
        assert!(p.iter().any(|p| p.contains(".properties.x.$ref")), "{p:?}");
        assert!(p.iter().any(|p| p.contains(".properties.y.type: missing")), "{p:?}");
        assert!(p.iter().any(|p| p.contains(".properties.z.type")), "{p:?}");
    }
}
