//! The QEMU guest agent's wire format: one JSON object per line each way. A command is
//! `{"execute":"guest-get-osinfo"}` (with `"arguments"` when it takes any); an answer is
//! `{"return":...}` or `{"error":{"class":..,"desc":..}}`. `guest-sync-delimited` answers with a
//! `0xFF` byte before its line, which is how a client finds its place in a stream that may hold stale
//! answers or garbage. Field names follow QEMU's `qga/qapi-schema.json`.
//!
//! Everything here parses text from the guest: nothing is trusted, every list and string is
//! clipped ([`MAX_ITEMS`], [`MAX_STR`]) and unknown fields are ignored (agents differ by version).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::AgentError;

/// The delimiter `guest-sync-delimited` puts before its answer (and a client before a sync: an
/// invalid byte that makes the agent drop any half-read command).
pub const DELIMITER: u8 = 0xFF;
/// At most this many entries of any list the agent reports are kept.
pub const MAX_ITEMS: usize = 64;
/// At most this many characters of any string the agent reports are kept.
pub const MAX_STR: usize = 256;

/// One command line: `{"execute":NAME,"arguments":ARGS}` and its newline.
pub fn command_line(name: &str, arguments: Option<&Value>) -> Vec<u8> {
    let mut v = serde_json::json!({ "execute": name });
    if let (Some(a), Some(o)) = (arguments, v.as_object_mut()) {
        o.insert("arguments".into(), a.clone());
    }
    let mut line = v.to_string().into_bytes();
    line.push(b'\n');
    line
}

fn quote(b: &[u8]) -> String {
    crate::machine::supervisor::quote(b, 120)
}

/// Parses one answer line (leading delimiters and surrounding white space allowed): the value of
/// `return`, or [`AgentError::Refused`] for an `error` answer, or [`AgentError::BadReply`].
pub fn parse_reply(command: &str, line: &[u8]) -> Result<Value, AgentError> {
    let start = line.iter().position(|b| *b != DELIMITER && !b.is_ascii_whitespace()).unwrap_or(line.len());
    let body = &line[start..];
    let bad = |why: String| AgentError::BadReply { command: command.into(), reply: quote(body), why };
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(mut o) = v else { return Err(bad("not a JSON object".into())) };
    if let Some(r) = o.remove("return") {
        return Ok(r);
    }
    if let Some(e) = o.remove("error") {
        let field = |k: &str| e.get(k).and_then(Value::as_str).map(|s| clip(s.to_string()));
        return Err(AgentError::Refused {
            command: command.into(),
            class: field("class").unwrap_or_else(|| "GenericError".into()),
            desc: field("desc").unwrap_or_default(),
        });
    }
    Err(bad("neither \"return\" nor \"error\"".into()))
}

/// Decodes a `return` value into a QGA type, naming the command on failure.
pub fn decode<T: serde::de::DeserializeOwned>(command: &str, v: Value) -> Result<T, AgentError> {
    let text = quote(v.to_string().as_bytes());
    serde_json::from_value(v).map_err(|e| AgentError::BadReply {
        command: command.into(),
        reply: text,
        why: e.to_string(),
    })
}

/// `s` cut to [`MAX_STR`] characters.
pub fn clip(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_STR) {
        s.truncate(i);
    }
    s
}

fn clip_opt(s: Option<String>) -> Option<String> {
    s.map(clip).filter(|s| !s.is_empty())
}

/// `guest-info`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestAgentInfo {
    /// The agent's version.
    #[serde(default)]
    pub version: String,
    /// The commands it knows (QGA spells this one with an underscore).
    #[serde(default, rename = "supported_commands")]
    pub supported_commands: Vec<GuestAgentCommandInfo>,
}

/// One of `guest-info`'s `supported_commands`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestAgentCommandInfo {
    /// The command.
    #[serde(default)]
    pub name: String,
    /// Whether it is enabled (not blocked with `--block-rpcs`).
    #[serde(default)]
    pub enabled: bool,
    /// Whether it answers on success (`guest-shutdown` does not).
    #[serde(default)]
    pub success_response: bool,
}

