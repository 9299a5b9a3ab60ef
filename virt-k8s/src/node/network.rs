//! The node's network: virt-net's [`NetworkManager`] (a network namespace per VMI, masquerade and
//! bridge bindings, DHCP), the MAC pool, and `k8s.cni.cncf.io/v1` NetworkAttachmentDefinitions
//! kept in the node's store (their `spec.config` names a node bridge and an optional address range)
//! for `networks[].multus.networkName`. The launcher of a VMI with interfaces runs in the VMI's
//! namespace and opens the taps made there (docs/networking.md).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use virt_core::lifecycle::Key;
use virt_core::model::VirtualMachineInstance;
use virt_core::net::MacAddr;
use virt_net::endpoint::{EndpointLookup, VmiEndpoint};
use virt_net::macpool::MacPool;
use virt_net::pod::{NetworkManager, NodeNetConfig, VmiNet};
use virt_net::spec::{self, AddressRange, NadError, NadLookup, SecondaryNetwork};

use super::store::RedbStore;

/// The stored kind of NetworkAttachmentDefinitions.
pub const NAD_KIND: &str = "NetworkAttachmentDefinition";
/// Their group and version.
pub const NAD_API_VERSION: &str = "k8s.cni.cncf.io/v1";
const NAD_PREFIX: &str = "/apis/k8s.cni.cncf.io/v1";

/// How the node's pod network is set up (`virt-node --pod-network`).
#[derive(Debug, Clone)]
pub struct PodNetworkConfig {
    /// The namespace playing the node's (`--pod-netns`; tests); `None`: the node's own.
    pub node_netns: Option<String>,
    /// The MAC pool's range (`--mac-range`).
    pub mac_range: (MacAddr, MacAddr),
}

impl Default for PodNetworkConfig {
    fn default() -> Self {
        Self { node_netns: None, mac_range: virt_net::macpool::DEFAULT_RANGE }
    }
}

/// Why the node's network could not be opened; each names the directory or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum NodeNetworkError {
    /// The network manager could not start under the node's state directory.
    #[error("network manager under {}: {source}", dir.display())]
    Manager {
        /// Where the VMIs' network records live (`<state>/net/vmis`).
        dir: PathBuf,
        /// What failed (boxed: it is large).
        source: Box<virt_net::pod::PodNetError>,
    },
    /// The MAC pool could not be opened (a bad `--mac-range`, or an unreadable record).
    #[error("MAC pool {}: {source}", file.display())]
    MacPool {
        /// The pool's record (`<state>/net/macs.json`).
        file: PathBuf,
        /// What failed.
        source: virt_net::macpool::MacPoolError,
    },
}

/// Why a VMI's network could not be set up; each names the VMI and the field or step concerned.
#[derive(Debug, thiserror::Error)]
pub enum VmiNetworkError {
    /// An interface's `macAddress` is not a MAC address.
    #[error("{field}: {source}")]
    BadMac {
        /// The field (`spec.domain.devices.interfaces[i].macAddress`).
        field: String,
        /// What did not parse (names the value).
        source: virt_core::net::MacParseError,
    },
    /// The MAC pool refused the interface's address, or had none left.
    #[error("{field}: {source}")]
    MacPool {
        /// The field (`spec.domain.devices.interfaces[i].macAddress`).
        field: String,
        /// What the pool said.
        source: virt_net::macpool::MacPoolError,
    },
    /// The VMI's interfaces or networks are not valid (the error names the field).
    #[error(transparent)]
    Spec(#[from] virt_net::spec::SpecError),
    /// The namespace, bridges, taps, rules or DHCP of the VMI could not be made.
    #[error(transparent)]
    Setup(Box<virt_net::pod::PodNetError>),
}

/// The node's network: what the runtime calls around a launcher, and the endpoint lookup of
/// port-forward and ssh.
pub struct NodeNetwork {
    manager: Arc<NetworkManager>,
    macs: MacPool,
    store: Arc<RedbStore>,
}

/// A VMI's uid as the network knows it (the run directory's name).
pub fn uid_of(vmi: &VirtualMachineInstance) -> String {
    vmi.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            vmi.metadata.namespace.as_deref().unwrap_or("default"),
            vmi.metadata.name.as_deref().unwrap_or("vmi")
        )
    })
}

