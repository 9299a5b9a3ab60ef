//! `accessCredentials` propagated by `qemuGuestAgent`: the SSH public keys each guest user should
//! have, written with `guest-ssh-add-authorized-keys` once the agent answers, again after it comes
//! back (a guest that rebooted), and when the wanted keys change; keys this node wrote earlier and
//! no longer wants are removed with `guest-ssh-remove-authorized-keys`. Keys put there by anyone
//! else (cloud-init's `noCloud` keys, the user's own) are left alone.

use std::collections::BTreeMap;

use super::client::AgentClient;
use super::protocol::{AuthorizedKeys, CredentialsSync};
use super::AgentError;

/// Why the guest agent did not write a user's keys.
#[derive(Debug, thiserror::Error)]
#[error("user {user}: {source}")]
struct KeysNotWritten {
    /// The guest user whose `authorized_keys` was being changed.
    user: String,
    /// What the agent answered.
    source: AgentError,
}

/// What should be in the guest, what this node wrote, and how the last attempt went.
#[derive(Debug, Default)]
pub(super) struct KeySync {
    wanted: Vec<AuthorizedKeys>,
    /// What the last successful sync wrote (survives a lost connection: the file is on disk).
    written: Vec<AuthorizedKeys>,
    /// Whether the next answered poll must write (first connection, reconnection, new keys).
    dirty: bool,
    last: Option<CredentialsSync>,
}

fn by_user(list: &[AuthorizedKeys]) -> BTreeMap<&str, Vec<&String>> {
    let mut m: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for a in list {
        m.entry(a.user.as_str()).or_default().extend(a.keys.iter());
    }
    m
}

impl KeySync {
    pub(super) fn new(wanted: Vec<AuthorizedKeys>) -> Self {
        let dirty = !wanted.is_empty();
        Self { wanted, written: Vec::new(), dirty, last: None }
    }

    /// New wanted keys (the Secret changed); written at the next answered poll.
    pub(super) fn set(&mut self, wanted: Vec<AuthorizedKeys>) {
        self.dirty = true;
        self.wanted = wanted;
    }

    /// The agent stopped answering: write again when it is back.
    pub(super) fn lost(&mut self) {
        if !self.wanted.is_empty() {
            self.dirty = true;
        }
    }

    /// Writes what is due through `c` (an agent that just answered a poll); the outcome to report,
    /// `None` when this machine has no such credentials.
    pub(super) fn sync(&mut self, c: &mut AgentClient) -> Option<CredentialsSync> {
        if self.wanted.is_empty() && self.written.is_empty() {
            return None;
        }
        if !self.dirty {
            return self.last.clone();
        }
        let outcome = self.write(c);
        self.last = Some(match outcome {
            Ok(users) => {
                self.written = self.wanted.clone();
                self.dirty = false;
                CredentialsSync {
                    synchronized: true,
                    message: format!("SSH keys of {users} written by the guest agent"),
                }
            }
            Err(why) => CredentialsSync { synchronized: false, message: why.to_string() },
        });
        self.last.clone()
    }

    fn write(&self, c: &mut AgentClient) -> Result<String, KeysNotWritten> {
        let wanted = by_user(&self.wanted);
        let written = by_user(&self.written);
        let fail = |user: &str, source: AgentError| KeysNotWritten { user: user.to_string(), source };
        for (user, keys) in &wanted {
            let keys: Vec<String> = keys.iter().map(|k| (*k).clone()).collect();
            if !keys.is_empty() {
                c.ssh_add_authorized_keys(user, &keys).map_err(|e| fail(user, e))?;
            }
        }
        for (user, old) in &written {
            let keep = wanted.get(user).cloned().unwrap_or_default();
            let gone: Vec<String> = old.iter().filter(|k| !keep.contains(k)).map(|k| (*k).clone()).collect();
            if !gone.is_empty() {
                c.ssh_remove_authorized_keys(user, &gone).map_err(|e| fail(user, e))?;
            }
        }
        Ok(wanted.keys().copied().collect::<Vec<_>>().join(", "))
    }
}
