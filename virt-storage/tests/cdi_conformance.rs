//! CDI API conformance: every file of `conformance/cdi/` and `conformance/golden/`
//! is loaded unchanged, strictly, and each CDI object in it must load, validate and round-trip.
//! Then negative cases: unknown fields, two sources, bad quantities, bad cron schedules,
//! unsupported sources, malformed YAML, and a property test that no input makes the loader panic.
//!
//! Documents that are not CDI objects are skipped, each for a stated reason (asserted below):
//! * `cdi/endpoint-secret.yaml`, a core `v1` Secret: DataVolumes name it in `secretRef` and the
//!   importer reads it; it is not a CDI object.
//! * `cdi/example-cdiconfig.yaml`, a CDIConfig: it configures a cluster's CDI installation (its
//!   `uploadProxyURLOverride` points at the cluster's upload proxy); a node runs no CDI
//!   deployment, so there is nothing for it to configure.
//! * `cdi/upload-datavolume-token.yaml`, an `upload.cdi.kubevirt.io` UploadTokenRequest: a
//!   request to CDI's API server for an upload token, not a stored object.
//!
//! `cdi/vm-dv.yaml` is a KubeVirt VirtualMachine: its `spec.dataVolumeTemplates` are CDI
//! DataVolumes and are loaded and validated; the rest of the VirtualMachine is KubeVirt's.
//!
//! One file is rejected, on purpose: `cdi/import-kubevirt-datavolume-skip-tls.yaml` sets
//! `spec.source.http.insecureSkipVerify`, which is not a field of CDI's `DataVolumeSourceHTTP`
//! (only the imageio source has it). The API server with strict field validation (kubectl's
//! default) refuses it the same way; with `FieldValidation::Warn` it loads, with a warning.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use virt_storage::cdi::{
    self, CdiObject, DataImportCron, DataSource, DataVolume, DecodeErrorKind, FieldValidation, LoadError,
    LoadOptions, ProblemKind, StorageProfile, Validate,
};

fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRT_CONFORMANCE_DIR") {
        return PathBuf::from(dir);
    }
    // The repository's copy of CDI's examples (conformance/SOURCES.md names their commits).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance")
}

fn files(sub: &str) -> Vec<PathBuf> {
    let dir = conformance_dir().join(sub);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance corpus {} missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no files in {}", dir.display());
    out
}

fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// Kinds skipped on purpose, with a word their reason must contain.
const EXPECTED_SKIPS: &[(&str, &str)] =
    &[("Secret", "secretRef"), ("CDIConfig", "no CDI deployment"), ("UploadTokenRequest", "upload token")];

/// Files refused on purpose, with the error they must give.
const EXPECTED_REJECTIONS: &[(&str, &str)] =
    &[("import-kubevirt-datavolume-skip-tls.yaml", "spec.source.http.insecureSkipVerify: unknown field")];

/// The object as JSON must equal the document it was read from (nulls pruned): same field
/// names, same values, nothing added.
fn assert_round_trip(file: &str, object: &CdiObject, original: &Value) {
    let mut original = original.clone();
    prune_nulls(&mut original);
    let written = object.to_json_value().unwrap();
    match object {
        CdiObject::DataVolumeTemplates(t) => {
            let Value::Array(items) = written else { panic!("{file}: templates are not a list") };
            for (tpl, item) in t.templates.iter().zip(items) {
                let pointer = format!("/{}", tpl.path.replace(['.', '['], "/").replace(']', ""));
                assert_eq!(original.pointer(&pointer), Some(&item), "{file}: {} changed", tpl.path);
            }
        }
        _ => assert_eq!(written, original, "{file}: JSON round trip changed the object"),
    }
    let yaml = object.to_yaml().unwrap();
    if let CdiObject::DataVolumeTemplates(t) = object {
        let back: Vec<DataVolume> = serde_saphyr_list(&yaml);
        let before: Vec<DataVolume> = t.templates.iter().map(|t| t.data_volume.clone()).collect();
        assert_eq!(back, before, "{file}: YAML round trip of templates");
    } else {
        let back =
            cdi::load_yaml(&yaml).unwrap_or_else(|e| panic!("{file}: reloading written YAML: {e}\n{yaml}"));
        assert_eq!(back.len(), 1);
        assert_eq!(&back[0].object, object, "{file}: YAML round trip changed the object:\n{yaml}");
    }
}

