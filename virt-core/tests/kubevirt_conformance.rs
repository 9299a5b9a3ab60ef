//! KubeVirt API conformance: every file of `conformance/kubevirt/` is loaded unchanged,
//! strictly, validated, checked against what this node supports, and (for VMs naming an
//! instancetype or preference) resolved against the instancetypes and preferences of the same
//! folder. Each file's outcome is asserted exactly; the tally is printed.
//!
//! Expected rejections (see `docs/vm-model.md`):
//! * `vmi-gpu.yaml`: `spec.domain.devices.gpus`, GPUs are not supported on this node.
//! * `vmi-usb.yaml`: `spec.domain.devices.hostDevices[0]`, its USB storage device
//!   (`kubevirt.io/storage`) is a host device, and host-device passthrough is not supported.
//! * `vmi-multus-multiple-net.yaml`: `spec.networks[1].multus`, Multus secondary networks are not
//!   supported (the node has only the pod network; with `NodeSupport { multus: true, .. }` the
//!   file admits).
//! * `migration-job.yaml`: `spec.vmiName`, a single node cannot live-migrate.
//! * `vm-windows-clarge-windows.yaml`: loads, validates and admits, but its
//!   `spec.template.spec.domain.memory.guest: 128Mi` conflicts with instancetype `clarge`'s 2Gi,
//!   so it does not resolve (KubeVirt refuses it the same way).
//!
//! The negative cases (unknown fields by path, malformed YAML, wrong types, property tests) are in
//! tests/vm_validation.rs.

use serde_json::Value;
use virt_core::api::{self, Validate};
use virt_core::model::{
    self, resolve, Admit, Catalog, DiskBus, KubeVirtObject, NodeSupport, ResolveError, VirtualMachine,
    VirtualMachineInstance,
};

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{catalog, files, read};

/// What happened to one document.
#[derive(Debug)]
enum Outcome {
    /// Loaded, validated, admitted (and resolved, for a VM with an instancetype or preference).
    Loaded { kind: String, warnings: Vec<String> },
    /// Refused: the message.
    Rejected(String),
}

/// Files refused on purpose, with the text their rejection must contain.
const EXPECTED_REJECTIONS: &[(&str, &str)] = &[
    ("migration-job.yaml", "spec.vmiName: unsupported: live migration of vmi-migratable is not supported on this node"),
    (
        "vm-windows-clarge-windows.yaml",
        "VM field(s) conflict with instancetype \"clarge\": spec.template.spec.domain.memory.guest (128Mi here, 2Gi in the instancetype)",
    ),
    ("vmi-gpu.yaml", "spec.domain.devices.gpus: unsupported: GPUs are not supported on this node"),
    (
        "vmi-host-disk.yaml",
        "spec.volumes[0].hostDisk: unsupported: hostDisk is not enabled on this node (KubeVirt's HostDisk feature gate)",
    ),
    (
        "vmi-multus-multiple-net.yaml",
        "spec.networks[1].multus: unsupported: Multus secondary networks are not supported on this node",
    ),
    (
        "vmi-usb.yaml",
        "spec.domain.devices.hostDevices[0]: unsupported: host devices (PCI or USB passthrough) are not supported on this node: node-usb-to-vmi-storage asks for kubevirt.io/storage",
    ),
];

