//! `virtctl port-forward`, `virtctl ssh` and `virtctl scp`: parsing and wiring only. The forwarding
//! lives in `virt_k8s::client::portforward`; ssh and scp are the system's OpenSSH client with a
//! ProxyCommand that runs `virtctl port-forward --stdio`, as KubeVirt's virtctl does.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args};
use virt_k8s::client::portforward::{PortForwardError, PortSpec, Target as VmTarget};

use crate::target::{client, Target};
use crate::{fail, fail_client};

/// `[PROTOCOL/]LOCAL[:REMOTE]`.
pub fn parse_port(s: &str) -> Result<PortSpec, PortForwardError> {
    s.parse()
}

/// `TYPE/NAME[/NAMESPACE]`.
pub fn parse_target(s: &str) -> Result<VmTarget, PortForwardError> {
    s.parse()
}

/// `virtctl port-forward`'s arguments.
#[derive(Args, Debug)]
pub struct PortForwardArgs {
    /// vm/NAME[/NAMESPACE] or vmi/NAME[/NAMESPACE].
    #[arg(value_parser = parse_target)]
    pub target: VmTarget,
    /// [tcp/|udp/]LOCAL[:REMOTE], one or more (LOCAL 0: a free port; REMOTE defaults to LOCAL).
    #[arg(value_parser = parse_port, required = true, num_args = 1..)]
    pub ports: Vec<PortSpec>,
    /// Forward standard input and output to the one port given (for ssh's ProxyCommand).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = false)]
    pub stdio: bool,
    /// The local address the ports are opened on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
}

/// The ssh client options `ssh` and `scp` share (KubeVirt's names).
#[derive(Args, Debug)]
pub struct SshOpts {
    /// The user to log in as (else the one in USER@TARGET, else ssh's default).
    #[arg(short = 'l', long)]
    pub username: Option<String>,
    /// The private key to authenticate with.
    #[arg(short = 'i', long)]
    pub identity_file: Option<PathBuf>,
    /// The guest's ssh port.
    #[arg(short = 'p', long, default_value_t = 22, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// The known_hosts file (ssh's UserKnownHostsFile); ssh's default without.
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// More options for the local ssh client, e.g. -t "-o StrictHostKeyChecking=no" (repeatable).
    #[arg(short = 't', long = "local-ssh-opts", allow_hyphen_values = true)]
    pub local_ssh_opts: Vec<String>,
    /// Use the local OpenSSH client (the only client here; accepted for KubeVirt's scripts).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = ArgAction::Set, default_value_t = true)]
    pub local_ssh: bool,
}

/// `virtctl ssh`'s arguments.
#[derive(Args, Debug)]
pub struct SshArgs {
    /// [USER@]vm/NAME[/NAMESPACE] or [USER@]vmi/NAME[/NAMESPACE].
    pub target: String,
    #[command(flatten)]
    pub opts: SshOpts,
    /// A command to run in the guest (else an interactive session).
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// `virtctl scp`'s arguments.
#[derive(Args, Debug)]
pub struct ScpArgs {
    /// The source: a local path, or [USER@]vm/NAME[/NAMESPACE]:PATH.
    pub source: String,
    /// The destination: a local path, or [USER@]vm/NAME[/NAMESPACE]:PATH.
    pub destination: String,
    #[command(flatten)]
    pub opts: SshOpts,
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Preserve modification times and modes.
    #[arg(long)]
    pub preserve: bool,
}

/// `[USER@]TYPE/NAME[/NAMESPACE]`.
pub fn split_user(s: &str) -> Result<(Option<String>, VmTarget), PortForwardError> {
    let (user, rest) = match s.split_once('@') {
        Some(("", _)) => {
            return Err(PortForwardError::BadTarget {
                input: s.to_string(),
                reason: "expected a user name before '@'".into(),
            })
        }
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, s),
    };
    Ok((user, parse_target(rest)?))
}