fn serde_saphyr_list(yaml: &str) -> Vec<DataVolume> {
    let v = cdi::parse_yaml(yaml).unwrap();
    assert_eq!(v.len(), 1);
    serde_json::from_value(v.into_iter().next().unwrap()).unwrap()
}

#[test]
fn conformance_corpus_loads_and_validates() {
    let mut loaded = Vec::new();
    let mut skipped = Vec::new();
    let mut rejected = Vec::new();
    let mut kinds: Vec<String> = Vec::new();
    for sub in ["cdi", "golden"] {
        for path in files(sub) {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let label = format!("{sub}/{name}");
            let text = std::fs::read_to_string(&path).unwrap();
            let docs = match cdi::load_yaml(&text) {
                Ok(d) => d,
                Err(e) => {
                    let expected = EXPECTED_REJECTIONS
                        .iter()
                        .find(|(f, _)| *f == name)
                        .unwrap_or_else(|| panic!("{label} was rejected unexpectedly: {e}"));
                    assert!(e.to_string().contains(expected.1), "{label}: wrong rejection: {e}");
                    rejected.push(format!("{label}: {e}"));
                    continue;
                }
            };
            assert!(
                !EXPECTED_REJECTIONS.iter().any(|(f, _)| *f == name),
                "{label} should have been rejected"
            );
            let values = cdi::parse_yaml(&text).unwrap();
            assert_eq!(values.len(), docs.len());
            for (doc, value) in docs.iter().zip(&values) {
                assert!(doc.warnings.is_empty(), "{label}: {:?}", doc.warnings);
                if let CdiObject::Skipped(s) = &doc.object {
                    let (_, word) = EXPECTED_SKIPS
                        .iter()
                        .find(|(k, _)| *k == s.kind)
                        .unwrap_or_else(|| panic!("{label}: unexpected skip: {s}"));
                    assert!(s.reason.contains(word), "{label}: {s}");
                    skipped.push(format!("{label}: {s}"));
                    continue;
                }
                let warnings =
                    doc.object.check().unwrap_or_else(|e| panic!("{label}: does not validate: {e}"));
                assert_round_trip(&label, &doc.object, value);
                kinds.push(doc.object.kind().to_string());
                let mut line = format!("{label}: {}", doc.object);
                for w in warnings {
                    line.push_str(&format!("\n      warning: {w}"));
                }
                loaded.push(line);
            }
        }
    }
    println!("CDI conformance tally:");
    println!("  loaded and validated: {}", loaded.len());
    for l in &loaded {
        println!("    {l}");
    }
    println!("  skipped (other kinds): {}", skipped.len());
    for l in &skipped {
        println!("    {l}");
    }
    println!("  rejected with reason: {}", rejected.len());
    for l in &rejected {
        println!("    {l}");
    }
    // 7 DataVolumes, the VirtualMachine's templates, one DataImportCron, one DataSource.
    assert_eq!((loaded.len(), skipped.len(), rejected.len()), (10, 3, 1));
    for k in ["DataVolume", "VirtualMachine", "DataImportCron", "DataSource"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} loaded");
    }
}

