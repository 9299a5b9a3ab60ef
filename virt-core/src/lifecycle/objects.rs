//! Namespaces, instancetypes and preferences: the objects VMs live in and resolve against, and the
//! server-side metadata of new objects.

use super::*;
use crate::api::StatusCause;

impl Lifecycle {
    pub(super) fn require_namespace(st: &State, ns: &str) -> Result<(), LifecycleError> {
        if st.namespaces.contains_key(ns) {
            Ok(())
        } else {
            Err(LifecycleError::NotFound { resource: Kind::Namespace.resource(), name: ns.into() })
        }
    }
}

/// The catalog VMs resolve against: the embedder's plus the stored objects.
pub(super) fn build_catalog(base: &Catalog, objects: &BTreeMap<Key, serde_json::Value>) -> Catalog {
    let mut c = base.clone();
    for (k, v) in objects {
        match model::load_json(&v.to_string()) {
            Ok(loaded) => {
                c.add(&loaded.object);
            }
            Err(e) => log::error!("state store: instancetype {k} unreadable, skipped: {e}"),
        }
    }
    c
}

pub(super) fn namespace_object(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name },
        "status": { "phase": "Active" }
    })
}

/// A DNS-1123 label (what Kubernetes allows as a namespace or VM name).
pub(super) fn check_name(name: &str, path: &str) -> Result<(), LifecycleError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StatusCause::invalid_value(
            path,
            format!("{name:?}"),
            "a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 63)",
        )
        .into())
    }
}

/// Fills server-side metadata (`ObjectMeta::fill_new`) and checks the name's form; returns the
/// name.
pub(super) fn prepare_meta(meta: &mut ObjectMeta, namespace: &str) -> Result<String, LifecycleError> {
    let name = meta.fill_new(namespace)?;
    check_name(&name, "metadata.name")?;
    Ok(name)
}

impl Namespaces<'_> {
    /// Every namespace, as `Namespace` objects.
    pub fn list(&self) -> Vec<serde_json::Value> {
        lock(&self.lc.state).namespaces.values().cloned().collect()
    }

    /// Whether namespace `ns` exists.
    pub fn exists(&self, ns: &str) -> bool {
        lock(&self.lc.state).namespaces.contains_key(ns)
    }

    /// Creates namespace `name`.
    pub fn create(&self, name: &str) -> Result<serde_json::Value, LifecycleError> {
        self.create_with_labels(name, BTreeMap::new())
    }

    /// Creates namespace `name` with `labels` (which MigrationPolicies' `namespaceSelector`s
    /// match).
    pub fn create_with_labels(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<serde_json::Value, LifecycleError> {
        check_name(name, "metadata.name")?;
        let mut st = lock(&self.lc.state);
        if st.namespaces.contains_key(name) {
            return Err(LifecycleError::AlreadyExists {
                resource: Kind::Namespace.resource(),
                name: name.into(),
            });
        }
        let mut obj = namespace_object(name);
        if !labels.is_empty() {
            obj["metadata"]["labels"] = to_value(&labels);
        }
        obj["metadata"]["uid"] = new_uid().into();
        obj["metadata"]["creationTimestamp"] = now().as_str().into();
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::Namespace,
            key: Key::new("", name),
            value: obj.clone(),
        })?;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        st.namespaces.insert(name.into(), obj.clone());
        Ok(obj)
    }

    /// Deletes an empty namespace (the built-in ones stay).
    pub fn delete(&self, name: &str) -> Result<(), LifecycleError> {
        let mut st = lock(&self.lc.state);
        if !st.namespaces.contains_key(name) {
            return Err(LifecycleError::NotFound { resource: Kind::Namespace.resource(), name: name.into() });
        }
        if BUILTIN_NAMESPACES.contains(&name) {
            return Err(LifecycleError::Conflict(format!(
                "namespace \"{name}\" is built in and cannot be deleted"
            )));
        }
        if st.vms.keys().chain(st.vmis.keys()).any(|k| k.namespace == name) {
            return Err(LifecycleError::Conflict(format!(
                "namespace \"{name}\" still holds VirtualMachines or VirtualMachineInstances; delete them first"
            )));
        }
        self.lc.store.delete(Kind::Namespace, &Key::new("", name))?;
        st.namespaces.remove(name);
        Ok(())
    }
}

