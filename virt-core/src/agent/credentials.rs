//! `accessCredentials` propagated by `qemuGuestAgent`: the SSH public keys each guest user should
//! have, written with `guest-ssh-add-authorized-keys` once the agent answers, again after it comes
//! back (a guest that rebooted), and when the wanted keys change; keys this node wrote earlier and
//! no longer wants are removed with `guest-ssh-remove-authorized-keys`. Keys put there by anyone
//! else (cloud-init's `noCloud` keys, the user's own) are left alone. Passwords (`userPassword`)
//! are set with `guest-set-user-password` when they first reach a guest this launcher drives and
//! when they change; a password stays in the guest's `/etc/shadow` across reboots, so one already
//! set is not set again after the agent reconnects, and one no longer wanted is left as it is
//! (KubeVirt does the same: there is no "previous password" to go back to).

use std::collections::BTreeMap;

use super::client::AgentClient;
use super::protocol::{AuthorizedKeys, CredentialsSync, GuestCredentials, UserPassword};
use super::AgentError;

/// Why the guest agent did not write a user's keys or password.
#[derive(Debug, thiserror::Error)]
#[error("user {user}: {what}: {source}")]
struct KeysNotWritten {
    /// The guest user whose `authorized_keys` or password was being changed.
    user: String,
    /// What was being written.
    what: &'static str,
    /// What the agent answered.
    source: AgentError,
}

/// What should be in the guest, what this node wrote, and how the last attempt went.
#[derive(Debug, Default)]
pub(super) struct CredentialSync {
    wanted: Vec<AuthorizedKeys>,
    /// What the last successful sync wrote (survives a lost connection: the file is on disk).
    written: Vec<AuthorizedKeys>,
    passwords: Vec<UserPassword>,
    /// The passwords set in the guest, as set (they survive reboots).
    passwords_set: Vec<UserPassword>,
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

impl CredentialSync {
    pub(super) fn new(wanted: GuestCredentials) -> Self {
        let dirty = !wanted.is_empty();
        Self {
            wanted: wanted.ssh_keys,
            written: Vec::new(),
            passwords: wanted.passwords,
            passwords_set: Vec::new(),
            dirty,
            last: None,
        }
    }

    /// New wanted credentials (a Secret changed); written at the next answered poll.
    pub(super) fn set(&mut self, wanted: GuestCredentials) {
        self.dirty = true;
        self.wanted = wanted.ssh_keys;
        self.passwords = wanted.passwords;
    }

    /// The agent stopped answering: write again when it is back.
    pub(super) fn lost(&mut self) {
        if !self.wanted.is_empty() || !self.passwords.is_empty() {
            self.dirty = true;
        }
    }

    /// Writes what is due through `c` (an agent that just answered a poll); the outcome to report,
    /// `None` when this machine has no such credentials.
    pub(super) fn sync(&mut self, c: &mut AgentClient) -> Option<CredentialsSync> {
        if self.wanted.is_empty() && self.written.is_empty() && self.passwords.is_empty() {
            return None;
        }
        if !self.dirty {
            return self.last.clone();
        }
        let outcome = self.write(c);
        self.last = Some(match outcome {
            Ok(done) => {
                self.written = self.wanted.clone();
                self.dirty = false;
                CredentialsSync { synchronized: true, message: format!("{done} by the guest agent") }
            }
            Err(why) => CredentialsSync { synchronized: false, message: why.to_string() },
        });
        self.last.clone()
    }

    /// Writes keys, then passwords not set yet; what was done, as the condition's message says it.
    fn write(&mut self, c: &mut AgentClient) -> Result<String, KeysNotWritten> {
        let wanted = by_user(&self.wanted);
        let written = by_user(&self.written);
        let fail =
            |user: &str, what, source: AgentError| KeysNotWritten { user: user.to_string(), what, source };
        for (user, keys) in &wanted {
            let keys: Vec<String> = keys.iter().map(|k| (*k).clone()).collect();
            if !keys.is_empty() {
                c.ssh_add_authorized_keys(user, &keys).map_err(|e| fail(user, "SSH keys", e))?;
            }
        }
        for (user, old) in &written {
            let keep = wanted.get(user).cloned().unwrap_or_default();
            let gone: Vec<String> = old.iter().filter(|k| !keep.contains(k)).map(|k| (*k).clone()).collect();
            if !gone.is_empty() {
                c.ssh_remove_authorized_keys(user, &gone).map_err(|e| fail(user, "SSH keys", e))?;
            }
        }
        for p in &self.passwords {
            if self.passwords_set.contains(p) {
                continue;
            }
            c.set_user_password(&p.user, &p.password).map_err(|e| fail(&p.user, "password", e))?;
            self.passwords_set.retain(|s| s.user != p.user);
            self.passwords_set.push(p.clone());
        }
        let list = |users: Vec<&str>| users.join(", ");
        let mut done = Vec::new();
        if !wanted.is_empty() {
            done.push(format!("SSH keys of {}", list(wanted.keys().copied().collect())));
        }
        if !self.passwords.is_empty() {
            done.push(format!(
                "passwords of {}",
                list(self.passwords.iter().map(|p| p.user.as_str()).collect())
            ));
        }
        if done.is_empty() {
            done.push("no SSH keys".to_string());
        }
        Ok(format!("{} written", done.join(" and ")))
    }
}