#[test]
fn rejected_skip_tls_file_loads_with_a_warning_when_asked() {
    let path = conformance_dir().join("cdi/import-kubevirt-datavolume-skip-tls.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let opts = LoadOptions { field_validation: FieldValidation::Warn };
    let docs = cdi::load_yaml_with(&text, &opts).unwrap();
    assert_eq!(docs[0].warnings, ["spec.source.http.insecureSkipVerify: unknown field"]);
    docs[0].object.check().unwrap();
    let opts = LoadOptions { field_validation: FieldValidation::Ignore };
    let docs = cdi::load_yaml_with(&text, &opts).unwrap();
    assert!(docs[0].warnings.is_empty());
}

#[test]
fn conformance_details_survive_loading() {
    let dir = conformance_dir();
    let cron: DataImportCron =
        cdi::from_yaml(&std::fs::read_to_string(dir.join("golden/dataimportcron-fedora.yaml")).unwrap())
            .unwrap();
    let schedule = cron.spec.parsed_schedule().unwrap().unwrap();
    // 2024-01-01 is a Monday; "30 1 * * 1" fires at 01:30.
    let next =
        schedule.next_after(cdi::Timestamp::parse("2024-01-01T00:00:00Z").unwrap().unix_seconds()).unwrap();
    assert_eq!(cdi::Timestamp::from_unix(next).unwrap().as_str(), "2024-01-01T01:30:00Z");
    assert_eq!(cron.spec.imports_to_keep, Some(2));
    assert_eq!(cron.spec.template.spec.requested_size().unwrap().bytes(), 5 << 30);
    let reg = cron.spec.template.spec.source.as_ref().unwrap().registry.as_ref().unwrap();
    assert_eq!(reg.pull_method, Some(cdi::PullMethod::Node));

    let ds: DataSource =
        cdi::from_yaml(&std::fs::read_to_string(dir.join("golden/datasource-cirros.yaml")).unwrap()).unwrap();
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, "cirros-pvc");

    let docs = cdi::load_file(dir.join("cdi/vm-dv.yaml"), &LoadOptions::default()).unwrap();
    let CdiObject::DataVolumeTemplates(t) = &docs[0].object else {
        panic!("vm-dv.yaml: {:?}", docs[0].object)
    };
    assert_eq!(t.templates[0].path, "spec.dataVolumeTemplates[0]");
    let spec = &t.templates[0].data_volume.spec;
    assert_eq!(spec.requested_size().unwrap().bytes(), 100_000_000);
    assert_eq!(spec.pvc.as_ref().unwrap().storage_class_name.as_deref(), Some("hdd"));

    // The clone example ends in `storage:` (null): accepted, size from the source, with a warning.
    let clone: DataVolume =
        cdi::from_yaml(&std::fs::read_to_string(dir.join("cdi/clone-datavolume.yaml")).unwrap()).unwrap();
    assert!(clone.spec.storage.is_none());
    let warnings = clone.check().unwrap();
    assert_eq!(warnings.len(), 1);
    assert_eq!(warnings[0].path, "spec.storage");
}

