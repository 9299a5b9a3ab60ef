//! Validation of a VMI's volumes (each source kind, cloud-init) and the disks that use them.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{check_name, child, is_dns1123_label, ProblemKind, Validation};

use crate::model::devices::DiskBus;
use crate::model::vmi::VirtualMachineInstanceSpec;
use crate::model::volumes::{CloudInitSource, HostDiskType, Volume, VolumeKind};

use super::{err, invalid, is_base64, is_pci_address, item, CLOUD_INIT_MAX_LEN};

/// Validates volumes; returns their names and kinds for the disk checks.
pub(super) fn validate_volumes<'a>(
    v: &mut Validation,
    volumes: &'a [Volume],
    path: &str,
) -> BTreeMap<&'a str, Option<VolumeKind>> {
    let mut names = BTreeMap::new();
    let mut cloud_init = None;
    let mut service_accounts = 0;
    for (i, vol) in volumes.iter().enumerate() {
        let vp = item(path, "volumes", i);
        if vol.name.is_empty() {
            err(v, child(&vp, "name"), ProblemKind::Required, "a name is required");
        } else if !is_dns1123_label(&vol.name) {
            invalid(
                v,
                child(&vp, "name"),
                format!(
                    "{:?} is not a valid volume name: lowercase letters, digits and '-', at most 63",
                    vol.name
                ),
            );
        } else if names.insert(vol.name.as_str(), vol.kind()).is_some() {
            invalid(v, child(&vp, "name"), format!("{:?} is used twice", vol.name));
        }
        let kinds = vol.kinds();
        let kind = match kinds.as_slice() {
            [] => {
                err(v, vp.clone(), ProblemKind::Required, "no volume source set: set one of containerDisk, persistentVolumeClaim, dataVolume, cloudInitNoCloud, emptyDisk, hostDisk, ...");
                continue;
            }
            [one] => *one,
            many => {
                let list: Vec<&str> = many.iter().map(|k| k.field()).collect();
                invalid(
                    v,
                    vp.clone(),
                    format!(
                        "exactly one volume source may be set, found {}: {}",
                        many.len(),
                        list.join(", ")
                    ),
                );
                continue;
            }
        };
        let sp = child(&vp, kind.field());
        match kind {
            VolumeKind::ContainerDisk => {
                if let Some(c) = &vol.container_disk {
                    if c.image.trim().is_empty() {
                        err(v, child(&sp, "image"), ProblemKind::Required, "an image is required");
                    } else if c.image.chars().any(char::is_whitespace) {
                        invalid(
                            v,
                            child(&sp, "image"),
                            format!("{:?}: an image reference has no whitespace", c.image),
                        );
                    }
                    if let Some(p) = &c.path {
                        if !p.starts_with('/') {
                            invalid(v, child(&sp, "path"), format!("{p:?}: must be an absolute path"));
                        }
                    }
                }
            }
            VolumeKind::HostDisk => {
                if let Some(h) = &vol.host_disk {
                    if h.path.is_empty() {
                        err(v, child(&sp, "path"), ProblemKind::Required, "a path is required");
                    } else if !h.path.starts_with('/') {
                        invalid(v, child(&sp, "path"), format!("{:?}: must be an absolute path", h.path));
                    }
                    match (h.type_, &h.capacity) {
                        (HostDiskType::DiskOrCreate, None) => err(
                            v,
                            child(&sp, "capacity"),
                            ProblemKind::Required,
                            "required for type DiskOrCreate",
                        ),
                        (HostDiskType::DiskOrCreate, Some(c)) if c.is_zero() => {
                            invalid(v, child(&sp, "capacity"), format!("{c}: must be more than zero"))
                        }
                        (HostDiskType::Disk, Some(_)) => {
                            invalid(v, child(&sp, "capacity"), "allowed only for type DiskOrCreate")
                        }
                        _ => {}
                    }
                }
            }
            VolumeKind::PersistentVolumeClaim => {
                if let Some(p) = &vol.persistent_volume_claim {
                    check_name(v, child(&sp, "claimName"), &p.claim_name, "claim name");
                }
            }
            VolumeKind::Ephemeral => {
                match vol.ephemeral.as_ref().and_then(|e| e.persistent_volume_claim.as_ref()) {
                    Some(p) => check_name(
                        v,
                        child(&child(&sp, "persistentVolumeClaim"), "claimName"),
                        &p.claim_name,
                        "claim name",
                    ),
                    None => err(
                        v,
                        child(&sp, "persistentVolumeClaim"),
                        ProblemKind::Required,
                        "the claim under the ephemeral layer is required",
                    ),
                }
            }
            VolumeKind::DataVolume => {
                if let Some(d) = &vol.data_volume {
                    check_name(v, child(&sp, "name"), &d.name, "DataVolume name");
                }
            }
            VolumeKind::EmptyDisk => {
                if let Some(e) = &vol.empty_disk {
                    if e.capacity.is_zero() {
                        invalid(v, child(&sp, "capacity"), format!("{}: must be more than zero", e.capacity));
                    }
                }
            }
            VolumeKind::CloudInitNoCloud | VolumeKind::CloudInitConfigDrive => {
                let source = vol.cloud_init_no_cloud.as_ref().or(vol.cloud_init_config_drive.as_ref());
                if let Some(c) = source {
                    validate_cloud_init(v, c, &sp);
                }
                if let Some(first) = cloud_init.replace(i) {
                    invalid(
                        v,
                        vp.clone(),
                        format!("only one cloud-init volume is allowed; volumes[{first}] is one already"),
                    );
                }
            }
            VolumeKind::ConfigMap => {
                if vol.config_map.as_ref().and_then(|c| c.name.as_deref()).is_none_or(str::is_empty) {
                    err(v, child(&sp, "name"), ProblemKind::Required, "a ConfigMap name is required");
                }
            }
            VolumeKind::Secret => {
                if vol.secret.as_ref().and_then(|c| c.secret_name.as_deref()).is_none_or(str::is_empty) {
                    err(v, child(&sp, "secretName"), ProblemKind::Required, "a Secret name is required");
                }
            }
            VolumeKind::ServiceAccount => {
                service_accounts += 1;
                if service_accounts > 1 {
                    invalid(v, vp.clone(), "only one serviceAccount volume is allowed");
                }
                if vol
                    .service_account
                    .as_ref()
                    .and_then(|c| c.service_account_name.as_deref())
                    .is_none_or(str::is_empty)
                {
                    err(
                        v,
                        child(&sp, "serviceAccountName"),
                        ProblemKind::Required,
                        "a service account name is required",
                    );
                }
            }
            VolumeKind::Sysprep => {
                if let Some(s) = &vol.sysprep {
                    if s.secret.is_some() == s.config_map.is_some() {
                        invalid(v, sp.clone(), "set exactly one of secret and configMap");
                    }
                }
            }
            VolumeKind::MemoryDump => {
                if let Some(p) = &vol.memory_dump {
                    check_name(v, child(&sp, "claimName"), &p.claim_name, "claim name");
                }
            }
            VolumeKind::DownwardApi | VolumeKind::DownwardMetrics => {}
        }
    }
    names
}

