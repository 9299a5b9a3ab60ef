//! `virtctl`: KubeVirt's verbs for virt-rs. Parsing and wiring only; the logic lives in the crates
//! (`virt_k8s::client` for the node's API, tables and the console; `virt_storage::upload`).

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use virt_k8s::client::manifest;
use virt_k8s::client::output::{self, Format};
use virt_k8s::client::{ApplyOutcome, ClientError, Endpoint, Kind, NodeClient, Version, ENV_TOKEN};

const EXIT_STATUS: &str = "\
Exit status:
  0  success
  1  the operation failed: the node refused the request (not found, conflict, invalid object...),
     the node could not be reached, or a manifest could not be read or is invalid (checked before
     anything is sent); the reason follows `Error: ` on standard error
  2  usage error: unknown verb, resource or flag, missing or invalid argument

The node is found through --server, else VIRT_NODE, else unix:///run/virt-node/node.sock; on TCP
(http://host:port) requests carry --token or VIRT_TOKEN.";

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
    /// The node: unix:///path/node.sock or http://host:port.
    #[arg(long, global = true, env = "VIRT_NODE")]
    server: Option<String>,
    /// Bearer token for a node on TCP (else VIRT_TOKEN); for image-upload, the upload token (else
    /// VIRT_UPLOAD_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `vm` or `vmi` (and their long and plural forms).
#[derive(Debug, Clone, Copy)]
struct Resource(Kind);

fn parse_resource(s: &str) -> Result<Resource, String> {
    match Kind::parse_resource(s) {
        Some(k @ (Kind::VirtualMachine | Kind::VirtualMachineInstance)) => Ok(Resource(k)),
        _ => Err(format!(
            "unknown resource {s:?}: expected vm, vms, virtualmachine(s), vmi, vmis or virtualmachineinstance(s)"
        )),
    }
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
    /// List VMs or VMIs, or show one.
    Get {
        /// vm(s) | virtualmachine(s) | vmi(s) | virtualmachineinstance(s)
        #[arg(value_parser = parse_resource)]
        resource: Resource,
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
    /// Soft-reboot a VMI (ACPI power button; the machine starts again in place).
    SoftReboot {
        /// The VMI's (or VM's) name.
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
    /// Delete a VM (and its instance) or a VMI (stopping it).
    Delete {
        /// vm or vmi.
        #[arg(value_parser = parse_resource)]
        resource: Resource,
        /// The name.
        name: String,
    },
    /// Print the client's and the node's versions.
    Version,
    /// Upload a disk image into a DataVolume whose source is `upload: {}`.
    ImageUpload {
        /// `dv` (the kind of target; only DataVolumes are supported).
        kind: String,
        /// The DataVolume's name.
        name: String,
        /// The image to upload (raw, qcow2, iso, or gzip/xz-compressed raw).
        #[arg(long)]
        image_path: PathBuf,
        /// The upload endpoint, e.g. https://node:8443 (the path /v1beta1/upload is added).
        #[arg(long = "uploadproxy-url")]
        uploadproxy_url: String,
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
    let namespace = cli.namespace.clone();
    let ns = namespace.as_deref().unwrap_or(manifest::DEFAULT_NAMESPACE);
    match cli.command {
        Command::ImageUpload { kind, name, image_path, uploadproxy_url, insecure, quiet } => {
            let token = cli.token.or_else(|| std::env::var("VIRT_UPLOAD_TOKEN").ok());
            let Some(token) = token else {
                Cli::command()
                    .error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "image-upload needs the upload token: --token or VIRT_UPLOAD_TOKEN",
                    )
                    .exit()
            };
            image_upload(&kind, &name, &image_path, &uploadproxy_url, &token, insecure, quiet)
        }
        Command::Version => {
            println!("Client Version: {}", Version::client());
            with_client(cli.server, cli.token, |c| {
                let v = c.version()?;
                println!("Server Version: {v}");
                Ok(())
            })
        }
        Command::Create { file } => {
            create_or_apply(&file, namespace.as_deref(), cli.server, cli.token, false)
        }
        Command::Apply { file } => create_or_apply(&file, namespace.as_deref(), cli.server, cli.token, true),
        Command::Get { resource, name, output, all_namespaces } => {
            with_client(cli.server, cli.token, |c| get(c, resource.0, ns, name, output, all_namespaces))
        }
        Command::Start { name } => with_client(cli.server, cli.token, |c| {
            c.start(ns, &name)?;
            println!("VM {name} was scheduled to start");
            Ok(())
        }),
        Command::Stop { name, grace_period, force } => with_client(cli.server, cli.token, |c| {
            c.stop(ns, &name, grace(grace_period, force))?;
            println!("VM {name} was scheduled to stop");
            Ok(())
        }),
        Command::Restart { name, grace_period, force } => with_client(cli.server, cli.token, |c| {
            c.restart(ns, &name, grace(grace_period, force))?;
            println!("VM {name} was scheduled to restart");
            Ok(())
        }),
        // A VM's instance has the VM's name; pausing is the instance's subresource either way.
        Command::Pause { resource: _, name } => with_client(cli.server, cli.token, |c| {
            c.pause(ns, &name)?;
            println!("VMI {name} was scheduled to pause");
            Ok(())
        }),
        Command::Unpause { resource: _, name } => with_client(cli.server, cli.token, |c| {
            c.unpause(ns, &name)?;
            println!("VMI {name} was scheduled to unpause");
            Ok(())
        }),
        Command::SoftReboot { name } => with_client(cli.server, cli.token, |c| {
            c.soft_reboot(ns, &name)?;
            println!("VMI {name} was scheduled to soft-reboot");
            Ok(())
        }),
        Command::Console { name } => with_client(cli.server, cli.token, |c| {
            c.attach_console(ns, &name)?;
            Ok(())
        }),
        Command::Vnc { name, proxy_only, address, port } => with_client(cli.server, cli.token, |c| {
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
        Command::Delete { resource, name } => with_client(cli.server, cli.token, |c| {
            c.delete(resource.0, ns, &name)?;
            println!("{}", output::deleted(resource.0, &name));
            Ok(())
        }),
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

fn grace(grace_period: Option<u64>, force: bool) -> Option<u64> {
    grace_period.or(force.then_some(0))
}

fn client(server: Option<String>, token: Option<String>) -> Result<NodeClient, ClientError> {
    let endpoint = Endpoint::resolve(server.as_deref(), None)?;
    let token = token.or_else(|| std::env::var(ENV_TOKEN).ok());
    NodeClient::new(endpoint, token)
}

fn with_client(
    server: Option<String>,
    token: Option<String>,
    f: impl FnOnce(&NodeClient) -> Result<(), Failure>,
) -> ExitCode {
    match client(server, token).map_err(Failure::from).and_then(|c| f(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Client(e)) => fail_client(&e),
        Err(Failure::Output(e)) => fail(e),
    }
}

fn create_or_apply(
    file: &str,
    namespace: Option<&str>,
    server: Option<String>,
    token: Option<String>,
    apply: bool,
) -> ExitCode {
    // Every document is checked before anything is sent.
    let manifests = match manifest::load_path(file, namespace) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    let client = match client(server, token) {
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

fn image_upload(
    kind: &str,
    name: &str,
    image_path: &std::path::Path,
    uploadproxy_url: &str,
    token: &str,
    insecure: bool,
    quiet: bool,
) -> ExitCode {
    if kind != "dv" {
        eprintln!("Error: image-upload: only `dv` targets are supported, not {kind:?}");
        return ExitCode::from(2);
    }
    let url = format!("{}/v1beta1/upload", uploadproxy_url.trim_end_matches('/'));
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = virt_storage::upload::upload_file(&url, token, image_path, insecure, &mut |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    });
    bar.finish_and_clear();
    match r {
        Ok(msg) => {
            println!("Uploading {} to DataVolume {name} completed: {msg}", image_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("image-upload: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn grace_periods() {
        assert_eq!(grace(None, false), None);
        assert_eq!(grace(None, true), Some(0));
        assert_eq!(grace(Some(30), true), Some(30));
    }
}