/// What `vmi`'s interfaces ask for: each with its MAC, from `macs` (claimed as the spec gives it,
/// else allocated), and secondary networks looked up in `nads`. Empty without interfaces.
pub fn interface_requests(
    vmi: &VirtualMachineInstance,
    macs: &MacPool,
    nads: &dyn NadLookup,
) -> Result<Vec<virt_net::spec::IfaceRequest>, VmiNetworkError> {
    if vmi.spec.domain.devices.interfaces.is_empty() {
        return Ok(Vec::new());
    }
    let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let mut chosen: HashMap<String, MacAddr> = HashMap::new();
    for (i, iface) in vmi.spec.domain.devices.interfaces.iter().enumerate() {
        let owner = format!("{ns}/{name}/{}", iface.name);
        let field = || format!("spec.domain.devices.interfaces[{i}].macAddress");
        let pool = |source| VmiNetworkError::MacPool { field: field(), source };
        let mac = match iface.mac_address.as_deref() {
            Some(m) => {
                let mac: MacAddr =
                    m.parse().map_err(|source| VmiNetworkError::BadMac { field: field(), source })?;
                macs.claim(&owner, mac).map_err(pool)?;
                mac
            }
            None => macs.allocate(&owner).map_err(pool)?,
        };
        chosen.insert(iface.name.clone(), mac);
    }
    Ok(spec::interfaces(&vmi.spec, &ns, &|n| chosen.get(n).copied(), nads)?)
}