/// `guest-get-osinfo`: the guest's `/etc/os-release` and `uname`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// `uname -v`.
    pub kernel_version: Option<String>,
    /// `uname -m`.
    pub machine: Option<String>,
    /// `ID`.
    pub id: Option<String>,
    /// `NAME`.
    pub name: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// `VERSION`.
    pub version: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `VARIANT`.
    pub variant: Option<String>,
    /// `VARIANT_ID`.
    pub variant_id: Option<String>,
}

/// `guest-get-host-name`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestHostName {
    /// The host name.
    pub host_name: String,
}

/// `guest-get-timezone`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GuestTimezone {
    /// Zone name (absent on some guests).
    #[serde(default)]
    pub zone: Option<String>,
    /// Offset from UTC in seconds.
    #[serde(default)]
    pub offset: i64,
}

/// One of `guest-network-get-interfaces`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetworkInterface {
    /// Name in the guest (`eth0`, `enp1s0`).
    #[serde(default)]
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub hardware_address: Option<String>,
    /// Its addresses.
    #[serde(default)]
    pub ip_addresses: Vec<GuestIpAddress>,
}

/// An address of a [`GuestNetworkInterface`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestIpAddress {
    /// `ipv4` or `ipv6`.
    #[serde(default)]
    pub ip_address_type: String,
    /// The address.
    #[serde(default)]
    pub ip_address: String,
    /// Prefix length.
    #[serde(default)]
    pub prefix: i64,
}

/// One of `guest-get-users`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestUser {
    /// User name.
    #[serde(default)]
    pub user: String,
    /// Windows domain.
    #[serde(default)]
    pub domain: Option<String>,
    /// First login, seconds since the epoch.
    #[serde(default)]
    pub login_time: f64,
}

/// One of `guest-get-fsinfo`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFilesystemInfo {
    /// Device name (`vda1`).
    #[serde(default)]
    pub name: String,
    /// Where it is mounted.
    #[serde(default)]
    pub mountpoint: String,
    /// File-system type.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// Bytes used.
    #[serde(default)]
    pub used_bytes: Option<u64>,
    /// Bytes in all.
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// The disks under it.
    #[serde(default)]
    pub disk: Vec<GuestDiskAddress>,
}

/// A disk under a [`GuestFilesystemInfo`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestDiskAddress {
    /// Serial number.
    #[serde(default)]
    pub serial: Option<String>,
    /// Bus (`virtio`, `scsi`, `sata`, ...).
    #[serde(default)]
    pub bus_type: String,
    /// Device node.
    #[serde(default)]
    pub dev: Option<String>,
}

/// The guest's state as KubeVirt shows it (`VirtualMachineInstanceGuestAgentInfo` and the VMI's
/// guest-agent fields), built from the agent's answers and clipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// The agent answered the last sync.
    pub connected: bool,
    /// `guest-info`'s version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent_version: Option<String>,
    /// `guest-info`'s commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supported_commands: Vec<CommandInfo>,
    /// `guest-get-host-name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `guest-get-osinfo`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<crate::model::GuestOsInfo>,
    /// `guest-get-timezone` as KubeVirt shows it: `"UTC, 0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// `guest-get-users`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_list: Vec<UserInfo>,
    /// `guest-get-fsinfo`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FilesystemInfo>,
    /// `guest-fsfreeze-status`: `frozen` or `thawed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_freeze_status: Option<String>,
    /// `guest-network-get-interfaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
    /// How writing the `qemuGuestAgent` access credentials went (None: there are none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_credentials: Option<CredentialsSync>,
}

/// SSH public keys the agent keeps in a guest user's `authorized_keys` (`accessCredentials` with
/// `propagationMethod.qemuGuestAgent`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizedKeys {
    /// The guest user.
    pub user: String,
    /// The keys, one line each.
    pub keys: Vec<String>,
}

