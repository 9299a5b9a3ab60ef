//! Reviews as the API server sends them, for each kind the webhook guards.

use super::*;

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

/// A review of `operation` on `object` of `kind` in `group`; updates carry the old object too.
fn request_op(group: &str, kind: &str, operation: &str, object: Value) -> Vec<u8> {
    let mut review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": { "group": group, "version": "v1", "kind": kind },
            "operation": operation,
            "object": object,
        },
    });
    if operation == "UPDATE" {
        review["request"]["oldObject"] = review["request"]["object"].clone();
    }
    review.to_string().into_bytes()
}

fn request(kind: &str, object: Value) -> Vec<u8> {
    request_op("kubevirt.io", kind, "CREATE", object)
}

/// The API server's metadata on a stored object.
fn meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({
        "name": name, "uid": "u1", "generation": 1, "resourceVersion": "7",
        "creationTimestamp": "2026-12-05T08:00:00Z",
        "managedFields": [{ "manager": "kubectl", "operation": "Update" }],
    });
    if let Some(ns) = namespace {
        m["namespace"] = ns.into();
    }
    m
}

fn vm(spec_extra: Value) -> Value {
    let mut vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": meta("vm1", Some("default")),
        "spec": {
            "runStrategy": "Halted",
            "template": { "spec": { "domain": { "devices": {}, "memory": { "guest": "64Mi" } } } },
        },
    });
    if let (Some(spec), Some(extra)) = (vm["spec"].as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    vm
}

/// Asserts `answer` refuses with a cause naming `field` and a message containing it; returns the
/// message.
fn refused_at(answer: &Value, field: &str) -> String {
    let r = &answer["response"];
    assert_eq!(r["allowed"], false, "{answer}");
    assert_eq!(r["uid"], UID);
    assert_eq!(r["status"]["code"], 422, "{answer}");
    let msg = r["status"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains(field), "{field} not in {msg}");
    let causes = r["status"]["details"]["causes"].as_array().unwrap();
    assert!(causes.iter().any(|c| c["field"] == field), "{field} not among {causes:?}");
    msg
}

fn allowed(answer: &Value) {
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["uid"], UID);
}

/// Every guarded kind with a good object, one with an unknown field and one with a bad value,
/// and the field paths the node names for the two.
struct Case {
    group: &'static str,
    kind: &'static str,
    good: Value,
    unknown: (Value, &'static str),
    bad: (Value, &'static str),
}

/// `object` with `value` set at the JSON pointer `at` (created as objects on the way).
fn with(object: &Value, at: &str, value: Value) -> Value {
    let mut o = object.clone();
    let mut cur = &mut o;
    for key in at.trim_start_matches('/').split('/') {
        cur = cur.as_object_mut().unwrap().entry(key.to_string()).or_insert(json!({}));
    }
    *cur = value;
    o
}

fn cases() -> Vec<Case> {
    let migration = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": meta("mig1", Some("default")),
        "spec": { "vmiName": "vmi1" },
    });
    let instancetype = |kind: &str, ns: Option<&str>| {
        json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
            "metadata": meta("small", ns),
            "spec": { "cpu": { "guest": 1 }, "memory": { "guest": "128Mi" } },
        })
    };
    let preference = |kind: &str, ns: Option<&str>| {
        json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
            "metadata": meta("pref", ns),
            "spec": { "devices": { "preferredDiskBus": "virtio" } },
        })
    };
    let dv = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": meta("dv1", Some("default")),
        "spec": {
            "source": { "http": { "url": "https://example.com/disk.img" } },
            "storage": { "resources": { "requests": { "storage": "500Mi" } } },
        },
    });
    let ds = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataSource",
        "metadata": meta("ds1", Some("default")),
        "spec": { "source": { "pvc": { "name": "disk", "namespace": "default" } } },
    });
    let cron = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataImportCron",
        "metadata": meta("cron1", Some("default")),
        "spec": {
            "schedule": "30 1 * * 1",
            "managedDataSource": "debian",
            "template": { "spec": {
                "source": { "registry": { "url": "docker://example.com/debian:12" } },
                "storage": { "resources": { "requests": { "storage": "2Gi" } } },
            } },
        },
    });
    let it = instancetype("VirtualMachineInstancetype", Some("default"));
    let cit = instancetype("VirtualMachineClusterInstancetype", None);
    let pref = preference("VirtualMachinePreference", Some("default"));
    let cpref = preference("VirtualMachineClusterPreference", None);
    let itg = "instancetype.kubevirt.io";
    let policy = json!({
        "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": { "name": "fast" },
        "spec": { "bandwidthPerMigration": "128Mi", "completionTimeoutPerGiB": 300,
                  "selectors": { "namespaceSelector": { "team": "a" } } },
    });
    vec![
        Case {
            group: "kubevirt.io",
            kind: "VirtualMachineInstanceMigration",
            unknown: (with(&migration, "/spec/vmiNmae", json!("vmi1")), "spec.vmiNmae"),
            bad: (with(&migration, "/spec/vmiName", json!("Not_A_Name")), "spec.vmiName"),
            good: migration,
        },
        Case {
            group: itg,
            kind: "VirtualMachineInstancetype",
            unknown: (with(&it, "/spec/cpu/guestt", json!(2)), "spec.cpu.guestt"),
            bad: (with(&it, "/spec/cpu/guest", json!(0)), "spec.cpu.guest"),
            good: it,
        },
        Case {
            group: itg,
            kind: "VirtualMachineClusterInstancetype",
            unknown: (with(&cit, "/spec/memory/overcommit", json!(10)), "spec.memory.overcommit"),
            bad: (with(&cit, "/spec/memory/overcommitPercent", json!(150)), "spec.memory.overcommitPercent"),
            good: cit,
        },
        Case {
            group: itg,
            kind: "VirtualMachinePreference",
            unknown: (
                with(&pref, "/spec/devices/preferedDiskBus", json!("sata")),
                "spec.devices.preferedDiskBus",
            ),
            bad: (
                with(&pref, "/spec/devices/preferredInterfaceModel", json!("rtl9999")),
                "spec.devices.preferredInterfaceModel",
            ),
            good: pref,
        },
        Case {
            group: itg,
            kind: "VirtualMachineClusterPreference",
            unknown: (with(&cpref, "/spec/cpuu", json!({})), "spec.cpuu"),
            bad: (
                with(&cpref, "/spec/preferSpreadSocketToCoreRatio", json!(0)),
                "spec.preferSpreadSocketToCoreRatio",
            ),
            good: cpref,
        },
        Case {
            group: "cdi.kubevirt.io",
            kind: "DataVolume",
            unknown: (with(&dv, "/spec/source/http/urll", json!("x")), "spec.source.http.urll"),
            bad: (with(&dv, "/spec/source/blank", json!({})), "spec.source"),
            good: dv,
        },
        Case {
            group: "cdi.kubevirt.io",
            kind: "DataSource",
            unknown: (with(&ds, "/spec/source/pvc/claim", json!("x")), "spec.source.pvc.claim"),
            bad: (with(&ds, "/spec/source/pvc/name", json!("Bad_Name")), "spec.source.pvc.name"),
            good: ds,
        },
        Case {
            group: "cdi.kubevirt.io",
            kind: "DataImportCron",
            unknown: (with(&cron, "/spec/scheduel", json!("@daily")), "spec.scheduel"),
            bad: (with(&cron, "/spec/schedule", json!("61 * * * *")), "spec.schedule"),
            good: cron,
        },
        Case {
            group: "migrations.kubevirt.io",
            kind: "MigrationPolicy",
            unknown: (with(&policy, "/spec/allowAutoConvergee", json!(true)), "spec.allowAutoConvergee"),
            bad: (with(&policy, "/spec/completionTimeoutPerGiB", json!(-1)), "spec.completionTimeoutPerGiB"),
            good: policy,
        },
    ]
}