/// Kind of every file that loads, to be sure each kind is exercised.
const EXPECTED_KINDS: &[(&str, &str)] = &[
    ("clarge.yaml", "VirtualMachineInstancetype"),
    ("cluster-csmall.yaml", "VirtualMachineClusterInstancetype"),
    ("csmall.yaml", "VirtualMachineInstancetype"),
    ("example-migration-policy.yaml", "MigrationPolicy"),
    ("virtio.yaml", "VirtualMachinePreference"),
    ("vm-alpine-datavolume.yaml", "VirtualMachine"),
    ("vm-alpine-multipvc.yaml", "VirtualMachine"),
    ("vm-cirros-csmall.yaml", "VirtualMachine"),
    ("vm-cirros-sata.yaml", "VirtualMachine"),
    ("vm-cirros.yaml", "VirtualMachine"),
    ("vm-pool-cirros.yaml", "VirtualMachinePool"),
    ("vmclone-testclone.yaml", "VirtualMachineClone"),
    ("vmi-alpine-efi.yaml", "VirtualMachineInstance"),
    ("vmi-ephemeral.yaml", "VirtualMachineInstance"),
    ("vmi-fedora.yaml", "VirtualMachineInstance"),
    ("vmi-kernel-boot.yaml", "VirtualMachineInstance"),
    ("vmi-masquerade.yaml", "VirtualMachineInstance"),
    ("vmi-migratable.yaml", "VirtualMachineInstance"),
    ("vmi-nocloud.yaml", "VirtualMachineInstance"),
    ("vmi-pvc.yaml", "VirtualMachineInstance"),
    ("vmi-replicaset-cirros.yaml", "VirtualMachineInstanceReplicaSet"),
    ("vmi-sata.yaml", "VirtualMachineInstance"),
    ("vmi-secureboot.yaml", "VirtualMachineInstance"),
    ("vmi-windows.yaml", "VirtualMachineInstance"),
    ("vmsnapshot-snap-larry.yaml", "VirtualMachineSnapshot"),
    ("windows.yaml", "VirtualMachinePreference"),
];

/// Warnings expected on loaded files.
const EXPECTED_WARNINGS: &[(&str, &str)] =
    &[("example-migration-policy.yaml", "spec: notice: no effect: this node does not live-migrate")];

/// The object as JSON must equal the document it was read from (nulls pruned), and its YAML must
/// load back to the same object.
fn assert_round_trip(file: &str, object: &KubeVirtObject, original: &Value) {
    let mut original = original.clone();
    api::prune_nulls(&mut original);
    assert_eq!(object.to_json_value().unwrap(), original, "{file}: JSON round trip changed the object");
    let yaml = object.to_yaml().unwrap();
    let back =
        model::load_yaml(&yaml).unwrap_or_else(|e| panic!("{file}: reloading written YAML: {e}\n{yaml}"));
    assert_eq!(back.len(), 1);
    assert_eq!(&back[0].object, object, "{file}: YAML round trip changed the object:\n{yaml}");
    let json = serde_json::to_string(&object.to_json_value().unwrap()).unwrap();
    assert_eq!(&model::load_json(&json).unwrap().object, object, "{file}: JSON reload changed the object");
}

/// Loads, validates, admits and (for VMs) resolves one document.
fn outcome(object: &KubeVirtObject, catalog: &Catalog, node: &NodeSupport) -> Outcome {
    let mut warnings = match object.admit(node) {
        Ok(w) => w.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Err(e) => return Outcome::Rejected(e.to_string()),
    };
    if let KubeVirtObject::VirtualMachine(vm) = object {
        if vm.spec.instancetype.is_some() || vm.spec.preference.is_some() {
            let template = match resolve(vm, catalog) {
                Ok(t) => t,
                Err(e) => return Outcome::Rejected(e.to_string()),
            };
            // The VMI the VM would start must itself be admissible.
            let mut vmi = VirtualMachineInstance::new(
                template.metadata.as_deref().cloned().unwrap_or_default(),
                template.spec,
            );
            vmi.metadata.name = vm.metadata.name.clone();
            match vmi.admit(node) {
                Ok(w) => warnings.extend(w.iter().map(|w| format!("resolved: {w}"))),
                Err(e) => return Outcome::Rejected(format!("resolved: {e}")),
            }
        }
    }
    Outcome::Loaded { kind: object.kind().to_string(), warnings }
}

