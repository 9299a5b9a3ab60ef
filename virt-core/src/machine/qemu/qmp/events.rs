//! What QEMU reports: events, shutdown causes, the run state and the VNC server.

use super::*;

/// Why a machine shut down or reset (QAPI `ShutdownCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownCause {
    /// No reason given.
    None,
    /// An error in the host (QEMU).
    HostError,
    /// QMP `quit`.
    HostQmpQuit,
    /// QMP `system_reset`.
    HostQmpSystemReset,
    /// A signal to QEMU.
    HostSignal,
    /// QEMU's own UI.
    HostUi,
    /// The guest powered off (ACPI S5 and the like).
    GuestShutdown,
    /// The guest reset itself (reboot).
    GuestReset,
    /// The guest panicked (pvpanic with `panic=shutdown`).
    GuestPanic,
    /// A device reset the machine.
    SubsystemReset,
    /// A snapshot was loaded.
    SnapshotLoad,
    /// A cause this client does not know (a newer QEMU).
    Other(String),
}

impl ShutdownCause {
    fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "host-error" => Self::HostError,
            "host-qmp-quit" => Self::HostQmpQuit,
            "host-qmp-system-reset" => Self::HostQmpSystemReset,
            "host-signal" => Self::HostSignal,
            "host-ui" => Self::HostUi,
            "guest-shutdown" => Self::GuestShutdown,
            "guest-reset" => Self::GuestReset,
            "guest-panic" => Self::GuestPanic,
            "subsystem-reset" => Self::SubsystemReset,
            "snapshot-load" => Self::SnapshotLoad,
            other => Self::Other(other.to_string()),
        }
    }
}

/// A VNC client as QEMU reports it in `VNC_*` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncClient {
    /// Its address.
    pub host: String,
    /// Its port.
    pub service: String,
}

/// The events the backend acts on or reports, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    /// The machine shut down (QEMU exits next unless told otherwise).
    Shutdown {
        /// The guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// The ACPI power button was pressed (`system_powerdown`).
    Powerdown,
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs run again.
    Resume,
    /// The machine reset.
    Reset {
        /// The guest asked for it (a reboot).
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// A removable medium's tray opened or closed.
    DeviceTrayMoved {
        /// Block backend name (may be empty).
        device: String,
        /// Device id.
        id: String,
        /// The tray is open now.
        tray_open: bool,
    },
    /// The guest set its RTC.
    RtcChange {
        /// New offset from the host's clock, in seconds.
        offset: i64,
    },
    /// The guest reported a panic (pvpanic).
    GuestPanicked {
        /// What QEMU does about it (`pause`, `poweroff`, `run`).
        action: String,
    },
    /// The guest entered ACPI S3.
    Suspend,
    /// The guest woke from S3.
    Wakeup,
    /// A VNC client connected.
    VncConnected(VncClient),
    /// A VNC client finished the handshake.
    VncInitialized(VncClient),
    /// A VNC client left.
    VncDisconnected(VncClient),
    /// The migration's status changed (`MIGRATION`, with the `events` migration capability on):
    /// `setup`, `active`, `device`, `completed`, `failed`, `cancelling`, `cancelled`,
    /// `postcopy-active`, `postcopy-paused`, ... (QAPI `MigrationStatus`).
    Migration {
        /// The new status.
        status: String,
    },
    /// A pass over the guest's memory began (`MIGRATION_PASS`; the first is the full copy).
    MigrationPass {
        /// Its number, from 1.
        pass: u64,
    },
}

fn bad(raw: &RawEvent, what: &str) -> QmpError {
    QmpError::BadEvent { name: raw.name.clone(), what: what.into(), data: quote_value(&raw.data) }
}

fn field_bool(raw: &RawEvent, k: &str) -> Result<bool, QmpError> {
    raw.data.get(k).and_then(Value::as_bool).ok_or_else(|| bad(raw, &format!("{k} is not a boolean")))
}

fn field_str(raw: &RawEvent, k: &str) -> Result<String, QmpError> {
    raw.data
        .get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(raw, &format!("{k} is not a string")))
}