#[test]
fn every_guarded_kind_is_allowed_when_good_and_refused_by_path_on_create_and_update() {
    let names: Vec<&str> = webhooks().iter().map(|w| w.name).collect();
    for c in cases() {
        // The kind has a webhook of its own group.
        assert!(
            webhooks()
                .iter()
                .any(|w| w.group == c.group
                    && w.resource.starts_with(c.kind.to_lowercase().trim_end_matches('y'))),
            "{}: {names:?}",
            c.kind
        );
        for op in ["CREATE", "UPDATE"] {
            let what = format!("{} {op}", c.kind);
            allowed(&review(&request_op(c.group, c.kind, op, c.good.clone())).unwrap());
            let answer = review(&request_op(c.group, c.kind, op, c.unknown.0.clone())).unwrap();
            let msg = refused_at(&answer, c.unknown.1);
            assert!(msg.contains("unknown field"), "{what}: {msg}");
            let answer = review(&request_op(c.group, c.kind, op, c.bad.0.clone())).unwrap();
            refused_at(&answer, c.bad.1);
            let details = &answer["response"]["status"]["details"];
            assert_eq!(details["kind"], c.kind, "{what}");
            assert_eq!(details["group"], c.group, "{what}");
        }
    }
}

#[test]
fn a_kind_is_checked_only_in_its_own_group_and_a_body_of_another_kind_is_refused() {
    // A DataVolume review carrying a DataSource: the loader's kind, not the review's, is read.
    let ds = &cases()[6].good;
    let answer = review(&request_op("cdi.kubevirt.io", "DataVolume", "CREATE", ds.clone())).unwrap();
    let msg = refused_at(&answer, "kind");
    assert!(msg.contains("DataSource"), "{msg}");
    // A kind of the same name in a group this webhook is not registered for passes.
    let answer =
        review(&request_op("example.com", "DataVolume", "CREATE", json!({ "spec": { "x": 1 } }))).unwrap();
    allowed(&answer);
}