#[test]
fn kubevirt_examples_data_volume_templates_validate() {
    // Not part of the asked-for corpus, but the KubeVirt examples carry DataVolume templates too.
    let mut templates = 0;
    for path in files("kubevirt") {
        let docs = cdi::load_file(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        for d in docs {
            if let CdiObject::DataVolumeTemplates(t) = &d.object {
                d.object.check().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                templates += t.templates.len();
            }
        }
    }
    assert!(templates >= 1, "the KubeVirt examples hold at least one DataVolume template");
}

const GOOD: &str = "\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: dv
  namespace: default
spec:
  source:
    http:
      url: https://example.com/disk.qcow2
  storage:
    resources:
      requests:
        storage: 10Gi
";

fn load_err(yaml: &str) -> LoadError {
    cdi::load_yaml(yaml).expect_err("should not load")
}

fn problems(yaml: &str) -> Vec<cdi::FieldProblem> {
    let docs = cdi::load_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    docs[0].object.validate().errors
}

#[test]
fn good_example_loads_validates_and_round_trips() {
    let dv: DataVolume = cdi::from_yaml(GOOD).unwrap();
    assert!(dv.check().unwrap().is_empty());
    assert_eq!(dv.spec.requested_size().unwrap().bytes(), 10 << 30);
    let yaml = cdi::to_yaml(&dv).unwrap();
    assert_eq!(yaml.trim(), GOOD.trim());
    let json = cdi::to_json(&dv).unwrap();
    assert!(json.contains("\"apiVersion\": \"cdi.kubevirt.io/v1beta1\""));
    let back: DataVolume = cdi::from_json(&json).unwrap();
    assert_eq!(back, dv);
}

#[test]
fn unknown_fields_are_errors_naming_their_full_path() {
    let e = load_err(&GOOD.replace("url:", "urll:"));
    assert!(e.to_string().contains("spec.source.http.urll: unknown field"), "{e}");
    // The misspelt field is unknown, and the real one is then missing: both are reported.
    let LoadError::Decode { document, errors } = &e else { panic!("{e}") };
    assert_eq!(*document, 1);
    assert_eq!(errors.len(), 2, "{e}");
    assert_eq!(
        (errors[0].path.as_str(), errors[0].kind),
        ("spec.source.http.urll", DecodeErrorKind::UnknownField)
    );
    assert_eq!(
        (errors[1].path.as_str(), errors[1].kind),
        ("spec.source.http.url", DecodeErrorKind::MissingField)
    );
    assert_eq!(
        e.to_string(),
        "document 1: spec.source.http.urll: unknown field; spec.source.http.url: required field is missing"
    );

    // Every unknown field is listed, metadata and nested maps included.
    let e = load_err(
        &GOOD
            .replace("  name: dv", "  name: dv\n  lables: {}")
            .replace("storage: 10Gi", "storage: 10Gi\n      limitz: {}"),
    );
    let LoadError::Decode { errors, .. } = &e else { panic!("{e}") };
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["metadata.lables", "spec.storage.resources.limitz"]);
    assert!(errors.iter().all(|e| e.kind == DecodeErrorKind::UnknownField));

    // In a VirtualMachine's templates the path runs through the list index.
    let vm = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  anythingKubevirt: true
  dataVolumeTemplates:
  - metadata: {name: a}
    spec: {source: {blank: {}}, storage: {resources: {requests: {storage: 1Gi}}}}
  - metadata: {name: b}
    spec: {source: {blank: {}}, pvc: {acessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}
";
    let e = load_err(vm);
    assert!(e.to_string().contains("spec.dataVolumeTemplates[1].spec.pvc.acessModes: unknown field"), "{e}");

    // JSON is as strict.
    let e = cdi::load_json(r#"{"apiVersion":"cdi.kubevirt.io/v1beta1","kind":"DataSource","metadata":{"name":"d"},"spec":{"source":{"pvc":{"name":"p","namespace":"n","size":1}}}}"#).unwrap_err();
    assert!(e.to_string().contains("spec.source.pvc.size: unknown field"), "{e}");
}

#[test]
fn type_errors_and_missing_fields_name_their_path() {
    let e = load_err(&GOOD.replace("      url: https://example.com/disk.qcow2\n", "      secretRef: s\n"));
    assert_eq!(e.to_string(), "document 1: spec.source.http.url: required field is missing");
    let e = load_err(&GOOD.replace("  storage:\n", "  contentType: zip\n  storage:\n"));
    assert!(e.to_string().contains("spec.contentType: unknown variant `zip`"), "{e}");
    let e = load_err(&GOOD.replace("  name: dv", "  name: dv\n  labels: {a: [1]}"));
    assert!(e.to_string().contains("metadata.labels.a: invalid type"), "{e}");
    let cron = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataImportCron\nmetadata: {name: c}\nspec:\n  schedule: '@daily'\n  managedDataSource: m\n  importsToKeep: \"2\"\n  template: {spec: {source: {registry: {url: 'docker://q/x'}}, storage: {resources: {requests: {storage: 1Gi}}}}}\n";
    let e = load_err(cron);
    assert!(e.to_string().contains("spec.importsToKeep: invalid type: string \"2\", expected i32"), "{e}");
    let e = load_err("apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: x}\n");
    assert_eq!(e.to_string(), "document 1: spec: required field is missing");
}

#[test]
fn bad_quantity_is_an_error_naming_the_path_and_value() {
    let e = load_err(&GOOD.replace("10Gi", "10Gb"));
    let LoadError::Decode { errors, .. } = &e else { panic!("{e}") };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "spec.storage.resources.requests.storage");
    assert_eq!(errors[0].kind, DecodeErrorKind::InvalidValue);
    assert!(errors[0].message.contains("\"10Gb\""), "{}", errors[0]);
    for bad in ["-1Gi", "1..5", "ten", "99999999Ei"] {
        let e = load_err(&GOOD.replace("10Gi", &format!("\"{bad}\"")));
        assert!(e.to_string().contains("spec.storage.resources.requests.storage"), "{e}");
    }
    // Numbers are quantities too, and zero is a validation error.
    let dv: DataVolume = cdi::from_yaml(&GOOD.replace("10Gi", "1e9")).unwrap();
    assert_eq!(dv.spec.requested_size().unwrap().bytes(), 1_000_000_000);
    let p = problems(&GOOD.replace("10Gi", "0"));
    assert_eq!(p[0].path, "spec.storage.resources.requests.storage");
}

#[test]
fn two_sources_and_no_source_are_errors() {
    let p = problems(&GOOD.replace("  source:\n", "  source:\n    blank: {}\n"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "spec.source");
    assert_eq!(p[0].kind, ProblemKind::Invalid);
    assert!(p[0].message.contains("exactly one source must be set, found 2: http, blank"), "{}", p[0]);

    let p = problems(&GOOD.replace("    http:\n      url: https://example.com/disk.qcow2\n", "    {}\n"));
    assert_eq!((p[0].path.as_str(), p[0].kind), ("spec.source", ProblemKind::Required));

    let p = problems(&GOOD.replace("  source:\n", "  sourceRef: {kind: DataSource, name: ds}\n  source:\n"));
    assert_eq!(p[0].path, "spec.sourceRef");
}

#[test]
fn unsupported_sources_are_refused_naming_the_path() {
    let yaml = GOOD.replace(
        "    http:\n      url: https://example.com/disk.qcow2\n",
        "    s3:\n      url: https://bucket.s3.amazonaws.com/disk.img\n",
    );
    let dv: DataVolume = cdi::from_yaml(&yaml).unwrap();
    let e = dv.check().unwrap_err();
    assert_eq!(e.problems.len(), 1, "{e}");
    assert_eq!(e.problems[0].path, "spec.source.s3");
    assert_eq!(e.problems[0].kind, ProblemKind::Unsupported);
    assert!(e.to_string().contains("spec.source.s3: unsupported:"), "{e}");
    assert!(e.to_string().contains("DataVolume default/dv"), "{e}");

    for (src, path) in [
        ("gcs: {url: 'gs://b/o'}", "spec.source.gcs"),
        ("imageio: {url: 'https://e/ovirt-engine/api', diskId: d}", "spec.source.imageio"),
        ("vddk: {url: 'https://vc', uuid: u}", "spec.source.vddk"),
        ("registry: {imageStream: is, pullMethod: node}", "spec.source.registry.imageStream"),
    ] {
        let yaml =
            GOOD.replace("    http:\n      url: https://example.com/disk.qcow2\n", &format!("    {src}\n"));
        let p = problems(&yaml);
        assert!(p.iter().any(|p| p.path == path && p.kind == ProblemKind::Unsupported), "{src}: {p:?}");
    }
    let p = problems(&GOOD.replace(
        "  storage:\n",
        "  checkpoints: [{previous: a, current: b}]\n  storage:\n    volumeName: pv1\n",
    ));
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["spec.storage.volumeName", "spec.checkpoints"]);
}

#[test]
fn other_validation_rules() {
    // URL scheme.
    let p = problems(&GOOD.replace("https://example.com", "ftp://example.com"));
    assert_eq!(p[0].path, "spec.source.http.url");
    // Registry scheme.
    let reg = GOOD.replace(
        "    http:\n      url: https://example.com/disk.qcow2\n",
        "    registry:\n      url: quay.io/x/y\n",
    );
    let p = problems(&reg);
    assert_eq!(p[0].path, "spec.source.registry.url");
    assert!(p[0].message.contains("docker:// or oci-archive://"));
    // Size required for http/upload/blank; not for a clone.
    let nosize = GOOD.replace(
        "    resources:\n      requests:\n        storage: 10Gi\n",
        "    accessModes: [ReadWriteOnce]\n",
    );
    assert_eq!(problems(&nosize)[0].path, "spec.storage.resources.requests.storage");
    let upload = nosize.replace("    http:\n      url: https://example.com/disk.qcow2\n", "    upload: {}\n");
    assert!(problems(&upload)[0].message.contains("upload"), "{:?}", problems(&upload));
    let clone = nosize.replace(
        "    http:\n      url: https://example.com/disk.qcow2\n",
        "    pvc: {namespace: ns, name: src}\n",
    );
    assert!(problems(&clone).is_empty());
    // pvc API: exactly one access mode.
    let pvc = GOOD.replace("  storage:\n", "  pvc:\n");
    assert_eq!(problems(&pvc)[0].path, "spec.pvc.accessModes");
    // Archive content with a blank image.
    let p = problems(&GOOD.replace(
        "    http:\n      url: https://example.com/disk.qcow2\n",
        "    blank: {}\n  contentType: archive\n",
    ));
    assert_eq!(p[0].path, "spec.contentType");
    // Names.
    let p = problems(&GOOD.replace("name: dv", "name: My_DV"));
    assert_eq!(p[0].path, "metadata.name");
    // Header injection.
    let p = problems(
        &GOOD
            .replace("disk.qcow2\n", "disk.qcow2\n      extraHeaders: [\"X-A: 1\\r\\nX-B: 2\", \"ok: 1\"]\n"),
    );
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "spec.source.http.extraHeaders[0]");
}

