//! Validation of loaded CDI objects: CDI's admission rules (one source, a size, valid URLs and
//! schedules, ...) plus what this node cannot do ("unsupported"), each problem with its path.
//! The result types and the metadata rules are [`virt_core::api`]'s.
//!
//! Every problem is collected; nothing stops at the first. Warnings do not fail validation.

use virt_core::api::{
    self, check_name, check_namespace, child, describe_meta, is_dns1035_label, validate_meta, NameRule,
    ProblemKind, Validate, Validation,
};

use super::cron::Schedule;
use super::dataimportcron::DataImportCron;
use super::datasource::DataSource;
use super::datavolume::{ContentType, DataVolume, DataVolumeSpec, SourceKind, API_VERSION};
use super::meta::{AccessMode, ResourceRequirements, VolumeMode};
use super::storageprofile::StorageProfile;

fn check_type_meta(
    v: &mut Validation,
    api_version: Option<&str>,
    kind: Option<&str>,
    want_kind: &str,
    path: &str,
) {
    api::check_type_meta(v, api_version, kind, API_VERSION, want_kind, path);
}

/// Why a source URL is refused; each names the URL and the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SourceUrlError {
    /// An empty URL.
    #[error("must not be empty")]
    Empty,
    /// Whitespace or control characters anywhere.
    #[error("{url:?} contains whitespace or control characters")]
    Whitespace { url: String },
    /// No `scheme://`.
    #[error("{url:?} is not an absolute http:// or https:// URL")]
    NotAbsolute { url: String },
    /// A scheme other than http or https.
    #[error("{url:?}: scheme {scheme:?} is not http or https")]
    Scheme { url: String, scheme: String },
    /// `[` without `]` in the host.
    #[error("{url:?}: unclosed '[' in the host")]
    UnclosedBracket { url: String },
    /// Not an IPv6 address between the brackets.
    #[error("{url:?}: bad IPv6 address {addr:?}")]
    Ipv6 { url: String, addr: String },
    /// Something other than `:port` after `]`.
    #[error("{url:?}: junk after the IPv6 address")]
    AfterIpv6 { url: String },
    /// An empty host.
    #[error("{url:?} has no host")]
    NoHost { url: String },
    /// A port that is not a number up to 65535.
    #[error("{url:?}: bad port {port:?}")]
    Port { url: String, port: String },
    /// A `docker://` URL whose reference is not an image reference.
    #[error("{url:?}: {reference:?} is not an image reference like quay.io/org/image:tag")]
    Reference { url: String, reference: String },
    /// `oci-archive://` without a path.
    #[error("{url:?}: empty archive path")]
    ArchivePath { url: String },
    /// A registry URL with neither scheme.
    #[error("{url:?}: the scheme must be docker:// or oci-archive://")]
    RegistryScheme { url: String },
}

/// Checks an `http(s)://` URL the way CDI does (Go's `url.ParseRequestURI` plus a scheme check),
/// and a little more: a host is required.
pub(crate) fn check_http_url(url: &str) -> Result<(), SourceUrlError> {
    let u = || url.to_string();
    if url.is_empty() {
        return Err(SourceUrlError::Empty);
    }
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SourceUrlError::Whitespace { url: u() });
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(SourceUrlError::NotAbsolute { url: u() });
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Err(SourceUrlError::Scheme { url: u(), scheme: scheme.to_string() });
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(SourceUrlError::UnclosedBracket { url: u() });
        };
        if addr.is_empty() || !addr.bytes().all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.') {
            return Err(SourceUrlError::Ipv6 { url: u(), addr: addr.to_string() });
        }
        match after.strip_prefix(':') {
            Some(p) => (addr, Some(p)),
            None if after.is_empty() => (addr, None),
            None => return Err(SourceUrlError::AfterIpv6 { url: u() }),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(SourceUrlError::NoHost { url: u() });
    }
    if let Some(p) = port {
        if !p.is_empty()
            && (!p.bytes().all(|c| c.is_ascii_digit())
                || p.len() > 5
                || p.parse::<u32>().map_or(true, |n| n > 65_535))
        {
            return Err(SourceUrlError::Port { url: u(), port: p.to_string() });
        }
    }
    Ok(())
}

