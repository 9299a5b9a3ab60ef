//! The client against fake agents: a well-behaved one, and hostile ones (garbage, stale answers,
//! silence, endless and huge lines, a closed channel). The real agent is in tests/guest_agent.rs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// What a fake agent does with one command: the bytes it sends back.
type Script = Box<dyn FnMut(&str, &Value) -> Vec<u8> + Send>;

/// A client on one end of a socket pair; a thread answers each command line with `script`.
fn fake(script: Script, timeout: Duration) -> AgentClient {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut script = script;
    std::thread::spawn(move || {
        let mut w = theirs.try_clone().unwrap();
        let mut r = BufReader::new(theirs);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let text: Vec<u8> = line.iter().copied().filter(|b| *b != DELIMITER).collect();
            let Ok(v) = serde_json::from_slice::<Value>(&text) else { continue };
            let cmd = v["execute"].as_str().unwrap_or("").to_string();
            let out = script(&cmd, &v["arguments"]);
            if w.write_all(&out).is_err() {
                return;
            }
        }
    });
    AgentClient::new(ours).unwrap().with_timeout(timeout)
}

/// The answer a good agent gives to `cmd`.
fn good(cmd: &str, args: &Value) -> Vec<u8> {
    let ret = match cmd {
        "guest-sync-delimited" => return b"\x00\n".iter().copied().chain(delimited(args)).collect(),
        "guest-ping" => json!({}),
        "guest-info" => json!({"version": "7.2.0", "supported_commands": [
            {"name": "guest-ping", "enabled": true, "success-response": true}]}),
        "guest-get-osinfo" => json!({"id": "debian", "name": "Debian GNU/Linux", "version-id": "12",
            "pretty-name": "Debian GNU/Linux 12 (bookworm)", "kernel-release": "6.1.0-18-amd64", "machine": "x86_64"}),
        "guest-get-host-name" => json!({"host-name": "vm1"}),
        "guest-get-timezone" => json!({"zone": "UTC", "offset": 0}),
        "guest-fsfreeze-status" => json!("thawed"),
        "guest-shutdown" => return Vec::new(),
        _ => {
            return format!("{{\"error\":{{\"class\":\"CommandNotFound\",\"desc\":\"{cmd} unknown\"}}}}\n")
                .into_bytes()
        }
    };
    format!("{}\n", json!({ "return": ret })).into_bytes()
}

fn delimited(args: &Value) -> Vec<u8> {
    let mut v = vec![DELIMITER];
    v.extend(format!("{}\n", json!({"return": args["id"]})).into_bytes());
    v
}

const T: Duration = Duration::from_secs(2);

#[test]
fn a_good_agent_answers_every_command() {
    let mut c = fake(Box::new(good), T);
    c.sync().unwrap();
    c.ping().unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.version, "7.2.0");
    assert!(info.supported_commands[0].enabled && info.supported_commands[0].success_response, "{info:?}");
    let os = c.os_info().unwrap();
    assert_eq!(os.version_id.as_deref(), Some("12"));
    assert_eq!(c.host_name().unwrap(), "vm1");
    assert_eq!(c.timezone().unwrap().zone.as_deref(), Some("UTC"));
    assert_eq!(c.fsfreeze_status().unwrap(), "thawed");
    let e = c.users().unwrap_err();
    assert!(matches!(&e, AgentError::Refused { class, .. } if class == "CommandNotFound"), "{e:?}");
    // A refusal keeps the stream in step: the next command needs no sync and works.
    c.ping().unwrap();
    let t = Instant::now();
    c.shutdown(ShutdownMode::Powerdown, Duration::from_millis(200)).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn garbage_and_stale_answers_before_the_sync_are_skipped() {
    let script = |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd == "guest-sync-delimited" {
            let mut v = b"\x00\x01garbage {not json\n{\"return\": 1}\n".to_vec();
            // A stale delimited answer to someone else's sync, then ours.
            v.extend([DELIMITER]);
            v.extend(b"{\"return\": 424242}\n");
            v.extend(b"more garbage \xfe\xfd");
            v.extend(delimited(args));
            return v;
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(script), T);
    c.sync().unwrap();
    assert_eq!(c.host_name().unwrap(), "vm1");
}