const CRON: &str = "\
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataImportCron
metadata:
  name: fedora
  namespace: golden-images
spec:
  template:
    spec:
      source:
        registry:
          url: docker://quay.io/containerdisks/fedora:latest
      storage:
        resources:
          requests:
            storage: 5Gi
  schedule: 0 */12 * * *
  garbageCollect: Outdated
  importsToKeep: 3
  managedDataSource: fedora
";

#[test]
fn bad_cron_schedule_and_cron_rules() {
    let cron: DataImportCron = cdi::from_yaml(CRON).unwrap();
    cron.check().unwrap();
    for bad in ["0 */12 * *", "61 * * * *", "@every 1h", "0 0 30 2 *", "0 0 * * mon-sun,8"] {
        let yaml = CRON.replace("0 */12 * * *", &format!("'{bad}'"));
        let p = problems(&yaml);
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!(p[0].path, "spec.schedule");
        assert!(p[0].message.contains(bad), "{}", p[0]);
    }
    let p = problems(&CRON.replace("importsToKeep: 3", "importsToKeep: -1"));
    assert_eq!(p[0].path, "spec.importsToKeep");
    let p = problems(&CRON.replace("managedDataSource: fedora", "managedDataSource: 9fedora"));
    assert_eq!(p[0].path, "spec.managedDataSource");
    let e = load_err(&CRON.replace("Outdated", "Sometimes"));
    assert!(e.to_string().contains("spec.garbageCollect: unknown variant `Sometimes`"), "{e}");
    let http = CRON.replace(
        "registry:\n          url: docker://quay.io/containerdisks/fedora:latest",
        "http:\n          url: https://example.com/f.img",
    );
    let p = problems(&http);
    assert_eq!(p[0].path, "spec.template.spec.source");
    let p = problems(&CRON.replace("storage: 5Gi", "storage: 5Gi\n      contentType: archive"));
    assert!(p.iter().any(|p| p.path == "spec.template.spec.contentType"), "{p:?}");
}