/// Checks a registry source URL: `docker://REFERENCE` or `oci-archive://PATH`.
pub(crate) fn check_registry_url(url: &str) -> Result<(), SourceUrlError> {
    let u = || url.to_string();
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(SourceUrlError::Whitespace { url: u() });
    }
    if let Some(reference) = url.strip_prefix("docker://") {
        let ok = !reference.is_empty()
            && !reference.starts_with('/')
            && reference
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'/' | b':' | b'@'));
        if !ok {
            return Err(SourceUrlError::Reference { url: u(), reference: reference.to_string() });
        }
        return Ok(());
    }
    if let Some(path) = url.strip_prefix("oci-archive://") {
        if path.is_empty() {
            return Err(SourceUrlError::ArchivePath { url: u() });
        }
        return Ok(());
    }
    Err(SourceUrlError::RegistryScheme { url: u() })
}

fn check_resources(
    v: &mut Validation,
    resources: Option<&ResourceRequirements>,
    path: &str,
    size_required: bool,
    why_required: &str,
) {
    let rpath = child(path, "resources");
    let size_path = child(&child(&rpath, "requests"), "storage");
    if let Some(r) = resources {
        for key in r.requests.keys().chain(r.limits.keys()) {
            if key != "storage" {
                v.push(
                    format!("{rpath}[{key:?}]"),
                    ProblemKind::Invalid,
                    format!("resource {key:?}: a volume only requests \"storage\""),
                );
            }
        }
        if !r.limits.is_empty() {
            v.warn(
                child(&rpath, "limits"),
                ProblemKind::Notice,
                "ignored: volumes are sized by their request",
            );
        }
    }
    match resources.and_then(ResourceRequirements::storage) {
        Some(q) if q.is_zero() => {
            v.push(size_path, ProblemKind::Invalid, format!("{q}: the size must be greater than zero"))
        }
        Some(_) => {}
        None if size_required => {
            v.push(size_path, ProblemKind::Required, format!("a size is required {why_required}"))
        }
        None => {}
    }
}

/// Fields of `spec.pvc` and `spec.storage` that bind to or populate from cluster objects.
fn check_claim_unsupported(
    v: &mut Validation,
    path: &str,
    selector: bool,
    volume_name: bool,
    data_source: bool,
    data_source_ref: bool,
) {
    if selector {
        v.push(child(path, "selector"), ProblemKind::Unsupported, "binding to pre-existing volumes by label is not supported: volumes are created in the local pool");
    }
    if volume_name {
        v.push(
            child(path, "volumeName"),
            ProblemKind::Unsupported,
            "binding to a named pre-existing volume is not supported: volumes are created in the local pool",
        );
    }
    if data_source {
        v.push(
            child(path, "dataSource"),
            ProblemKind::Unsupported,
            "external volume populators are not supported: use spec.source or spec.sourceRef",
        );
    }
    if data_source_ref {
        v.push(
            child(path, "dataSourceRef"),
            ProblemKind::Unsupported,
            "external volume populators are not supported: use spec.source or spec.sourceRef",
        );
    }
}

