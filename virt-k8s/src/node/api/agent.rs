//! KubeVirt's guest-agent subresources of a VMI: `guestosinfo`, `userlist` and `filesystemlist`
//! (GET; a 409 when no agent is connected, as KubeVirt answers), `freeze` and `unfreeze` (PUT).
//! The answers have KubeVirt's shapes (`VirtualMachineInstanceGuestAgentInfo`,
//! `VirtualMachineInstanceGuestOSUserList`, `VirtualMachineInstanceFileSystemList`).

use super::*;
use virt_core::agent::AgentReport;

/// `VirtualMachineInstanceGuestAgentInfo` from a report.
pub fn guest_os_info(r: &AgentReport) -> Value {
    let mut v = json!({
        "guestAgentVersion": r.guest_agent_version,
        "supportedCommands": r.supported_commands,
        "hostname": r.hostname,
        "os": r.os.clone().unwrap_or_default(),
        "timezone": r.timezone,
        "userList": r.user_list,
        "fsInfo": { "disks": r.filesystems },
        "fsFreezeStatus": r.fs_freeze_status,
    });
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
    }
    v
}

async fn guestosinfo(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    let r = blocking(move || Ok(s.lifecycle.vmis().guest_agent(&ns, &name)?)).await?;
    ok(StatusCode::OK, &guest_os_info(&r))
}

async fn userlist(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    let r = blocking(move || Ok(s.lifecycle.vmis().guest_agent(&ns, &name)?)).await?;
    ok(StatusCode::OK, &json!({ "metadata": {}, "items": r.user_list }))
}

async fn filesystemlist(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    let r = blocking(move || Ok(s.lifecycle.vmis().guest_agent(&ns, &name)?)).await?;
    ok(StatusCode::OK, &json!({ "metadata": {}, "items": r.filesystems }))
}

async fn freeze(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vmis().fs_freeze(&ns, &name, true)?)).await?;
    accepted()
}

async fn unfreeze(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vmis().fs_freeze(&ns, &name, false)?)).await?;
    accepted()
}

/// The routes, under `{SUB}/namespaces/{ns}/virtualmachineinstances/{name}/`.
pub(super) fn routes(sub: &str) -> Router<ApiState> {
    let at = |what: &str| format!("{sub}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/{what}");
    Router::new()
        .route(&at("guestosinfo"), get(guestosinfo))
        .route(&at("userlist"), get(userlist))
        .route(&at("filesystemlist"), get(filesystemlist))
        .route(&at("freeze"), put(freeze))
        .route(&at("unfreeze"), put(unfreeze))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guestosinfo_has_kubevirts_field_names() {
        let r: AgentReport = serde_json::from_value(json!({
            "connected": true, "guestAgentVersion": "7.2.22",
            "supportedCommands": [{"name": "guest-ping", "enabled": true}],
            "hostname": "vm1", "os": {"id": "debian", "versionId": "12", "prettyName": "Debian GNU/Linux 12 (bookworm)"},
            "timezone": "UTC, 0", "userList": [{"userName": "debian", "loginTime": 1.5}],
            "filesystems": [{"diskName": "vda1", "mountPoint": "/", "fileSystemType": "ext4",
                             "usedBytes": 1, "totalBytes": 2, "disk": [{"busType": "virtio", "serial": "root"}]}],
            "fsFreezeStatus": "thawed"
        }))
        .unwrap();
        let v = guest_os_info(&r);
        assert_eq!(v["guestAgentVersion"], "7.2.22");
        assert_eq!(v["os"]["versionId"], "12");
        assert_eq!(v["userList"][0]["userName"], "debian");
        assert_eq!(v["fsInfo"]["disks"][0]["mountPoint"], "/");
        assert_eq!(v["fsInfo"]["disks"][0]["disk"][0]["busType"], "virtio");
        assert_eq!(v["timezone"], "UTC, 0");
        assert!(v.get("connected").is_none(), "{v}");
    }
}