/// Runs `virtctl port-forward`.
pub fn port_forward(a: PortForwardArgs, target: Target, ns: &str) -> ExitCode {
    let namespace = a.target.namespace.clone().unwrap_or_else(|| ns.to_string());
    if a.stdio && a.ports.len() != 1 {
        return fail(format_args!("--stdio forwards exactly one port, got {}", a.ports.len()));
    }
    let c = match client(target) {
        Ok(c) => c,
        Err(e) => return fail_client(&e),
    };
    let result = if a.stdio {
        c.port_forward_stdio(&a.target, &namespace, a.ports[0])
    } else {
        c.port_forward(&a.target, &namespace, a.address, &a.ports, |p, bound| {
            let proto = if p.protocol.as_str() == "udp" { "udp/" } else { "" };
            println!("Forwarding from {bound} -> {proto}{}", p.remote);
            let _ = std::io::Write::flush(&mut std::io::stdout());
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail_client(&e),
    }
}

/// Quotes `arg` for the shell ssh runs its ProxyCommand with, and escapes ssh's `%` tokens.
pub fn proxy_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%");
    if !escaped.is_empty() && escaped.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        return escaped;
    }
    format!("'{}'", escaped.replace('\'', "'\\''"))
}

/// The ProxyCommand: this virtctl, reaching the same node (the token travels in VIRT_TOKEN, not
/// on a command line), forwarding its standard input and output to `port` of the target.
pub fn proxy_command(exe: &str, target: &Target, vm: &VmTarget, namespace: &str, port: u16) -> String {
    let mut args: Vec<String> = vec![exe.to_string()];
    if let Some(s) = &target.server {
        args.extend(["--server".into(), s.clone()]);
    }
    if let Some(k) = &target.kubeconfig {
        args.extend(["--kubeconfig".into(), k.clone()]);
    }
    if let Some(c) = &target.context {
        args.extend(["--context".into(), c.clone()]);
    }
    if let Some(ca) = &target.ca {
        args.extend(["--certificate-authority".into(), ca.display().to_string()]);
    }
    args.extend([
        "port-forward".into(),
        "--stdio=true".into(),
        format!("{}/{}/{namespace}", vm.short_kind(), vm.name),
        port.to_string(),
    ]);
    args.iter().map(|a| proxy_quote(a)).collect::<Vec<_>>().join(" ")
}

/// ssh's host name for the target: `vmi.NAME.NAMESPACE` (the name its host key is known under).
pub fn host_alias(vm: &VmTarget, namespace: &str) -> String {
    format!("{}.{}.{namespace}", vm.short_kind(), vm.name)
}

/// Why ssh's ProxyCommand could not name this virtctl.
#[derive(Debug, thiserror::Error)]
enum ProxyCommandError {
    /// The running executable's path is unknown.
    #[error("finding this virtctl for the ProxyCommand: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// The path cannot be written into an ssh option.
    #[error("the path of this virtctl is not UTF-8: {}", .0.display())]
    NotUtf8(PathBuf),
}

/// The options every ssh/scp run gets: the ProxyCommand, the known_hosts file, the key, the user's.
fn common_options(
    o: &SshOpts,
    target: &Target,
    vm: &VmTarget,
    namespace: &str,
) -> Result<Vec<OsString>, ProxyCommandError> {
    let exe = std::env::current_exe().map_err(ProxyCommandError::CurrentExe)?;
    let exe = exe.to_str().ok_or_else(|| ProxyCommandError::NotUtf8(exe.clone()))?;
    let mut args: Vec<OsString> = vec![
        "-o".into(),
        format!("ProxyCommand={}", proxy_command(exe, target, vm, namespace, o.port)).into(),
    ];
    if let Some(k) = &o.known_hosts {
        args.push("-o".into());
        args.push(format!("UserKnownHostsFile={}", k.display()).into());
    }
    if let Some(i) = &o.identity_file {
        args.push("-i".into());
        args.push(i.into());
    }
    for opt in &o.local_ssh_opts {
        // `-t "-o A=B"` is one value holding an option and its argument, as KubeVirt passes it on.
        args.extend(opt.split_whitespace().map(OsString::from));
    }
    Ok(args)
}

