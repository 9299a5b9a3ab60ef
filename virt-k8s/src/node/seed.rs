//! The cloud-init seed of a VMI on the node: the volume's `secretRef` / `networkDataSecretRef`
//! read from the node's Secrets (KubeVirt's keys `userdata` or `userData`, `networkdata` or
//! `networkData`), and the SSH public keys of `accessCredentials` propagated by `noCloud` or
//! `configDrive` (every line of every value of each Secret, in key order, as KubeVirt reads them)
//! written into the seed's metadata (docs/cloud-init.md).

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use virt_core::agent::{AuthorizedKeys, GuestCredentials, UserPassword};
use virt_core::model::credentials::{access_credentials, ssh_key_secrets, AccessCredential, Propagation};
use virt_core::model::{CloudInitSource, VirtualMachineInstance, Volume};
use virt_storage::cloudinit::{write_seed, SeedInfo};

use super::core_objects::CoreObjects;

/// Why a seed could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A Secret the VMI names does not exist.
    #[error("{field}: Secret {namespace}/{name} not found")]
    NoSecret {
        /// The field naming it (`spec.volumes[cloudinitdisk].cloudInitNoCloud.secretRef`, ...).
        field: String,
        /// Its namespace (the VMI's).
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The Secret has none of the keys the field reads.
    #[error("{field}: Secret {namespace}/{name} has no key {keys}")]
    NoKey {
        /// The field naming the Secret.
        field: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The keys looked for.
        keys: &'static str,
    },
    /// A `userPassword` Secret's value that is not a password (not UTF-8, a NUL, a line break).
    #[error("{field}: Secret {namespace}/{name}: the password of user {user:?} is not a line of UTF-8 text")]
    BadPassword {
        /// The field naming the Secret.
        field: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key (the guest user).
        user: String,
    },
    /// The seed itself (bad data, the file).
    #[error(transparent)]
    CloudInit(#[from] virt_storage::cloudinit::CloudInitError),
}

/// Resolves `field`'s Secret reference into base64 data.
fn secret_value(
    objects: Option<&CoreObjects>,
    ns: &str,
    name: &str,
    field: String,
    keys: [&'static str; 2],
) -> Result<String, SeedError> {
    let no_secret = || SeedError::NoSecret { field: field.clone(), namespace: ns.into(), name: name.into() };
    let data = objects.and_then(|o| o.secret(ns, name)).ok_or_else(no_secret)?;
    let value = keys.iter().find_map(|k| data.get(*k)).ok_or_else(|| SeedError::NoKey {
        field: field.clone(),
        namespace: ns.into(),
        name: name.into(),
        keys: if keys[0] == "userdata" { "userdata or userData" } else { "networkdata or networkData" },
    })?;
    Ok(STANDARD.encode(value))
}

fn resolve_source(
    objects: Option<&CoreObjects>,
    ns: &str,
    at: &str,
    src: &CloudInitSource,
) -> Result<CloudInitSource, SeedError> {
    let mut out = src.clone();
    if let Some(name) = src.user_data_secret_ref.as_ref().and_then(|r| r.name.clone()) {
        let field = format!("{at}.secretRef");
        out.user_data_base64 = Some(secret_value(objects, ns, &name, field, ["userdata", "userData"])?);
        out.user_data_secret_ref = None;
    }
    if let Some(name) = src.network_data_secret_ref.as_ref().and_then(|r| r.name.clone()) {
        let field = format!("{at}.networkDataSecretRef");
        out.network_data_base64 =
            Some(secret_value(objects, ns, &name, field, ["networkdata", "networkData"])?);
        out.network_data_secret_ref = None;
    }
    Ok(out)
}

/// The SSH keys of `vmi`'s `accessCredentials` propagated by `method`.
pub fn public_keys(
    objects: Option<&CoreObjects>,
    vmi: &VirtualMachineInstance,
    ns: &str,
    method: &Propagation,
) -> Result<Vec<String>, SeedError> {
    let mut keys = Vec::new();
    for secret in ssh_key_secrets(&vmi.spec, method) {
        let data = objects.and_then(|o| o.secret(ns, &secret)).ok_or_else(|| SeedError::NoSecret {
            field: "spec.accessCredentials.sshPublicKey.source.secret.secretName".into(),
            namespace: ns.into(),
            name: secret.clone(),
        })?;
        for value in data.values() {
            let text = String::from_utf8_lossy(value);
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
    }
    Ok(keys)
}

/// What the guest agent keeps in `vmi`'s guest (`accessCredentials` with `qemuGuestAgent`
/// propagation): each `sshPublicKey` credential's Secret's keys, for each user it names, and each
/// `userPassword` credential's Secret's entries as user -> password (KubeVirt's layout; a later
/// Secret's entry for the same user wins).
pub fn agent_credentials(
    objects: Option<&CoreObjects>,
    vmi: &VirtualMachineInstance,
    ns: &str,
) -> Result<GuestCredentials, SeedError> {
    let mut out: Vec<AuthorizedKeys> = Vec::new();
    let mut passwords: Vec<UserPassword> = Vec::new();
    for c in access_credentials(&vmi.spec) {
        let k = match c {
            AccessCredential::SshPublicKey(k) => k,
            AccessCredential::UserPassword { secret_name } => {
                for p in user_passwords(objects, ns, &secret_name)? {
                    passwords.retain(|q| q.user != p.user);
                    passwords.push(p);
                }
                continue;
            }
        };
        let Propagation::QemuGuestAgent { users } = &k.propagation else { continue };
        let keys = public_keys(objects, vmi, ns, &k.propagation)?;
        for user in users {
            match out.iter_mut().find(|a| &a.user == user) {
                Some(a) => {
                    a.keys.extend(keys.iter().filter(|k| !a.keys.contains(k)).cloned().collect::<Vec<_>>())
                }
                None => out.push(AuthorizedKeys { user: user.clone(), keys: keys.clone() }),
            }
        }
    }
    Ok(GuestCredentials { ssh_keys: out, passwords })
}

/// The user -> password entries of `userPassword` Secret `name` in `ns`.
fn user_passwords(
    objects: Option<&CoreObjects>,
    ns: &str,
    name: &str,
) -> Result<Vec<UserPassword>, SeedError> {
    const FIELD: &str = "spec.accessCredentials.userPassword.source.secret.secretName";
    let data = objects.and_then(|o| o.secret(ns, name)).ok_or_else(|| SeedError::NoSecret {
        field: FIELD.into(),
        namespace: ns.into(),
        name: name.into(),
    })?;
    let mut out = Vec::new();
    for (user, value) in data.iter() {
        let password = std::str::from_utf8(value)
            .ok()
            .filter(|p| !p.contains(['\0', '\n', '\r']))
            .ok_or_else(|| SeedError::BadPassword {
                field: FIELD.into(),
                namespace: ns.into(),
                name: name.into(),
                user: user.clone(),
            })?;
        out.push(UserPassword { user: user.clone(), password: password.to_string() });
    }
    Ok(out)
}

/// Writes the seed disk of cloud-init volume `v` of `vmi` (`name` in `ns`) to `dest`.
pub fn write_vmi_seed(
    objects: Option<&CoreObjects>,
    vmi: &VirtualMachineInstance,
    name: &str,
    ns: &str,
    v: &Volume,
    dest: &Path,
) -> Result<(), SeedError> {
    let mut resolved = v.clone();
    let at = |kind: &str| format!("spec.volumes[{}].{kind}", v.name);
    let method = if let Some(src) = &v.cloud_init_no_cloud {
        resolved.cloud_init_no_cloud = Some(resolve_source(objects, ns, &at("cloudInitNoCloud"), src)?);
        Propagation::NoCloud
    } else {
        if let Some(src) = &v.cloud_init_config_drive {
            resolved.cloud_init_config_drive =
                Some(resolve_source(objects, ns, &at("cloudInitConfigDrive"), src)?);
        }
        Propagation::ConfigDrive
    };
    let mut info = SeedInfo::for_vmi(name, ns, &vmi.spec);
    if let Some(uid) = &vmi.metadata.uid {
        info = info.with_uuid(uid.clone());
    }
    info = info.with_public_keys(public_keys(objects, vmi, ns, &method)?);
    write_seed(&resolved, &info, dest)?;
    Ok(())
}