impl NodeNetwork {
    /// Opens the network under `<state>/net/`; the networks of VMIs whose launcher no longer runs
    /// are removed (`alive` says which still do), the others taken back. The MAC pool is opened
    /// first, so a bad range fails before anything is set up.
    pub fn open(
        state_dir: &std::path::Path,
        cfg: &PodNetworkConfig,
        store: Arc<RedbStore>,
        alive: &dyn Fn(&VmiNet) -> bool,
    ) -> Result<Self, NodeNetworkError> {
        let mac_file = state_dir.join("net").join("macs.json");
        let macs = MacPool::open(cfg.mac_range.0, cfg.mac_range.1, Some(&mac_file))
            .map_err(|source| NodeNetworkError::MacPool { file: mac_file.clone(), source })?;
        let vmis_dir = state_dir.join("net").join("vmis");
        let mut net_cfg = NodeNetConfig::new(vmis_dir.clone());
        net_cfg.node_netns = cfg.node_netns.clone();
        // Namespaces are named per state directory: the sweep of one node never takes another's
        // (two nodes on one host, as tests run them).
        let mut h: u32 = 0x811c_9dc5;
        for b in state_dir.as_os_str().as_encoded_bytes() {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        net_cfg.prefix = format!("virt-{:04x}-", h & 0xffff);
        let manager = Arc::new(
            NetworkManager::new(net_cfg)
                .map_err(|source| NodeNetworkError::Manager { dir: vmis_dir, source: Box::new(source) })?,
        );
        let removed = manager.sweep(alive);
        if !removed.is_empty() {
            log::info!("pod network: removed what {} ended VMIs left: {removed:?}", removed.len());
        }
        Ok(Self { manager, macs, store })
    }

    /// The manager (its [`EndpointLookup`] is what port-forward uses).
    pub fn manager(&self) -> &Arc<NetworkManager> {
        &self.manager
    }

    /// Sets up `vmi`'s network: MACs from the pool (or claimed as given), then namespace, bridges,
    /// taps, rules and DHCP. `Ok(None)` for a VMI without interfaces. Errors name the field.
    pub fn setup(&self, vmi: &VirtualMachineInstance) -> Result<Option<VmiNet>, VmiNetworkError> {
        let reqs = interface_requests(vmi, &self.macs, self)?;
        if reqs.is_empty() {
            return Ok(None);
        }
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = vmi.metadata.name.clone().unwrap_or_default();
        self.manager
            .setup(&uid_of(vmi), &ns, &name, &reqs)
            .map(Some)
            .map_err(|e| VmiNetworkError::Setup(Box::new(e)))
    }

    /// Removes `vmi`'s network (namespace, taps, bridges, rules, DHCP servers, addresses). A VMI
    /// not owned by a VM also gives its MACs back.
    pub fn teardown(&self, vmi: &VirtualMachineInstance) {
        self.manager.teardown(&uid_of(vmi));
        let owned = vmi.metadata.owner_references.iter().any(|o| o.kind == "VirtualMachine");
        if !owned {
            let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
            let name = vmi.metadata.name.as_deref().unwrap_or_default();
            if let Err(e) = self.macs.release(&format!("{ns}/{name}/")) {
                log::warn!("MAC pool: {e}");
            }
        }
    }

    /// KubeVirt's `status.interfaces` of `vmi`.
    pub fn status(&self, vmi: &VirtualMachineInstance) -> Vec<virt_core::model::NetworkInterfaceStatus> {
        self.manager.get(&uid_of(vmi)).map(|n| n.status()).unwrap_or_default()
    }

    /// The namespace file `vmi`'s launcher joins.
    pub fn netns_of(&self, vmi: &VirtualMachineInstance) -> Option<PathBuf> {
        self.manager.get(&uid_of(vmi)).map(|n| n.netns_path())
    }

    /// The guest-side counters of each of `vmi`'s interfaces: its taps' figures, read from
    /// `/proc/net/dev` by a thread inside the VMI's network namespace (empty without one).
    pub fn guest_net_stats(&self, vmi: &VirtualMachineInstance) -> Vec<super::metrics::NetStats> {
        let Some(net) = self.manager.get(&uid_of(vmi)) else { return Vec::new() };
        let taps: Vec<(String, String)> =
            net.interfaces.iter().map(|i| (i.request.name.clone(), i.tap.clone())).collect();
        match virt_net::netns::run_in(&net.netns_path(), || {
            std::fs::read_to_string("/proc/thread-self/net/dev")
        }) {
            Ok(Ok(text)) => super::metrics::guest_net_stats(&text, &taps),
            Ok(Err(e)) => {
                log::debug!("metrics: /proc/net/dev in {}: {e}", net.netns);
                Vec::new()
            }
            Err(e) => {
                log::debug!("metrics: {e}");
                Vec::new()
            }
        }
    }
}

impl EndpointLookup for NodeNetwork {
    fn endpoint(&self, namespace: &str, name: &str) -> Option<VmiEndpoint> {
        self.manager.endpoint(namespace, name)
    }
}

/// The endpoint lookup of a node without a pod network: no VMI has an endpoint.
pub struct NoNetwork;

impl EndpointLookup for NoNetwork {
    fn endpoint(&self, _namespace: &str, _name: &str) -> Option<VmiEndpoint> {
        None
    }
}

/// A NetworkAttachmentDefinition's `spec.config` (a CNI config as a JSON string) as a secondary
/// network: `type: bridge` with `bridge`, optional `ipam` (`subnet`, `rangeStart`, `rangeEnd`,
/// `gateway`). Errors name the field.
pub fn parse_nad(nad: &str, v: &Value) -> Result<SecondaryNetwork, NadError> {
    let text = v
        .pointer("/spec/config")
        .and_then(Value::as_str)
        .ok_or_else(|| NadError::invalid("spec.config", "a CNI config (a JSON string) is required"))?;
    let c: Value =
        serde_json::from_str(text).map_err(|e| NadError::invalid("spec.config", format!("not JSON: {e}")))?;
    match c.get("type").and_then(Value::as_str) {
        Some("bridge") => {}
        other => {
            return Err(NadError::invalid(
                "spec.config.type",
                format!("{other:?}: only \"bridge\" is supported on this node"),
            ))
        }
    }
    let bridge = c.get("bridge").and_then(Value::as_str).filter(|b| !b.is_empty() && b.len() <= 15);
    let bridge = bridge.ok_or_else(|| {
        NadError::invalid("spec.config.bridge", "the node bridge's name (1 to 15 bytes) is required")
    })?;
    let range = match c.get("ipam").filter(|i| i.get("subnet").is_some()) {
        None => None,
        Some(ipam) => {
            let field = |f: &str| ipam.get(f).and_then(Value::as_str);
            let subnet: ipnet::Ipv4Net =
                field("subnet").unwrap_or_default().parse().map_err(|e: ipnet::AddrParseError| {
                    NadError::invalid("spec.config.ipam.subnet", e.to_string())
                })?;
            let addr = |f: &str, default: Ipv4Addr| -> Result<Ipv4Addr, NadError> {
                match field(f) {
                    None => Ok(default),
                    Some(s) => {
                        let a: Ipv4Addr = s.parse().map_err(|e| {
                            NadError::invalid(format!("spec.config.ipam.{f}"), format!("{s:?}: {e}"))
                        })?;
                        if !subnet.contains(&a) {
                            return Err(NadError::invalid(
                                format!("spec.config.ipam.{f}"),
                                format!("{a} is outside {subnet}"),
                            ));
                        }
                        Ok(a)
                    }
                }
            };
            let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
            let last = Ipv4Addr::from(u32::from(subnet.broadcast()).saturating_sub(1));
            let start = addr("rangeStart", first)?;
            let end = addr("rangeEnd", last)?;
            if start > end {
                return Err(NadError::invalid(
                    "spec.config.ipam",
                    format!("rangeStart {start} is after rangeEnd {end}"),
                ));
            }
            let gateway = match field("gateway") {
                None => None,
                Some(_) => Some(addr("gateway", first)?),
            };
            Some(AddressRange { subnet: subnet.trunc(), start, end, gateway })
        }
    };
    Ok(SecondaryNetwork { nad: nad.to_string(), bridge: bridge.to_string(), range })
}

impl NadLookup for NodeNetwork {
    fn network(&self, namespace: &str, name: &str) -> Result<Option<SecondaryNetwork>, NadError> {
        let v = self
            .store
            .get_object(NAD_KIND, &Key::new(namespace, name))
            .map_err(|e| NadError::Read(e.to_string()))?;
        v.map(|v| parse_nad(&format!("{namespace}/{name}"), &v)).transpose()
    }
}

// --- the REST API of NetworkAttachmentDefinitions ---------------------------------------------

#[derive(Clone)]
struct NadState {
    store: Arc<RedbStore>,
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()});
    (code, Json(body)).into_response()
}