#[test]
fn a_silent_agent_times_out_and_a_closed_one_fails_at_once() {
    let mut c = fake(Box::new(|_: &str, _: &Value| Vec::new()), Duration::from_millis(300));
    let t = Instant::now();
    let e = c.sync().unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let e = c.ping().unwrap_err();
    assert!(matches!(e, AgentError::Timeout { .. }), "{e:?}");

    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(theirs);
    let mut c = AgentClient::new(ours).unwrap().with_timeout(Duration::from_secs(30));
    let t = Instant::now();
    assert!(matches!(c.sync(), Err(AgentError::Closed { .. })));
    assert!(matches!(c.ping(), Err(AgentError::Closed { .. })));
    assert!(c.closed());
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn an_endless_line_is_cut_off_and_the_client_recovers() {
    let mut first = true;
    let script = move |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd == "guest-get-osinfo" && first {
            first = false;
            // 3 MiB without a newline, then the rest of a line.
            let mut v = vec![b'a'; 3 << 20];
            v.extend(b"\n");
            return v;
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(script), Duration::from_secs(5)).with_max_reply(64 << 10);
    c.sync().unwrap();
    let e = c.os_info().unwrap_err();
    assert!(matches!(e, AgentError::TooLong { max, .. } if max == 64 << 10), "{e:?}");
    assert!(c.buf.capacity() < 1 << 20, "the client kept {} bytes", c.buf.capacity());
    // The next command resyncs past the rest of the long line.
    assert_eq!(c.host_name().unwrap(), "vm1");
}

#[test]
fn wrong_shapes_are_bad_replies_and_refused_shutdown_is_an_error() {
    let script = |cmd: &str, args: &Value| -> Vec<u8> {
        match cmd {
            "guest-get-host-name" => b"{\"return\": [1, 2]}\n".to_vec(),
            "guest-get-users" => b"{\"return\": [{\"user\": 5}]}\n".to_vec(),
            "guest-shutdown" => b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"blocked\"}}\n".to_vec(),
            _ => good(cmd, args),
        }
    };
    let mut c = fake(Box::new(script), T);
    assert!(matches!(c.host_name(), Err(AgentError::BadReply { .. })));
    assert!(matches!(c.users(), Err(AgentError::BadReply { .. })));
    let e = c.shutdown(ShutdownMode::Reboot, T).unwrap_err();
    assert!(matches!(&e, AgentError::Refused { desc, .. } if desc == "blocked"), "{e:?}");
}

/// The `qemuGuestAgent` access credentials: written once the agent answers, not again while
/// nothing changed, the difference when the Secret changes (keys this node wrote and no longer
/// wants are removed; nobody else's), everything again after a reconnection; a refusal is reported.
#[test]
fn access_credentials_are_kept_in_the_guest_through_the_agent() {
    use super::super::credentials::CredentialSync;
    use super::super::protocol::{AuthorizedKeys, GuestCredentials};
    use std::sync::{Arc, Mutex};
    let creds = |ssh_keys: Vec<AuthorizedKeys>| GuestCredentials { ssh_keys, passwords: Vec::new() };

    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let log = seen.clone();
    let script = move |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd.starts_with("guest-ssh-") {
            log.lock().unwrap().push((cmd.to_string(), args.clone()));
            return b"{\"return\": {}}\n".to_vec();
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(script), T);
    let keys = |user: &str, k: &[&str]| AuthorizedKeys {
        user: user.into(),
        keys: k.iter().map(|s| s.to_string()).collect(),
    };
    let take = |seen: &Arc<Mutex<Vec<(String, Value)>>>| std::mem::take(&mut *seen.lock().unwrap());

    let mut sync = CredentialSync::new(creds(vec![keys("debian", &["ssh-ed25519 A a", "ssh-ed25519 B b"])]));
    let r = sync.sync(&mut c).expect("an outcome");
    assert!(r.synchronized && r.message.contains("debian"), "{r:?}");
    assert_eq!(
        take(&seen),
        vec![(
            "guest-ssh-add-authorized-keys".to_string(),
            json!({"username": "debian", "keys": ["ssh-ed25519 A a", "ssh-ed25519 B b"]})
        )]
    );
    assert!(sync.sync(&mut c).is_some_and(|r| r.synchronized));
    assert!(take(&seen).is_empty(), "nothing changed: nothing written");

    sync.set(creds(vec![keys("debian", &["ssh-ed25519 B b"]), keys("root", &["ssh-ed25519 C c"])]));
    assert!(sync.sync(&mut c).is_some_and(|r| r.synchronized));
    assert_eq!(
        take(&seen),
        vec![
            (
                "guest-ssh-add-authorized-keys".to_string(),
                json!({"username": "debian", "keys": ["ssh-ed25519 B b"]})
            ),
            (
                "guest-ssh-add-authorized-keys".to_string(),
                json!({"username": "root", "keys": ["ssh-ed25519 C c"]})
            ),
            (
                "guest-ssh-remove-authorized-keys".to_string(),
                json!({"username": "debian", "keys": ["ssh-ed25519 A a"]})
            ),
        ]
    );

    sync.lost();
    sync.sync(&mut c);
    assert_eq!(take(&seen).len(), 2, "a reconnected agent (a rebooted guest) gets the keys again");

    let refusing = |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd == "guest-ssh-add-authorized-keys" {
            return b"{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"command disabled\"}}\n".to_vec();
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(refusing), T);
    let r = CredentialSync::new(creds(vec![keys("debian", &["ssh-ed25519 A a"])])).sync(&mut c).unwrap();
    assert!(
        !r.synchronized && r.message.contains("user debian") && r.message.contains("command disabled"),
        "{r:?}"
    );
    assert_eq!(
        CredentialSync::new(creds(Vec::new())).sync(&mut c),
        None,
        "no credentials: nothing to report"
    );
}

/// `userPassword` through the agent: set (base64, not crypted) once the agent answers, not again
/// after a reconnection (the guest keeps it in /etc/shadow) nor while unchanged, again when the
/// Secret changes it; a refusal names the user and never the password.
#[test]
fn passwords_are_set_through_the_agent_once_per_change() {
    use super::super::credentials::CredentialSync;
    use super::super::protocol::{GuestCredentials, UserPassword};
    use std::sync::{Arc, Mutex};

    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let log = seen.clone();
    let script = move |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd == "guest-set-user-password" {
            log.lock().unwrap().push((cmd.to_string(), args.clone()));
            return b"{\"return\": {}}\n".to_vec();
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(script), T);
    let take = |seen: &Arc<Mutex<Vec<(String, Value)>>>| std::mem::take(&mut *seen.lock().unwrap());
    let pw = |user: &str, password: &str| GuestCredentials {
        ssh_keys: Vec::new(),
        passwords: vec![UserPassword { user: user.into(), password: password.into() }],
    };

    let mut sync = CredentialSync::new(pw("debian", "s3cr\u{e9}t pass"));
    let r = sync.sync(&mut c).expect("an outcome");
    assert!(r.synchronized && r.message == "passwords of debian written by the guest agent", "{r:?}");
    assert_eq!(
        take(&seen),
        vec![(
            "guest-set-user-password".to_string(),
            json!({"username": "debian", "password": "czNjcsOpdCBwYXNz", "crypted": false})
        )]
    );
    sync.sync(&mut c);
    sync.lost();
    sync.sync(&mut c);
    assert!(take(&seen).is_empty(), "unchanged or reconnected: not set again");
    sync.set(pw("debian", "new"));
    assert!(sync.sync(&mut c).is_some_and(|r| r.synchronized));
    assert_eq!(take(&seen).len(), 1, "a changed password is set");
    let debug = format!("{:?}", pw("debian", "new"));
    assert!(!debug.contains("new") && debug.contains("redacted"), "{debug}");

    let refusing = |cmd: &str, args: &Value| -> Vec<u8> {
        if cmd == "guest-set-user-password" {
            return b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"chpasswd failed\"}}\n".to_vec();
        }
        good(cmd, args)
    };
    let mut c = fake(Box::new(refusing), T);
    let r = CredentialSync::new(pw("nobody", "hunter2")).sync(&mut c).unwrap();
    assert!(
        !r.synchronized
            && r.message.contains("user nobody: password")
            && r.message.contains("chpasswd failed")
    );
    assert!(!r.message.contains("hunter2"), "{r:?}");
}
