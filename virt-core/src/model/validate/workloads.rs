//! [`Validate`] and [`Admit`] of the workload kinds: VMIs, VMs, replica sets, pools, snapshots,
//! clones, migration policies and migrations.

use crate::api::{
    check_name, check_type_meta, describe_meta, validate_meta, NameRule, ProblemKind, Validate, Validation,
};

use crate::model::node::{vm_spec_node_problems, vmi_spec_node_problems, Admit, NodeSupport};
use crate::model::vm::VirtualMachine;
use crate::model::vmi::VirtualMachineInstance;
use crate::model::workloads::{
    MigrationPolicy, VirtualMachineClone, VirtualMachineInstanceMigration, VirtualMachineInstanceReplicaSet,
    VirtualMachinePool, VirtualMachineSnapshot,
};
use crate::model::{
    API_VERSION, CLONE_API_VERSION, MIGRATIONS_API_VERSION, POOL_API_VERSION, SNAPSHOT_API_VERSION,
};

use super::{check_replicas, check_selector, err, invalid, validate_vm_spec, validate_vmi_spec, SpecRules};

impl Validate for VirtualMachineInstance {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstance",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        validate_vmi_spec(&mut v, &self.spec, "spec", SpecRules { memory_required: true });
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstance", &self.metadata)
    }
}

impl Admit for VirtualMachineInstance {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vmi_spec_node_problems(&mut v, &self.spec, "spec", node);
        v
    }
}

impl Validate for VirtualMachine {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, Some(&self.api_version), Some(&self.kind), API_VERSION, "VirtualMachine", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        validate_vm_spec(&mut v, &self.spec, "spec", self.metadata.namespace.as_deref());
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachine", &self.metadata)
    }
}

impl Admit for VirtualMachine {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vm_spec_node_problems(&mut v, &self.spec, "spec", node);
        v
    }
}

impl Validate for VirtualMachineInstanceReplicaSet {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstanceReplicaSet",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        check_replicas(&mut v, self.spec.replicas);
        check_selector(
            &mut v,
            &self.spec.selector,
            self.spec.template.metadata.as_deref(),
            "spec.selector",
            "spec.template",
        );
        if let Some(meta) = &self.spec.template.metadata {
            validate_meta(&mut v, meta, "spec.template.metadata", NameRule::Optional, true);
        }
        validate_vmi_spec(
            &mut v,
            &self.spec.template.spec,
            "spec.template.spec",
            SpecRules { memory_required: true },
        );
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstanceReplicaSet", &self.metadata)
    }
}

impl Admit for VirtualMachineInstanceReplicaSet {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vmi_spec_node_problems(&mut v, &self.spec.template.spec, "spec.template.spec", node);
        v
    }
}

impl Validate for VirtualMachinePool {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            POOL_API_VERSION,
            "VirtualMachinePool",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        check_replicas(&mut v, self.spec.replicas);
        let t = &self.spec.virtual_machine_template;
        check_selector(
            &mut v,
            &self.spec.selector,
            t.metadata.as_ref(),
            "spec.selector",
            "spec.virtualMachineTemplate",
        );
        if let Some(meta) = &t.metadata {
            validate_meta(&mut v, meta, "spec.virtualMachineTemplate.metadata", NameRule::Optional, true);
        }
        validate_vm_spec(
            &mut v,
            &t.spec,
            "spec.virtualMachineTemplate.spec",
            self.metadata.namespace.as_deref(),
        );
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachinePool", &self.metadata)
    }
}

impl Admit for VirtualMachinePool {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vm_spec_node_problems(
            &mut v,
            &self.spec.virtual_machine_template.spec,
            "spec.virtualMachineTemplate.spec",
            node,
        );
        v
    }
}