impl CatalogObjects<'_> {
    /// Creates (or, with `replace`, replaces) an instancetype or preference; `namespace` is the
    /// request's namespace for the namespaced kinds, `None` for the cluster-wide ones. VMs started
    /// afterwards resolve against it.
    pub fn put(
        &self,
        namespace: Option<&str>,
        object: model::KubeVirtObject,
        replace: bool,
    ) -> Result<serde_json::Value, LifecycleError> {
        let kind = object.kind().to_string();
        let Some(&(_, _, namespaced)) = CATALOG_KINDS.iter().find(|(k, _, _)| *k == kind) else {
            return Err(
                StatusCause::invalid_value("kind", &kind, "not an instancetype or a preference").into()
            );
        };
        object.admit(&self.lc.opts.support)?;
        let mut value = object.to_json_value().map_err(|e| StatusCause::general(e.to_string()))?;
        let ns = match (namespaced, namespace) {
            (true, Some(ns)) => ns.to_string(),
            (true, None) => {
                return Err(
                    StatusCause::required("metadata.namespace", &format!("{kind} is namespaced")).into()
                )
            }
            (false, _) => String::new(),
        };
        let mut meta: ObjectMeta = serde_json::from_value(value["metadata"].take()).unwrap_or_default();
        let expected_rv = meta.resource_version.take();
        let name = if namespaced {
            prepare_meta(&mut meta, &ns)?
        } else {
            if meta.namespace.is_some() {
                return Err(StatusCause::forbidden(
                    "metadata.namespace",
                    &format!("{kind} is cluster-scoped"),
                )
                .into());
            }
            let name = prepare_meta(&mut meta, "")?;
            meta.namespace = None;
            name
        };
        let key = Key::new(&ns, format!("{kind}/{name}"));
        let mut st = lock(&self.lc.state);
        if namespaced {
            Lifecycle::require_namespace(&st, &ns)?;
        }
        let existing = st.catalog_objects.get(&key).cloned();
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(LifecycleError::AlreadyExists { resource: Kind::Instancetype.resource(), name })
            }
            (None, true) => {
                return Err(LifecycleError::NotFound { resource: Kind::Instancetype.resource(), name })
            }
            (Some(old), true) => {
                let cur = old.pointer("/metadata/resourceVersion").and_then(|v| v.as_str());
                if expected_rv.as_deref().is_some_and(|rv| Some(rv) != cur) {
                    return Err(LifecycleError::Conflict(format!(
                        "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified"
                    )));
                }
                // Keep identity across a replace.
                meta.uid = old.pointer("/metadata/uid").and_then(|v| v.as_str()).map(str::to_string);
                meta.creation_timestamp = old
                    .pointer("/metadata/creationTimestamp")
                    .and_then(|v| v.as_str())
                    .and_then(|t| Timestamp::parse(t).ok());
            }
            (None, false) => {}
        }
        value["metadata"] = to_value(&meta);
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::Instancetype,
            key: key.clone(),
            value: value.clone(),
        })?;
        value["metadata"]["resourceVersion"] = rv.to_string().into();
        st.catalog_objects.insert(key, value.clone());
        st.catalog = build_catalog(&self.lc.opts.catalog, &st.catalog_objects);
        Ok(value)
    }

    /// The instancetypes or preferences of `kind` in `namespace` (`None`: all, or the cluster-wide
    /// ones).
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<serde_json::Value> {
        let prefix = format!("{kind}/");
        lock(&self.lc.state)
            .catalog_objects
            .iter()
            .filter(|(k, _)| k.name.starts_with(&prefix) && namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One instancetype or preference.
    pub fn get(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, LifecycleError> {
        let key = Key::new(namespace.unwrap_or(""), format!("{kind}/{name}"));
        lock(&self.lc.state).catalog_objects.get(&key).cloned().ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::Instancetype.resource(),
            name: name.into(),
        })
    }

    /// Deletes an instancetype or preference (VMs already running keep what they resolved).
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<(), LifecycleError> {
        let key = Key::new(namespace.unwrap_or(""), format!("{kind}/{name}"));
        let mut st = lock(&self.lc.state);
        if !st.catalog_objects.contains_key(&key) {
            return Err(LifecycleError::NotFound {
                resource: Kind::Instancetype.resource(),
                name: name.into(),
            });
        }
        self.lc.store.delete(Kind::Instancetype, &key)?;
        st.catalog_objects.remove(&key);
        st.catalog = build_catalog(&self.lc.opts.catalog, &st.catalog_objects);
        Ok(())
    }
}