fn list_of(store: &RedbStore, ns: Option<&str>) -> Response {
    match store.load_kinds(&[NAD_KIND]) {
        Ok(rows) => {
            let items: Vec<Value> = rows
                .into_iter()
                .filter(|(_, k, _)| ns.is_none_or(|n| k.namespace == n))
                .filter_map(|(_, _, b)| serde_json::from_slice(&b).ok())
                .collect();
            Json(json!({"apiVersion": NAD_API_VERSION, "kind": "NetworkAttachmentDefinitionList", "metadata": {}, "items": items}))
                .into_response()
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
    }
}

async fn list_all(State(s): State<NadState>) -> Response {
    list_of(&s.store, None)
}

async fn list_ns(State(s): State<NadState>, Path(ns): Path<String>) -> Response {
    list_of(&s.store, Some(&ns))
}

async fn create(
    State(s): State<NadState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut v = match super::cdi_api::parse_body(&headers, &body) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    if v["apiVersion"] != NAD_API_VERSION || v["kind"] != NAD_KIND {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("this path takes a {NAD_API_VERSION} {NAD_KIND}"),
        );
    }
    let Some(name) = v.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: a name is required".into(),
        );
    };
    if let Err(e) = parse_nad(&format!("{ns}/{name}"), &v) {
        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{NAD_KIND} {ns}/{name}: {e}"));
    }
    let key = Key::new(ns.clone(), name.clone());
    if let Ok(Some(_)) = s.store.get_object(NAD_KIND, &key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{NAD_KIND} {ns}/{name} already exists"),
        );
    }
    v["metadata"]["namespace"] = json!(ns);
    v["metadata"]["uid"] = json!(format!("nad-{ns}-{name}"));
    let store = s.store.clone();
    let out = tokio::task::spawn_blocking(move || {
        store
            .put_object(NAD_KIND, &key, v.clone())
            .map(|_| ())
            .and_then(|()| store.get_object(NAD_KIND, &key))
    })
    .await;
    match out {
        Ok(Ok(Some(v))) => (StatusCode::CREATED, Json(v)).into_response(),
        Ok(Ok(None)) => {
            status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "written but not found".into())
        }
        Ok(Err(e)) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
    }
}

async fn get_one(State(s): State<NadState>, Path((ns, name)): Path<(String, String)>) -> Response {
    match s.store.get_object(NAD_KIND, &Key::new(ns.clone(), name.clone())) {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => status(StatusCode::NOT_FOUND, "NotFound", format!("{NAD_KIND} {ns}/{name} not found")),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
    }
}