impl Validate for VirtualMachineSnapshot {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            SNAPSHOT_API_VERSION,
            "VirtualMachineSnapshot",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let s = &self.spec.source;
        if s.kind != "VirtualMachine" {
            invalid(
                &mut v,
                "spec.source.kind".into(),
                format!("{:?}: only a VirtualMachine can be snapshotted", s.kind),
            );
        }
        if let Some(g) = s.api_group.as_deref() {
            if g != "kubevirt.io" {
                invalid(&mut v, "spec.source.apiGroup".into(), format!("{g:?}: expected \"kubevirt.io\""));
            }
        }
        check_name(&mut v, "spec.source.name".into(), &s.name, "VirtualMachine name");
        if let Some(p) = self.spec.deletion_policy.as_deref() {
            if !matches!(p, "delete" | "retain") {
                invalid(&mut v, "spec.deletionPolicy".into(), format!("{p:?}: expected delete or retain"));
            }
        }
        if let Some(d) = &self.spec.failure_deadline {
            if d.as_nanos() < 0 {
                invalid(&mut v, "spec.failureDeadline".into(), format!("{d}: must not be negative"));
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineSnapshot", &self.metadata)
    }
}

impl Admit for VirtualMachineSnapshot {
    fn node_problems(&self, _node: &NodeSupport) -> Validation {
        Validation::default()
    }
}

impl Validate for VirtualMachineClone {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            CLONE_API_VERSION,
            "VirtualMachineClone",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let s = &self.spec.source;
        match (s.api_group.as_deref(), s.kind.as_str()) {
            (None | Some("kubevirt.io"), "VirtualMachine") | (None | Some("snapshot.kubevirt.io"), "VirtualMachineSnapshot") => {}
            (g, k) => invalid(
                &mut v,
                "spec.source".into(),
                format!("{}{k}: the source must be a kubevirt.io VirtualMachine or a snapshot.kubevirt.io VirtualMachineSnapshot", g.map(|g| format!("{g} ")).unwrap_or_default()),
            ),
        }
        check_name(&mut v, "spec.source.name".into(), &s.name, "source name");
        if let Some(t) = &self.spec.target {
            if t.kind != "VirtualMachine" || t.api_group.as_deref().is_some_and(|g| g != "kubevirt.io") {
                invalid(
                    &mut v,
                    "spec.target".into(),
                    format!("{:?}: the target must be a kubevirt.io VirtualMachine", t.kind),
                );
            }
            check_name(&mut v, "spec.target.name".into(), &t.name, "target name");
        }
        if let Some(p) = self.spec.volume_name_policy.as_deref() {
            if !matches!(p, "RandomizeNames" | "PreserveNames") {
                invalid(
                    &mut v,
                    "spec.volumeNamePolicy".into(),
                    format!("{p:?}: expected RandomizeNames or PreserveNames"),
                );
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineClone", &self.metadata)
    }
}

impl Admit for VirtualMachineClone {
    fn node_problems(&self, _node: &NodeSupport) -> Validation {
        Validation::default()
    }
}

impl Validate for MigrationPolicy {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            MIGRATIONS_API_VERSION,
            "MigrationPolicy",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, false);
        if let Some(t) = self.spec.completion_timeout_per_gib {
            if t < 0 {
                invalid(&mut v, "spec.completionTimeoutPerGiB".into(), format!("{t}: must not be negative"));
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("MigrationPolicy", &self.metadata)
    }
}

impl Admit for MigrationPolicy {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        if !node.live_migration {
            v.warn("spec", ProblemKind::Notice, "no effect: this node does not live-migrate");
        }
        v
    }
}

impl Validate for VirtualMachineInstanceMigration {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstanceMigration",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        match self.spec.vmi_name.as_deref() {
            Some(n) => check_name(&mut v, "spec.vmiName".into(), n, "VirtualMachineInstance name"),
            None if self.spec.receive.is_none() => err(
                &mut v,
                "spec.vmiName".into(),
                ProblemKind::Required,
                "the VirtualMachineInstance to migrate is required",
            ),
            None => {}
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstanceMigration", &self.metadata)
    }
}

impl Admit for VirtualMachineInstanceMigration {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        if !node.live_migration {
            let vmi = self.spec.vmi_name.as_deref().unwrap_or("a VirtualMachineInstance");
            v.push(
                "spec.vmiName",
                ProblemKind::Unsupported,
                format!("live migration of {vmi} is not supported on this node: a single node has no migration target"),
            );
        }
        v
    }
}
