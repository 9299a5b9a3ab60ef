//! Loading and validation of KubeVirt objects by field path: a reference VMI that is valid and
//! round-trips, unknown fields with their path, malformed YAML with line and column, wrong types,
//! and property tests that no input makes loading, validation or resolution panic.

use proptest::prelude::*;
use virt_core::api::{self, DecodeErrorKind, FieldValidation, LoadError, LoadOptions, ProblemKind, Validate};
use virt_core::model::{self, resolve, Admit, Catalog, KubeVirtObject, NodeSupport, VirtualMachineInstance};

#[path = "support/conformance.rs"]
mod conformance;
use conformance::{catalog, read};

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