#[test]
fn malformed_yaml_and_json_are_errors_with_positions() {
    for (text, line) in [
        ("apiVersion: v1\nkind: [\n", 2),
        ("a: 1\na: 2\n", 2),
        ("spec:\n  x: 1\n y: 2\n", 3),
        ("key: \"unterminated\n", 1),
    ] {
        let e = load_err(text);
        let LoadError::Syntax { line: Some(l), column: Some(_), .. } = &e else { panic!("{text:?}: {e}") };
        assert_eq!(*l, line, "{text:?}: {e}");
        assert!(e.to_string().starts_with("YAML syntax error:"), "{e}");
    }
    let e = cdi::load_json("{\"kind\": \"DataVolume\",\n \"kind\": \"DataSource\"}").unwrap_err();
    assert!(e.to_string().contains("duplicate field \"kind\""), "{e}");
    assert!(matches!(e, LoadError::Syntax { line: Some(2), .. }), "{e}");
    let e = cdi::load_json("{\"apiVersion\": ").unwrap_err();
    assert!(matches!(e, LoadError::Syntax { line: Some(1), .. }), "{e}");
    assert!(matches!(load_err("- a\n- b\n"), LoadError::NotAnObject { found: "a list", .. }));
    assert!(load_err("kind: DataVolume\n").to_string().contains("apiVersion: required field is missing"));
    assert!(matches!(
        load_err("apiVersion: cdi.kubevirt.io/v1alpha1\nkind: DataVolume\n"),
        LoadError::UnsupportedVersion { .. }
    ));
    assert!(cdi::load_yaml("# only a comment\n---\n").unwrap().is_empty());
    let e = cdi::from_yaml::<DataSource>(GOOD).unwrap_err();
    assert_eq!(e.to_string(), "expected exactly one DataSource, found a DataVolume");
}

