//! The QEMU guest agent (QGA) on the host side: the channel name both backends give the guest
//! ([`CHANNEL`]), a client for the agent's protocol ([`client::AgentClient`]), and the launcher's
//! [`Agent`]: a thread that keeps a [`AgentReport`] of the guest (OS, host name, time zone,
//! interfaces, users, file systems) fresh and serves shutdown and freeze requests, as KubeVirt's
//! virt-launcher agent poller does. [`AgentMachine`] puts an agent in front of a machine: graceful
//! power-down goes through the agent while it is connected, ACPI otherwise.
//!
//! The agent runs in the guest, so everything it says is untrusted: reads are bounded in time and
//! size, lists and strings are clipped, and a silent, chatty or lying agent only ever makes the
//! report say "not connected". See docs/guest-agent.md.

pub mod client;
mod credentials;
mod machine;
mod poller;
pub mod protocol;

pub use client::{AgentClient, ShutdownMode};
pub use machine::AgentMachine;
pub(crate) use poller::poll_client;
pub use poller::{Agent, AgentOptions};
pub use protocol::{
    AgentReport, AuthorizedKeys, CommandInfo, CredentialsSync, FilesystemDisk, FilesystemInfo,
    GuestCredentials, InterfaceInfo, UserInfo, UserPassword,
};

use std::time::Duration;

/// The virtio-serial port name the guest agent opens (`/dev/virtio-ports/org.qemu.guest_agent.0`).
pub const CHANNEL: &str = "org.qemu.guest_agent.0";

/// What went wrong talking to a guest agent; each names the command.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The channel failed.
    #[error("guest agent channel: {op}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// No (complete) answer in time.
    #[error("guest agent: {command}: no answer within {after:?}")]
    Timeout {
        /// The command.
        command: String,
        /// The time allowed.
        after: Duration,
    },
    /// The agent's end of the channel is closed.
    #[error("guest agent: {command}: the channel is closed")]
    Closed {
        /// The command.
        command: String,
    },
    /// An answer line longer than allowed.
    #[error("guest agent: {command}: an answer longer than {max} bytes")]
    TooLong {
        /// The command.
        command: String,
        /// The limit.
        max: usize,
    },
    /// An answer that is not what the command returns.
    #[error("guest agent: {command}: bad answer {reply:?}: {why}")]
    BadReply {
        /// The command.
        command: String,
        /// The answer (clipped).
        reply: String,
        /// What is wrong with it.
        why: String,
    },
    /// The agent answered with an error.
    #[error("guest agent: {command} refused: {class}: {desc}")]
    Refused {
        /// The command.
        command: String,
        /// QGA's error class.
        class: String,
        /// Its description.
        desc: String,
    },
    /// No agent is connected.
    #[error("guest agent: {command}: the agent is not connected")]
    NotConnected {
        /// The command.
        command: String,
    },
}
