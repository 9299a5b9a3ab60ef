//! Label selectors as Kubernetes writes them in `?labelSelector=` and `kubectl -l`
//! (`app=web,tier!=db,env in (a,b),!legacy`), parsed into a `metav1.LabelSelector`, and matching of
//! a [`LabelSelector`] against an object's labels.

use std::collections::BTreeMap;

use super::meta::{LabelSelector, LabelSelectorRequirement};

/// Errors of [`parse_label_selector`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector text is not a label selector.
    #[error("unable to parse requirement {requirement:?} of label selector {selector:?}: {why}")]
    Invalid {
        /// The whole selector.
        selector: String,
        /// The requirement that is wrong.
        requirement: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Splits at commas outside parentheses.
fn requirements(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn requirement(key: &str, operator: &str, values: Vec<String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement { key: key.into(), operator: operator.into(), values }
}

/// Parses a label selector string; the empty string selects everything.
pub fn parse_label_selector(selector: &str) -> Result<LabelSelector, SelectorError> {
    let mut out = LabelSelector::default();
    if selector.trim().is_empty() {
        return Ok(out);
    }
    for raw in requirements(selector) {
        let r = raw.trim();
        let bad = |why| SelectorError::Invalid { selector: selector.into(), requirement: r.into(), why };
        let req = if let Some(key) = r.strip_prefix('!') {
            requirement(key.trim(), "DoesNotExist", Vec::new())
        } else if let Some((key, value)) = r.split_once("!=") {
            requirement(key.trim(), "NotIn", vec![value.trim().to_string()])
        } else if let Some((key, value)) = r.split_once("==").or_else(|| r.split_once('=')) {
            requirement(key.trim(), "In", vec![value.trim().to_string()])
        } else if let Some(open) = r.find('(') {
            let head: Vec<&str> = r[..open].split_whitespace().collect();
            let operator = match head.as_slice() {
                [_, "in"] => "In",
                [_, "notin"] => "NotIn",
                _ => return Err(bad("expected `key in (values)` or `key notin (values)`")),
            };
            let Some(list) = r[open + 1..].strip_suffix(')') else {
                return Err(bad("the value list does not end with `)`"));
            };
            let values: Vec<String> = list.split(',').map(|v| v.trim().to_string()).collect();
            requirement(head[0], operator, values)
        } else {
            requirement(r, "Exists", Vec::new())
        };
        if !valid_key(&req.key) {
            return Err(bad("the key is not a label name"));
        }
        if !req.values.iter().all(|v| valid_value(v)) {
            return Err(bad("a value is not a label value"));
        }
        out.match_expressions.push(req);
    }
    Ok(out)
}

impl LabelSelector {
    /// Whether `labels` satisfy every requirement (an empty selector matches everything; an
    /// unknown operator matches nothing).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let have = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => have.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }

    /// [`LabelSelector::matches`] on an object's JSON (`metadata.labels`).
    pub fn matches_object(&self, object: &serde_json::Value) -> bool {
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(|l| l.as_object())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        self.matches(&labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kubernetes_selector_syntax() {
        let web = labels(&[("app", "web"), ("tier", "front"), ("env", "prod")]);
        let db = labels(&[("app", "db"), ("legacy", "yes")]);
        let cases = [
            ("", true, true),
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app", true, true),
            ("!legacy", true, false),
            ("env in (prod, staging)", true, false),
            ("env notin (prod)", false, true),
            ("app in (web,db),!legacy", true, false),
            ("tier,app=web", true, false),
            ("kubevirt.io/domain", false, false),
        ];
        for (s, w, d) in cases {
            let sel = parse_label_selector(s).unwrap();
            assert_eq!((sel.matches(&web), sel.matches(&db)), (w, d), "{s}");
        }
    }

    #[test]
    fn bad_selectors_name_the_requirement() {
        for s in ["app=web,env in prod", "a b", "app=we b", "env in (prod"] {
            let e = parse_label_selector(s).unwrap_err().to_string();
            assert!(e.contains("unable to parse requirement"), "{s}: {e}");
        }
    }

    #[test]
    fn match_labels_and_objects() {
        let sel = LabelSelector { match_labels: labels(&[("app", "web")]), match_expressions: Vec::new() };
        assert!(sel.matches_object(&serde_json::json!({ "metadata": { "labels": { "app": "web" } } })));
        assert!(!sel.matches_object(&serde_json::json!({ "metadata": {} })));
    }
}
