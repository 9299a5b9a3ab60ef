//! The migration proxy's TLS material on a cluster (`node::migration_proxy`): a Secret holding
//! the migration CA's certificate and one certificate and key every node's virt-handler presents
//! and trusts (`ca.crt`, `tls.crt`, `tls.key`), as KubeVirt's `kubevirt-virt-handler-certs`.
//!
//! virt-controller makes the Secret when it is missing ([`ensure`]): a new CA issues the
//! certificate, and the CA's key is not kept (to renew: delete the Secret, restart virt-controller
//! and the agents). virt-handler reads it ([`load`]) before it serves migrations.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::node::migration_proxy::{MigrationCa, NodeMaterial, ProxyError};

/// Where the Secret is by default (`--migration-secret`): kube-system exists on every cluster.
pub const DEFAULT_SECRET: &str = "kube-system/virt-rs-migration-certs";

/// Errors of the migration Secret.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// The Secret's name is not `NAMESPACE/NAME`.
    #[error("migration secret {0:?}: expected NAMESPACE/NAME")]
    BadName(String),
    /// The API server refused.
    #[error("{what} Secret {secret}: {source}")]
    Api {
        /// What was being done.
        what: &'static str,
        /// `namespace/name`.
        secret: String,
        /// The error.
        source: kube::Error,
    },
    /// The Secret lacks a key or holds something else than PEM text.
    #[error("Secret {secret}: {what}")]
    Content {
        /// `namespace/name`.
        secret: String,
        /// What is wrong.
        what: String,
    },
    /// The certificate could not be made.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// A Secret's place: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for SecretRef {
    type Err = CertsError;
    fn from_str(s: &str) -> Result<Self, CertsError> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self { namespace: ns.into(), name: name.into() })
            }
            _ => Err(CertsError::BadName(s.into())),
        }
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

const KEYS: [&str; 3] = ["ca.crt", "tls.crt", "tls.key"];

fn material_of(secret: &SecretRef, s: &Secret) -> Result<NodeMaterial, CertsError> {
    let data = s.data.clone().unwrap_or_default();
    let text = |key: &str| {
        let bytes = data
            .get(key)
            .ok_or_else(|| CertsError::Content { secret: secret.to_string(), what: format!("no {key}") })?;
        String::from_utf8(bytes.0.clone()).map_err(|_| CertsError::Content {
            secret: secret.to_string(),
            what: format!("{key} is not text"),
        })
    };
    let m = NodeMaterial { ca_pem: text(KEYS[0])?, cert_pem: text(KEYS[1])?, key_pem: text(KEYS[2])? };
    // Checked now: a Secret someone wrote by hand is refused with its fault named.
    m.tls()?;
    Ok(m)
}

/// The material in `secret`, if the Secret exists.
pub async fn load(client: &Client, secret: &SecretRef) -> Result<Option<NodeMaterial>, CertsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    let found = api.get_opt(&secret.name).await.map_err(|source| CertsError::Api {
        what: "reading",
        secret: secret.to_string(),
        source,
    })?;
    found.map(|s| material_of(secret, &s)).transpose()
}

/// The material in `secret`, made first if the Secret does not exist (a replica that loses the
/// race to create it reads the winner's).
pub async fn ensure(client: &Client, secret: &SecretRef) -> Result<NodeMaterial, CertsError> {
    if let Some(m) = load(client, secret).await? {
        return Ok(m);
    }
    let ca = MigrationCa::generate()?;
    let m = ca.issue("virt-handler")?;
    let data: BTreeMap<String, ByteString> = KEYS
        .iter()
        .zip([&m.ca_pem, &m.cert_pem, &m.key_pem])
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    let object = Secret {
        metadata: ObjectMeta {
            name: Some(secret.name.clone()),
            namespace: Some(secret.namespace.clone()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".into(), "virt-rs".into())])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => {
            log::info!("made the migration CA and certificate in Secret {secret}");
            Ok(m)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            load(client, secret).await?.ok_or_else(|| CertsError::Content {
                secret: secret.to_string(),
                what: "created by another and gone again".into(),
            })
        }
        Err(source) => Err(CertsError::Api { what: "creating", secret: secret.to_string(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_are_namespace_slash_name() {
        let r: SecretRef = "kube-system/x".parse().unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("kube-system", "x"));
        assert_eq!(r.to_string(), "kube-system/x");
        for bad in ["x", "/x", "ns/", "a/b/c", ""] {
            assert!(matches!(bad.parse::<SecretRef>(), Err(CertsError::BadName(_))), "{bad:?}");
        }
        assert!(DEFAULT_SECRET.parse::<SecretRef>().is_ok());
    }

    #[test]
    fn a_secret_is_read_whole_and_checked() {
        let r: SecretRef = "ns/s".parse().unwrap();
        let m = MigrationCa::generate().unwrap().issue("n").unwrap();
        let mut data = BTreeMap::new();
        data.insert("ca.crt".to_string(), ByteString(m.ca_pem.clone().into_bytes()));
        data.insert("tls.crt".to_string(), ByteString(m.cert_pem.clone().into_bytes()));
        let mut s = Secret { data: Some(data.clone()), ..Default::default() };
        let e = material_of(&r, &s).unwrap_err();
        assert_eq!(e.to_string(), "Secret ns/s: no tls.key");
        data.insert("tls.key".to_string(), ByteString(b"not a key".to_vec()));
        s.data = Some(data.clone());
        assert!(material_of(&r, &s).unwrap_err().to_string().contains("no PRIVATE KEY"));
        data.insert("tls.key".to_string(), ByteString(m.key_pem.clone().into_bytes()));
        s.data = Some(data);
        assert_eq!(material_of(&r, &s).unwrap().cert_pem, m.cert_pem);
    }
}
