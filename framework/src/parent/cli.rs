//! The subcommands every sample binary shares. A binary flattens [`ParentCommand`] into its
//! own CLI and calls [`run`].
//!
//! - `serve`: the parent (see [`super::serve`]);
//! - `types`, `list`, `create`, `remove`, `start`, `stop`: talk to the running parent over
//!   its control socket;
//! - `define`, `undefine`, `list --defined`: act on the definitions directory, with or
//!   without a running parent (`list --defined` asks it, when it runs, which are running).
//!
//! With `--json`, a result is one JSON document on stdout, and so is a failure:
//! `{"error":{"errno":16,"name":"EBUSY","message":"…"}}`, with exit status 1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use uuid::Uuid;

use super::control::ControlClient;
use super::definitions::{Definition, DefinitionStore};
pub use super::driver::parse_create_spec;
use super::driver::{CreateParams, MdevDriver, MdevType};
use super::instances::InstanceInfo;
use super::protocol::ControlError;
use crate::confine::SeccompMode;

/// Default socket directory of a driver: `$XDG_RUNTIME_DIR/NAME` or `/tmp/NAME-UID`.
pub fn default_dir(driver: &str) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join(driver),
        // SAFETY: getuid has no preconditions and cannot fail.
        None => PathBuf::from(format!("/tmp/{driver}-{}", unsafe { libc::getuid() })),
    }
}

/// Default definitions directory of a driver: `/etc/mdev/NAME` for root, else
/// `$XDG_CONFIG_HOME/mdev/NAME` (`~/.config/mdev/NAME`).
pub fn default_defs_dir(driver: &str) -> PathBuf {
    let system = PathBuf::from("/etc/mdev").join(driver);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return system;
    }
    let nonempty = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_CONFIG_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".config")))
        .map_or(system, |c| c.join("mdev").join(driver))
}

/// Longest wait a removal accepts (`--wait`, `--remove-timeout`): a day.
const MAX_WAIT_SECS: f64 = 24.0 * 3600.0;