#[test]
fn conformance_corpus_loads_validates_or_is_rejected_by_field() {
    let catalog = catalog();
    let node = NodeSupport::default();
    let mut loaded = Vec::new();
    let mut rejected = Vec::new();
    for path in files() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = model::load_yaml(&text).unwrap_or_else(|e| panic!("{name}: does not load: {e}"));
        let values = api::parse_yaml(&text).unwrap();
        assert_eq!(docs.len(), 1, "{name}: one document per file");
        let doc = &docs[0];
        assert!(doc.warnings.is_empty(), "{name}: {:?}", doc.warnings);
        assert!(!matches!(doc.object, KubeVirtObject::Skipped(_)), "{name}: skipped: {}", doc.object);
        assert_round_trip(&name, &doc.object, &values[0]);
        match outcome(&doc.object, &catalog, &node) {
            Outcome::Loaded { kind, warnings } => {
                assert!(
                    !EXPECTED_REJECTIONS.iter().any(|(f, _)| *f == name),
                    "{name} should have been rejected"
                );
                let want = EXPECTED_KINDS
                    .iter()
                    .find(|(f, _)| *f == name)
                    .unwrap_or_else(|| panic!("{name}: unexpected file"));
                assert_eq!(kind, want.1, "{name}");
                let want_warnings: Vec<&str> =
                    EXPECTED_WARNINGS.iter().filter(|(f, _)| *f == name).map(|(_, w)| *w).collect();
                assert_eq!(warnings, want_warnings, "{name}: warnings");
                let mut line = format!("{name}: {} ({kind})", doc.object);
                for w in &warnings {
                    line.push_str(&format!("\n      warning: {w}"));
                }
                loaded.push(line);
            }
            Outcome::Rejected(message) => {
                let (_, want) = EXPECTED_REJECTIONS
                    .iter()
                    .find(|(f, _)| *f == name)
                    .unwrap_or_else(|| panic!("{name} was rejected unexpectedly: {message}"));
                assert!(
                    message.contains(want),
                    "{name}: wrong rejection:\n  got:  {message}\n  want: {want}"
                );
                rejected.push(format!("{name}: {message}"));
            }
        }
    }
    println!("KubeVirt conformance tally ({} files):", loaded.len() + rejected.len());
    println!("  loaded, validated and admitted (VMs with instancetypes resolved): {}", loaded.len());
    for l in &loaded {
        println!("    {l}");
    }
    println!("  rejected, naming the field: {}", rejected.len());
    for l in &rejected {
        println!("    {l}");
    }
    assert_eq!((loaded.len(), rejected.len()), (EXPECTED_KINDS.len(), EXPECTED_REJECTIONS.len()));
}

