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
//! Then negative cases: unknown fields with their path, malformed YAML with line and column,
//! wrong types, and property tests that no input makes loading, validation or resolution panic.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use virt_core::api::{self, DecodeErrorKind, FieldValidation, LoadError, LoadOptions, ProblemKind, Validate};
use virt_core::model::{
    self, resolve, Admit, Catalog, DiskBus, KubeVirtObject, NodeSupport, ResolveError, VirtualMachine,
    VirtualMachineInstance,
};

fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRT_CONFORMANCE_DIR") {
        return PathBuf::from(dir).join("kubevirt");
    }
    // The repository's copy of KubeVirt's examples (conformance/SOURCES.md names their commits).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/kubevirt")
}

fn files() -> Vec<PathBuf> {
    let dir = conformance_dir();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance corpus {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no files in {}", dir.display());
    out
}

fn read(name: &str) -> String {
    std::fs::read_to_string(conformance_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every instancetype and preference of the folder.
fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for path in files() {
        for d in model::load_file(&path, &LoadOptions::default()).unwrap() {
            c.add(&d.object);
        }
    }
    c
}

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
            let mut vmi =
                VirtualMachineInstance::new(template.metadata.clone().unwrap_or_default(), template.spec);
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
    let mut vmi = VirtualMachineInstance::new(t.metadata.clone().unwrap(), t.spec);
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
    let mut vmi = VirtualMachineInstance::new(t.metadata.clone().unwrap(), t.spec.clone());
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

const VMI: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: vmi
spec:
  domain:
    devices:
      disks:
      - name: root
        disk:
          bus: virtio
      interfaces:
      - name: default
        masquerade: {}
    memory:
      guest: 128Mi
  networks:
  - name: default
    pod: {}
  volumes:
  - name: root
    containerDisk:
      image: example/cirros
";

fn load_err(yaml: &str) -> LoadError {
    model::load_yaml(yaml).expect_err("should not load")
}

/// Validation errors (not node checks) of a document that loads.
fn problems(yaml: &str) -> Vec<api::FieldProblem> {
    let docs = model::load_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    docs[0].object.validate().errors
}

fn paths(problems: &[api::FieldProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn the_reference_vmi_is_valid_and_round_trips() {
    let vmi: VirtualMachineInstance = model::from_yaml(VMI).unwrap();
    assert!(vmi.admit(&NodeSupport::default()).unwrap().is_empty());
    // Written in KubeVirt's field order (kubectl sorts keys; the content is the same).
    let yaml = model::to_yaml(&vmi).unwrap();
    assert!(yaml.starts_with("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: vmi\nspec:\n  domain:\n    memory:"), "{yaml}");
    assert_eq!(model::from_yaml::<VirtualMachineInstance>(&yaml).unwrap(), vmi);
    let back: VirtualMachineInstance = model::from_json(&model::to_json(&vmi).unwrap()).unwrap();
    assert_eq!(back, vmi);
}

#[test]
fn unknown_fields_are_errors_naming_their_full_path() {
    let e = load_err(&VMI.replace("          bus: virtio", "          buss: virtio"));
    assert_eq!(e.to_string(), "document 1: spec.domain.devices.disks[0].disk.buss: unknown field");
    let e = load_err(&VMI.replace("    pod: {}", "    pod: {}\n    bridge: {}"));
    assert_eq!(e.to_string(), "document 1: spec.networks[0].bridge: unknown field");
    let vm_text = read("vm-cirros.yaml")
        .replace("      terminationGracePeriodSeconds: 0", "      terminationGracePeriod: 0");
    let e = load_err(&vm_text);
    assert_eq!(e.to_string(), "document 1: spec.template.spec.terminationGracePeriod: unknown field");
    let LoadError::Decode { errors, .. } = &e else { panic!("{e}") };
    assert_eq!(errors[0].kind, DecodeErrorKind::UnknownField);
    // Several unknown fields are all named, unknown ones first.
    let e = load_err(
        &VMI.replace("    memory:\n      guest: 128Mi", "    memory:\n      gust: 128Mi\n    cpus: 2"),
    );
    assert_eq!(
        e.to_string(),
        "document 1: spec.domain.cpus: unknown field; spec.domain.memory.gust: unknown field"
    );
    // In a preference too.
    let e = load_err(&read("windows.yaml").replace("preferredDiskBus", "preferedDiskBus"));
    assert_eq!(e.to_string(), "document 1: spec.devices.preferedDiskBus: unknown field");
    // Warn and Ignore, like kubectl --validate=warn|ignore.
    let text = VMI.replace("          bus: virtio", "          bus: virtio\n          colour: red");
    let warn = LoadOptions { field_validation: FieldValidation::Warn };
    let docs = model::load_yaml_with(&text, &warn).unwrap();
    assert_eq!(docs[0].warnings, ["spec.domain.devices.disks[0].disk.colour: unknown field"]);
    let ignore = LoadOptions { field_validation: FieldValidation::Ignore };
    assert!(model::load_yaml_with(&text, &ignore).unwrap()[0].warnings.is_empty());
}

#[test]
fn wrong_types_bad_values_and_missing_fields_name_their_path() {
    let e = load_err(&VMI.replace("bus: virtio", "bus: ide"));
    assert!(
        e.to_string().starts_with("document 1: spec.domain.devices.disks[0].disk.bus: unknown variant `ide`"),
        "{e}"
    );
    let e = load_err(&VMI.replace("guest: 128Mi", "guest: 128MB"));
    assert!(e.to_string().contains("spec.domain.memory.guest: invalid quantity \"128MB\""), "{e}");
    let e = load_err(&VMI.replace("    memory:\n", "    cpu: {cores: two}\n    memory:\n"));
    assert!(
        e.to_string().contains("spec.domain.cpu.cores: invalid type: string \"two\", expected u32"),
        "{e}"
    );
    let e = load_err(&read("vm-cirros.yaml").replace("runStrategy: Halted", "runStrategy: Sometimes"));
    assert!(e.to_string().contains("spec.runStrategy: unknown variant `Sometimes`"), "{e}");
    let e = load_err(&read("vmi-kernel-boot.yaml").replace("    devices: {}\n", ""));
    assert_eq!(e.to_string(), "document 1: spec.domain.devices: required field is missing");
    let e = load_err(&VMI.replace("      image: example/cirros\n", "      path: /disk.img\n"));
    assert_eq!(e.to_string(), "document 1: spec.volumes[0].containerDisk.image: required field is missing");
    let e = load_err(&read("csmall.yaml").replace("  memory:\n    guest: 128Mi\n", ""));
    assert_eq!(e.to_string(), "document 1: spec.memory: required field is missing");
    let e = load_err(&read("vmsnapshot-snap-larry.yaml").replace("1m", "one minute"));
    assert!(e.to_string().contains("spec.failureDeadline: invalid duration \"one minute\""), "{e}");
}

#[test]
fn malformed_yaml_and_json_are_errors_with_positions() {
    for (text, line) in [
        ("apiVersion: kubevirt.io/v1\nkind: [\n", 2),
        ("a: 1\na: 2\n", 2),
        ("spec:\n  domain: 1\n devices: 2\n", 3),
        ("key: \"unterminated\n", 1),
    ] {
        let e = load_err(text);
        let LoadError::Syntax { line: Some(l), column: Some(_), .. } = &e else { panic!("{text:?}: {e}") };
        assert_eq!(*l, line, "{text:?}: {e}");
        assert!(e.to_string().starts_with("YAML syntax error:"), "{e}");
    }
    let e = model::load_json("{\"kind\": \"VirtualMachine\",\n \"kind\": \"VirtualMachineInstance\"}")
        .unwrap_err();
    assert!(e.to_string().contains("duplicate field \"kind\""), "{e}");
    assert!(matches!(load_err("- a\n"), LoadError::NotAnObject { found: "a list", .. }));
    assert!(load_err("kind: VirtualMachine\n").to_string().contains("apiVersion: required field is missing"));
    let e = load_err("apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachineInstance\n");
    assert_eq!(
        e.to_string(),
        "document 1: kubevirt.io/v1alpha3 VirtualMachineInstance: only kubevirt.io/v1 is supported"
    );
    let e = load_err("apiVersion: instancetype.kubevirt.io/v1alpha2\nkind: VirtualMachinePreference\n");
    assert!(e.to_string().ends_with("only instancetype.kubevirt.io/v1beta1 is supported"), "{e}");
    assert!(model::load_yaml("# only a comment\n---\n").unwrap().is_empty());
}

#[test]
fn multi_document_streams_and_other_kinds() {
    let stream = format!(
        "{VMI}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\n{}---\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: dv}}\n",
        read("csmall.yaml").trim_start_matches("---\n")
    );
    let docs = model::load_yaml(&stream).unwrap();
    assert_eq!(docs.iter().map(|d| d.document).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let kinds: Vec<&str> = docs.iter().map(|d| d.object.kind()).collect();
    assert_eq!(kinds, ["VirtualMachineInstance", "Secret", "VirtualMachineInstancetype", "DataVolume"]);
    let KubeVirtObject::Skipped(s) = &docs[3].object else { panic!() };
    assert!(s.reason.contains("virt_storage::cdi"), "{s}");
    assert!(matches!(docs[1].object, KubeVirtObject::Skipped(_)));
}

// ---- Negative cases: validation and node support ----

#[test]
fn disks_volumes_interfaces_and_networks_must_match() {
    let p =
        problems(&VMI.replace("  - name: root\n    containerDisk", "  - name: rootfs\n    containerDisk"));
    assert_eq!(paths(&p), ["spec.domain.devices.disks[0].name"]);
    assert!(p[0].message.contains("no volume named \"root\""), "{}", p[0]);
    let p = problems(&VMI.replace("  - name: default\n    pod: {}", "  - name: other\n    pod: {}"));
    assert_eq!(paths(&p), ["spec.domain.devices.interfaces[0].name", "spec.networks[0].name"]);
    let p = problems(&VMI.replace(
        "      image: example/cirros\n",
        "      image: example/cirros\n    emptyDisk: {capacity: 1Gi}\n",
    ));
    assert_eq!(paths(&p), ["spec.volumes[0]"]);
    assert!(p[0].message.contains("found 2: containerDisk, emptyDisk"), "{}", p[0]);
    let p = problems(&VMI.replace("        masquerade: {}", "        masquerade: {}\n        bridge: {}"));
    assert_eq!(paths(&p), ["spec.domain.devices.interfaces[0]"]);
    let p = problems(
        &VMI.replace(
            "        disk:\n          bus: virtio",
            "        bootOrder: 1\n        disk:\n          bus: virtio",
        )
        .replace("        masquerade: {}", "        masquerade: {}\n        bootOrder: 1"),
    );
    assert_eq!(paths(&p), ["spec.domain.devices.interfaces[0].bootOrder"]);
    let p = problems(&VMI.replace(
        "        masquerade: {}",
        "        masquerade: {}\n        macAddress: 00-11-22\n        model: ne2000",
    ));
    assert_eq!(
        paths(&p),
        ["spec.domain.devices.interfaces[0].model", "spec.domain.devices.interfaces[0].macAddress"]
    );
}

#[test]
fn domain_rules() {
    // Secure Boot needs SMM.
    let p = problems(&read("vmi-secureboot.yaml").replace("      smm:\n        enabled: true\n", ""));
    assert_eq!(paths(&p), ["spec.domain.firmware.bootloader.efi.secureBoot"]);
    let p = problems(&read("vmi-secureboot.yaml").replace("enabled: true", "enabled: false"));
    assert_eq!(paths(&p), ["spec.domain.firmware.bootloader.efi.secureBoot"]);
    // EFI without a secureBoot setting means Secure Boot on.
    let p = problems(
        &read("vmi-alpine-efi.yaml")
            .replace("          secureBoot: false\n", "")
            .replace("efi:\n", "efi: {}\n"),
    );
    assert_eq!(paths(&p), ["spec.domain.firmware.bootloader.efi.secureBoot"]);
    // Memory must be requested.
    let p = problems(&VMI.replace("    memory:\n      guest: 128Mi\n", ""));
    assert_eq!(paths(&p), ["spec.domain.memory.guest"]);
    assert_eq!(p[0].kind, ProblemKind::Required);
    // Kernel boot needs a kernel or initrd path, absolute.
    let p = problems(&read("vmi-kernel-boot.yaml").replace(
        "          initrdPath: /boot/initramfs-virt\n          kernelPath: /boot/vmlinuz-virt\n",
        "",
    ));
    assert_eq!(paths(&p), ["spec.domain.firmware.kernelBoot.container"]);
    let p = problems(&read("vmi-kernel-boot.yaml").replace("kernelPath: /boot", "kernelPath: boot"));
    assert_eq!(paths(&p), ["spec.domain.firmware.kernelBoot.container.kernelPath"]);
    // Hyper-V spinlocks, UUIDs, host disks, cloud-init.
    let p =
        problems(&read("vmi-windows.yaml").replace("8191", "100").replace("5d307ca9-b3ef", "5d307ca9b3ef"));
    assert_eq!(paths(&p), ["spec.domain.firmware.uuid", "spec.domain.features.hyperv.spinlocks.spinlocks"]);
    let p = problems(&read("vmi-host-disk.yaml").replace("      capacity: 1Gi\n", ""));
    assert_eq!(paths(&p), ["spec.volumes[0].hostDisk.capacity"]);
    let p = problems(
        &read("vmi-host-disk.yaml").replace("DiskOrCreate", "Disk").replace("/var/data", "var/data"),
    );
    assert_eq!(paths(&p), ["spec.volumes[0].hostDisk.path", "spec.volumes[0].hostDisk.capacity"]);
    let long = format!("#!/bin/sh\n{}\n", "echo hello\n".repeat(200));
    let p = problems(&read("vmi-nocloud.yaml").replace("#!/bin/sh\n", &long.replace('\n', "\n        ")));
    assert_eq!(paths(&p), ["spec.volumes[1].cloudInitNoCloud.userData"]);
    let p = problems(
        &read("vmi-nocloud.yaml")
            .replace("      userData: |", "      userDataBase64: not*base64\n      userData: |"),
    );
    assert_eq!(
        paths(&p),
        ["spec.volumes[1].cloudInitNoCloud", "spec.volumes[1].cloudInitNoCloud.userDataBase64"]
    );
}

#[test]
fn vm_rules() {
    let p = problems(
        &read("vm-cirros.yaml").replace("  runStrategy: Halted", "  running: true\n  runStrategy: Halted"),
    );
    assert_eq!(paths(&p), ["spec.running"]);
    let w = model::load_yaml(&read("vm-cirros.yaml").replace("  runStrategy: Halted", "  running: false"))
        .unwrap()[0]
        .object
        .validate();
    assert!(w.is_ok() && w.warnings[0].path == "spec.running", "{w:?}");
    let p = problems(
        &read("vm-alpine-datavolume.yaml")
            .replace("  - metadata:\n      name: alpine-dv\n", "  - metadata:\n      labels: {a: b}\n"),
    );
    assert_eq!(paths(&p), ["spec.dataVolumeTemplates[0].metadata.name"]);
    let p = problems(
        &read("vm-cirros-csmall.yaml").replace("kind: VirtualMachineInstancetype", "kind: Instancetype"),
    );
    assert_eq!(paths(&p), ["spec.instancetype.kind"]);
    // A VM with an instancetype need not request memory itself.
    assert!(problems(
        &read("vm-cirros-csmall.yaml").replace("        memory:\n          guest: 128Mi\n", "")
    )
    .is_empty());
    let p = problems(&read("vm-cirros.yaml").replace("        memory:\n          guest: 128Mi\n", ""));
    assert_eq!(paths(&p), ["spec.template.spec.domain.memory.guest"]);
    // Replica sets and pools: the selector must match the template's labels.
    let p = problems(&read("vmi-replicaset-cirros.yaml").replacen(
        "kubevirt.io/vmReplicaSet: vmi-replicaset-cirros",
        "kubevirt.io/vmReplicaSet: other",
        1,
    ));
    assert_eq!(paths(&p), ["spec.selector.matchLabels[\"kubevirt.io/vmReplicaSet\"]"]);
    let p = problems(&read("vm-pool-cirros.yaml").replace("        guest: 128Mi", "        guest: 0"));
    assert_eq!(paths(&p), ["spec.virtualMachineTemplate.spec.template.spec.domain.memory.guest"]);
}

#[test]
fn what_the_node_cannot_do_is_refused_by_path() {
    let node = NodeSupport::default();
    let admit = |yaml: &str| model::load_yaml(yaml).unwrap()[0].object.admit(&node).unwrap_err().problems;
    let p = admit(&VMI.replace(
        "    memory:\n",
        "    cpu:\n      dedicatedCpuPlacement: true\n    memory:\n      hugepages: {pageSize: 2Mi}\n",
    ));
    assert_eq!(paths(&p), ["spec.domain.cpu.dedicatedCpuPlacement", "spec.domain.memory.hugepages"]);
    assert!(p.iter().all(|p| p.kind == ProblemKind::Unsupported));
    // hostDisk: off unless the node names directories; then only strictly under them, no `..`.
    let p = admit(&read("vmi-host-disk.yaml"));
    assert_eq!(paths(&p), ["spec.volumes[0].hostDisk"]);
    let mut allowing = NodeSupport::default();
    allowing.host_disk_dirs = vec!["/var/data".into()];
    let host = |path: &str| {
        let yaml = read("vmi-host-disk.yaml").replace("/var/data/disk.img", path);
        model::load_yaml(&yaml).unwrap()[0].object.admit(&allowing)
    };
    assert!(host("/var/data/disk.img").is_ok());
    assert!(host("/var/data/vms/a/disk.img").is_ok());
    for hostile in ["/etc/shadow", "/var/data/../../etc/shadow", "/var/data", "/var/database.img"] {
        let p = host(hostile).unwrap_err().problems;
        assert_eq!(paths(&p), ["spec.volumes[0].hostDisk.path"], "{hostile}");
        assert_eq!(p[0].kind, ProblemKind::Forbidden, "{hostile}");
    }
    assert!(host("/etc/shadow").unwrap_err().problems[0]
        .message
        .contains("\"/etc/shadow\" is outside the directories this node allows for hostDisk (/var/data)"));
    let p = admit(
        &VMI.replace("        masquerade: {}", "        sriov: {}")
            .replace("    pod: {}", "    multus: {networkName: sriov-net}"),
    );
    assert_eq!(paths(&p), ["spec.domain.devices.interfaces[0].sriov", "spec.networks[0].multus"]);
    let p = admit(&VMI.replace("    devices:\n", "    devices:\n      clientPassthrough: {}\n"));
    assert_eq!(paths(&p), ["spec.domain.devices.clientPassthrough"]);
    assert!(p[0].message.starts_with("USB redirection from a client is not supported on this node"));
    let p = admit(&read("vm-cirros.yaml").replace(
        "      - containerDisk:",
        "      - dataVolume: {name: dv, hotpluggable: true}\n        name: dv\n      - containerDisk:",
    ));
    assert_eq!(paths(&p), ["spec.template.spec.volumes[0].dataVolume.hotpluggable"]);
    // An instancetype the node could not honour is refused too.
    let p = admit(
        &read("clarge.yaml").replace("    guest: 4\n", "    guest: 4\n    dedicatedCPUPlacement: true\n"),
    );
    assert_eq!(paths(&p), ["spec.cpu.dedicatedCPUPlacement"]);
    // Structural errors and node errors come together, structure first.
    let p =
        admit(&read("vmi-gpu.yaml").replace(
            "        name: gpu1\n",
            "        name: gpu1\n      - name: gpu1\n        deviceName: x\n",
        ));
    assert_eq!(paths(&p), ["spec.domain.devices.gpus[1].name", "spec.domain.devices.gpus"]);
}

// ---- Never panics ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(docs) = model::load_yaml(&text) {
            for d in docs { let _ = d.object.admit(&NodeSupport::default()); }
        }
        if let Ok(d) = model::load_json(&text) { let _ = d.object.admit(&NodeSupport::default()); }
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-zA-Z0-9:{}\\[\\], \n\"'#&*!|>@?./%-]{0,300}") {
        if let Ok(docs) = model::load_yaml(&text) {
            for d in docs { let _ = d.object.admit(&NodeSupport::default()); }
        }
    }

    #[test]
    fn mutated_vms_never_panic(cut in 0usize..2000, insert in "[a-z:{}\\[\\] \n\"'0-9.-]{0,12}", file in 0usize..3) {
        // Splice random text into a real VM: loading, validating, admitting and resolving must not panic.
        let name = ["vm-cirros-csmall.yaml", "vm-windows-clarge-windows.yaml", "vm-alpine-datavolume.yaml"][file];
        let base = read(name);
        let cut = cut.min(base.len());
        let cut = (0..=cut).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..cut], insert, &base[cut..]);
        if let Ok(docs) = model::load_yaml(&text) {
            for d in docs {
                let _ = d.object.admit(&NodeSupport::default());
                let _ = d.object.to_yaml();
                if let KubeVirtObject::VirtualMachine(vm) = &d.object {
                    let _ = resolve(vm, &CATALOG.with(Clone::clone));
                }
            }
        }
    }
}

thread_local! {
    static CATALOG: Catalog = catalog();
}
