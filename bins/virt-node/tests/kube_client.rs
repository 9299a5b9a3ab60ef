//! A kube 5 client (`kube::Api<Cr<VirtualMachine>>`: the project's own VM type as a kube
//! resource, as the Kubernetes adapter uses it) against a real `virt-node` over TLS, configured from
//! the kubeconfig the node writes: it lists VMs, watches them and patches one's `runStrategy`, and
//! the watch sees the VM start.

#[path = "support/node.rs"]
mod node;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use node::NodeProc;
use virt_core::model::VirtualMachine;
use virt_k8s::cluster::Cr;

const VM: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: kube-vm
  labels:
    app: kube-client
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: scratch
            disk:
              bus: virtio
        memory:
          guest: 64Mi
      terminationGracePeriodSeconds: 0
      volumes:
      - name: scratch
        hostDisk:
          path: DISK
          type: DiskOrCreate
          capacity: 16Mi
";

fn status(vm: &Cr<VirtualMachine>) -> (Option<String>, bool) {
    let st = vm.obj.status.as_ref();
    (st.and_then(|s| s.printable_status.clone()), st.and_then(|s| s.ready).unwrap_or(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kube_client_lists_watches_and_patches_vms() {
    let state = tempfile::Builder::new().prefix("vk").tempdir_in("/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_file = state.path().join("token");
    std::fs::write(&token_file, "kube-client-token\n").unwrap();
    let disks = state.path().join("disks");
    std::fs::create_dir(&disks).unwrap();
    std::fs::create_dir(state.path().join("s")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let node = NodeProc::start_with(
        &state.path().join("s"),
        None,
        &[
            "--listen",
            &listen,
            "--token-file",
            token_file.to_str().unwrap(),
            "--node-name",
            "kube-node",
            "--host-disk-dir",
            disks.to_str().unwrap(),
        ],
    );
    let kubeconfig = node.state.join("kubeconfig");
    let t = Instant::now();
    while !kubeconfig.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "no kubeconfig: {}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let manifest = state.path().join("vm.yaml");
    std::fs::write(&manifest, VM.replace("DISK", disks.join("kube-vm.img").to_str().unwrap())).unwrap();
    node.ok(&["create", "-f", manifest.to_str().unwrap()]);

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let vms: Api<Cr<VirtualMachine>> = Api::namespaced(client, "default");

    // List, with a label selector.
    let list = vms.list(&ListParams::default().labels("app=kube-client")).await.unwrap();
    let names: Vec<_> = list.items.iter().map(|v| v.meta.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["kube-vm"], "{:?}", list.items);
    assert_eq!(status(&list.items[0]).0.as_deref(), Some("Stopped"));
    let rv = list.metadata.resource_version.clone().unwrap();
    assert!(rv.parse::<u64>().unwrap() > 0, "the list's resourceVersion {rv:?}");

    // Watch from the list's resourceVersion, then patch runStrategy: the watch sees the VM start.
    let wp = WatchParams::default().fields("metadata.name=kube-vm").timeout(280);
    let mut events = vms.watch(&wp, &rv).await.unwrap().boxed();
    let patch = serde_json::json!({ "spec": { "runStrategy": "Always" } });
    let patched = vms.patch("kube-vm", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(patched.obj.spec.run_strategy.map(|s| format!("{s:?}")).as_deref(), Some("Always"));
    assert!(patched.meta.generation.unwrap_or(0) >= 2, "a spec change bumps generation: {:?}", patched.meta);

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.try_next())
            .await
            .unwrap_or_else(|_| panic!("the watch never showed the VM Running: {seen:?}\n{}", node.log()))
            .unwrap()
            .expect("the watch ended");
        match ev {
            WatchEvent::Modified(vm) | WatchEvent::Added(vm) => {
                let s = status(&vm);
                seen.push(s.clone());
                if s == (Some("Running".into()), true) {
                    break;
                }
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    // The phases of a start, in order: first the strategy taken, then Starting/Running.
    assert!(seen.iter().any(|(p, _)| p.as_deref() == Some("Starting")) || seen.len() >= 2, "{seen:?}");

    // A replace with a stale resourceVersion is a Kubernetes Conflict.
    let mut stale = list.items[0].clone();
    stale.obj.metadata.labels.insert("stale".into(), "yes".into());
    stale.meta.labels.get_or_insert_with(Default::default).insert("stale".into(), "yes".into());
    let err = vms.replace("kube-vm", &Default::default(), &stale).await.unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{s:?}"),
        e => panic!("not a Conflict: {e:?}"),
    }
    let _ = vms.delete("kube-vm", &Default::default()).await.unwrap();
}