#[test]
fn a_node_that_can_do_everything_admits_the_rejected_vmis() {
    let node = NodeSupport::everything();
    for name in ["vmi-gpu.yaml", "vmi-usb.yaml", "vmi-multus-multiple-net.yaml", "migration-job.yaml"] {
        let docs = model::load_yaml(&read(name)).unwrap();
        docs[0].object.admit(&node).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // With only Multus switched on, the multus file admits and the GPU file still does not.
    let mut multus = NodeSupport::default();
    multus.multus = true;
    model::load_yaml(&read("vmi-multus-multiple-net.yaml")).unwrap()[0].object.admit(&multus).unwrap();
    assert!(model::load_yaml(&read("vmi-gpu.yaml")).unwrap()[0].object.admit(&multus).is_err());
}

// ---- Instancetypes and preferences, with the conformance files ----

fn vm(name: &str) -> VirtualMachine {
    model::from_yaml(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn vm_from(text: &str) -> VirtualMachine {
    model::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn instancetypes_and_preferences_load_with_their_values() {
    let csmall: model::VirtualMachineInstancetype = model::from_yaml(&read("csmall.yaml")).unwrap();
    assert_eq!((csmall.spec.cpu.guest, csmall.spec.memory.guest.bytes()), (1, 128 << 20));
    let clarge: model::VirtualMachineInstancetype = model::from_yaml(&read("clarge.yaml")).unwrap();
    assert_eq!((clarge.spec.cpu.guest, clarge.spec.memory.guest.bytes()), (4, 2 << 30));
    let cluster: model::VirtualMachineClusterInstancetype =
        model::from_yaml(&read("cluster-csmall.yaml")).unwrap();
    assert_eq!(cluster.spec.cpu.guest, 1);
    let virtio: model::VirtualMachinePreference = model::from_yaml(&read("virtio.yaml")).unwrap();
    let dev = virtio.spec.devices.as_ref().unwrap();
    assert_eq!(dev.preferred_disk_bus, Some(DiskBus::Virtio));
    assert_eq!(dev.preferred_interface_model.as_deref(), Some("virtio"));
    let windows: model::VirtualMachinePreference = model::from_yaml(&read("windows.yaml")).unwrap();
    assert_eq!(
        windows.spec.cpu.as_ref().unwrap().preferred_cpu_topology,
        Some(model::PreferredCpuTopology::Sockets)
    );
    assert_eq!(windows.spec.devices.as_ref().unwrap().preferred_disk_bus, Some(DiskBus::Sata));
    // The wrong kind is an error naming what was found.
    let e = model::from_yaml::<model::VirtualMachinePreference>(&read("csmall.yaml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected exactly one VirtualMachinePreference, found a VirtualMachineInstancetype"
    );
}

#[test]
fn vm_cirros_csmall_resolves_to_one_vcpu_and_128mi() {
    let t = resolve(&vm("vm-cirros-csmall.yaml"), &catalog()).unwrap();
    let cpu = t.spec.domain.cpu.as_ref().unwrap();
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (Some(1), Some(1), Some(1)));
    assert_eq!(t.spec.domain.memory.as_ref().unwrap().guest.as_ref().unwrap().bytes(), 128 << 20);
    // No preference: the disks are as written (`disk: {}` keeps no bus; virtio is the default).
    assert_eq!(t.spec.domain.devices.disks[0].bus(), None);
    assert_eq!(t.metadata.as_ref().unwrap().labels["kubevirt.io/vm"], "vm-cirros-csmall");
    let mut vmi = VirtualMachineInstance::new(*t.metadata.clone().unwrap(), t.spec);
    vmi.metadata.name = Some("vm-cirros-csmall".into());
    vmi.admit(&NodeSupport::default()).unwrap();
}

#[test]
fn cluster_instancetypes_are_the_default_kind_and_lookups_name_what_is_missing() {
    let c = catalog();
    let text = read("vm-cirros-csmall.yaml");
    // No kind: VirtualMachineClusterInstancetype.
    let no_kind = text
        .replace("    kind: VirtualMachineInstancetype\n    name: csmall\n", "    name: cluster-csmall\n");
    let t = resolve(&vm_from(&no_kind), &c).unwrap();
    assert_eq!(t.spec.domain.cpu.unwrap().sockets, Some(1));
    let plural = text
        .replace("kind: VirtualMachineInstancetype", "kind: virtualmachineclusterinstancetypes")
        .replace("name: csmall", "name: cluster-csmall");
    resolve(&vm_from(&plural), &c).unwrap();
    // A cluster kind with a namespaced name is not found.
    let wrong = text.replace("kind: VirtualMachineInstancetype", "kind: VirtualMachineClusterInstancetype");
    let e = resolve(&vm_from(&wrong), &c).unwrap_err();
    assert_eq!(e.to_string(), "spec.instancetype: VirtualMachineClusterInstancetype \"csmall\" not found");
    // Namespaced lookups happen in the VM's namespace.
    let other_ns = text
        .replace("  name: vm-cirros-csmall\nspec:", "  name: vm-cirros-csmall\n  namespace: other\nspec:");
    let e = resolve(&vm_from(&other_ns), &c).unwrap_err();
    assert!(matches!(&e, ResolveError::NotFound { namespace: Some(ns), .. } if ns == "other"), "{e}");
    assert!(e.to_string().ends_with("not found in namespace \"other\""), "{e}");
}

/// `vm-windows-clarge-windows.yaml` without its (conflicting) `memory.guest`.
fn windows_vm_without_memory() -> VirtualMachine {
    let text =
        read("vm-windows-clarge-windows.yaml").replace("        memory:\n          guest: 128Mi\n", "");
    vm_from(&text)
}

#[test]
fn vm_windows_clarge_conflicts_on_memory_as_kubevirt_says() {
    let e = resolve(&vm("vm-windows-clarge-windows.yaml"), &catalog()).unwrap_err();
    let ResolveError::Conflicts { instancetype, conflicts } = &e else { panic!("{e}") };
    assert_eq!(instancetype, "clarge");
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "spec.template.spec.domain.memory.guest");
}

#[test]
fn vm_windows_clarge_with_the_windows_preference_resolves_like_kubevirt() {
    let t = resolve(&windows_vm_without_memory(), &catalog()).unwrap();
    let d = &t.spec.domain;
    // clarge: 4 vCPUs, laid out as sockets (preferredCPUTopology: sockets); 2Gi.
    let cpu = d.cpu.as_ref().unwrap();
    assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (Some(4), Some(1), Some(1)));
    assert_eq!(d.memory.as_ref().unwrap().guest.as_ref().unwrap().as_str(), "2Gi");
    // windows: the pvc disk written as `disk: {}` gets the preferred sata bus; a TPM is added.
    assert_eq!(d.devices.disks[0].bus(), Some(DiskBus::Sata));
    assert!(d.devices.tpm.is_some());
    // Features, firmware and clock from the preference; the VM's own UUID is kept.
    let f = d.features.as_ref().unwrap();
    assert!(f.acpi.is_some() && f.apic.is_some() && f.smm_enabled());
    let hv = f.hyperv.as_ref().unwrap();
    assert_eq!(hv.spinlocks.as_ref().unwrap().spinlocks, Some(8191));
    assert!(hv.relaxed.is_some() && hv.vapic.is_some());
    let fw = d.firmware.as_ref().unwrap();
    assert_eq!(fw.uuid.as_deref(), Some("5d307ca9-b3ef-428c-8861-06e72d69f223"));
    assert_eq!(fw.bootloader.as_ref().unwrap().efi.as_ref().unwrap().secure_boot, Some(true));
    let clock = d.clock.as_ref().unwrap();
    assert!(clock.utc.is_some());
    let timer = clock.timer.as_ref().unwrap();
    assert_eq!(timer.hpet.as_ref().unwrap().present, Some(false));
    assert_eq!(timer.pit.as_ref().unwrap().tick_policy, Some(model::PitTickPolicy::Delay));
    // The result is what `vmi-windows.yaml` spells out by hand, and it admits (Secure Boot has
    // the SMM the preference added).
    let mut vmi = VirtualMachineInstance::new(*t.metadata.clone().unwrap(), t.spec.clone());
    vmi.metadata.name = Some("vm-windows-clarge-windows".into());
    vmi.admit(&NodeSupport::default()).unwrap();
    let by_hand: VirtualMachineInstance = model::from_yaml(&read("vmi-windows.yaml")).unwrap();
    assert_eq!(t.spec.domain.features, by_hand.spec.domain.features);
    assert_eq!(t.spec.domain.clock, by_hand.spec.domain.clock);
    assert_eq!(t.spec.domain.firmware, by_hand.spec.domain.firmware);
}

#[test]
fn preferences_fill_only_what_the_vm_leaves_unset() {
    let c = catalog();
    // virtio preference on the csmall VM: `disk: {}` becomes virtio, the explicit one stays.
    let text = read("vm-cirros-csmall.yaml").replace(
        "  runStrategy: Halted\n",
        "  preference:\n    kind: VirtualMachinePreference\n    name: virtio\n  runStrategy: Halted\n",
    );
    let t = resolve(&vm_from(&text), &c).unwrap();
    assert!(t.spec.domain.devices.disks.iter().all(|d| d.bus() == Some(DiskBus::Virtio)));
    // The windows preference without an instancetype: a disk with a bus keeps it, and the VM's
    // own CPU stays (topology preferences only lay out an instancetype's vCPUs).
    let text = read("vm-cirros.yaml").replace(
        "  runStrategy: Halted\n",
        "  preference:\n    kind: VirtualMachinePreference\n    name: windows\n  runStrategy: Halted\n",
    );
    let t = resolve(&vm_from(&text), &c).unwrap();
    assert!(t.spec.domain.devices.disks.iter().all(|d| d.bus() == Some(DiskBus::Virtio)));
    assert!(t.spec.domain.cpu.is_none());
    assert!(t.spec.domain.devices.tpm.is_some());
    // An interface without a model gets the preferred one; one with a model keeps it.
    let text = read("vm-cirros.yaml")
        .replace(
            "  runStrategy: Halted\n",
            "  preference:\n    kind: VirtualMachinePreference\n    name: windows\n  runStrategy: Halted\n",
        )
        .replace(
            "        memory:\n",
            "          interfaces:\n          - name: default\n            masquerade: {}\n          - name: second\n            model: virtio\n            bridge: {}\n        memory:\n",
        )
        .replace(
            "      terminationGracePeriodSeconds: 0\n",
            "      networks:\n      - name: default\n        pod: {}\n      - name: second\n        multus: {networkName: br}\n      terminationGracePeriodSeconds: 0\n",
        );
    let t = resolve(&vm_from(&text), &c).unwrap();
    let models: Vec<_> = t.spec.domain.devices.interfaces.iter().map(|i| i.model.as_deref()).collect();
    assert_eq!(models, [Some("e1000"), Some("virtio")]);
}

/// A VM naming `instancetype` (kind VirtualMachineInstancetype) with the given template domain.
fn vm_with(instancetype: &str, preference: Option<&str>, domain: &str) -> VirtualMachine {
    let pref = preference
        .map(|p| format!("  preference:\n    kind: VirtualMachinePreference\n    name: {p}\n"))
        .unwrap_or_default();
    vm_from(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: t\nspec:\n  instancetype:\n    kind: VirtualMachineInstancetype\n    name: {instancetype}\n{pref}  runStrategy: Halted\n  template:\n    spec:\n      domain:\n{domain}      volumes:\n      - name: root\n        containerDisk: {{image: example/cirros}}\n"
    ))
}

#[test]
fn conflicts_name_every_field_the_instancetype_also_sets() {
    let c = catalog();
    let v = vm_with(
        "clarge",
        None,
        "        cpu: {cores: 2, model: host-passthrough}\n        resources:\n          requests: {memory: 1Gi, cpu: 500m}\n        devices: {}\n",
    );
    v.check().unwrap(); // valid on its own: the instancetype provides memory
    let e = resolve(&v, &c).unwrap_err();
    let ResolveError::Conflicts { conflicts, .. } = &e else { panic!("{e}") };
    let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.template.spec.domain.resources.requests.cpu",
            "spec.template.spec.domain.resources.requests.memory",
            "spec.template.spec.domain.cpu.cores",
        ]
    );
    // The same topology as the instancetype would give is not a conflict, nor is the model.
    let v =
        vm_with("clarge", None, "        cpu: {sockets: 4, model: host-passthrough}\n        devices: {}\n");
    let t = resolve(&v, &c).unwrap();
    assert_eq!(t.spec.domain.cpu.unwrap().model.as_deref(), Some("host-passthrough"));
}

#[test]
fn preference_requirements_are_checked_against_the_instancetype() {
    let mut c = catalog();
    let pref: model::VirtualMachinePreference = model::from_yaml(
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachinePreference\nmetadata: {name: big}\nspec:\n  requirements:\n    cpu: {guest: 2}\n    memory: {guest: 1Gi}\n",
    )
    .unwrap();
    c.add(&KubeVirtObject::VirtualMachinePreference(Box::new(pref)));
    let e = resolve(&vm_with("csmall", Some("big"), "        devices: {}\n"), &c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec.instancetype: insufficient CPU resources of 1 vCPU provided by instance type, preference requires 2 vCPU"
    );
    let e = resolve(&vm_with("clarge", Some("big"), "        devices: {}\n"), &c);
    assert!(e.is_ok(), "{e:?}");
}

// ---- Negative cases: loading ----