/// Parses a number of seconds (`2`, `0.5`), 0 to a day.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(0.0..=MAX_WAIT_SECS).contains(&secs) {
        return Err(format!("{text} s is not between 0 and {MAX_WAIT_SECS} s"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text}: {e}"))
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

/// Where the definitions live.
#[derive(Args, Debug, Clone)]
pub struct DefsArg {
    /// Definitions directory, one UUID.json per defined instance [default: /etc/mdev/DRIVER
    /// for root, else $XDG_CONFIG_HOME/mdev/DRIVER].
    #[arg(long = "defs", env = "MDEV_DEFS_DIR", value_name = "DIR")]
    pub defs: Option<PathBuf>,
}

impl DefsArg {
    /// The directory given, or `driver`'s [`default_defs_dir`].
    pub fn resolve(&self, driver: &str) -> PathBuf {
        self.defs
            .clone()
            .unwrap_or_else(|| default_defs_dir(driver))
    }
}

pub use crate::server::DEFAULT_POLL_US;

/// `--poll-us N`: how long a connection polls its socket after a request before it blocks.
#[derive(Args, Debug, Clone, Copy)]
pub struct PollArg {
    /// After each request a connection polls its socket for up to N microseconds before it
    /// blocks (0: never polls). The window adapts to the client's pace within that bound and
    /// only ever follows a request, so an idle device costs no CPU. Polling saves the
    /// wake-up of a sleeping thread (tens of microseconds when client and server run on
    /// different CPUs) for at most N microseconds of CPU after a request, yielded to any
    /// other thread that wants the CPU.
    #[arg(long = "poll-us", value_name = "N", env = "MDEV_POLL_US", default_value_t = DEFAULT_POLL_US)]
    pub poll_us: u64,
}

impl PollArg {
    /// The bound as a duration.
    pub fn bound(&self) -> Duration {
        Duration::from_micros(self.poll_us)
    }
}

/// `--seccomp=on|log|off`: how the threads of a process are confined (see [`crate::confine`]).
#[derive(Args, Debug, Clone, Copy)]
pub struct SeccompArg {
    /// Seccomp allow-lists on every thread: `on` kills the process (SIGSYS) on a system call
    /// off a thread's list and logs which; `log` allows it and logs it once; `off` installs
    /// none.
    #[arg(long = "seccomp", env = "MDEV_SECCOMP", value_enum, default_value_t = SeccompMode::On)]
    pub mode: SeccompMode,
}

/// The shared subcommands.
#[derive(Subcommand, Debug, Clone)]
pub enum ParentCommand {
    /// Run the parent: serve the control socket, the instances given with --create and every
    /// definition marked --auto, until SIGINT/SIGTERM.
    Serve {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Where the definitions are.
        #[command(flatten)]
        defs: DefsArg,
        /// Create an instance at start: TYPE[,uuid=UUID][,KEY=VALUE…] (repeatable).
        #[arg(long = "create", value_name = "SPEC")]
        create: Vec<String>,
        /// How long clients get to let an instance go once asked (the device request
        /// interrupt: QEMU unplugs the device from its guest): the default for remove and
        /// stop, and the wait at SIGTERM before the remaining clients are closed (a second
        /// SIGTERM closes them at once).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        remove_timeout: Duration,
        /// Polling after each request.
        #[command(flatten)]
        poll: PollArg,
        /// Confinement of every thread.
        #[command(flatten)]
        seccomp: SeccompArg,
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
    /// List running instances (uuid, type, socket, open connections, device set, who holds
    /// each), or with --defined the definitions and whether each is running.
    List {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// List the definitions instead, each running or stopped.
        #[arg(long)]
        defined: bool,
        /// Where the definitions are (with --defined).
        #[command(flatten)]
        defs: DefsArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an instance in a running parent (gone when the parent stops; see define).
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
    /// Remove an instance from a running parent. New clients are refused at once; every
    /// client that registered the device request interrupt is asked to let go (QEMU unplugs
    /// the device from its guest) and the removal waits for them. A holder that cannot be
    /// asked, or does not let go in time, makes it fail with EBUSY naming it (pid, uid),
    /// unless --force.
    Remove {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Close the clients that still hold it at the end instead of failing.
        #[arg(long)]
        force: bool,
        /// How long asked clients get to let go [default: the parent's --remove-timeout].
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        wait: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Define a persistent instance: write DEFS/UUID.json (no parent needed). With --auto,
    /// the parent starts it whenever it starts.
    Define {
        /// Where the definitions are.
        #[command(flatten)]
        defs: DefsArg,
        /// Type name.
        #[arg(value_name = "TYPE")]
        type_name: String,
        /// Instance UUID (a fresh one if omitted).
        #[arg(long)]
        uuid: Option<Uuid>,
        /// KEY=VALUE parameter (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Start it whenever the parent starts.
        #[arg(long)]
        auto: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a definition (a running instance keeps running).
    Undefine {
        /// Where the definitions are.
        #[command(flatten)]
        defs: DefsArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a defined instance in the running parent (from the parent's definitions).
    Start {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a running instance; its definition stays. Clients are asked to let go first,
    /// as with remove.
    Stop {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Close the clients that still hold it at the end instead of failing.
        #[arg(long)]
        force: bool,
        /// How long asked clients get to let go [default: the parent's --remove-timeout].
        #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
        wait: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_params(list: &[String]) -> Result<CreateParams, ControlError> {
    list.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ControlError::invalid(format!("'{p}' is not KEY=VALUE")))
        })
        .collect()
}

fn types_text(types: &[MdevType]) -> String {
    let mut s = format!(
        "{:<16} {:>9}  {:<9} DESCRIPTION\n",
        "TYPE", "AVAILABLE", "API"
    );
    for t in types {
        s += &format!(
            "{:<16} {:>9}  {:<9} {}\n",
            t.name, t.available_instances, t.device_api, t.description
        );
    }
    s
}

fn instances_text(list: &[InstanceInfo]) -> String {
    let mut s = format!(
        "{:<36}  {:<12} {:>5}  {:<20} SOCKET\n",
        "UUID", "TYPE", "OPEN", "DEVICE SET"
    );
    for i in list {
        s += &format!(
            "{:<36}  {:<12} {:>5}  {:<20} {}\n",
            i.uuid,
            i.type_name,
            i.open_connections,
            i.device_set,
            i.socket.display()
        );
        if !i.description.is_empty() {
            s += &format!("    {}\n", i.description);
        }
        for h in &i.holders {
            let uid = h.uid.map_or_else(|| "?".to_string(), |u| u.to_string());
            let role = if h.driving { "driving" } else { "passive" };
            s += &format!(
                "    held by conn#{}: pid {} uid {uid} ({role})\n",
                h.connection, h.pid
            );
        }
    }
    s
}

/// Whether a defined instance is running in the parent.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum DefinedState {
    Running,
    Stopped,
}

/// One definition in `list --defined`.
#[derive(Serialize, Debug)]
struct DefinedEntry {
    #[serde(flatten)]
    definition: Definition,
    file: PathBuf,
    state: DefinedState,
    /// Its socket, while running.
    socket: Option<PathBuf>,
}

/// A file `list --defined` could not use.
#[derive(Serialize, Debug)]
struct UnreadableEntry {
    file: Option<PathBuf>,
    error: ControlError,
}

/// What `list --defined --json` prints.
#[derive(Serialize, Debug)]
struct DefinedListing {
    dir: PathBuf,
    parent_running: bool,
    definitions: Vec<DefinedEntry>,
    unreadable: Vec<UnreadableEntry>,
}

fn defined_text(listing: &DefinedListing) -> String {
    let mut s = format!(
        "{:<36}  {:<12} {:<4}  {:<8} PARAMS\n",
        "UUID", "TYPE", "AUTO", "STATE"
    );
    for e in &listing.definitions {
        let d = &e.definition;
        let params: Vec<String> = d.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let state = match e.state {
            DefinedState::Running => "running",
            DefinedState::Stopped => "stopped",
        };
        s += &format!(
            "{:<36}  {:<12} {:<4}  {:<8} {}\n",
            d.uuid,
            d.type_name,
            if d.auto { "yes" } else { "no" },
            state,
            params.join(",")
        );
    }
    for u in &listing.unreadable {
        s += &format!("unreadable: {}\n", u.error.message);
    }
    s
}

/// The definitions in `defs`, each marked running or stopped from the parent serving `dir`
/// (all stopped when none runs).
fn list_defined(dir: &Path, defs: &Path) -> Result<DefinedListing, ControlError> {
    let store = DefinitionStore::new(defs);
    let scan = store.scan()?;
    let running = match ControlClient::connect(dir) {
        Ok(mut c) => Some(c.list()?),
        Err(e) if [libc::ENOENT, libc::ECONNREFUSED].contains(&e.errno) => None,
        Err(e) => return Err(e),
    };
    let definitions = scan
        .definitions
        .into_iter()
        .map(|definition| {
            let live = running.iter().flatten().find(|i| i.uuid == definition.uuid);
            DefinedEntry {
                file: store.path_of(definition.uuid),
                state: if live.is_some() {
                    DefinedState::Running
                } else {
                    DefinedState::Stopped
                },
                socket: live.map(|i| i.socket.clone()),
                definition,
            }
        })
        .collect();
    let unreadable = scan
        .unreadable
        .iter()
        .map(|e| UnreadableEntry {
            file: e.path().map(Path::to_path_buf),
            error: ControlError::from(e),
        })
        .collect();
    Ok(DefinedListing {
        dir: defs.to_path_buf(),
        parent_running: running.is_some(),
        definitions,
        unreadable,
    })
}

/// What a client subcommand produced: the document `--json` prints, and the text printed
/// otherwise.
struct Outcome {
    json: String,
    text: String,
}

impl Outcome {
    fn new<T: Serialize>(value: &T, text: String) -> Result<Self, ControlError> {
        let json = serde_json::to_string(value)
            .map_err(|e| ControlError::new(libc::EINVAL, format!("cannot encode: {e}")))?;
        Ok(Outcome { json, text })
    }
}

/// `{"error": {"errno": …, "name": …, "message": …}}`, what a failure prints with `--json`.
#[derive(Serialize)]
struct ErrorDocument<'a> {
    error: &'a ControlError,
}

/// `{"uuid": …, "file": …}`, what `undefine --json` prints.
#[derive(Serialize)]
struct Undefined {
    uuid: Uuid,
    file: PathBuf,
}

/// `{"uuid": …}`, what `remove --json` and `stop --json` print.
#[derive(Serialize)]
struct Removed {
    uuid: Uuid,
}

/// A definition and its file, what `define --json` prints.
#[derive(Serialize)]
struct Defined {
    #[serde(flatten)]
    definition: Definition,
    file: PathBuf,
}

/// Runs one of the shared subcommands for `driver_name`; `make_driver` builds the driver for
/// `serve` (and tells `define` the type names). Returns the process exit code.
pub fn run(
    driver_name: &str,
    cmd: ParentCommand,
    make_driver: impl FnOnce() -> Arc<dyn MdevDriver>,
) -> i32 {
    if let ParentCommand::Serve {
        dir,
        defs,
        create,
        remove_timeout,
        poll,
        seccomp,
    } = &cmd
    {
        return super::serve::serve(
            driver_name,
            (&dir.resolve(driver_name), &defs.resolve(driver_name)),
            create,
            super::serve::Tuning {
                remove_timeout: *remove_timeout,
                poll: poll.bound(),
            },
            seccomp.mode,
            make_driver,
        );
    }
    let json = match &cmd {
        ParentCommand::Serve { .. } => false,
        ParentCommand::Types { json, .. }
        | ParentCommand::List { json, .. }
        | ParentCommand::Create { json, .. }
        | ParentCommand::Remove { json, .. }
        | ParentCommand::Define { json, .. }
        | ParentCommand::Undefine { json, .. }
        | ParentCommand::Start { json, .. }
        | ParentCommand::Stop { json, .. } => *json,
    };
    match run_client(driver_name, cmd, make_driver) {
        Ok(out) if json => {
            println!("{}", out.json);
            0
        }
        Ok(out) => {
            print!("{}", out.text);
            0
        }
        Err(error) if json => {
            match serde_json::to_string(&ErrorDocument { error: &error }) {
                Ok(doc) => println!("{doc}"),
                Err(_) => eprintln!("{driver_name}: {error}"),
            }
            1
        }
        Err(e) => {
            eprintln!("{driver_name}: {e}");
            1
        }
    }
}

fn run_client(
    driver_name: &str,
    cmd: ParentCommand,
    make_driver: impl FnOnce() -> Arc<dyn MdevDriver>,
) -> Result<Outcome, ControlError> {
    let connect = |d: &DirArg| ControlClient::connect(&d.resolve(driver_name));
    match cmd {
        ParentCommand::Serve { .. } => Err(ControlError::invalid("serve is not a client")),
        ParentCommand::Types { dir, .. } => {
            let types = connect(&dir)?.types()?;
            Outcome::new(&types, types_text(&types))
        }
        ParentCommand::List {
            dir,
            defined: false,
            ..
        } => {
            let list = connect(&dir)?.list()?;
            Outcome::new(&list, instances_text(&list))
        }
        ParentCommand::List {
            dir,
            defined: true,
            defs,
            ..
        } => {
            let listing = list_defined(&dir.resolve(driver_name), &defs.resolve(driver_name))?;
            Outcome::new(&listing, defined_text(&listing))
        }
        ParentCommand::Create {
            dir,
            type_name,
            uuid,
            params,
            ..
        } => {
            let params = parse_params(&params)?;
            let info = connect(&dir)?.create(&type_name, uuid, &params)?;
            Outcome::new(&info, format!("{}\n", info.socket.display()))
        }
        ParentCommand::Start { dir, uuid, .. } => {
            let info = connect(&dir)?.start(uuid)?;
            Outcome::new(&info, format!("{}\n", info.socket.display()))
        }
        ParentCommand::Remove {
            dir,
            uuid,
            force,
            wait,
            ..
        }
        | ParentCommand::Stop {
            dir,
            uuid,
            force,
            wait,
            ..
        } => {
            connect(&dir)?.remove_within(uuid, force, wait)?;
            Outcome::new(&Removed { uuid }, String::new())
        }
        ParentCommand::Define {
            defs,
            type_name,
            uuid,
            params,
            auto,
            ..
        } => {
            let params = parse_params(&params)?;
            let types: Vec<String> = make_driver().types().into_iter().map(|t| t.name).collect();
            if !types.contains(&type_name) {
                return Err(ControlError::invalid(format!(
                    "{driver_name} has no type '{type_name}' (types: {})",
                    types.join(", ")
                )));
            }
            let definition = Definition {
                uuid: uuid.unwrap_or_else(Uuid::new_v4),
                type_name,
                params,
                auto,
            };
            let file = DefinitionStore::new(defs.resolve(driver_name)).define(&definition)?;
            let text = format!("{}\n", definition.uuid);
            Outcome::new(&Defined { definition, file }, text)
        }
        ParentCommand::Undefine { defs, uuid, .. } => {
            let file = DefinitionStore::new(defs.resolve(driver_name)).undefine(uuid)?;
            Outcome::new(&Undefined { uuid, file }, String::new())
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

    #[test]
    fn waits_are_seconds_from_zero_to_a_day() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "nan", "inf", "100000", "soon", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn params_that_are_not_key_value_are_einval() {
        let e = parse_params(&["port0=pty".into(), "oops".into()]).unwrap_err();
        assert_eq!((e.errno, e.name.as_str()), (libc::EINVAL, "EINVAL"));
        assert!(e.message.contains("'oops'"));
    }
}