/// A guest user's password, set by the agent (`accessCredentials` `userPassword` with
/// `propagationMethod.qemuGuestAgent`). Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPassword {
    /// The guest user.
    pub user: String,
    /// The password, in clear (the agent hashes it in the guest).
    pub password: String,
}

impl std::fmt::Debug for UserPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPassword").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

/// What the guest agent keeps in the guest for `accessCredentials` propagated by `qemuGuestAgent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestCredentials {
    /// SSH public keys per user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<AuthorizedKeys>,
    /// Passwords per user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passwords: Vec<UserPassword>,
}

impl GuestCredentials {
    /// Nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.ssh_keys.is_empty() && self.passwords.is_empty()
    }
}

/// The outcome of the last attempt to write the access credentials through the agent (KubeVirt's
/// `AccessCredentialsSynchronized` condition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSync {
    /// Every user's keys are in place.
    pub synchronized: bool,
    /// What was done, or what failed.
    pub message: String,
}

/// KubeVirt's `GuestAgentCommandInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandInfo {
    /// Command name.
    pub name: String,
    /// Enabled in the guest.
    #[serde(default)]
    pub enabled: bool,
}

/// KubeVirt's `VirtualMachineInstanceGuestOSUser`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    /// User name.
    pub user_name: String,
    /// Domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// First login, seconds since the epoch.
    #[serde(default)]
    pub login_time: f64,
}

/// KubeVirt's `VirtualMachineInstanceFileSystem`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemInfo {
    /// Device name.
    pub disk_name: String,
    /// Mount point.
    pub mount_point: String,
    /// File-system type.
    pub file_system_type: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// Disks under it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disk: Vec<FilesystemDisk>,
}

/// KubeVirt's `VirtualMachineInstanceFileSystemDisk`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemDisk {
    /// Serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Bus.
    pub bus_type: String,
}

/// A guest interface as the agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceInfo {
    /// Name in the guest.
    pub interface_name: String,
    /// MAC address (lower case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Addresses without prefix, IPv4 first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
}

impl From<GuestAgentInfo> for (Option<String>, Vec<CommandInfo>) {
    fn from(i: GuestAgentInfo) -> Self {
        let cmds = i
            .supported_commands
            .into_iter()
            .take(MAX_ITEMS * 4)
            .map(|c| CommandInfo { name: clip(c.name), enabled: c.enabled })
            .collect();
        (clip_opt(Some(i.version)), cmds)
    }
}

impl From<GuestOsInfo> for crate::model::GuestOsInfo {
    fn from(o: GuestOsInfo) -> Self {
        Self {
            name: clip_opt(o.name),
            kernel_release: clip_opt(o.kernel_release),
            version: clip_opt(o.version),
            pretty_name: clip_opt(o.pretty_name),
            version_id: clip_opt(o.version_id),
            kernel_version: clip_opt(o.kernel_version),
            machine: clip_opt(o.machine),
            id: clip_opt(o.id),
        }
    }
}

/// KubeVirt's timezone text: `"ZONE, OFFSET"`.
pub fn timezone_text(t: GuestTimezone) -> String {
    clip(format!("{}, {}", t.zone.unwrap_or_default(), t.offset))
}

/// The interfaces worth showing (not loopback), clipped.
pub fn interfaces(list: Vec<GuestNetworkInterface>) -> Vec<InterfaceInfo> {
    list.into_iter()
        .filter(|i| i.name != "lo")
        .take(MAX_ITEMS)
        .map(|i| {
            let mut addrs: Vec<&GuestIpAddress> = i.ip_addresses.iter().take(MAX_ITEMS).collect();
            addrs.sort_by_key(|a| a.ip_address_type != "ipv4");
            InterfaceInfo {
                interface_name: clip(i.name.clone()),
                mac: clip_opt(i.hardware_address.map(|m| m.to_ascii_lowercase())),
                ip_addresses: addrs.into_iter().map(|a| clip(a.ip_address.clone())).collect(),
            }
        })
        .collect()
}

