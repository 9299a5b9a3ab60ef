//! DataVolumes on the cluster: an HTTP server in the node's network namespace serves a raw disk
//! with a marker; a DataVolume imports it into a claim of the local provisioner through an
//! importer pod; a VM boots from it (the test guest prints the disk's first bytes); a DataVolume
//! whose URL is missing ends Failed with the importer's reason. Clones: a VM whose
//! `dataVolumeTemplates` clone a second imported claim waits `Provisioning` while that claim is
//! missing, its DataVolume (owned by the VM) is cloned by a clone pod once the source is there,
//! and the VM boots from the clone; the guest's write stays in the clone.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{kernel_vm_yaml, ok, wait_for, Cluster};

/// The first 16 bytes of the served disk (the test guest prints them: `VIRT-E2E: sig=...`).
pub const MARKER: &str = "VIRT-PVC-DISK-OK";
/// The served disk's size.
pub const DISK_BYTES: usize = 4 << 20;
const PORT: u16 = 18_089;
/// The namespace of the clone's source (the clone is in the test's namespace).
const SRC_NS: &str = "virt-rs-e2e-src";

/// The node's address on its veth (the host's is `.254`); pods reach it through their gateway.
pub fn node_ip(cluster: &Cluster) -> String {
    let prefix = cluster.host_ip.rsplit_once('.').unwrap().0;
    format!("{prefix}.1")
}

/// The pod network's gateway (cni0 in the node's namespace, scripts/k8s/up.sh): pods have no
/// default route, so they reach the node's server there.
pub const POD_GATEWAY: &str = "10.244.0.1";

/// The URL of a file the server serves (`disk.img`), or does not (anything else: 404).
pub fn url(_cluster: &Cluster, file: &str) -> String {
    format!("http://{POD_GATEWAY}:{PORT}/{file}")
}

/// Starts busybox's httpd in the node's network namespace serving `disk.img` (raw, [`MARKER`]
/// first); waits until it answers.
pub fn serve(cluster: &mut Cluster) {
    let www = cluster.tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut disk = vec![0u8; DISK_BYTES];
    disk[..MARKER.len()].copy_from_slice(MARKER.as_bytes());
    // Something past the first block too, so the image is not mostly one byte.
    for (i, b) in disk[4096..8192].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(www.join("disk.img"), &disk).unwrap();
    // Every address of the node's namespace: the pods' gateway (cni0 appears with the first
    // pod) and the node's veth address (reached from the host to see that it answers).
    let listen = format!("0.0.0.0:{PORT}");
    let child = Command::new("nsenter")
        .arg("--net=/run/netns/virtrs-k8s")
        .args(["/bin/busybox", "httpd", "-f", "-p", &listen, "-h"])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cluster.http = Some(child);
    let addr = format!("{}:{PORT}", node_ip(cluster)).parse().unwrap();
    wait_for("the HTTP server in the node's namespace", 20, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok().map(|_| ())
    });
}

/// A DataVolume importing `url` into a claim of `size`.
pub fn dv_yaml(name: &str, url: &str, size: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  source:\n    \
         http:\n      url: {url}\n  storage:\n    resources:\n      requests:\n        storage: {size}\n"
    )
}

/// A VM (runStrategy Once) booting the kernel-boot image with the DataVolume `dv` as its first
/// disk; the guest's e2e mode prints the disk's first 16 bytes, writes its first block and
/// powers off.
pub fn dv_vm_yaml(name: &str, image: &str, dv: &str) -> String {
    let yaml = kernel_vm_yaml(name, image)
        .replace("runStrategy: Halted", "runStrategy: Once")
        .replace("kernelArgs: console=ttyS0 panic=-1", "kernelArgs: console=ttyS0 panic=-1 virt.e2e=1")
        .replace(
            "        devices: {}\n",
            "        devices:\n          disks:\n          - name: root\n            disk:\n              bus: virtio\n",
        );
    format!("{yaml}      volumes:\n      - name: root\n        dataVolume:\n          name: {dv}\n")
}