#[test]
fn multi_document_streams_status_and_storage_profiles() {
    let stream = format!(
        "{GOOD}---\n{}---\n{}",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n",
        "\
apiVersion: cdi.kubevirt.io/v1beta1
kind: StorageProfile
metadata:
  name: local
spec:
  cloneStrategy: csi-clone
  claimPropertySets:
  - accessModes: [ReadWriteOnce]
    volumeMode: Filesystem
status:
  storageClass: local
  provisioner: rancher.io/local-path
  cloneStrategy: snapshot
"
    );
    let docs = cdi::load_yaml(&stream).unwrap();
    assert_eq!(docs.iter().map(|d| d.document).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(matches!(docs[1].object, CdiObject::Skipped(_)));
    let CdiObject::StorageProfile(sp) = &docs[2].object else { panic!() };
    assert_eq!(sp.spec.clone_strategy, Some(cdi::CloneStrategy::CsiClone));
    sp.check().unwrap();
    let back: StorageProfile = cdi::from_yaml(&cdi::to_yaml(sp.as_ref()).unwrap()).unwrap();
    assert_eq!(&back, sp.as_ref());

    // A DataVolume as read back from a cluster: server fields and status.
    let live = GOOD.replace(
        "  namespace: default\n",
        "  namespace: default\n  uid: 0b5c2f6e-1\n  resourceVersion: \"123\"\n  generation: 1\n  creationTimestamp: \"2024-05-01T10:00:00Z\"\n  managedFields: [{manager: kubectl, operation: Update}]\n  ownerReferences: [{apiVersion: kubevirt.io/v1, kind: VirtualMachine, name: vm, uid: u1, controller: true}]\n",
    ) + "\
status:
  claimName: dv
  phase: ImportInProgress
  progress: 45.20%
  restartCount: 0
  conditions:
  - type: Bound
    status: \"True\"
    lastTransitionTime: \"2024-05-01T10:00:05Z\"
    reason: Bound
  - type: Running
    status: \"True\"
    lastTransitionTime: \"2024-05-01T10:00:06Z\"
";
    let dv: DataVolume = cdi::from_yaml(&live).unwrap();
    let status = dv.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(cdi::DataVolumePhase::ImportInProgress));
    assert_eq!(status.progress.as_ref().unwrap().percent(), Some(45.2));
    dv.check().unwrap();
    let again: DataVolume = cdi::from_yaml(&cdi::to_yaml(&dv).unwrap()).unwrap();
    assert_eq!(again, dv);
    assert!(cdi::to_yaml(&dv).unwrap().contains("phase: ImportInProgress"));
    let p = problems(&live.replace("45.20%", "lots"));
    assert_eq!(p[0].path, "status.progress");
    let e = load_err(&live.replace("2024-05-01T10:00:05Z", "yesterday"));
    assert!(e.to_string().contains("status.conditions[0].lastTransitionTime"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(docs) = cdi::load_yaml(&text) {
            for d in docs { let _ = d.object.validate(); }
        }
        if let Ok(d) = cdi::load_json(&text) { let _ = d.object.validate(); }
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-zA-Z0-9:{}\\[\\], \n\"'#&*!|>@?./%-]{0,300}") {
        if let Ok(docs) = cdi::load_yaml(&text) {
            for d in docs { let _ = d.object.validate(); }
        }
    }

    #[test]
    fn mutated_data_volumes_never_panic(cut in 0usize..GOOD.len(), insert in "[a-z:{}\\[\\] \n\"'0-9.-]{0,12}") {
        // Splice random text into a valid document: loading and validating must not panic.
        let cut = (0..=cut).rev().find(|i| GOOD.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{}{}", &GOOD[..cut], insert, &GOOD[cut..]);
        if let Ok(docs) = cdi::load_yaml(&text) {
            for d in docs { let _ = d.object.validate(); let _ = d.object.to_yaml(); }
        }
    }
}
