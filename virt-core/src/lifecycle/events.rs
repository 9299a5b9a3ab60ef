//! core/v1 Events: what happened to VMs and VMIs, as `kubectl get events` shows them (bounded:
//! the oldest are dropped).

use super::*;

/// Events kept per node (the oldest are dropped).
pub(super) const MAX_EVENTS: usize = 2000;

/// A core/v1 `Event`, as `kubectl get events` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `v1`.
    pub api_version: String,
    /// `Event`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What it is about.
    pub involved_object: ObjectReference,
    /// Machine-readable reason (`Started`, `ShuttingDown`, `SoftwareEmulation`, ...).
    pub reason: String,
    /// What happened.
    pub message: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// How often it happened.
    pub count: u32,
    /// First time.
    pub first_timestamp: Timestamp,
    /// Last time.
    pub last_timestamp: Timestamp,
    /// Who reported it.
    pub source: EventSource,
}

/// `involvedObject` of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `kubevirt.io/v1`.
    pub api_version: String,
}

/// `source` of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    /// `virt-controller` or `virt-handler`.
    pub component: String,
    /// The node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Lifecycle {
    /// The events of `namespace`, oldest first.
    pub fn events(&self, namespace: Option<&str>) -> Vec<Event> {
        lock(&self.state)
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| namespace.is_none_or(|n| n == e.involved_object.namespace))
            .cloned()
            .collect()
    }
}

impl Persistence<'_> {
    pub(super) fn event_locked(
        &self,
        st: &mut State,
        kind: Kind,
        key: &Key,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let kind_name = kind.name();
        let uid = match kind {
            Kind::VirtualMachine => st.vms.get(key).and_then(|v| v.metadata.uid.clone()),
            Kind::VirtualMachineInstance => st.vmis.get(key).and_then(|v| v.metadata.uid.clone()),
            Kind::Migration => st.migrations.get(key).and_then(|m| m.metadata.uid.clone()),
            Kind::Namespace | Kind::Instancetype | Kind::MigrationPolicy => None,
        };
        if type_ == "Warning" {
            log::warn!("{kind_name} {key}: {reason}: {message}");
        } else {
            log::info!("{kind_name} {key}: {reason}: {message}");
        }
        let t = now();
        if let Some((seq, last)) = st.events.back_mut() {
            if last.involved_object.name == key.name
                && last.involved_object.namespace == key.namespace
                && last.involved_object.kind == kind_name
                && last.reason == reason
                && last.message == message
            {
                last.count += 1;
                last.last_timestamp = t;
                self.store_event(*seq, last);
                return;
            }
        }
        st.event_seq += 1;
        let seq = st.event_seq;
        let mut meta = ObjectMeta::named(format!("{}.{seq}", key.name));
        meta.namespace = Some(key.namespace.clone());
        let event = Event {
            api_version: "v1".into(),
            kind: "Event".into(),
            metadata: meta,
            involved_object: ObjectReference {
                kind: kind_name.into(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid,
                api_version: model::API_VERSION.into(),
            },
            reason: reason.into(),
            message,
            type_: type_.into(),
            count: 1,
            first_timestamp: t.clone(),
            last_timestamp: t,
            source: EventSource {
                component: if kind == Kind::VirtualMachine { "virt-controller" } else { "virt-handler" }
                    .into(),
                host: Some(self.lc.opts.node_name.clone()),
            },
        };
        self.store_event(seq, &event);
        st.events.push_back((seq, event));
        while st.events.len() > MAX_EVENTS {
            st.events.pop_front();
        }
    }

    /// Persists event number `seq` (the store keeps the latest [`MAX_EVENTS`]). Events are not
    /// worth failing a request for: a store that refuses one is logged.
    fn store_event(&self, seq: u64, event: &Event) {
        if let Err(e) = self.lc.store.put_event(seq, &to_value(event), MAX_EVENTS) {
            log::warn!("event {}: not stored: {e}", event.metadata.name.as_deref().unwrap_or_default());
        }
    }
}
