//! `spec.accessCredentials`: SSH public keys (and, in KubeVirt, passwords) taken from a Secret and
//! put into the guest. The spec keeps the list as written ([`VirtualMachineInstanceSpec`]'s
//! `access_credentials`); this module reads it into [`AccessCredential`]s and validates it the way
//! KubeVirt's admission webhook does, naming the field of every problem.
//!
//! What this node propagates: `sshPublicKey` by `noCloud` or `configDrive` (the keys go into the
//! cloud-init seed's metadata as `public-keys` / `public_keys`, read once at first boot) and by
//! `qemuGuestAgent` (the launcher's agent writes them into each named user's `authorized_keys`
//! once the agent answers: `agent::AuthorizedKeys`); `userPassword` by `qemuGuestAgent` (each
//! Secret entry's user gets the value as password: `agent::UserPassword`).

use serde::Deserialize;
use serde_json::Value;

use super::VirtualMachineInstanceSpec;
use crate::api::{child, ProblemKind, Validation};

/// How the keys reach the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Propagation {
    /// The `cloudInitNoCloud` volume's metadata.
    NoCloud,
    /// The `cloudInitConfigDrive` volume's metadata.
    ConfigDrive,
    /// Written by the guest agent into these users' `authorized_keys`.
    QemuGuestAgent {
        /// The guest users.
        users: Vec<String>,
    },
}

/// One `accessCredentials` item that gives SSH public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKeyCredential {
    /// The Secret (in the VMI's namespace) whose every value holds keys, one a line.
    pub secret_name: String,
    /// How they reach the guest.
    pub propagation: Propagation,
}

