//! `virtctl`: KubeVirt's verbs for virt-rs. Parsing and wiring only; the logic lives in the crates
//! (`virt_k8s::client` for the node's API, tables and the console; `virt_storage::upload`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

mod migrate;
mod portforward;
mod target;
mod upload;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use target::{client, load_manifests, Target};
use upload::{image_upload, image_upload_via_node};
use virt_k8s::client::manifest;
use virt_k8s::client::output::{self, Format};
use virt_k8s::client::upload::ImageUpload;
use virt_k8s::client::{ApplyOutcome, ClientError, Kind, NodeClient, Version};
use virt_storage::cdi::Quantity;

const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  the operation failed: the node refused the request (not found, conflict, invalid object...),
     the node could not be reached, or a manifest could not be read or is invalid (checked before
     anything is sent); the reason follows `Error: ` on standard error
  2  usage error: unknown verb, resource or flag, missing or invalid argument

The node is found through --server (or VIRT_NODE), else the current context of --kubeconfig (or
KUBECONFIG; the node writes <state>/kubeconfig), else unix:///run/virt-node/node.sock; on TCP
(https://host:port, http://host:port) requests carry --token, VIRT_TOKEN or the kubeconfig's token.";

#[derive(Parser, Debug)]
#[command(
    name = "virtctl",
    version,
    about = "Manage virt-rs virtual machines and disks",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// The namespace (default: `default`; for create/apply, a document's own metadata.namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The node: unix:///path/node.sock, https://host:port or http://host:port.
    #[arg(long, global = true, env = "VIRT_NODE")]
    server: Option<String>,
    /// A kubeconfig (else KUBECONFIG): its current context names the node, its CA and token.
    #[arg(long, global = true)]
    kubeconfig: Option<String>,
    /// The kubeconfig context to use instead of its current-context.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The CA certificate (PEM) an https:// --server is checked against.
    #[arg(long, global = true)]
    certificate_authority: Option<PathBuf>,
    /// Bearer token for a node on TCP (else VIRT_TOKEN). For image-upload with --uploadproxy-url and
    /// no node (no --server, no VIRT_NODE): the upload token (else VIRT_UPLOAD_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `vm` or `vmi` (and their long and plural forms).
#[derive(Debug, Clone, Copy)]
struct Resource(Kind);

/// A resource name a command does not take; each names what was given and what is expected.
#[derive(Debug, thiserror::Error)]
enum UnknownResource {
    /// Not a VM or VMI (`start`, `stop`, ...).
    #[error(
        "unknown resource {0:?}: expected vm, vms, virtualmachine(s), vmi, vmis or virtualmachineinstance(s)"
    )]
    Kv(String),
    /// Not a VM, VMI or DataVolume (`get`).
    #[error(
        "unknown resource {0:?}: expected vm, vms, virtualmachine(s), vmi, vmis or virtualmachineinstance(s), \
         dv or datavolume(s)"
    )]
    Get(String),
    /// No kind the node serves (`delete`).
    #[error(
        "unknown resource {0:?}: see `kubectl api-resources` for the kinds the node serves and their short names"
    )]
    Any(String),
}

fn parse_resource(s: &str) -> Result<Resource, UnknownResource> {
    match Kind::parse_resource(s) {
        Some(k @ (Kind::VirtualMachine | Kind::VirtualMachineInstance)) => Ok(Resource(k)),
        _ => Err(UnknownResource::Kv(s.into())),
    }
}

/// What `get` lists: `vm`, `vmi` or `dv` (and their long and plural forms).
#[derive(Debug, Clone, Copy)]
enum GetResource {
    Kv(Kind),
    DataVolume,
}