/// [`dv_vm_yaml`] whose DataVolume comes from its `dataVolumeTemplates`: `dv`, a clone of claim
/// `src_ns/src` sized as it (`storage: {}`, as conformance/cdi/clone-datavolume.yaml).
pub fn clone_vm_yaml(name: &str, image: &str, dv: &str, src_ns: &str, src: &str) -> String {
    dv_vm_yaml(name, image, dv).replace(
        "spec:\n  runStrategy: Once\n",
        &format!(
            "spec:\n  runStrategy: Once\n  dataVolumeTemplates:\n  - metadata:\n      name: {dv}\n    spec:\n      \
             source:\n        pvc:\n          namespace: {src_ns}\n          name: {src}\n      storage: {{}}\n"
        ),
    )
}

fn apply(cluster: &Cluster, ns: &str, name: &str, yaml: &str) {
    let file = cluster.tmp.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()]));
}

fn first_bytes(path: &Path, n: usize) -> String {
    let data = std::fs::read(path).unwrap();
    String::from_utf8_lossy(&data[..n.min(data.len())]).into_owned()
}

/// The whole DataVolume scenario in `ns` (the HTTP server runs: [`serve`]). `bad_dv`: a
/// DataVolume created earlier whose URL is missing on the server.
pub fn run(cluster: &Cluster, ns: &str, bad_dv: &str) {
    let t = Instant::now();
    // The VM first: its DataVolume does not exist yet, so its VMI waits Pending, saying why.
    apply(cluster, ns, "vm-dv", &dv_vm_yaml("vm-dv", &cluster.kernel_image, "dv-disk"));
    let why = wait_for("the DataVolume VM's VMI to wait Pending for its DataVolume", 60, || {
        cluster
            .get(
                &["vmi", "vm-dv", "-n", ns],
                "{.status.phase} {.status.conditions[?(@.type=='Synchronized')].reason}: {.status.conditions[?(@.type=='Synchronized')].message}",
            )
            .filter(|s| s.starts_with("Pending DataVolumesNotReady"))
    });
    assert!(why.contains("DataVolume virt-rs-e2e/dv-disk does not exist"), "{why}");
    assert_eq!(
        cluster
            .get(&["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-dv"], "{.items[*].metadata.name}")
            .as_deref(),
        Some(""),
        "no launcher pod while the DataVolume is missing"
    );
    eprintln!("VM with a missing DataVolume: VMI {why}");

    // A VM whose dataVolumeTemplates clone claim dv-base of another namespace (as CDI allows),
    // which does not exist yet: its DataVolume is made (owned by the VM) and waits, the VM is
    // Provisioning and has no VMI.
    ok(&mut cluster.kubectl(&["create", "namespace", SRC_NS]));
    apply(
        cluster,
        ns,
        "vm-clone",
        &clone_vm_yaml("vm-clone", &cluster.kernel_image, "dv-clone", SRC_NS, "dv-base"),
    );
    let vm_uid = cluster.get(&["vm", "vm-clone", "-n", ns], "{.metadata.uid}").unwrap();
    let waiting = wait_for("the clone DataVolume to wait for its source", 60, || {
        cluster
            .get(
                &["dv", "dv-clone", "-n", ns],
                "{.status.phase} {.status.conditions[?(@.type=='Bound')].reason}: {.status.conditions[?(@.type=='Bound')].message}",
            )
            .filter(|s| s.contains("CloneWithoutSource"))
    });
    assert_eq!(waiting, format!("Pending CloneWithoutSource: The source pvc {SRC_NS}/dv-base doesn't exist"));
    let owner = cluster
        .get(
            &["dv", "dv-clone", "-n", ns],
            "{.metadata.ownerReferences[0].kind} {.metadata.ownerReferences[0].uid}",
        )
        .unwrap();
    assert_eq!(owner, format!("VirtualMachine {vm_uid}"), "the template's DataVolume is owned by its VM");
    wait_for("the clone VM to be Provisioning", 30, || {
        cluster
            .get(&["vm", "vm-clone", "-n", ns], "{.status.printableStatus}")
            .filter(|s| s == "Provisioning")
    });
    assert_eq!(
        cluster.get(&["vmi", "vm-clone", "-n", ns], "{.metadata.name}"),
        None,
        "no VMI while provisioning"
    );
    eprintln!("VM vm-clone Provisioning, DataVolume dv-clone: {waiting}");

    // The DataVolume: claim, volume, importer pod, phases to Succeeded.
    let imported = Instant::now();
    apply(cluster, ns, "dv-disk", &dv_yaml("dv-disk", &url(cluster, "disk.img"), "16Mi"));
    // The clone's source, imported beside it.
    apply(cluster, SRC_NS, "dv-base", &dv_yaml("dv-base", &url(cluster, "disk.img"), "16Mi"));
    let mut phases: Vec<String> = Vec::new();
    wait_for("DataVolume dv-disk Succeeded", 180, || {
        let p = cluster.get(&["dv", "dv-disk", "-n", ns], "{.status.phase}").unwrap_or_default();
        if !p.is_empty() && phases.last() != Some(&p) {
            phases.push(p.clone());
        }
        assert_ne!(p, "Failed", "{:?}", cluster.get(&["dv", "dv-disk", "-n", ns], "{.status}"));
        (p == "Succeeded").then_some(())
    });
    eprintln!("DataVolume dv-disk: phases {phases:?}, Succeeded in {:?}", imported.elapsed());
    let status = cluster
        .get(
            &["dv", "dv-disk", "-n", ns],
            "{.status.progress} {.status.conditions[?(@.type=='Bound')].status} {.status.conditions[?(@.type=='Ready')].status} {.status.conditions[?(@.type=='Running')].reason}",
        )
        .unwrap();
    assert_eq!(status, "100.0% True True Completed");
    let dv_uid = cluster.get(&["dv", "dv-disk", "-n", ns], "{.metadata.uid}").unwrap();
    let claim = cluster
        .get(
            &["pvc", "dv-disk", "-n", ns],
            "{.status.phase} {.spec.storageClassName} {.metadata.ownerReferences[0].kind} {.metadata.ownerReferences[0].uid} {.spec.volumeName}",
        )
        .unwrap();
    let parts: Vec<&str> = claim.split(' ').collect();
    assert_eq!(parts[..4], ["Bound", "virt-rs-local", "DataVolume", dv_uid.as_str()], "{claim}");
    let pv = parts[4];
    let host_dir = PathBuf::from(cluster.get(&["pv", pv], "{.spec.hostPath.path}").unwrap());
    assert!(host_dir.starts_with(&cluster.storage_dir), "{}", host_dir.display());
    let importer = cluster
        .get(
            &["pod", "importer-dv-disk", "-n", ns],
            "{.status.phase} {.status.containerStatuses[0].state.terminated.reason} {.metadata.ownerReferences[0].uid}",
        )
        .unwrap();
    assert_eq!(
        importer,
        format!("Succeeded Completed {dv_uid}"),
        "the importer pod Completed, owned by the DataVolume"
    );
    let disk = host_dir.join("disk.img");
    assert_eq!(first_bytes(&disk, MARKER.len()), MARKER, "the imported disk.img on the node");
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 16 << 20, "grown to the DataVolume's size");
    eprintln!("PVC dv-disk Bound to {pv} at {}, importer pod Completed", host_dir.display());

    // The clone: dv-base imported, dv-clone cloned from its claim by a clone pod, sized as it.
    let mut clone_phases: Vec<String> = Vec::new();
    let mut base_done = None;
    wait_for("DataVolume dv-clone Succeeded", 180, || {
        let base = cluster.get(&["dv", "dv-base", "-n", SRC_NS], "{.status.phase}").unwrap_or_default();
        if base == "Succeeded" && base_done.is_none() {
            base_done = Some(Instant::now());
        }
        let p = cluster.get(&["dv", "dv-clone", "-n", ns], "{.status.phase}").unwrap_or_default();
        if !p.is_empty() && clone_phases.last() != Some(&p) {
            clone_phases.push(p.clone());
        }
        assert_ne!(p, "Failed", "{:?}", cluster.get(&["dv", "dv-clone", "-n", ns], "{.status}"));
        (p == "Succeeded").then_some(())
    });
    let after_source = base_done.map(|t| t.elapsed());
    eprintln!(
        "DataVolume dv-clone: phases {clone_phases:?}, Succeeded {after_source:?} after its source did"
    );
    let clone = cluster
        .get(
            &["dv", "dv-clone", "-n", ns],
            "{.status.progress} {.status.conditions[?(@.type=='Ready')].status} {.metadata.annotations.cdi\\.kubevirt\\.io/cloneType}",
        )
        .unwrap();
    let fallback = cluster
        .get(&["dv", "dv-clone", "-n", ns], "{.metadata.annotations.cdi\\.kubevirt\\.io/cloneFallbackReason}")
        .unwrap_or_default();
    assert!(
        clone == "100.0% True reflink"
            || (clone == "100.0% True host-assisted" && fallback.contains("FICLONE")),
        "{clone} / {fallback}"
    );
    eprintln!("DataVolume dv-clone: {clone} ({fallback})");
    let clone_pvc = |name: &str, ns: &str| {
        let c = cluster
            .get(
                &["pvc", name, "-n", ns],
                "{.status.phase} {.spec.resources.requests.storage} {.spec.volumeName}",
            )
            .unwrap();
        let parts: Vec<String> = c.split(' ').map(str::to_string).collect();
        assert_eq!(parts[0], "Bound", "{name}: {c}");
        let dir = PathBuf::from(cluster.get(&["pv", &parts[2]], "{.spec.hostPath.path}").unwrap());
        (parts[1].clone(), parts[2].clone(), dir)
    };
    let (base_size, _, base_dir) = clone_pvc("dv-base", SRC_NS);
    let (clone_size, clone_pv, clone_dir) = clone_pvc("dv-clone", ns);
    assert_eq!(clone_size, (16u64 << 20).to_string(), "sized as its source ({base_size})");
    let cloner = cluster
        .get(
            &["pod", "cdi-clone-dv-clone", "-n", ns],
            "{.status.phase} {.metadata.ownerReferences[0].kind} {.spec.volumes[?(@.name=='cdi-source-vol')].hostPath.path}",
        )
        .unwrap();
    assert_eq!(
        cloner,
        format!("Succeeded DataVolume {}", base_dir.display()),
        "the clone pod read the source's volume"
    );
    let (base_disk, clone_disk) = (base_dir.join("disk.img"), clone_dir.join("disk.img"));
    assert_eq!(
        std::fs::read(&base_disk).unwrap(),
        std::fs::read(&clone_disk).unwrap(),
        "the clone's disk.img"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&clone_disk).unwrap().blocks() * 512;
        assert!(blocks <= 1 << 20, "holes kept: {blocks} bytes allocated of 16 MiB");
    }
    eprintln!("PVC dv-clone Bound to {clone_pv} at {}, clone pod Completed", clone_dir.display());

    // The VM starts now and boots with the claim as its disk: the guest reads the marker and
    // writes its first block, which lands in disk.img on the node.
    let booted = Instant::now();
    let vmi_uid = cluster.get(&["vmi", "vm-dv", "-n", ns], "{.metadata.uid}").unwrap();
    let console = cluster.node_state.join("vmis").join(&vmi_uid).join("console.log");
    let seen = wait_for("the DataVolume VM's guest to read its disk and power off", 240, || {
        let phase = cluster.get(&["vmi", "vm-dv", "-n", ns], "{.status.phase}").unwrap_or_default();
        assert_ne!(phase, "Failed", "{:?}", cluster.get(&["vmi", "vm-dv", "-n", ns], "{.status}"));
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        (phase == "Succeeded" && log.contains("VIRT-E2E: sig=")).then_some(log)
    });
    assert!(seen.contains(&format!("VIRT-E2E: sig={MARKER}")), "{seen}");
    assert!(seen.contains("VIRT-E2E: vda write ALLOWED"), "{seen}");
    assert_eq!(first_bytes(&disk, 12), "VIRT-CLOBBER", "the guest's write reached the claim on the node");
    let pod = cluster
        .get(
            &["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-dv"],
            "{.items[0].spec.volumes[?(@.name=='pvc-root')].persistentVolumeClaim.claimName}",
        )
        .unwrap();
    assert_eq!(pod, "dv-disk", "the launcher pod mounts the DataVolume's claim");
    eprintln!(
        "VM vm-dv booted from the DataVolume, read {MARKER} and wrote its disk: {:?}",
        booted.elapsed()
    );

    // The clone VM started once its DataVolume succeeded and booted from the clone: the guest
    // read the marker and wrote the clone's first block; the source is unchanged.
    let vmi_uid = cluster.get(&["vmi", "vm-clone", "-n", ns], "{.metadata.uid}").unwrap();
    let console = cluster.node_state.join("vmis").join(&vmi_uid).join("console.log");
    let seen = wait_for("the clone VM's guest to read its disk and power off", 240, || {
        let phase = cluster.get(&["vmi", "vm-clone", "-n", ns], "{.status.phase}").unwrap_or_default();
        assert_ne!(phase, "Failed", "{:?}", cluster.get(&["vmi", "vm-clone", "-n", ns], "{.status}"));
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        (phase == "Succeeded" && log.contains("VIRT-E2E: sig=")).then_some(log)
    });
    assert!(seen.contains(&format!("VIRT-E2E: sig={MARKER}")), "{seen}");
    assert_eq!(first_bytes(&clone_disk, 12), "VIRT-CLOBBER", "the guest's write reached the clone");
    assert_eq!(first_bytes(&base_disk, MARKER.len()), MARKER, "and not its source");
    let pod = cluster
        .get(
            &["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-clone"],
            "{.items[0].spec.volumes[?(@.name=='pvc-root')].persistentVolumeClaim.claimName}",
        )
        .unwrap();
    assert_eq!(pod, "dv-clone", "the launcher pod mounts the clone's claim");
    eprintln!("VM vm-clone booted from its cloned DataVolume, read {MARKER}; the source is unchanged");

    // The DataVolume whose URL is missing: Failed, with the importer's reason.
    let failed = wait_for(&format!("DataVolume {bad_dv} Failed"), 120, || {
        cluster
            .get(
                &["dv", bad_dv, "-n", ns],
                "{.status.phase}: {.status.conditions[?(@.type=='Running')].message}",
            )
            .filter(|s| s.starts_with("Failed"))
    });
    assert!(failed.contains("HTTP 404"), "{failed}");
    eprintln!("DataVolume {bad_dv}: {failed}");

    // Deleting the VM, then the DataVolume: claim, importer pod and volume go with it.
    ok(&mut cluster.kubectl(&["delete", "vm", "vm-dv", "vm-clone", "-n", ns, "--wait=false"]));
    wait_for("the DataVolume VMs' VMIs to go", 120, || {
        let a = cluster.get(&["vmi", "vm-dv", "-n", ns], "{.metadata.name}");
        let b = cluster.get(&["vmi", "vm-clone", "-n", ns], "{.metadata.name}");
        (a.is_none() && b.is_none()).then_some(())
    });
    let deleted = Instant::now();
    ok(&mut cluster.kubectl(&["delete", "dv", "dv-disk", bad_dv, "-n", ns, "--wait=false"]));
    ok(&mut cluster.kubectl(&["delete", "dv", "dv-base", "-n", SRC_NS, "--wait=false"]));
    wait_for("the DataVolumes' claims, pods and volumes to go (the clone's with its VM)", 120, || {
        let claim = cluster.get(&["pvc", "dv-disk", "-n", ns], "{.metadata.name}");
        let pod = cluster.get(&["pod", "importer-dv-disk", "-n", ns], "{.metadata.name}");
        let volume = cluster.get(&["pv", pv], "{.metadata.name}");
        let clone = cluster.get(&["dv", "dv-clone", "-n", ns], "{.metadata.name}");
        let cloner = cluster.get(&["pod", "cdi-clone-dv-clone", "-n", ns], "{.metadata.name}");
        let clone_volume = cluster.get(&["pv", &clone_pv], "{.metadata.name}");
        (claim.is_none()
            && pod.is_none()
            && volume.is_none()
            && !host_dir.exists()
            && clone.is_none()
            && cloner.is_none()
            && clone_volume.is_none()
            && !clone_dir.exists()
            && !base_dir.exists())
        .then_some(())
    });
    eprintln!(
        "DataVolume deleted -> claim, importer pod, volume and its directory gone: {:?}",
        deleted.elapsed()
    );
    eprintln!("DataVolumes: {:?}", t.elapsed());
}