/// The users, clipped.
pub fn users(list: Vec<GuestUser>) -> Vec<UserInfo> {
    list.into_iter()
        .take(MAX_ITEMS)
        .map(|u| UserInfo {
            user_name: clip(u.user),
            domain: clip_opt(u.domain),
            login_time: if u.login_time.is_finite() { u.login_time } else { 0.0 },
        })
        .collect()
}

/// The file systems, clipped.
pub fn filesystems(list: Vec<GuestFilesystemInfo>) -> Vec<FilesystemInfo> {
    list.into_iter()
        .take(MAX_ITEMS)
        .map(|f| FilesystemInfo {
            disk_name: clip(f.name),
            mount_point: clip(f.mountpoint),
            file_system_type: clip(f.type_),
            used_bytes: f.used_bytes.unwrap_or(0),
            total_bytes: f.total_bytes.unwrap_or(0),
            disk: f
                .disk
                .into_iter()
                .take(MAX_ITEMS)
                .map(|d| FilesystemDisk { serial: clip_opt(d.serial), bus_type: clip(d.bus_type) })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_answers() {
        assert_eq!(command_line("guest-ping", None), b"{\"execute\":\"guest-ping\"}\n");
        let l = command_line("guest-sync-delimited", Some(&serde_json::json!({"id": 7})));
        assert_eq!(l, b"{\"arguments\":{\"id\":7},\"execute\":\"guest-sync-delimited\"}\n");
        assert_eq!(parse_reply("x", b"\xff{\"return\": 7}\r").unwrap(), serde_json::json!(7));
        assert_eq!(parse_reply("x", b" {\"return\": {}}").unwrap(), serde_json::json!({}));
        let e = parse_reply("guest-shutdown", br#"{"error":{"class":"CommandNotFound","desc":"disabled"}}"#);
        assert!(
            matches!(&e, Err(AgentError::Refused { class, desc, .. }) if class == "CommandNotFound" && desc == "disabled"),
            "{e:?}"
        );
        for bad in [&b"[1]"[..], b"{}", b"\xff\xfe", b"{\"return\":", b""] {
            let e = parse_reply("guest-info", bad).unwrap_err();
            assert!(matches!(e, AgentError::BadReply { .. }), "{e:?}");
            assert!(e.to_string().contains("guest-info"), "{e}");
        }
    }

    #[test]
    fn reports_are_clipped_and_loopback_is_left_out() {
        let long = "x".repeat(10_000);
        let list: Vec<GuestNetworkInterface> = serde_json::from_value(serde_json::json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}]},
            {"name": "eth0", "hardware-address": "52:54:00:AB:CD:EF", "statistics": {"rx-bytes": 1},
             "ip-addresses": [{"ip-address-type": "ipv6", "ip-address": "fe80::1", "prefix": 64},
                              {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}]},
            {"name": long},
        ]))
        .unwrap();
        let i = interfaces(list);
        assert_eq!(i.len(), 2);
        assert_eq!(i[0].interface_name, "eth0");
        assert_eq!(i[0].mac.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(i[0].ip_addresses, ["10.0.2.15", "fe80::1"]);
        assert_eq!(i[1].interface_name.len(), MAX_STR);
        let many: Vec<GuestUser> =
            (0..1000).map(|n| GuestUser { user: format!("u{n}"), ..Default::default() }).collect();
        assert_eq!(users(many).len(), MAX_ITEMS);
        let tz =
            decode::<GuestTimezone>("guest-get-timezone", serde_json::json!({"zone": "CET", "offset": 3600}));
        assert_eq!(timezone_text(tz.unwrap()), "CET, 3600");
        let e = decode::<GuestHostName>("guest-get-host-name", serde_json::json!({"host": 1})).unwrap_err();
        assert!(e.to_string().contains("host-name"), "{e}");
    }
}