#[test]
fn a_migration_of_a_running_vmi_is_not_refused_for_this_node_not_migrating() {
    // The node checks of NodeSupport::default() refuse live migration; the node's own create
    // does not apply them to migrations, and neither does the webhook.
    let m = &cases()[0].good;
    allowed(
        &review(&request_op("kubevirt.io", "VirtualMachineInstanceMigration", "CREATE", m.clone())).unwrap(),
    );
    let answer = review(&request_op(
        "kubevirt.io",
        "VirtualMachineInstanceMigration",
        "CREATE",
        with(m, "/spec", json!({})),
    ))
    .unwrap();
    refused_at(&answer, "spec.vmiName");
}

#[test]
fn a_migrations_spec_cannot_change_but_its_labels_can() {
    let m = cases()[0].good.clone();
    let kind = "VirtualMachineInstanceMigration";
    let update = |old: &Value, new: &Value| {
        let mut body: Value =
            serde_json::from_slice(&request_op("kubevirt.io", kind, "UPDATE", new.clone())).unwrap();
        body["request"]["oldObject"] = old.clone();
        review(body.to_string().as_bytes()).unwrap()
    };
    let answer = update(&m, &with(&m, "/spec/vmiName", json!("other")));
    let msg = refused_at(&answer, "spec");
    assert!(msg.contains("update of Migration object's spec is restricted"), "{msg}");
    allowed(&update(&m, &with(&m, "/metadata/labels", json!({ "a": "b" }))));
}

#[test]
fn warnings_are_passed_on() {
    // An empty DataSource is allowed with the node's notice.
    let ds = with(&cases()[6].good, "/spec/source", json!({}));
    let answer = review(&request_op("cdi.kubevirt.io", "DataSource", "CREATE", ds)).unwrap();
    allowed(&answer);
    let warnings = answer["response"]["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains("spec.source")), "{warnings:?}");
}

#[test]
fn the_webhooks_are_kubevirts_and_cdis_one_resource_each() {
    let hooks = webhooks();
    let find = |name: &str| hooks.iter().find(|w| w.name == name).unwrap_or_else(|| panic!("{name}"));
    let create = find("migration-create-validator.kubevirt.io");
    let update = find("migration-update-validator.kubevirt.io");
    assert_eq!((create.operations, update.operations), (&["CREATE"][..], &["UPDATE"][..]));
    assert_eq!(create.resource, "virtualmachineinstancemigrations");
    let it = find("virtualmachineclusterinstancetype-validator.instancetype.kubevirt.io");
    assert_eq!((it.group, it.version, it.scope), ("instancetype.kubevirt.io", "v1beta1", "Cluster"));
    let dv = find("datavolume-validate.cdi.kubevirt.io");
    assert_eq!((dv.group, dv.resource, dv.scope), ("cdi.kubevirt.io", "datavolumes", "Namespaced"));
    find("dataimportcron-validate.cdi.kubevirt.io");
    // Names are unique; each resource's operations are sent to one webhook only.
    let mut names = std::collections::HashSet::new();
    let mut sent = std::collections::HashSet::new();
    for h in &hooks {
        assert!(names.insert(h.name), "{} twice", h.name);
        for op in h.operations {
            assert!(sent.insert(format!("{}/{op}", h.resource)), "{h:?}");
        }
    }
}

#[test]
fn a_valid_vm_as_the_api_server_sends_it_is_allowed() {
    let answer = review(&request("VirtualMachine", vm(json!({})))).unwrap();
    assert_eq!(answer["kind"], "AdmissionReview");
    allowed(&answer);
}

#[test]
fn bad_values_and_unknown_fields_are_refused_naming_the_field() {
    let answer = review(&request("VirtualMachine", vm(json!({ "running": true })))).unwrap();
    let msg = refused_at(&answer, "spec.running");
    assert!(msg.contains("runStrategy"), "{msg}");
    let details = &answer["response"]["status"]["details"];
    assert_eq!((&details["kind"], &details["name"]), (&json!("VirtualMachine"), &json!("vm1")));

    let answer = review(&request("VirtualMachine", vm(json!({ "runStrateggy": "Always" })))).unwrap();
    refused_at(&answer, "spec.runStrateggy");

    let vmi = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": { "name": "v", "namespace": "default" },
        "spec": { "domain": { "devices": { "disks": [{ "name": "d", "disk": { "bus": "floppy" } }] } } },
    });
    let answer = review(&request("VirtualMachineInstance", vmi)).unwrap();
    let msg = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("spec.domain.devices.disks[0].disk.bus"), "{msg}");
}

#[test]
fn deletes_and_other_kinds_pass_and_garbage_is_a_bad_request() {
    let mut body: Value = serde_json::from_slice(&request("VirtualMachine", json!({}))).unwrap();
    body["request"]["operation"] = "DELETE".into();
    let answer = review(body.to_string().as_bytes()).unwrap();
    allowed(&answer);
    let answer = review(&request_op("", "ConfigMap", "CREATE", json!({ "data": 1 }))).unwrap();
    allowed(&answer);
    assert!(matches!(review(b"{"), Err(ReviewError::NotJson(_))));
    assert!(matches!(review(b"{\"request\":{}}"), Err(ReviewError::NoUid)));
}
