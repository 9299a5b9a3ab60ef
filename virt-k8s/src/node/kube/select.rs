//! List filters: label selectors (`app=web,tier!=db,env in (a,b),!legacy`) and field selectors
//! (`metadata.name=x`, `metadata.namespace!=y`), as Kubernetes parses them.

use serde_json::Value;

/// A selector that could not be parsed, or a field the node cannot select on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The label selector is malformed.
    #[error("unable to parse requirement {requirement:?} of label selector {selector:?}: {reason}")]
    Label {
        /// The whole selector.
        selector: String,
        /// The requirement that failed.
        requirement: String,
        /// Why.
        reason: &'static str,
    },
    /// A field selector names a field other than `metadata.name` and `metadata.namespace`.
    #[error("field label not supported: {0}")]
    Field(String),
    /// A field selector term is not `field=value` or `field!=value`.
    #[error("invalid field selector {0:?}: expected field=value or field!=value")]
    FieldSyntax(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, Op)>,
    fields: Vec<(String, Op)>,
}

/// Splits at commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

fn values(list: &str) -> Option<Vec<String>> {
    let inner = list.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
}

fn label_term(selector: &str, t: &str) -> Result<(String, Op), SelectorError> {
    let bad = |reason| SelectorError::Label { selector: selector.into(), requirement: t.into(), reason };
    let valid = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let (key, op) = if let Some(k) = t.strip_prefix('!') {
        (k.trim(), Op::NotExists)
    } else if let Some((k, v)) = t.split_once("!=") {
        (k.trim(), Op::Ne(v.trim().into()))
    } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
        (k.trim(), Op::Eq(v.trim().into()))
    } else if let Some((k, v)) = t.split_once(" notin ") {
        (k.trim(), Op::NotIn(values(v).ok_or_else(|| bad("expected a (value, ...) list after notin"))?))
    } else if let Some((k, v)) = t.split_once(" in ") {
        (k.trim(), Op::In(values(v).ok_or_else(|| bad("expected a (value, ...) list after in"))?))
    } else {
        (t, Op::Exists)
    };
    if !valid(key) {
        return Err(bad("the key is not a label name"));
    }
    Ok((key.to_string(), op))
}

impl Selector {
    /// Parses `labelSelector` and `fieldSelector` query values.
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Self, SelectorError> {
        let mut sel = Self::default();
        if let Some(l) = label {
            for t in terms(l) {
                sel.labels.push(label_term(l, t)?);
            }
        }
        if let Some(f) = field {
            for t in terms(f) {
                let (k, op) = if let Some((k, v)) = t.split_once("!=") {
                    (k, Op::Ne(v.into()))
                } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                    (k, Op::Eq(v.into()))
                } else {
                    return Err(SelectorError::FieldSyntax(t.into()));
                };
                if !matches!(k, "metadata.name" | "metadata.namespace") {
                    return Err(SelectorError::Field(k.into()));
                }
                sel.fields.push((k.to_string(), op));
            }
        }
        Ok(sel)
    }

    /// Whether the selector is empty (selects everything).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let label =
            |k: &str| object.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str);
        let field = |k: &str| match k {
            "metadata.name" => object.pointer("/metadata/name").and_then(Value::as_str),
            _ => object.pointer("/metadata/namespace").and_then(Value::as_str),
        };
        let holds = |got: Option<&str>, op: &Op| match op {
            Op::Eq(v) => got == Some(v.as_str()),
            Op::Ne(v) => got != Some(v.as_str()),
            Op::In(vs) => got.is_some_and(|g| vs.iter().any(|v| v == g)),
            Op::NotIn(vs) => got.is_none_or(|g| !vs.iter().any(|v| v == g)),
            Op::Exists => got.is_some(),
            Op::NotExists => got.is_none(),
        };
        self.labels.iter().all(|(k, op)| holds(label(k), op))
            && self.fields.iter().all(|(k, op)| holds(field(k).or(Some("")), op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, labels: Value) -> Value {
        json!({ "metadata": { "name": name, "namespace": "default", "labels": labels } })
    }

    #[test]
    fn label_selectors_select_as_kubernetes_does() {
        let a = obj("a", json!({ "app": "web", "tier": "front" }));
        let b = obj("b", json!({ "app": "db" }));
        let sel = |s: &str| Selector::parse(Some(s), None).unwrap();
        assert!(sel("app=web").matches(&a) && !sel("app=web").matches(&b));
        assert!(sel("app!=web").matches(&b) && !sel("app!=web").matches(&a));
        assert!(sel("app in (web, db)").matches(&a) && sel("app in (web,db)").matches(&b));
        assert!(sel("app notin (web),!tier").matches(&b) && !sel("tier").matches(&b));
        assert!(sel("app==web,tier").matches(&a));
        assert!(Selector::parse(Some("app in web"), None).is_err());
    }

    #[test]
    fn field_selectors_take_name_and_namespace() {
        let a = obj("a", json!({}));
        let s = Selector::parse(None, Some("metadata.name=a,metadata.namespace!=other")).unwrap();
        assert!(s.matches(&a) && !s.matches(&obj("b", json!({}))));
        assert_eq!(
            Selector::parse(None, Some("spec.running=true")),
            Err(SelectorError::Field("spec.running".into()))
        );
    }
}