fn vnc_client(raw: &RawEvent) -> Result<VncClient, QmpError> {
    let c = raw.data.get("client").ok_or_else(|| bad(raw, "no client"))?;
    let host =
        c.get("host").and_then(Value::as_str).ok_or_else(|| bad(raw, "client.host is not a string"))?;
    let service =
        c.get("service").and_then(Value::as_str).ok_or_else(|| bad(raw, "client.service is not a string"))?;
    Ok(VncClient { host: host.into(), service: service.into() })
}

impl QmpEvent {
    /// Types an event; unknown names and data of the wrong shape are errors.
    pub fn parse(raw: &RawEvent) -> Result<Self, QmpError> {
        Ok(match raw.name.as_str() {
            "SHUTDOWN" => Self::Shutdown {
                guest: field_bool(raw, "guest")?,
                reason: ShutdownCause::parse(&field_str(raw, "reason")?),
            },
            "RESET" => Self::Reset {
                guest: field_bool(raw, "guest")?,
                reason: ShutdownCause::parse(&field_str(raw, "reason")?),
            },
            "POWERDOWN" => Self::Powerdown,
            "STOP" => Self::Stop,
            "RESUME" => Self::Resume,
            "SUSPEND" => Self::Suspend,
            "WAKEUP" => Self::Wakeup,
            "DEVICE_TRAY_MOVED" => Self::DeviceTrayMoved {
                device: field_str(raw, "device")?,
                id: field_str(raw, "id")?,
                tray_open: field_bool(raw, "tray-open")?,
            },
            "RTC_CHANGE" => Self::RtcChange {
                offset: raw
                    .data
                    .get("offset")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| bad(raw, "offset is not an integer"))?,
            },
            "GUEST_PANICKED" => Self::GuestPanicked { action: field_str(raw, "action")? },
            "VNC_CONNECTED" => Self::VncConnected(vnc_client(raw)?),
            "VNC_INITIALIZED" => Self::VncInitialized(vnc_client(raw)?),
            "VNC_DISCONNECTED" => Self::VncDisconnected(vnc_client(raw)?),
            "MIGRATION" => Self::Migration { status: field_str(raw, "status")? },
            "MIGRATION_PASS" => Self::MigrationPass {
                pass: raw
                    .data
                    .get("pass")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad(raw, "pass is not a count"))?,
            },
            _ => return Err(QmpError::UnknownEvent { name: quote(raw.name.as_bytes()) }),
        })
    }
}

/// QEMU's run state (QAPI `RunState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running guest code.
    Running,
    /// Paused by `stop`.
    Paused,
    /// Not started yet (`-S`).
    Prelaunch,
    /// Shut down (with `-no-shutdown`).
    Shutdown,
    /// Suspended (S3).
    Suspended,
    /// Paused after a guest panic.
    GuestPanicked,
    /// Paused on an I/O error.
    IoError,
    /// Another state, by name.
    Other(String),
}

/// The answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// The vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

/// The answer to `query-vnc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VncInfo {
    /// A VNC server is configured.
    pub enabled: bool,
    /// The address it listens on.
    #[serde(default)]
    pub host: Option<String>,
    /// Its port (or unix path).
    #[serde(default)]
    pub service: Option<String>,
    /// `ipv4`, `ipv6`, `unix`.
    #[serde(default)]
    pub family: Option<String>,
    /// Authentication (`none`, ...).
    #[serde(default)]
    pub auth: Option<String>,
}

impl VncInfo {
    /// The TCP address of the server, when it listens on one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        if !self.enabled {
            return None;
        }
        let host = self.host.as_deref()?;
        let port: u16 = self.service.as_deref()?.parse().ok()?;
        let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

pub(super) fn bad_return(command: &str, what: &str, v: &Value) -> QmpError {
    QmpError::BadReturn { command: command.into(), what: what.into(), value: quote_value(v) }
}

/// Types a `query-status` answer.
pub fn parse_status(v: &Value) -> Result<StatusInfo, QmpError> {
    let running = v
        .get("running")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad_return("query-status", "running is not a boolean", v))?;
    let s = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_return("query-status", "status is not a string", v))?;
    let status = match s {
        "running" => RunState::Running,
        "paused" => RunState::Paused,
        "prelaunch" => RunState::Prelaunch,
        "shutdown" => RunState::Shutdown,
        "suspended" => RunState::Suspended,
        "guest-panicked" => RunState::GuestPanicked,
        "io-error" => RunState::IoError,
        other => RunState::Other(other.to_string()),
    };
    Ok(StatusInfo { running, status })
}