async fn delete_one(State(s): State<NadState>, Path((ns, name)): Path<(String, String)>) -> Response {
    match s.store.delete_object(NAD_KIND, &Key::new(ns.clone(), name.clone())) {
        Ok(Some(_)) => {
            Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": "k8s.cni.cncf.io", "kind": "network-attachment-definitions"}}))
            .into_response()
        }
        Ok(None) => status(StatusCode::NOT_FOUND, "NotFound", format!("{NAD_KIND} {ns}/{name} not found")),
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()),
    }
}

/// The routes of NetworkAttachmentDefinitions, to merge into the node's API router.
pub fn router(store: Arc<RedbStore>) -> Router {
    Router::new()
        .route(&format!("{NAD_PREFIX}/network-attachment-definitions"), get(list_all))
        .route(
            &format!("{NAD_PREFIX}/namespaces/{{ns}}/network-attachment-definitions"),
            get(list_ns).post(create),
        )
        .route(
            &format!("{NAD_PREFIX}/namespaces/{{ns}}/network-attachment-definitions/{{name}}"),
            get(get_one).delete(delete_one),
        )
        .with_state(NadState { store })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nad(config: &str) -> Value {
        json!({"apiVersion": NAD_API_VERSION, "kind": NAD_KIND, "metadata": {"name": "sec"}, "spec": {"config": config}})
    }

    #[test]
    fn nad_configs_parse_and_errors_name_the_field() {
        let n = parse_nad(
            "default/sec",
            &nad(r#"{"cniVersion":"0.3.1","type":"bridge","bridge":"br1","ipam":{"type":"host-local","subnet":"192.168.50.0/24","rangeStart":"192.168.50.10","rangeEnd":"192.168.50.20"}}"#),
        )
        .unwrap();
        assert_eq!(n.bridge, "br1");
        let r = n.range.unwrap();
        assert_eq!((r.start, r.end), (Ipv4Addr::new(192, 168, 50, 10), Ipv4Addr::new(192, 168, 50, 20)));
        let e = parse_nad("d/s", &nad(r#"{"type":"macvlan"}"#)).unwrap_err();
        assert!(e.to_string().starts_with("spec.config.type"), "{e}");
        let e = parse_nad("d/s", &nad(r#"{"type":"bridge"}"#)).unwrap_err();
        assert!(e.to_string().starts_with("spec.config.bridge"), "{e}");
        let e = parse_nad(
            "d/s",
            &nad(r#"{"type":"bridge","bridge":"b","ipam":{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}}"#),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("spec.config.ipam.rangeStart"), "{e}");
    }

    fn store() -> (tempfile::TempDir, Arc<RedbStore>) {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(RedbStore::open_state_dir(d.path()).unwrap());
        (d, s)
    }

    #[test]
    fn a_reversed_mac_range_fails_naming_the_pool_before_anything_is_set_up() {
        let (_d, store) = store();
        let state = tempfile::tempdir().unwrap();
        let (a, b) = virt_net::macpool::DEFAULT_RANGE;
        let cfg = PodNetworkConfig { node_netns: None, mac_range: (b, a) };
        let Err(e) = NodeNetwork::open(state.path(), &cfg, store, &|_| true) else { panic!("opened") };
        let file = state.path().join("net").join("macs.json");
        assert!(matches!(&e, NodeNetworkError::MacPool { file: f, .. } if *f == file), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("MAC pool {}: MAC range {b}-{a}: ", file.display())), "{msg}");
        assert!(!state.path().join("net").join("vmis").exists());
    }

    #[test]
    fn a_manager_that_cannot_make_its_directory_fails_naming_it() {
        let (_d, store) = store();
        let state = tempfile::tempdir().unwrap();
        // `net` is a file, so `net/vmis` cannot be made (and there is no MAC record to read).
        std::fs::write(state.path().join("net"), b"").unwrap();
        let cfg = PodNetworkConfig::default();
        let Err(e) = NodeNetwork::open(state.path(), &cfg, store, &|_| true) else { panic!("opened") };
        let dir = state.path().join("net").join("vmis");
        assert!(matches!(&e, NodeNetworkError::Manager { dir: d, .. } if *d == dir), "{e:?}");
        assert!(e.to_string().starts_with(&format!("network manager under {}: ", dir.display())), "{e}");
    }
}
