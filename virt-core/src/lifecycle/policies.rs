//! KubeVirt's `MigrationPolicy` (`migrations.kubevirt.io/v1alpha1`, cluster-scoped) on one node:
//! the requests (create, replace, get, list, delete) and how a migration picks its policy when it
//! starts, as KubeVirt's migration controller does (docs/migration.md).
//!
//! A policy matches a VMI when every label of its `namespaceSelector` is on the VMI's namespace
//! and every label of its `virtualMachineInstanceSelector` is on the VMI (a policy without
//! selectors matches every VMI, with no label). Among the policies that match, the one matching
//! the most labels wins; a tie goes to the name that sorts first. A namespace carries the label
//! `kubernetes.io/metadata.name: <name>`, as Kubernetes sets it on every namespace.

use super::*;
use crate::api::StatusCause;
use crate::model::{MigrationPolicy, MigrationPolicySpec};

/// The label Kubernetes puts on every namespace, with the namespace's name as its value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How many labels `policy` matches on a VMI with `vmi_labels` in a namespace with
/// `namespace_labels`; `None` when one of its selector labels is missing or different.
pub fn matching_labels(
    policy: &MigrationPolicySpec,
    vmi_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<usize> {
    let count = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)).then_some(selector.len())
    };
    let s = &policy.selectors;
    Some(
        count(&s.virtual_machine_instance_selector, vmi_labels)?
            + count(&s.namespace_selector, namespace_labels)?,
    )
}

/// The policy a VMI with `vmi_labels` in a namespace with `namespace_labels` migrates with: of
/// those that match, the one matching the most labels, a tie going to the first name; `None`
/// when none matches (the node's own settings apply).
pub fn select_policy<'a>(
    policies: impl IntoIterator<Item = &'a MigrationPolicy>,
    vmi_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<&'a MigrationPolicy> {
    let name = |p: &MigrationPolicy| p.metadata.name.clone().unwrap_or_default();
    let mut best: Option<(usize, &MigrationPolicy)> = None;
    for p in policies {
        let Some(n) = matching_labels(&p.spec, vmi_labels, namespace_labels) else { continue };
        let better = match best {
            None => true,
            Some((m, b)) => n > m || (n == m && name(p) < name(b)),
        };
        if better {
            best = Some((n, p));
        }
    }
    best.map(|(_, p)| p)
}

/// A policy's name (`status.migrationState.migrationPolicyName` of the VMIs it applies to).
pub(super) fn policy_name(p: &MigrationPolicy) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

impl MigrationPolicies<'_> {
    /// Creates (or, with `replace`, replaces) a MigrationPolicy; migrations started afterwards
    /// match against it.
    pub fn put(&self, mut policy: MigrationPolicy, replace: bool) -> Result<MigrationPolicy, LifecycleError> {
        policy.admit(&self.lc.opts.support)?;
        if policy.metadata.namespace.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err(
                StatusCause::forbidden("metadata.namespace", "MigrationPolicy is cluster-scoped").into()
            );
        }
        let expected_rv = policy.metadata.resource_version.take();
        let name = prepare_meta(&mut policy.metadata, "")?;
        policy.metadata.namespace = None;
        policy.status = None;
        let resource = Kind::MigrationPolicy.resource();
        let mut st = lock(&self.lc.state);
        match (st.migration_policies.get(&name), replace) {
            (Some(_), false) => return Err(LifecycleError::AlreadyExists { resource, name }),
            (None, true) => return Err(LifecycleError::NotFound { resource, name }),
            (Some(old), true) => {
                if expected_rv.as_ref().is_some_and(|rv| Some(rv) != old.metadata.resource_version.as_ref()) {
                    return Err(LifecycleError::Conflict(format!(
                        "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified"
                    )));
                }
                // Keep identity across a replace.
                policy.metadata.uid = old.metadata.uid.clone();
                policy.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
            }
            (None, false) => {}
        }
        let key = Key::new("", &name);
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::MigrationPolicy,
            key,
            value: to_value(&policy),
        })?;
        policy.metadata.resource_version = Some(rv.to_string());
        st.migration_policies.insert(name, policy.clone());
        Ok(policy)
    }

    /// One MigrationPolicy.
    pub fn get(&self, name: &str) -> Result<MigrationPolicy, LifecycleError> {
        lock(&self.lc.state).migration_policies.get(name).cloned().ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::MigrationPolicy.resource(),
            name: name.into(),
        })
    }

    /// Every MigrationPolicy, by name.
    pub fn list(&self) -> Vec<MigrationPolicy> {
        lock(&self.lc.state).migration_policies.values().cloned().collect()
    }

    /// Deletes a MigrationPolicy (a migration under way keeps the settings it started with).
    pub fn delete(&self, name: &str) -> Result<(), LifecycleError> {
        let mut st = lock(&self.lc.state);
        if !st.migration_policies.contains_key(name) {
            return Err(LifecycleError::NotFound {
                resource: Kind::MigrationPolicy.resource(),
                name: name.into(),
            });
        }
        self.lc.store.delete(Kind::MigrationPolicy, &Key::new("", name))?;
        st.migration_policies.remove(name);
        Ok(())
    }
}

