//! The subcommands every sample binary shares: `serve`, `types`, `list`, `create`, `remove`.
//! A binary flattens [`ParentCommand`] into its own CLI and calls [`run`].

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use log::{error, info, warn};
use uuid::Uuid;

use super::activation::Activated;
use super::control::{control_request, ControlServer, Request};
use super::driver::{CreateParams, MdevDriver, MdevType};
use super::instances::{InstanceInfo, Parent};

/// Default socket directory of a driver: `$XDG_RUNTIME_DIR/NAME` or `/tmp/NAME-UID`.
pub fn default_dir(driver: &str) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join(driver),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/{driver}-{}", unsafe { libc::getuid() })),
    }
}

/// Where the parent's sockets live.
#[derive(Args, Debug, Clone)]
pub struct DirArg {
    /// Socket directory (instances at DIR/UUID.sock, control at DIR/control.sock).
    #[arg(long, env = "MDEV_DIR")]
    pub dir: Option<PathBuf>,
}

impl DirArg {
    /// The directory given, or `driver`'s [`default_dir`].
    pub fn resolve(&self, driver: &str) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| default_dir(driver))
    }
}

/// The shared subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ParentCommand {
    /// Run the parent: serve the control socket and the instances given with --create until
    /// SIGINT/SIGTERM.
    Serve {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Create an instance at start: TYPE[,uuid=UUID][,KEY=VALUE…] (repeatable).
        #[arg(long = "create", value_name = "SPEC")]
        create: Vec<String>,
    },
    /// List the types and how many instances each can still have.
    Types {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List instances (uuid, type, socket, open connections, device set, who holds each).
    List {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an instance in a running parent.
    Create {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Type name.
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// Instance UUID (a fresh one if omitted).
        #[arg(long)]
        uuid: Option<Uuid>,
        /// KEY=VALUE parameter (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an instance from a running parent.
    Remove {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Remove even if clients are connected (they are disconnected).
        #[arg(long)]
        force: bool,
    },
}

/// Parses `TYPE[,uuid=UUID][,KEY=VALUE…]`.
pub fn parse_create_spec(spec: &str) -> Result<(String, Option<Uuid>, CreateParams), String> {
    let mut parts = spec.split(',');
    let type_name = parts
        .next()
        .filter(|t| !t.is_empty())
        .ok_or("empty instance spec")?
        .to_string();
    let mut uuid = None;
    let mut params = CreateParams::new();
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("'{p}' is not KEY=VALUE"))?;
        if k == "uuid" {
            uuid = Some(
                v.parse::<Uuid>()
                    .map_err(|e| format!("bad uuid '{v}': {e}"))?,
            );
        } else {
            params.insert(k.to_string(), v.to_string());
        }
    }
    Ok((type_name, uuid, params))
}

fn parse_params(list: &[String]) -> Result<CreateParams, String> {
    list.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("'{p}' is not KEY=VALUE"))
        })
        .collect()
}

/// The signals that stop `serve`.
fn shutdown_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks SIGINT and SIGTERM in the calling thread (and every thread it spawns later), so
/// [`wait_for_shutdown`] can take them synchronously.
pub fn block_shutdown_signals() {
    let _ = shutdown_signals().thread_block();
}

/// Waits for SIGINT or SIGTERM (blocked first with [`block_shutdown_signals`]).
pub fn wait_for_shutdown() {
    if let Ok(sig) = shutdown_signals().wait() {
        info!("{sig:?} received, shutting down");
    }
}

fn print_types(types: &[MdevType]) {
    println!(
        "{:<16} {:>9}  {:<9} DESCRIPTION",
        "TYPE", "AVAILABLE", "API"
    );
    for t in types {
        println!(
            "{:<16} {:>9}  {:<9} {}",
            t.name, t.available_instances, t.device_api, t.description
        );
    }
}

fn print_instances(list: &[InstanceInfo]) {
    println!(
        "{:<36}  {:<12} {:>5}  {:<20} SOCKET",
        "UUID", "TYPE", "OPEN", "DEVICE SET"
    );
    for i in list {
        println!(
            "{:<36}  {:<12} {:>5}  {:<20} {}",
            i.uuid,
            i.type_name,
            i.open_connections,
            i.device_set,
            i.socket.display()
        );
        if !i.description.is_empty() {
            println!("    {}", i.description);
        }
        for h in &i.holders {
            let uid = h.uid.map_or_else(|| "?".to_string(), |u| u.to_string());
            let role = if h.driving { "driving" } else { "passive" };
            println!(
                "    held by conn#{}: pid {} uid {uid} ({role})",
                h.connection, h.pid
            );
        }
    }
}