fn run(program: &str, args: Vec<OsString>, target: &Target) -> ExitCode {
    let mut cmd = std::process::Command::new(program);
    cmd.args(&args);
    let token = target.token.clone().or_else(|| std::env::var(virt_k8s::client::ENV_TOKEN).ok());
    if let Some(t) = token {
        cmd.env(virt_k8s::client::ENV_TOKEN, t);
    }
    match cmd.status() {
        Ok(st) => ExitCode::from(st.code().map_or(255, |c| c.clamp(0, 255) as u8)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(format_args!(
            "{program}: not found: install the OpenSSH client (Debian: apt-get install openssh-client)"
        )),
        Err(e) => fail(format_args!("running {program}: {e}")),
    }
}

/// Runs `virtctl ssh`: the system ssh through `virtctl port-forward --stdio`.
pub fn ssh(a: SshArgs, target: Target, ns: &str) -> ExitCode {
    let (user, vm) = match split_user(&a.target) {
        Ok(t) => t,
        Err(e) => return usage(e),
    };
    let namespace = vm.namespace.clone().unwrap_or_else(|| ns.to_string());
    let mut args = match common_options(&a.opts, &target, &vm, &namespace) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let user = user.or(a.opts.username.clone());
    let host = host_alias(&vm, &namespace);
    args.push(match user {
        Some(u) => format!("{u}@{host}").into(),
        None => host.into(),
    });
    if a.command.is_some() && !a.args.is_empty() {
        return usage("give the command either with --command or after --, not both");
    }
    if let Some(c) = a.command {
        args.push(c.into());
    }
    args.extend(a.args.into_iter().map(OsString::from));
    run("ssh", args, &target)
}

/// One side of `virtctl scp`: a local path, or `[USER@]TYPE/NAME[/NS]:PATH` made into ssh's
/// `[USER@]HOST:PATH` (with the target found).
fn scp_side(s: &str, ns: &str) -> (String, Option<(VmTarget, String)>) {
    let Some((remote, path)) = s.split_once(':') else { return (s.to_string(), None) };
    // A local path with ':' in it is not a target: only TYPE/NAME forms are remote.
    let Ok((user, vm)) = split_user(remote) else { return (s.to_string(), None) };
    let namespace = vm.namespace.clone().unwrap_or_else(|| ns.to_string());
    let host = host_alias(&vm, &namespace);
    let spec = match user {
        Some(u) => format!("{u}@{host}:{path}"),
        None => format!("{host}:{path}"),
    };
    (spec, Some((vm, namespace)))
}

/// Runs `virtctl scp`: the system scp through `virtctl port-forward --stdio`.
pub fn scp(a: ScpArgs, target: Target, ns: &str) -> ExitCode {
    let (src, src_vm) = scp_side(&a.source, ns);
    let (dst, dst_vm) = scp_side(&a.destination, ns);
    let (vm, namespace) =
        match (src_vm, dst_vm) {
            (Some(v), None) | (None, Some(v)) => v,
            _ => return usage(
                "exactly one of SOURCE and DESTINATION must be a VM's path ([USER@]vm/NAME[/NAMESPACE]:PATH)",
            ),
        };
    let mut args = match common_options(&a.opts, &target, &vm, &namespace) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if let Some(u) = &a.opts.username {
        args.push("-o".into());
        args.push(format!("User={u}").into());
    }
    if a.recursive {
        args.push("-r".into());
    }
    if a.preserve {
        args.push("-p".into());
    }
    args.push(src.into());
    args.push(dst.into());
    run("scp", args, &target)
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error: {msg}");
    ExitCode::from(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            server: Some("unix:///tmp/a b.sock".into()),
            token: None,
            kubeconfig: None,
            context: None,
            ca: None,
        }
    }

    #[test]
    fn the_proxy_command_quotes_and_escapes() {
        let vm: VmTarget = "vm/fedora".parse().unwrap();
        let cmd = proxy_command("/usr/bin/virtctl", &target(), &vm, "dev", 22);
        assert_eq!(
            cmd,
            "/usr/bin/virtctl --server 'unix:///tmp/a b.sock' port-forward --stdio=true vm/fedora/dev 22"
        );
        assert_eq!(proxy_quote("50%"), "'50%%'");
        assert_eq!(proxy_quote("it's"), "'it'\\''s'");
        assert_eq!(host_alias(&vm, "dev"), "vm.fedora.dev");
    }

    #[test]
    fn users_targets_and_scp_sides() {
        let (u, t) = split_user("root@vmi/a/b").unwrap();
        assert_eq!((u.as_deref(), t.name.as_str(), t.namespace.as_deref()), (Some("root"), "a", Some("b")));
        assert!(split_user("@vm/a").unwrap_err().to_string().contains("user name before '@'"));
        assert!(split_user("vm").unwrap_err().to_string().contains("target \"vm\""));
        let (spec, vm) = scp_side("root@vm/a:/etc/hosts", "default");
        assert_eq!(spec, "root@vm.a.default:/etc/hosts");
        assert!(vm.is_some());
        assert_eq!(scp_side("./local:file", "default"), ("./local:file".to_string(), None));
    }
}