impl MigrationController<'_> {
    /// The policy `vmi` migrates with now, if one matches it.
    pub(super) fn policy_for_locked(st: &State, vmi: &VirtualMachineInstance) -> Option<MigrationPolicy> {
        let ns = vmi.metadata.namespace.clone().unwrap_or_default();
        let mut ns_labels: BTreeMap<String, String> = st
            .namespaces
            .get(&ns)
            .and_then(|n| n.pointer("/metadata/labels"))
            .and_then(|l| serde_json::from_value(l.clone()).ok())
            .unwrap_or_default();
        ns_labels.insert(NAMESPACE_NAME_LABEL.into(), ns);
        select_policy(st.migration_policies.values(), &vmi.metadata.labels, &ns_labels).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MigrationPolicySelectors;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn policy(name: &str, vmi: &[(&str, &str)], ns: &[(&str, &str)]) -> MigrationPolicy {
        MigrationPolicy {
            api_version: model::MIGRATIONS_API_VERSION.into(),
            kind: "MigrationPolicy".into(),
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: MigrationPolicySpec {
                selectors: MigrationPolicySelectors {
                    namespace_selector: labels(ns),
                    virtual_machine_instance_selector: labels(vmi),
                },
                ..Default::default()
            },
            status: None,
        }
    }

    fn chosen(policies: &[MigrationPolicy], vmi: &[(&str, &str)], ns: &[(&str, &str)]) -> Option<String> {
        select_policy(policies, &labels(vmi), &labels(ns)).map(policy_name)
    }

    #[test]
    fn the_policy_matching_the_most_labels_wins() {
        let ps = [
            policy("one", &[("tier", "db")], &[]),
            policy("two", &[("tier", "db"), ("size", "big")], &[]),
            policy("three", &[("tier", "db"), ("size", "big"), ("zone", "a")], &[]),
        ];
        // "three" wants a label the VMI lacks: it does not match at all.
        let vmi = [("tier", "db"), ("size", "big"), ("other", "x")];
        assert_eq!(chosen(&ps, &vmi, &[]).as_deref(), Some("two"));
        assert_eq!(chosen(&ps, &[("tier", "db")], &[]).as_deref(), Some("one"));
        assert_eq!(chosen(&ps, &[("tier", "web")], &[]), None, "a different value does not match");
    }

    #[test]
    fn a_tie_goes_to_the_first_name() {
        let ps = [policy("zeta", &[("a", "1")], &[]), policy("alpha", &[("b", "2")], &[])];
        assert_eq!(chosen(&ps, &[("a", "1"), ("b", "2")], &[]).as_deref(), Some("alpha"));
        let reversed = [ps[1].clone(), ps[0].clone()];
        assert_eq!(chosen(&reversed, &[("a", "1"), ("b", "2")], &[]).as_deref(), Some("alpha"));
    }

    #[test]
    fn namespace_labels_count_and_must_all_be_there() {
        let ps = [
            policy("by-vmi", &[("app", "x")], &[]),
            policy("by-both", &[("app", "x")], &[("team", "red")]),
            policy("by-ns", &[], &[("team", "red"), ("env", "prod")]),
        ];
        // Both namespace labels and the VMI's: by-ns matches 2, by-both 2, by-vmi 1; tie by name.
        let ns = [("team", "red"), ("env", "prod")];
        assert_eq!(chosen(&ps, &[("app", "x")], &ns).as_deref(), Some("by-both"));
        // Without env, by-ns does not match; the VMI's label alone is not enough for by-both
        // without the namespace's.
        assert_eq!(chosen(&ps, &[("app", "x")], &[("team", "red")]).as_deref(), Some("by-both"));
        assert_eq!(chosen(&ps, &[("app", "x")], &[("team", "blue")]).as_deref(), Some("by-vmi"));
        // The VMI's labels are not looked for on the namespace.
        assert_eq!(chosen(&ps, &[("team", "red"), ("env", "prod")], &[]), None);
    }

    #[test]
    fn no_policy_or_no_match_leaves_the_node_settings() {
        assert_eq!(chosen(&[], &[("app", "x")], &[]), None);
        let ps = [policy("p", &[("app", "y")], &[])];
        assert_eq!(chosen(&ps, &[("app", "x")], &[]), None);
        // A policy without selectors matches every VMI, with no label: any other match wins.
        let ps = [policy("catch-all", &[], &[]), policy("zz-app", &[("app", "x")], &[])];
        assert_eq!(chosen(&ps, &[("app", "x")], &[]).as_deref(), Some("zz-app"));
        assert_eq!(chosen(&ps, &[], &[]).as_deref(), Some("catch-all"));
    }
}