/// Runs one of the shared subcommands for `driver_name`; `make_driver` builds the driver for
/// `serve`. Returns the process exit code.
pub fn run(
    driver_name: &str,
    cmd: ParentCommand,
    make_driver: impl FnOnce() -> Arc<dyn MdevDriver>,
) -> i32 {
    let dir_of = |d: &DirArg| d.resolve(driver_name);
    let fail = |what: String| {
        eprintln!("{driver_name}: {what}");
        1
    };
    match cmd {
        ParentCommand::Serve { dir, create } => {
            block_shutdown_signals();
            let dir = dir_of(&dir);
            let parent = match Parent::new(make_driver(), &dir) {
                Ok(p) => p,
                Err(e) => return fail(format!("cannot use {}: {e}", dir.display())),
            };
            // Sockets passed in by a service manager (systemd socket activation), if any.
            let mut activated = match Activated::from_env() {
                Ok(a) => a,
                Err(e) => return fail(format!("socket activation: {e}")),
            };
            let control = match ControlServer::start_on(parent.clone(), activated.take_control()) {
                Ok(c) => c,
                Err(e) => return fail(format!("control socket: {e}")),
            };
            for spec in &create {
                let created =
                    parse_create_spec(spec)
                        .map_err(|e| e.to_string())
                        .and_then(|(t, u, p)| {
                            let listener = u.and_then(|u| activated.take(&u.to_string()));
                            parent
                                .create_on(&t, u, &p, listener)
                                .map_err(|e| e.to_string())
                        });
                match created {
                    Ok(info) => {
                        println!("{} {} {}", info.uuid, info.type_name, info.socket.display())
                    }
                    Err(e) => {
                        error!("{spec}: {e}");
                        parent.shutdown();
                        return fail(format!("{spec}: {e}"));
                    }
                }
            }
            for name in activated.leftover() {
                warn!("{driver_name}: passed-in socket {name} matches no instance; ignored");
            }
            info!("{driver_name}: control socket {}", control.path().display());
            wait_for_shutdown();
            drop(control);
            parent.shutdown();
            0
        }
        ParentCommand::Types { dir, json } => match control_request(&dir_of(&dir), &Request::Types)
        {
            Ok(v) if json => {
                println!("{v}");
                0
            }
            Ok(v) => {
                print_types(&serde_json::from_value::<Vec<MdevType>>(v).unwrap_or_default());
                0
            }
            Err(e) => fail(e.to_string()),
        },
        ParentCommand::List { dir, json } => match control_request(&dir_of(&dir), &Request::List) {
            Ok(v) if json => {
                println!("{v}");
                0
            }
            Ok(v) => {
                print_instances(
                    &serde_json::from_value::<Vec<InstanceInfo>>(v).unwrap_or_default(),
                );
                0
            }
            Err(e) => fail(e.to_string()),
        },
        ParentCommand::Create {
            dir,
            type_name,
            uuid,
            params,
            json,
        } => {
            let params = match parse_params(&params) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            match control_request(
                &dir_of(&dir),
                &Request::Create {
                    type_name,
                    uuid,
                    params,
                },
            ) {
                Ok(v) if json => {
                    println!("{v}");
                    0
                }
                Ok(v) => {
                    println!("{}", v["socket"].as_str().unwrap_or_default());
                    0
                }
                Err(e) => fail(e.to_string()),
            }
        }
        ParentCommand::Remove { dir, uuid, force } => {
            match control_request(&dir_of(&dir), &Request::Remove { uuid, force }) {
                Ok(_) => 0,
                Err(e) => fail(e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_specs_parse() {
        let (t, u, p) = parse_create_spec("mtty-2,port0=loopback,port1=socket:/tmp/p1").unwrap();
        assert_eq!(t, "mtty-2");
        assert!(u.is_none());
        assert_eq!(p["port1"], "socket:/tmp/p1");
        let (_, u, _) = parse_create_spec("vga,uuid=0b6d2a0c-5b43-4e3c-9a34-5b7f5c8f2d11").unwrap();
        assert!(u.is_some());
        assert!(parse_create_spec("").is_err());
        assert!(parse_create_spec("vga,novalue").is_err());
        assert!(parse_create_spec("vga,uuid=nope").is_err());
    }
}