pub(super) fn validate_cloud_init(v: &mut Validation, c: &CloudInitSource, sp: &str) {
    let user: Vec<&str> = [
        (c.user_data.is_some(), "userData"),
        (c.user_data_base64.is_some(), "userDataBase64"),
        (c.user_data_secret_ref.is_some(), "secretRef"),
    ]
    .into_iter()
    .filter_map(|(set, f)| set.then_some(f))
    .collect();
    let network =
        [c.network_data.is_some(), c.network_data_base64.is_some(), c.network_data_secret_ref.is_some()];
    let network_count = network.iter().filter(|x| **x).count();
    if user.len() > 1 {
        invalid(
            v,
            sp.to_string(),
            format!("set one of userData, userDataBase64 and secretRef, found {}", user.join(", ")),
        );
    }
    if network_count > 1 {
        invalid(v, sp.to_string(), "set one of networkData, networkDataBase64 and networkDataSecretRef");
    }
    if user.is_empty() && network_count == 0 {
        err(v, sp.to_string(), ProblemKind::Required, "user data or network data is required");
    }
    for (field, value) in
        [("userDataBase64", &c.user_data_base64), ("networkDataBase64", &c.network_data_base64)]
    {
        if let Some(b) = value {
            if !is_base64(b) {
                invalid(v, child(sp, field), "not valid base64");
            }
        }
    }
    for (field, value) in [
        ("userData", &c.user_data),
        ("userDataBase64", &c.user_data_base64),
        ("networkData", &c.network_data),
        ("networkDataBase64", &c.network_data_base64),
    ] {
        if let Some(s) = value {
            if s.len() > CLOUD_INIT_MAX_LEN {
                invalid(
                    v,
                    child(sp, field),
                    format!(
                        "{} bytes: at most {CLOUD_INIT_MAX_LEN} inline; put larger data in a Secret",
                        s.len()
                    ),
                );
            }
        }
    }
    for (field, r) in
        [("secretRef", &c.user_data_secret_ref), ("networkDataSecretRef", &c.network_data_secret_ref)]
    {
        if let Some(r) = r {
            if r.name.as_deref().is_none_or(str::is_empty) {
                err(v, child(&child(sp, field), "name"), ProblemKind::Required, "a Secret name is required");
            }
        }
    }
}