fn check_access_modes(v: &mut Validation, modes: &[AccessMode], path: &str) {
    for (i, m) in modes.iter().enumerate() {
        if *m == AccessMode::ReadWriteOncePod {
            v.push(
                format!("{path}[{i}]"),
                ProblemKind::Invalid,
                "ReadWriteOncePod: a DataVolume supports ReadWriteOnce, ReadOnlyMany and ReadWriteMany",
            );
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SpecContext {
    DataVolume,
    CronTemplate,
}

fn validate_dv_spec(v: &mut Validation, spec: &DataVolumeSpec, path: &str, ctx: SpecContext) {
    let source_path = child(path, "source");
    let sources = spec.source.as_ref().map(|s| s.set()).unwrap_or_default();
    let single = match sources.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let is_clone = spec.source_ref.is_some() || single.is_some_and(|s| s.is_clone());
    let external = spec.pvc.as_ref().is_some_and(|p| p.data_source.is_some() || p.data_source_ref.is_some())
        || spec.storage.as_ref().is_some_and(|s| s.data_source.is_some() || s.data_source_ref.is_some());
    let why_size = match single {
        Some(s) => format!("for a {s} source"),
        None => "when the data is not cloned".to_string(),
    };

    // Target: exactly one of pvc / storage.
    match (&spec.pvc, &spec.storage) {
        (Some(_), Some(_)) => v.push(
            child(path, "storage"),
            ProblemKind::Forbidden,
            format!("{} is set too: use one of pvc and storage", child(path, "pvc")),
        ),
        (None, None) if is_clone => v.warn(
            child(path, "storage"),
            ProblemKind::Notice,
            "neither storage nor pvc is set: the size is taken from the clone source (CDI's webhook insists on one of them; write `storage: {}` to be portable)",
        ),
        (None, None) => v.push(
            child(path, "storage"),
            ProblemKind::Required,
            format!("one of storage or pvc is required: it carries the size, which is required {why_size}"),
        ),
        _ => {}
    }
    if let Some(pvc) = &spec.pvc {
        let p = child(path, "pvc");
        match pvc.access_modes.len() {
            0 => v.push(
                child(&p, "accessModes"),
                ProblemKind::Required,
                "exactly one access mode is required with the pvc API (storage allows none)",
            ),
            1 => {}
            n => v.push(
                child(&p, "accessModes"),
                ProblemKind::Invalid,
                format!("{n} access modes: exactly one is allowed with the pvc API"),
            ),
        }
        check_access_modes(v, &pvc.access_modes, &child(&p, "accessModes"));
        check_resources(v, pvc.resources.as_ref(), &p, true, "with the pvc API");
        if pvc.volume_mode == Some(VolumeMode::FromStorageProfile) {
            v.push(
                child(&p, "volumeMode"),
                ProblemKind::Invalid,
                "FromStorageProfile is only valid with the storage API",
            );
        }
        if let Some(sc) = pvc.storage_class_name.as_deref().filter(|s| !s.is_empty()) {
            check_name(v, child(&p, "storageClassName"), sc, "storage class name");
        }
        check_claim_unsupported(
            v,
            &p,
            pvc.selector.is_some(),
            pvc.volume_name.is_some(),
            pvc.data_source.is_some(),
            pvc.data_source_ref.is_some(),
        );
    }
    if let Some(storage) = &spec.storage {
        let p = child(path, "storage");
        check_access_modes(v, &storage.access_modes, &child(&p, "accessModes"));
        check_resources(v, storage.resources.as_ref(), &p, !is_clone, &why_size);
        if let Some(sc) = storage.storage_class_name.as_deref().filter(|s| !s.is_empty()) {
            check_name(v, child(&p, "storageClassName"), sc, "storage class name");
        }
        check_claim_unsupported(
            v,
            &p,
            storage.selector.is_some(),
            storage.volume_name.is_some(),
            storage.data_source.is_some(),
            storage.data_source_ref.is_some(),
        );
    }

    // Source: exactly one of source / sourceRef, and exactly one member of source.
    match (&spec.source, &spec.source_ref) {
        (Some(_), Some(_)) => v.push(
            child(path, "sourceRef"),
            ProblemKind::Forbidden,
            format!("{source_path} is set too: use one of source and sourceRef"),
        ),
        (None, None) if !external => {
            v.push(source_path.clone(), ProblemKind::Required, "one of source or sourceRef is required")
        }
        _ => {}
    }
    if spec.source.is_some() {
        match sources.len() {
            0 => v.push(
                source_path.clone(),
                ProblemKind::Required,
                "no source set: set one of http, registry, pvc, snapshot, upload or blank",
            ),
            1 => {}
            n => v.push(
                source_path.clone(),
                ProblemKind::Invalid,
                format!(
                    "exactly one source must be set, found {n}: {}",
                    sources.iter().map(SourceKind::field).collect::<Vec<_>>().join(", ")
                ),
            ),
        }
    }
    for s in &sources {
        let p = child(&source_path, s.field());
        let why = match s {
            SourceKind::S3(_) => "S3 import is not supported by this node: download the object over https with an http source (a pre-signed URL works)",
            SourceKind::Gcs(_) => "Google Cloud Storage import is not supported by this node: use an http source with the object's https URL",
            SourceKind::ImageIo(_) => "oVirt imageio import is not supported by this node",
            SourceKind::Vddk(_) => "VMware VDDK import is not supported by this node",
            _ => continue,
        };
        v.push(p, ProblemKind::Unsupported, why);
    }
    if let Some(kind) = single {
        validate_source(v, kind, &child(&source_path, kind.field()));
    }
    if let Some(r) = &spec.source_ref {
        let p = child(path, "sourceRef");
        if r.kind != "DataSource" {
            v.push(
                child(&p, "kind"),
                ProblemKind::Invalid,
                format!("{:?}: only \"DataSource\" is supported", r.kind),
            );
        }
        check_name(v, child(&p, "name"), &r.name, "DataSource name");
        if let Some(ns) = &r.namespace {
            check_namespace(v, child(&p, "namespace"), ns);
        }
    }

    // Content type.
    if spec.content_type == Some(ContentType::Archive) {
        let p = child(path, "contentType");
        match single {
            Some(SourceKind::Blank) => {
                v.push(p.clone(), ProblemKind::Invalid, "archive: a blank image has no archive to unpack")
            }
            Some(SourceKind::Registry(_)) => v.push(
                p.clone(),
                ProblemKind::Invalid,
                "archive: a registry source must be kubevirt (a disk image)",
            ),
            _ => {}
        }
        let block = spec
            .storage
            .as_ref()
            .and_then(|s| s.volume_mode)
            .or(spec.pvc.as_ref().and_then(|s| s.volume_mode));
        if block == Some(VolumeMode::Block) {
            v.push(
                p,
                ProblemKind::Invalid,
                "archive: an archive is unpacked onto a filesystem, not a Block volume",
            );
        }
    }

    // Multi-stage import.
    if !spec.checkpoints.is_empty() {
        v.push(child(path, "checkpoints"), ProblemKind::Unsupported, "multi-stage (warm migration) imports are not supported: they only exist for VDDK and imageio sources");
    }
    if spec.final_checkpoint == Some(true) {
        v.push(
            child(path, "finalCheckpoint"),
            ProblemKind::Unsupported,
            "multi-stage (warm migration) imports are not supported",
        );
    }

    if ctx == SpecContext::CronTemplate {
        if spec.source.as_ref().is_none_or(|s| s.registry.is_none()) {
            v.push(source_path, ProblemKind::Invalid, "a DataImportCron template must use a registry source (the cron polls the registry for new digests)");
        }
        if spec.source_ref.is_some() {
            v.push(
                child(path, "sourceRef"),
                ProblemKind::Forbidden,
                "not settable in a DataImportCron template",
            );
        }
        if spec.content_type.is_some() {
            v.push(
                child(path, "contentType"),
                ProblemKind::Forbidden,
                "not settable in a DataImportCron template (registry imports are kubevirt)",
            );
        }
    }
}

fn validate_source(v: &mut Validation, kind: SourceKind<'_>, p: &str) {
    match kind {
        SourceKind::Http(h) => {
            if let Err(e) = check_http_url(&h.url) {
                v.push(child(p, "url"), ProblemKind::Invalid, e.to_string());
            }
            if let Some(s) = &h.secret_ref {
                check_name(v, child(p, "secretRef"), s, "secret name");
            }
            if let Some(s) = &h.cert_config_map {
                check_name(v, child(p, "certConfigMap"), s, "ConfigMap name");
            }
            for (i, hdr) in h.extra_headers.iter().enumerate() {
                let ok = hdr.split_once(':').is_some_and(|(name, _)| {
                    !name.is_empty()
                        && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
                }) && !hdr.contains(['\r', '\n']);
                if !ok {
                    v.push(
                        format!("{}[{i}]", child(p, "extraHeaders")),
                        ProblemKind::Invalid,
                        format!("{hdr:?} is not a header line \"Name: value\""),
                    );
                }
            }
            for (i, s) in h.secret_extra_headers.iter().enumerate() {
                check_name(v, format!("{}[{i}]", child(p, "secretExtraHeaders")), s, "secret name");
            }
        }
        SourceKind::Registry(r) => {
            match (&r.url, &r.image_stream) {
                (None, None) => v.push(child(p, "url"), ProblemKind::Required, "url is required"),
                (Some(_), Some(_)) => v.push(
                    child(p, "imageStream"),
                    ProblemKind::Forbidden,
                    "url is set too: use one of url and imageStream",
                ),
                _ => {}
            }
            if let Some(url) = &r.url {
                if let Err(e) = check_registry_url(url) {
                    v.push(child(p, "url"), ProblemKind::Invalid, e.to_string());
                }
            }
            if r.image_stream.is_some() {
                v.push(
                    child(p, "imageStream"),
                    ProblemKind::Unsupported,
                    "OpenShift ImageStreams are not supported: use a docker:// url",
                );
            }
            if let Some(s) = &r.secret_ref {
                check_name(v, child(p, "secretRef"), s, "secret name");
            }
            if let Some(s) = &r.cert_config_map {
                check_name(v, child(p, "certConfigMap"), s, "ConfigMap name");
            }
        }
        SourceKind::Pvc(s) => {
            check_namespace(v, child(p, "namespace"), &s.namespace);
            check_name(v, child(p, "name"), &s.name, "claim name");
        }
        SourceKind::Snapshot(s) => {
            check_namespace(v, child(p, "namespace"), &s.namespace);
            check_name(v, child(p, "name"), &s.name, "snapshot name");
        }
        SourceKind::Upload | SourceKind::Blank => {}
        // Already refused as unsupported.
        SourceKind::S3(_) | SourceKind::Gcs(_) | SourceKind::ImageIo(_) | SourceKind::Vddk(_) => {}
    }
}

fn validate_dv_status(v: &mut Validation, dv: &DataVolume, path: &str) {
    let Some(status) = &dv.status else { return };
    let p = child(path, "status");
    if let Some(progress) = &status.progress {
        if !progress.is_well_formed() {
            v.push(
                child(&p, "progress"),
                ProblemKind::Invalid,
                format!("{:?}: expected \"N/A\" or a percentage like \"45.20%\"", progress.0),
            );
        }
    }
    if let Some(n) = status.restart_count {
        if n < 0 {
            v.push(child(&p, "restartCount"), ProblemKind::Invalid, format!("{n}: must not be negative"));
        }
    }
}

/// Validates a DataVolume embedded in another object: a KubeVirt `dataVolumeTemplates` entry at
/// `path` (e.g. `spec.dataVolumeTemplates[0]`), whose `metadata.name` is required.
pub fn validate_data_volume_template(dv: &DataVolume, path: &str) -> Validation {
    let mut v = Validation::default();
    check_type_meta(&mut v, dv.api_version.as_deref(), dv.kind.as_deref(), "DataVolume", path);
    validate_meta(&mut v, &dv.metadata, &child(path, "metadata"), NameRule::Name, true);
    validate_dv_spec(&mut v, &dv.spec, &child(path, "spec"), SpecContext::DataVolume);
    v
}

impl Validate for DataVolume {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, self.api_version.as_deref(), self.kind.as_deref(), "DataVolume", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        validate_dv_spec(&mut v, &self.spec, "spec", SpecContext::DataVolume);
        validate_dv_status(&mut v, self, "");
        v
    }

    fn describe(&self) -> String {
        describe_meta("DataVolume", &self.metadata)
    }
}

impl Validate for DataSource {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, self.api_version.as_deref(), self.kind.as_deref(), "DataSource", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let src = &self.spec.source;
        let p = "spec.source";
        match src.set().as_slice() {
            [] => v.warn(p, ProblemKind::Notice, "empty: the DataSource is not ready until it points at a claim or snapshot (a DataImportCron fills it in)"),
            [_] => {}
            many => v.push(p, ProblemKind::Invalid, format!("at most one of pvc, snapshot and dataSource may be set, found {}", many.join(", "))),
        }
        if let Some(s) = &src.pvc {
            check_namespace(&mut v, child(p, "pvc.namespace"), &s.namespace);
            check_name(&mut v, child(p, "pvc.name"), &s.name, "claim name");
        }
        if let Some(s) = &src.snapshot {
            check_namespace(&mut v, child(p, "snapshot.namespace"), &s.namespace);
            check_name(&mut v, child(p, "snapshot.name"), &s.name, "snapshot name");
        }
        if let Some(s) = &src.data_source {
            check_namespace(&mut v, child(p, "dataSource.namespace"), &s.namespace);
            check_name(&mut v, child(p, "dataSource.name"), &s.name, "DataSource name");
            if self.metadata.name.as_deref() == Some(s.name.as_str())
                && self.metadata.namespace.as_deref() == Some(s.namespace.as_str())
            {
                v.push(child(p, "dataSource"), ProblemKind::Invalid, "a DataSource cannot point to itself");
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("DataSource", &self.metadata)
    }
}

impl Validate for DataImportCron {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, self.api_version.as_deref(), self.kind.as_deref(), "DataImportCron", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let t = &self.spec.template;
        check_type_meta(&mut v, t.api_version.as_deref(), t.kind.as_deref(), "DataVolume", "spec.template");
        validate_meta(&mut v, &t.metadata, "spec.template.metadata", NameRule::Optional, true);
        validate_dv_spec(&mut v, &t.spec, "spec.template.spec", SpecContext::CronTemplate);
        if t.status.is_some() {
            v.warn("spec.template.status", ProblemKind::Notice, "ignored in a template");
        }
        if self.spec.schedule.is_empty() {
            v.warn(
                "spec.schedule",
                ProblemKind::Notice,
                "empty: the image is imported once and never polled again",
            );
        } else {
            match Schedule::parse(&self.spec.schedule) {
                Err(e) => v.push("spec.schedule", ProblemKind::Invalid, e.to_string()),
                Ok(s) if !s.can_fire() => v.push(
                    "spec.schedule",
                    ProblemKind::Invalid,
                    format!("{:?} never fires: no calendar day matches", self.spec.schedule),
                ),
                Ok(_) => {}
            }
        }
        if let Some(n) = self.spec.imports_to_keep {
            if n < 0 {
                v.push("spec.importsToKeep", ProblemKind::Invalid, format!("{n}: must be zero or more"));
            }
        }
        let m = &self.spec.managed_data_source;
        if m.is_empty() {
            v.push(
                "spec.managedDataSource",
                ProblemKind::Required,
                "the name of the DataSource to manage is required",
            );
        } else if !is_dns1035_label(m) {
            v.push("spec.managedDataSource", ProblemKind::Invalid, format!("{m:?} is not a valid DataSource name: a lowercase letter, then letters, digits and '-', at most 63 characters"));
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("DataImportCron", &self.metadata)
    }
}

impl Validate for StorageProfile {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, self.api_version.as_deref(), self.kind.as_deref(), "StorageProfile", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, false);
        let mut sets = vec![("spec.claimPropertySets", &self.spec.claim_property_sets)];
        if let Some(s) = &self.status {
            sets.push(("status.claimPropertySets", &s.claim_property_sets));
        }
        for (p, list) in sets {
            if list.len() > 8 {
                v.push(p, ProblemKind::Invalid, format!("{} entries: at most 8 are allowed", list.len()));
            }
            for (i, set) in list.iter().enumerate() {
                if set.access_modes.len() > 4 {
                    v.push(
                        format!("{p}[{i}].accessModes"),
                        ProblemKind::Invalid,
                        format!("{} entries: at most 4 are allowed", set.access_modes.len()),
                    );
                }
                if set.volume_mode == VolumeMode::FromStorageProfile {
                    v.push(
                        format!("{p}[{i}].volumeMode"),
                        ProblemKind::Invalid,
                        "must be Filesystem or Block",
                    );
                }
            }
        }
        if let Some(sc) = &self.spec.snapshot_class {
            check_name(&mut v, "spec.snapshotClass".into(), sc, "VolumeSnapshotClass name");
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("StorageProfile", &self.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        for ok in [
            "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
            "http://172.16.15.6/iso/x.img",
            "http://[::1]:8080/x",
            "HTTPS://user:pw@host:443/x?y#z",
            "http://host",
        ] {
            assert_eq!(check_http_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ftp://host/x",
            "host/x",
            "http:///x",
            "http://host:99999/x",
            "http://host:8a/x",
            "http://ho st/x",
            "http://[::1/x",
            "https://@/x",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_urls() {
        for ok in [
            "docker://kubevirt/fedora-cloud-registry-disk-demo",
            "docker://quay.io/kubevirt/fedora-cloud-registry-disk-demo:latest",
            "docker://registry:5000/kubevirt/alpine-container-disk-demo:devel",
            "docker://quay.io/x/y@sha256:0123abcd",
            "oci-archive:///tmp/image.tar",
        ] {
            assert_eq!(check_registry_url(ok), Ok(()), "{ok}");
        }
        for bad in
            ["quay.io/x", "http://quay.io/x", "docker://", "docker:///x", "docker://a b", "oci-archive://"]
        {
            assert!(check_registry_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn url_errors_name_the_url_and_the_part_at_fault() {
        let e = check_http_url("http://host:99999/x").unwrap_err();
        assert_eq!(e, SourceUrlError::Port { url: "http://host:99999/x".into(), port: "99999".into() });
        assert_eq!(e.to_string(), "\"http://host:99999/x\": bad port \"99999\"");
        let e = check_http_url("ftp://host/x").unwrap_err();
        assert_eq!(e.to_string(), "\"ftp://host/x\": scheme \"ftp\" is not http or https");
        assert_eq!(
            check_http_url("http://[::1/x").unwrap_err(),
            SourceUrlError::UnclosedBracket { url: "http://[::1/x".into() }
        );
        assert_eq!(check_http_url(""), Err(SourceUrlError::Empty));
        let e = check_registry_url("docker:///x").unwrap_err();
        assert_eq!(e, SourceUrlError::Reference { url: "docker:///x".into(), reference: "/x".into() });
        assert!(e.to_string().contains("is not an image reference"), "{e}");
        let e = check_registry_url("http://quay.io/x").unwrap_err();
        assert_eq!(e.to_string(), "\"http://quay.io/x\": the scheme must be docker:// or oci-archive://");
    }
}