fn parse_get_resource(s: &str) -> Result<GetResource, UnknownResource> {
    let lower = s.to_ascii_lowercase();
    let bare = lower.strip_suffix(".cdi.kubevirt.io").unwrap_or(&lower);
    if matches!(bare, "dv" | "dvs" | "datavolume" | "datavolumes") {
        return Ok(GetResource::DataVolume);
    }
    parse_resource(s).map(|r| GetResource::Kv(r.0)).map_err(|_| UnknownResource::Get(s.into()))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OutputArg {
    /// The object(s) as YAML.
    Yaml,
    /// The object(s) as JSON.
    Json,
    /// The table with more columns.
    Wide,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the objects of a manifest (VirtualMachine, VirtualMachineInstance, Namespace).
    Create {
        /// The manifest: YAML with one or more documents, or JSON; `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Create the objects of a manifest, or update them to match it (like kubectl apply).
    Apply {
        /// The manifest: YAML with one or more documents, or JSON; `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// List VMs, VMIs or DataVolumes, or show one.
    Get {
        /// vm(s) | virtualmachine(s) | vmi(s) | virtualmachineinstance(s) | dv(s) | datavolume(s)
        #[arg(value_parser = parse_get_resource)]
        resource: GetResource,
        /// One object's name; all of them without.
        name: Option<String>,
        /// Output format: yaml, json, or wide (more columns).
        #[arg(short = 'o', long, value_enum)]
        output: Option<OutputArg>,
        /// List across all namespaces.
        #[arg(short = 'A', long, conflicts_with = "name")]
        all_namespaces: bool,
    },
    /// Start a VirtualMachine.
    Start {
        /// The VM's name.
        name: String,
    },
    /// Stop a VirtualMachine.
    Stop {
        /// The VM's name.
        name: String,
        /// Seconds the guest gets to shut down (overrides the VM's termination grace period).
        #[arg(long)]
        grace_period: Option<u64>,
        /// Stop at once (grace period 0 unless --grace-period says otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Restart a VirtualMachine.
    Restart {
        /// The VM's name.
        name: String,
        /// Seconds the guest gets to shut down before the restart.
        #[arg(long)]
        grace_period: Option<u64>,
        /// Restart at once (grace period 0 unless --grace-period says otherwise).
        #[arg(long)]
        force: bool,
    },
    /// Pause a VM's instance or a VMI.
    Pause {
        /// vm or vmi.
        #[arg(value_parser = parse_resource)]
        resource: Resource,
        /// The name.
        name: String,
    },
    /// Unpause a VM's instance or a VMI.
    Unpause {
        /// vm or vmi.
        #[arg(value_parser = parse_resource)]
        resource: Resource,
        /// The name.
        name: String,
    },
    /// Live-migrate a VMI: create a VirtualMachineInstanceMigration for it (on the local node the VM
    /// moves into a fresh launcher).
    Migrate {
        /// The VMI's (or VM's) name.
        name: String,
        /// Wait until the migration ended, printing each phase and then the downtime.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Cancel the unfinished migration of a VMI (deletes its VirtualMachineInstanceMigration).
    MigrateCancel {
        /// The VMI's (or VM's) name.
        name: String,
    },
    /// Soft-reboot a VMI (through the guest agent when it is connected, else the ACPI power button;
    /// the machine starts again in place).
    SoftReboot {
        /// The VMI's (or VM's) name.
        name: String,
    },
    /// What the guest agent reports of a VMI (OS, host name, time zone, users, file systems), as JSON.
    Guestosinfo {
        /// The VMI's name.
        name: String,
    },
    /// The users logged in to a VMI's guest, as the guest agent reports them (JSON).
    Userlist {
        /// The VMI's name.
        name: String,
    },
    /// The file systems of a VMI's guest, as the guest agent reports them (JSON).
    Fslist {
        /// The VMI's name.
        name: String,
    },
    /// Freeze a VMI's file systems through its guest agent.
    Freeze {
        /// The VMI's name.
        name: String,
    },
    /// Thaw a VMI's file systems through its guest agent.
    Unfreeze {
        /// The VMI's name.
        name: String,
    },
    /// Attach to a VMI's serial console; Ctrl-] (^]) or the end of standard input detaches.
    Console {
        /// The VMI's (or VM's) name.
        name: String,
    },
    /// Open a VMI's VNC display on a local port for a VNC viewer (its RFB stream over the node's
    /// websocket).
    Vnc {
        /// The VMI.
        name: String,
        /// Only serve the port and print it as JSON (`{"port":N}`), as KubeVirt's virtctl does.
        #[arg(long)]
        proxy_only: bool,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// The port to listen on (0: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Forward local ports (or standard input and output, --stdio) to ports of a VM's guest through
    /// the node: `port-forward vm/NAME[/NAMESPACE] [tcp/|udp/]LOCAL[:REMOTE]...`.
    PortForward(portforward::PortForwardArgs),
    /// Open an ssh session (or run a command) in a VM's guest with the system's ssh, through
    /// `virtctl port-forward --stdio` as its ProxyCommand: `ssh [USER@]vm/NAME[/NAMESPACE] [-- CMD]`.
    Ssh(portforward::SshArgs),
    /// Copy files to or from a VM's guest with the system's scp, through `virtctl port-forward
    /// --stdio`: `scp FILE [USER@]vm/NAME[/NAMESPACE]:PATH` or the other way round.
    Scp(portforward::ScpArgs),
    /// Delete an object by resource and name (a VM takes its instance with it; a VMI is stopped),
    /// or every object of a manifest (-f).
    Delete {
        /// The resource: any the node serves, as kubectl names it (vm, vmi, dv, das, dic, vs, ns,
        /// vmf, vmcf, vmp, vmcp, or their plural and long forms).
        #[arg(value_parser = parse_any_resource, required_unless_present = "file")]
        resource: Option<Kind>,
        /// The name.
        #[arg(required_unless_present = "file")]
        name: Option<String>,
        /// The manifest whose objects to delete (`-` for standard input).
        #[arg(short = 'f', long, conflicts_with_all = ["resource", "name"])]
        file: Option<String>,
    },
    /// Print the client's and the node's versions.
    Version,
    /// Upload a disk image into a DataVolume whose source is `upload: {}`: the DataVolume is
    /// created if missing (--size), the node issues the upload token, and the command waits until
    /// the DataVolume is Succeeded. With VIRT_UPLOAD_TOKEN (or --token and no node) and
    /// --uploadproxy-url, it only uploads to that endpoint.
    ImageUpload {
        /// `dv` (the kind of target; only DataVolumes are supported).
        kind: String,
        /// The DataVolume's name.
        name: String,
        /// The image to upload (raw, qcow2, iso, or gzip/xz-compressed raw).
        #[arg(long)]
        image_path: PathBuf,
        /// The upload endpoint, e.g. https://node:8443 (the path /v1beta1/upload is added); by
        /// default the node's (CDIConfig status.uploadProxyURL).
        #[arg(long = "uploadproxy-url")]
        uploadproxy_url: Option<String>,
        /// The size of the DataVolume to create, e.g. 1Gi (needed when it does not exist).
        #[arg(long)]
        size: Option<String>,
        /// The storage class of the DataVolume to create.
        #[arg(long)]
        storage_class: Option<String>,
        /// Fail if the DataVolume does not exist instead of creating it.
        #[arg(long)]
        no_create: bool,
        /// Seconds to wait for the DataVolume to be ready for the upload, and to be Succeeded after.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
        /// Do not verify the endpoint's TLS certificate.
        #[arg(long)]
        insecure: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// Prints `Error: ...` and gives exit status 1. A refusal by the node shows the node's message,
/// reason and code.
fn fail(e: impl Display) -> ExitCode {
    eprintln!("Error: {e}");
    ExitCode::from(1)
}

fn fail_client(e: &ClientError) -> ExitCode {
    match e.status() {
        Some(status) => fail(status),
        None => fail(e),
    }
}

/// What a verb can fail with.
#[derive(Debug)]
enum Failure {
    Client(ClientError),
    Output(output::OutputError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

impl From<output::OutputError> for Failure {
    fn from(e: output::OutputError) -> Self {
        Self::Output(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let target = Target {
        server: cli.server.clone(),
        token: cli.token.clone(),
        kubeconfig: cli.kubeconfig.clone(),
        context: cli.context.clone(),
        ca: cli.certificate_authority.clone(),
    };
    let namespace = cli.namespace.clone();
    // Without -n, the kubeconfig context's namespace, as kubectl does.
    let context_ns = if namespace.is_none() { target.context_namespace() } else { None };
    let ns = namespace.as_deref().or(context_ns.as_deref()).unwrap_or(manifest::DEFAULT_NAMESPACE);
    match cli.command {
        Command::ImageUpload {
            kind,
            name,
            image_path,
            uploadproxy_url,
            size,
            storage_class,
            no_create,
            wait_secs,
            insecure,
            quiet,
        } => {
            if kind != "dv" {
                eprintln!("Error: image-upload: only `dv` targets are supported, not {kind:?}");
                return ExitCode::from(2);
            }
            // An upload token given: upload to the endpoint named, without asking a node.
            let legacy = cli.server.is_none().then_some(cli.token.clone()).flatten();
            let direct_token = std::env::var("VIRT_UPLOAD_TOKEN").ok().or(legacy);
            if let (Some(token), Some(url)) = (direct_token, uploadproxy_url.as_deref()) {
                return image_upload(&name, &image_path, url, &token, insecure, quiet);
            }
            let size = match size.as_deref().map(Quantity::parse).transpose() {
                Ok(s) => s,
                Err(e) => {
                    Cli::command().error(clap::error::ErrorKind::InvalidValue, format!("--size: {e}")).exit()
                }
            };
            let up = ImageUpload {
                namespace: ns.to_string(),
                name,
                image_path,
                uploadproxy_url,
                size,
                storage_class,
                no_create,
                wait: std::time::Duration::from_secs(wait_secs),
                insecure,
            };
            match client(target) {
                Ok(c) => match image_upload_via_node(&c, &up, quiet) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.is_usage() => Cli::command()
                        .error(clap::error::ErrorKind::MissingRequiredArgument, e.to_string())
                        .exit(),
                    Err(e) => fail(format_args!("image-upload: {e}")),
                },
                Err(e) => fail_client(&e),
            }
        }
        Command::Version => {
            println!("Client Version: {}", Version::client());
            with_client(target, |c| {
                let v = c.version()?;
                println!("Server Version: {v}");
                Ok(())
            })
        }
        Command::Create { file } => create_or_apply(&file, namespace.as_deref(), target, false),
        Command::Apply { file } => create_or_apply(&file, namespace.as_deref(), target, true),
        Command::Get { resource: GetResource::DataVolume, name, output, all_namespaces } => {
            with_client(target, |c| get_dvs(c, ns, name, output, all_namespaces))
        }
        Command::Get { resource: GetResource::Kv(kind), name, output, all_namespaces } => {
            with_client(target, |c| get(c, kind, ns, name, output, all_namespaces))
        }
        Command::Start { name } => with_client(target, |c| {
            c.start(ns, &name)?;
            println!("VM {name} was scheduled to start");
            Ok(())
        }),
        Command::Stop { name, grace_period, force } => with_client(target, |c| {
            c.stop(ns, &name, grace(grace_period, force))?;
            println!("VM {name} was scheduled to stop");
            Ok(())
        }),
        Command::Restart { name, grace_period, force } => with_client(target, |c| {
            c.restart(ns, &name, grace(grace_period, force))?;
            println!("VM {name} was scheduled to restart");
            Ok(())
        }),
        // A VM's instance has the VM's name; pausing is the instance's subresource either way.
        Command::Pause { resource: _, name } => with_client(target, |c| {
            c.pause(ns, &name)?;
            println!("VMI {name} was scheduled to pause");
            Ok(())
        }),
        Command::Unpause { resource: _, name } => with_client(target, |c| {
            c.unpause(ns, &name)?;
            println!("VMI {name} was scheduled to unpause");
            Ok(())
        }),
        Command::SoftReboot { name } => with_client(target, |c| {
            c.soft_reboot(ns, &name)?;
            println!("VMI {name} was scheduled to soft-reboot");
            Ok(())
        }),
        Command::Migrate { name, wait, timeout } => {
            migrate::migrate(target, ns, &name, wait, std::time::Duration::from_secs(timeout))
        }
        Command::MigrateCancel { name } => migrate::migrate_cancel(target, ns, &name),
        Command::Guestosinfo { name } => guest_info(target, ns, &name, "guestosinfo"),
        Command::Userlist { name } => guest_info(target, ns, &name, "userlist"),
        Command::Fslist { name } => guest_info(target, ns, &name, "filesystemlist"),
        Command::Freeze { name } => with_client(target, |c| {
            c.fs_freeze(ns, &name, true)?;
            println!("VMI {name} was scheduled to freeze");
            Ok(())
        }),
        Command::Unfreeze { name } => with_client(target, |c| {
            c.fs_freeze(ns, &name, false)?;
            println!("VMI {name} was scheduled to unfreeze");
            Ok(())
        }),
        Command::Console { name } => with_client(target, |c| {
            c.attach_console(ns, &name)?;
            Ok(())
        }),
        Command::Vnc { name, proxy_only, address, port } => with_client(target, |c| {
            c.vnc_proxy(ns, &name, address, port, false, |addr| {
                if proxy_only {
                    // KubeVirt's `virtctl vnc --proxy-only` prints the port as JSON.
                    println!("{{\"port\":{}}}", addr.port());
                } else {
                    println!("VNC of {name} on {addr}: connect a VNC viewer to it (Ctrl-C ends)");
                    launch_viewer(addr);
                }
                let _ = std::io::Write::flush(&mut std::io::stdout());
            })?;
            Ok(())
        }),
        Command::PortForward(a) => portforward::port_forward(a, target, ns),
        Command::Ssh(a) => portforward::ssh(a, target, ns),
        Command::Scp(a) => portforward::scp(a, target, ns),
        Command::Delete { file: Some(file), .. } => delete_file(&file, namespace.as_deref(), target),
        Command::Delete { resource: Some(kind), name: Some(name), file: None } => with_client(target, |c| {
            c.delete(kind, ns, &name)?;
            println!("{}", output::deleted(kind, &name));
            Ok(())
        }),
        Command::Delete { .. } => Cli::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, "delete needs RESOURCE NAME or -f FILE")
            .exit(),
    }
}

/// Starts a VNC viewer on `addr` if one is installed (remote-viewer, vncviewer), in the background.
fn launch_viewer(addr: std::net::SocketAddr) {
    let tries: [(&str, String); 2] = [
        ("remote-viewer", format!("vnc://{addr}")),
        ("vncviewer", format!("{}::{}", addr.ip(), addr.port())),
    ];
    for (viewer, arg) in tries {
        if std::process::Command::new(viewer).arg(arg).spawn().is_ok() {
            return;
        }
    }
}

/// Any resource the node serves, as kubectl names it.
fn parse_any_resource(s: &str) -> Result<Kind, UnknownResource> {
    Kind::parse_resource(s).ok_or_else(|| UnknownResource::Any(s.into()))
}

/// `delete -f`: every object of the manifest, in reverse order (as kubectl deletes a file's objects
/// independently); like kubectl, goes on after a failure and exits 1 at the end.
fn delete_file(file: &str, namespace: Option<&str>, target: Target) -> ExitCode {
    let manifests = match load_manifests(file, namespace, &target) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let client = match client(target) {
        Ok(c) => c,
        Err(e) => return fail_client(&e),
    };
    let mut code = ExitCode::SUCCESS;
    for m in manifests.iter().rev() {
        let Some(name) = m.name.as_deref() else {
            code = fail(format_args!("document {}: delete needs metadata.name", m.document));
            continue;
        };
        match client.delete(m.kind, &m.namespace, name) {
            Ok(()) => println!("{}", output::deleted(m.kind, name)),
            Err(e) => code = fail_client(&e),
        }
    }
    code
}

fn grace(grace_period: Option<u64>, force: bool) -> Option<u64> {
    grace_period.or(force.then_some(0))
}

/// `virtctl guestosinfo/userlist/fslist NAME`: the subresource's JSON, indented, as KubeVirt's virtctl prints it.
fn guest_info(target: Target, ns: &str, name: &str, sub: &str) -> ExitCode {
    with_client(target, |c| {
        let v = c.guest_agent_info(ns, name, sub)?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        Ok(())
    })
}

fn with_client(target: Target, f: impl FnOnce(&NodeClient) -> Result<(), Failure>) -> ExitCode {
    match client(target).map_err(Failure::from).and_then(|c| f(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Client(e)) => fail_client(&e),
        Err(Failure::Output(e)) => fail(e),
    }
}

fn create_or_apply(file: &str, namespace: Option<&str>, target: Target, apply: bool) -> ExitCode {
    // Every document is checked before anything is sent.
    let manifests = match load_manifests(file, namespace, &target) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let client = match client(target) {
        Ok(c) => c,
        Err(e) => return fail_client(&e),
    };
    // Like kubectl, go on with the other objects after a failure, and exit 1 at the end.
    let mut code = ExitCode::SUCCESS;
    for m in manifests {
        let result = if apply {
            client.apply(&m.object, &m.namespace).map(|outcome| (m.name.clone(), outcome))
        } else {
            client.create(&m.object, &m.namespace).map(|stored| {
                let name = stored.get("metadata").and_then(|md| md.get("name")).and_then(|n| n.as_str());
                (name.map(str::to_string).or(m.name.clone()), ApplyOutcome::Created)
            })
        };
        match result {
            Ok((name, outcome)) => {
                println!("{}", output::applied(m.kind, name.as_deref().unwrap_or(""), outcome))
            }
            Err(e) => code = fail_client(&e),
        }
    }
    code
}

fn get(
    client: &NodeClient,
    kind: Kind,
    ns: &str,
    name: Option<String>,
    out: Option<OutputArg>,
    all_namespaces: bool,
) -> Result<(), Failure> {
    let format = match out {
        None => Format::Table,
        Some(OutputArg::Wide) => Format::Wide,
        Some(OutputArg::Yaml) => Format::Yaml,
        Some(OutputArg::Json) => Format::Json,
    };
    let scope = if all_namespaces { None } else { Some(ns) };
    let now = output::now_unix();
    let wide = format == Format::Wide;
    let single = name.is_some();
    let (text, empty) = match kind {
        Kind::VirtualMachine => {
            let vms = match &name {
                Some(n) => vec![client.get_vm(ns, n)?],
                None => client.list_vms(scope)?,
            };
            match format {
                Format::Table | Format::Wide => {
                    (output::vm_table(&vms, wide, all_namespaces, now), vms.is_empty())
                }
                _ => (output::objects(&vms, single, format)?, false),
            }
        }
        _ => {
            let vmis = match &name {
                Some(n) => vec![client.get_vmi(ns, n)?],
                None => client.list_vmis(scope)?,
            };
            match format {
                Format::Table | Format::Wide => {
                    (output::vmi_table(&vmis, wide, all_namespaces, now), vmis.is_empty())
                }
                _ => (output::objects(&vmis, single, format)?, false),
            }
        }
    };
    if empty {
        eprintln!("{}", output::no_resources(scope));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// `virtctl get dv`: CDI's table (`NAME PHASE PROGRESS RESTARTS AGE`), or YAML/JSON.
fn get_dvs(
    client: &NodeClient,
    ns: &str,
    name: Option<String>,
    out: Option<OutputArg>,
    all_namespaces: bool,
) -> Result<(), Failure> {
    let scope = if all_namespaces { None } else { Some(ns) };
    let single = name.is_some();
    let dvs = match &name {
        Some(n) => vec![client.get_data_volume(ns, n)?],
        None => client.list_data_volumes(scope)?,
    };
    let text = match out {
        None | Some(OutputArg::Wide) => {
            if dvs.is_empty() {
                eprintln!("{}", output::no_resources(scope));
                return Ok(());
            }
            output::dv_table(&dvs, all_namespaces, output::now_unix())
        }
        Some(OutputArg::Yaml) => output::objects(&dvs, single, Format::Yaml)?,
        Some(OutputArg::Json) => output::objects(&dvs, single, Format::Json)?,
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn get_takes_datavolumes_too() {
        assert!(matches!(parse_get_resource("dv"), Ok(GetResource::DataVolume)));
        assert!(matches!(parse_get_resource("DataVolumes.cdi.kubevirt.io"), Ok(GetResource::DataVolume)));
        assert!(matches!(parse_get_resource("vmi"), Ok(GetResource::Kv(Kind::VirtualMachineInstance))));
        assert!(parse_get_resource("pods").unwrap_err().to_string().contains("datavolume"));
    }

    #[test]
    fn grace_periods() {
        assert_eq!(grace(None, false), None);
        assert_eq!(grace(None, true), Some(0));
        assert_eq!(grace(Some(30), true), Some(30));
    }
}
