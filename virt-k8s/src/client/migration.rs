//! `virtctl migrate` and `migrate-cancel` as KubeVirt's virtctl does them: a
//! `VirtualMachineInstanceMigration` named `kubevirt-migrate-vm-<random>` is created for the VMI;
//! a cancel deletes the VMI's migration that has not finished (docs/migration.md).

use hyper::Method;
use serde_json::{json, Value};

use super::{AsyncNodeClient, ClientError, Kind, NodeClient};

/// The label the node puts on a migration naming its VMI (KubeVirt's).
pub const VMI_NAME_LABEL: &str = "kubevirt.io/vmi-name";

/// The phase of a migration object (`Pending` when it has none yet).
pub fn migration_phase(m: &Value) -> &str {
    m.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

/// Whether a migration ended (`Succeeded` or `Failed`).
pub fn migration_finished(m: &Value) -> bool {
    matches!(migration_phase(m), "Succeeded" | "Failed")
}

impl AsyncNodeClient {
    /// Creates a migration of VMI `name`; returns the object the node stored (its `metadata.name`
    /// is the generated name).
    pub async fn migrate(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let object = json!({
            "apiVersion": Kind::Migration.api_version(),
            "kind": Kind::Migration.name(),
            "metadata": { "generateName": "kubevirt-migrate-vm-", "namespace": namespace },
            "spec": { "vmiName": name },
        });
        self.create(&object, namespace).await
    }

    /// One migration, as JSON.
    pub async fn get_migration(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.get_json(&Kind::Migration.object_path(namespace, name), None).await
    }

    /// The migrations of VMI `vmi` in `namespace`.
    pub async fn migrations_of(&self, namespace: &str, vmi: &str) -> Result<Vec<Value>, ClientError> {
        let all: Vec<Value> = self.list(&Kind::Migration.collection_path(Some(namespace)), None).await?;
        Ok(all
            .into_iter()
            .filter(|m| m.pointer("/spec/vmiName").and_then(Value::as_str) == Some(vmi))
            .collect())
    }

    /// Cancels the unfinished migration of VMI `vmi` by deleting it; returns its name.
    /// `NotFound` when there is none, as KubeVirt's virtctl says.
    pub async fn migrate_cancel(&self, namespace: &str, vmi: &str) -> Result<String, ClientError> {
        let active = self.migrations_of(namespace, vmi).await?.into_iter().find(|m| !migration_finished(m));
        let Some(name) = active.as_ref().and_then(|m| m.pointer("/metadata/name")).and_then(Value::as_str)
        else {
            return Err(ClientError::Object {
                object: format!("VirtualMachineInstance {namespace}/{vmi}"),
                reason: format!("Found no migration to cancel for {vmi}"),
            });
        };
        let path = Kind::Migration.object_path(namespace, name);
        self.send(Method::DELETE, &path, None).await?;
        Ok(name.to_string())
    }
}

impl NodeClient {
    /// See [`AsyncNodeClient::migrate`].
    pub fn migrate(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.block(self.inner.migrate(namespace, name))
    }

    /// See [`AsyncNodeClient::get_migration`].
    pub fn get_migration(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        self.block(self.inner.get_migration(namespace, name))
    }

    /// See [`AsyncNodeClient::migrations_of`].
    pub fn migrations_of(&self, namespace: &str, vmi: &str) -> Result<Vec<Value>, ClientError> {
        self.block(self.inner.migrations_of(namespace, vmi))
    }

    /// See [`AsyncNodeClient::migrate_cancel`].
    pub fn migrate_cancel(&self, namespace: &str, vmi: &str) -> Result<String, ClientError> {
        self.block(self.inner.migrate_cancel(namespace, vmi))
    }
}