/// One `accessCredentials` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessCredential {
    /// `sshPublicKey`.
    SshPublicKey(SshPublicKeyCredential),
    /// `userPassword` (from the Secret named), propagated by the guest agent.
    UserPassword {
        /// The Secret: user name -> password.
        secret_name: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCredential {
    ssh_public_key: Option<RawKey>,
    user_password: Option<RawKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawKey {
    source: Option<RawSource>,
    propagation_method: Option<RawPropagation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    secret: Option<RawSecret>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSecret {
    secret_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPropagation {
    no_cloud: Option<Value>,
    config_drive: Option<Value>,
    qemu_guest_agent: Option<RawAgent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAgent {
    #[serde(default)]
    users: Vec<String>,
}

/// The access credentials of `spec` that are well formed (see [`validate`] for the others).
pub fn access_credentials(spec: &VirtualMachineInstanceSpec) -> Vec<AccessCredential> {
    let mut v = Validation::default();
    spec.access_credentials.iter().enumerate().filter_map(|(i, c)| parse(&mut v, c, &item(i))).collect()
}

/// The SSH keys' Secrets of `spec` propagated by `method` (`NoCloud` or `ConfigDrive`).
pub fn ssh_key_secrets(spec: &VirtualMachineInstanceSpec, method: &Propagation) -> Vec<String> {
    access_credentials(spec)
        .into_iter()
        .filter_map(|c| match c {
            AccessCredential::SshPublicKey(k) if &k.propagation == method => Some(k.secret_name),
            _ => None,
        })
        .collect()
}

fn item(i: usize) -> String {
    format!("accessCredentials[{i}]")
}

fn is_secret_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Reads item `p` (relative path), recording its problems in `v` with paths under `p`.
fn parse(v: &mut Validation, value: &Value, p: &str) -> Option<AccessCredential> {
    let raw: RawCredential = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            v.push(p, ProblemKind::Invalid, e.to_string());
            return None;
        }
    };
    let (field, key, ssh) = match (raw.ssh_public_key, raw.user_password) {
        (Some(k), None) => ("sshPublicKey", k, true),
        (None, Some(k)) => ("userPassword", k, false),
        _ => {
            v.push(p, ProblemKind::Invalid, "set exactly one of sshPublicKey and userPassword");
            return None;
        }
    };
    let kp = child(p, field);
    let secret = key.source.and_then(|s| s.secret).and_then(|s| s.secret_name).unwrap_or_default();
    let sp = child(&child(&child(&kp, "source"), "secret"), "secretName");
    if secret.is_empty() {
        v.push(sp, ProblemKind::Required, "the name of a Secret in the VMI's namespace is required");
        return None;
    }
    if !is_secret_name(&secret) {
        v.push(sp, ProblemKind::Invalid, format!("{secret:?} is not a valid Secret name"));
        return None;
    }
    let pp = child(&kp, "propagationMethod");
    let Some(m) = key.propagation_method else {
        v.push(pp, ProblemKind::Required, "set one of noCloud, configDrive and qemuGuestAgent");
        return None;
    };
    let set = [m.no_cloud.is_some(), m.config_drive.is_some(), m.qemu_guest_agent.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        v.push(pp, ProblemKind::Invalid, "set exactly one of noCloud, configDrive and qemuGuestAgent");
        return None;
    }
    let propagation = if m.no_cloud.is_some() {
        Propagation::NoCloud
    } else if m.config_drive.is_some() {
        Propagation::ConfigDrive
    } else {
        let users = m.qemu_guest_agent.map(|a| a.users).unwrap_or_default();
        Propagation::QemuGuestAgent { users }
    };
    if !ssh {
        if !matches!(propagation, Propagation::QemuGuestAgent { .. }) {
            v.push(pp, ProblemKind::Invalid, "userPassword is propagated only by qemuGuestAgent");
            return None;
        }
        if matches!(&propagation, Propagation::QemuGuestAgent { users } if !users.is_empty()) {
            v.push(
                child(&child(&pp, "qemuGuestAgent"), "users"),
                ProblemKind::Invalid,
                "userPassword takes its users from the Secret's keys: remove users",
            );
            return None;
        }
        return Some(AccessCredential::UserPassword { secret_name: secret });
    }
    Some(AccessCredential::SshPublicKey(SshPublicKeyCredential { secret_name: secret, propagation }))
}

/// Validates `spec.accessCredentials` (at `path`, the spec's path) as KubeVirt does, and refuses
/// what this node cannot propagate.
pub(crate) fn validate(v: &mut Validation, spec: &VirtualMachineInstanceSpec, path: &str) {
    let has = |f: fn(&super::Volume) -> bool| spec.volumes.iter().any(f);
    for (i, value) in spec.access_credentials.iter().enumerate() {
        let p = child(path, &item(i));
        let Some(c) = parse(v, value, &p) else { continue };
        match c {
            AccessCredential::SshPublicKey(k) => {
                let pp = child(&child(&p, "sshPublicKey"), "propagationMethod");
                match k.propagation {
                    Propagation::NoCloud if !has(|vol| vol.cloud_init_no_cloud.is_some()) => v.push(
                        child(&pp, "noCloud"),
                        ProblemKind::Invalid,
                        "noCloud propagation needs a cloudInitNoCloud volume",
                    ),
                    Propagation::ConfigDrive if !has(|vol| vol.cloud_init_config_drive.is_some()) => v.push(
                        child(&pp, "configDrive"),
                        ProblemKind::Invalid,
                        "configDrive propagation needs a cloudInitConfigDrive volume",
                    ),
                    Propagation::QemuGuestAgent { users } if users.is_empty() => v.push(
                        child(&child(&pp, "qemuGuestAgent"), "users"),
                        ProblemKind::Required,
                        "name at least one guest user",
                    ),
                    _ => {}
                }
            }
            AccessCredential::UserPassword { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(creds: Value, volumes: Value) -> VirtualMachineInstanceSpec {
        serde_json::from_value(json!({
            "domain": {"devices": {}},
            "accessCredentials": creds,
            "volumes": volumes,
        }))
        .unwrap()
    }

    fn nocloud() -> Value {
        json!([{"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\n"}}])
    }

    fn problems(s: &VirtualMachineInstanceSpec) -> Vec<String> {
        let mut v = Validation::default();
        validate(&mut v, s, "spec");
        v.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ssh_key_by_nocloud_is_read() {
        let s = spec(
            json!([{"sshPublicKey": {"source": {"secret": {"secretName": "my-key"}},
                     "propagationMethod": {"noCloud": {}}}}]),
            nocloud(),
        );
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!(ssh_key_secrets(&s, &Propagation::NoCloud), ["my-key"]);
        assert!(ssh_key_secrets(&s, &Propagation::ConfigDrive).is_empty());
    }

    #[test]
    fn bad_items_are_named_by_path() {
        let cases = [
            (json!([{}]), "spec.accessCredentials[0]: invalid: set exactly one of sshPublicKey and userPassword"),
            (
                json!([{"sshPublicKey": {"source": {"secret": {}}, "propagationMethod": {"noCloud": {}}}}]),
                "spec.accessCredentials[0].sshPublicKey.source.secret.secretName: required",
            ),
            (
                json!([{"sshPublicKey": {"source": {"secret": {"secretName": "Bad_Name"}}, "propagationMethod": {"noCloud": {}}}}]),
                "secretName: invalid: \"Bad_Name\" is not a valid Secret name",
            ),
            (
                json!([{"sshPublicKey": {"source": {"secret": {"secretName": "k"}}}}]),
                "spec.accessCredentials[0].sshPublicKey.propagationMethod: required",
            ),
            (
                json!([{"sshPublicKey": {"source": {"secret": {"secretName": "k"}}, "propagationMethod": {"noCloud": {}, "configDrive": {}}}}]),
                "set exactly one of noCloud, configDrive and qemuGuestAgent",
            ),
            (
                json!([{"sshPublicKey": {"source": {"secret": {"secretName": "k"}}, "propagationMethod": {"configDrive": {}}}}]),
                "propagationMethod.configDrive: invalid: configDrive propagation needs a cloudInitConfigDrive volume",
            ),
            (
                json!([{"sshPublicKey": {"source": {"secret": {"secretName": "k"}}, "propagationMethod": {"qemuGuestAgent": {"users": []}}}}]),
                "propagationMethod.qemuGuestAgent.users: required",
            ),
            (json!([{"sshPublicKey": {"sorce": {}}}]), "spec.accessCredentials[0]: invalid: unknown field `sorce`"),
        ];
        for (creds, want) in cases {
            let got = problems(&spec(creds.clone(), nocloud())).join("; ");
            assert!(got.contains(want), "{creds}: {got}");
        }
    }

    #[test]
    fn passwords_through_the_guest_agent_are_accepted_and_only_so() {
        let pw = |method: Value| {
            json!([{"userPassword": {"source": {"secret": {"secretName": "pw"}},
            "propagationMethod": method}}])
        };
        let s = spec(pw(json!({"qemuGuestAgent": {}})), nocloud());
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        assert_eq!(access_credentials(&s), vec![AccessCredential::UserPassword { secret_name: "pw".into() }]);
        let got = problems(&spec(pw(json!({"noCloud": {}})), nocloud())).join("; ");
        assert!(
            got.contains(
                "userPassword.propagationMethod: invalid: userPassword is propagated only by qemuGuestAgent"
            ),
            "{got}"
        );
        let got = problems(&spec(pw(json!({"qemuGuestAgent": {"users": ["root"]}})), nocloud())).join("; ");
        assert!(got.contains("propagationMethod.qemuGuestAgent.users: invalid"), "{got}");
    }

    #[test]
    fn keys_through_the_guest_agent_are_accepted_for_named_users() {
        let creds = json!([{"sshPublicKey": {"source": {"secret": {"secretName": "k"}},
            "propagationMethod": {"qemuGuestAgent": {"users": ["debian", "root"]}}}}]);
        let s = spec(creds, nocloud());
        assert!(problems(&s).is_empty(), "{:?}", problems(&s));
        let users = Propagation::QemuGuestAgent { users: vec!["debian".into(), "root".into()] };
        assert_eq!(ssh_key_secrets(&s, &users), vec!["k".to_string()]);
    }
}
