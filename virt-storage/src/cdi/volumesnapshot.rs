//! `VolumeSnapshot` (`snapshot.storage.k8s.io/v1`), the part the node uses: a point-in-time copy
//! of a claim (`spec.source.persistentVolumeClaimName`), ready once `status.readyToUse` is true,
//! restored by DataVolumes with `spec.source.snapshot`. Read strictly like CDI's kinds (unknown
//! fields are errors naming their path); `spec.volumeSnapshotClassName` is accepted and ignored
//! (the node has one pool).

use serde::{Deserialize, Serialize};
use virt_core::api::{is_dns1123_label, ObjectMeta, Quantity, Timestamp};

/// `apiVersion` of VolumeSnapshots.
pub const SNAPSHOT_API_VERSION: &str = "snapshot.storage.k8s.io/v1";

/// A VolumeSnapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    /// `snapshot.storage.k8s.io/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `VolumeSnapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// What to snapshot.
    pub spec: VolumeSnapshotSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}

/// `VolumeSnapshotSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// The claim to snapshot.
    pub source: VolumeSnapshotSource,
    /// Accepted and ignored: the node's pool takes every snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// `VolumeSnapshotSource` (only dynamic snapshots of a claim).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    /// The claim (DataVolume) in the snapshot's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
}

/// `VolumeSnapshotStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// Whether the snapshot can be restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The smallest size a volume restored from it may have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// When the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Timestamp>,
    /// Why the snapshot is not (yet) taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// `VolumeSnapshotError`: the last error taking the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

/// A VolumeSnapshot the node cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeSnapshotInvalid {
    /// One or more fields are wrong; each problem starts with its field path.
    #[error("VolumeSnapshot {name:?} is invalid: {}", problems.join("; "))]
    Fields {
        /// `metadata.name` (empty if missing).
        name: String,
        /// `path: problem` for each.
        problems: Vec<String>,
    },
}

impl VolumeSnapshot {
    /// Whether `status.readyToUse` is true.
    pub fn ready(&self) -> bool {
        self.status.as_ref().and_then(|s| s.ready_to_use) == Some(true)
    }

    /// The claim it snapshots.
    pub fn claim(&self) -> Option<&str> {
        self.spec.source.persistent_volume_claim_name.as_deref()
    }

    /// Checks what the node needs: the kind, a DNS-1123 label as name (it names the snapshot
    /// file) and a claim that is one too.
    pub fn check(&self) -> Result<(), VolumeSnapshotInvalid> {
        let mut problems = Vec::new();
        if let Some(v) = self.api_version.as_deref().filter(|v| *v != SNAPSHOT_API_VERSION) {
            problems
                .push(format!("apiVersion: Unsupported value: {v:?}: supported: {SNAPSHOT_API_VERSION:?}"));
        }
        if let Some(k) = self.kind.as_deref().filter(|k| *k != "VolumeSnapshot") {
            problems.push(format!("kind: Unsupported value: {k:?}: supported: \"VolumeSnapshot\""));
        }
        let label =
            "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
        match self.metadata.name.as_deref() {
            Some(n) if !is_dns1123_label(n) => {
                problems.push(format!("metadata.name: Invalid value: {n:?}: {label} (it names the snapshot)"))
            }
            _ => {}
        }
        match self.claim() {
            None => problems.push("spec.source.persistentVolumeClaimName: Required value".into()),
            Some(c) if !is_dns1123_label(c) => {
                problems.push(format!("spec.source.persistentVolumeClaimName: Invalid value: {c:?}: {label}"))
            }
            Some(_) => {}
        }
        if problems.is_empty() {
            Ok(())
        } else {
            let name = self.metadata.name.clone().unwrap_or_default();
            Err(VolumeSnapshotInvalid::Fields { name, problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_loading_and_checks() {
        let text = r#"{"apiVersion":"snapshot.storage.k8s.io/v1","kind":"VolumeSnapshot",
            "metadata":{"name":"snap"},"spec":{"volumeSnapshotClassName":"csi",
            "source":{"persistentVolumeClaimName":"disk"}}}"#;
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let opts = virt_core::api::LoadOptions::default();
        let s: VolumeSnapshot = virt_core::api::Decoder::new(&opts, 1).decode(v, "").unwrap();
        assert_eq!(s.claim(), Some("disk"));
        assert!(!s.ready());
        s.check().unwrap();
        let typo = text.replace("persistentVolumeClaimName", "persistentVolumeClaim");
        let v: serde_json::Value = serde_json::from_str(&typo).unwrap();
        let e = virt_core::api::Decoder::new(&opts, 1).decode::<VolumeSnapshot>(v, "").unwrap_err();
        assert!(e.to_string().contains("spec.source.persistentVolumeClaim: unknown field"), "{e}");
        let mut bad = s.clone();
        bad.metadata.name = Some("Bad.Name".into());
        bad.spec.source.persistent_volume_claim_name = None;
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("metadata.name: Invalid value: \"Bad.Name\""), "{e}");
        assert!(e.contains("spec.source.persistentVolumeClaimName: Required value"), "{e}");
    }
}