pub(super) fn validate_disks(
    v: &mut Validation,
    spec: &VirtualMachineInstanceSpec,
    dp: &str,
    volumes: &BTreeMap<&str, Option<VolumeKind>>,
) {
    let devp = child(dp, "devices");
    let disks = &spec.domain.devices.disks;
    let mut seen = BTreeSet::new();
    let mut boot_orders: BTreeMap<u32, String> = BTreeMap::new();
    for (i, disk) in disks.iter().enumerate() {
        let p = item(&devp, "disks", i);
        if disk.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
        } else if !seen.insert(disk.name.as_str()) {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", disk.name));
        } else if !volumes.contains_key(disk.name.as_str()) {
            invalid(
                v,
                child(&p, "name"),
                format!("no volume named {:?}: every disk needs a volume of the same name", disk.name),
            );
        }
        let targets: Vec<&str> =
            [(disk.disk.is_some(), "disk"), (disk.lun.is_some(), "lun"), (disk.cdrom.is_some(), "cdrom")]
                .into_iter()
                .filter_map(|(set, f)| set.then_some(f))
                .collect();
        if targets.len() > 1 {
            invalid(
                v,
                p.clone(),
                format!("set at most one of disk, lun and cdrom, found {}", targets.join(", ")),
            );
        }
        if disk.cdrom.as_ref().and_then(|c| c.bus) == Some(DiskBus::Virtio) {
            invalid(v, child(&child(&p, "cdrom"), "bus"), "virtio is not a CD-ROM bus: use sata or scsi");
        }
        if disk.lun.as_ref().and_then(|c| c.bus) == Some(DiskBus::Usb) {
            invalid(v, child(&child(&p, "lun"), "bus"), "usb is not a LUN bus: use scsi");
        }
        if let Some(addr) = disk.disk.as_ref().and_then(|d| d.pci_address.as_deref()) {
            if !is_pci_address(addr) {
                invalid(
                    v,
                    child(&child(&p, "disk"), "pciAddress"),
                    format!("{addr:?} is not a PCI address like 0000:81:01.1"),
                );
            }
        }
        if let Some(o) = disk.boot_order {
            check_boot_order(v, &mut boot_orders, o, child(&p, "bootOrder"));
        }
        if let Some(s) = &disk.serial {
            if s.is_empty()
                || s.len() > 20
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
            {
                invalid(
                    v,
                    child(&p, "serial"),
                    format!("{s:?}: 1 to 20 of letters, digits, '_', '.', '+' and '-'"),
                );
            }
        }
        if let Some(b) = &disk.block_size {
            if b.custom.is_some() && b.match_volume.is_some() {
                invalid(v, child(&p, "blockSize"), "set one of custom and matchVolume, not both");
            }
        }
    }
    let ifp = child(&devp, "interfaces");
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        if let Some(o) = iface.boot_order {
            check_boot_order(v, &mut boot_orders, o, format!("{ifp}[{i}].bootOrder"));
        }
    }
}

pub(super) fn check_boot_order(
    v: &mut Validation,
    seen: &mut BTreeMap<u32, String>,
    order: u32,
    path: String,
) {
    if order == 0 {
        invalid(v, path, "must be greater than 0");
    } else if let Some(first) = seen.get(&order) {
        invalid(v, path, format!("boot order {order} is used by {first} too: each must be unique"));
    } else {
        seen.insert(order, path);
    }
}
