//! `serve`: run a parent until SIGINT/SIGTERM. It takes the sockets a service manager passed
//! in, binds the control socket, creates the instances given with `--create` (any failure
//! stops it), starts every `auto` definition of its definitions directory with its own UUID
//! and socket (a definition that cannot start is logged and the others start), and only then
//! answers the control socket: a client that connects early waits and sees them all.
//!
//! At SIGINT/SIGTERM every instance asks its clients to let go (the device request
//! interrupt: QEMU unplugs the devices from its guest), all of them first; the parent waits
//! for them at most `--remove-timeout`, then closes what is left and exits. A second signal
//! closes everything at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use log::{error, info, warn};

use super::activation::Activated;
use super::control::{ControlServer, ControlSocket};
use super::definitions::DefinitionStore;
use super::driver::{parse_create_spec, MdevDriver};
use super::instances::{InstanceInfo, Parent};
use super::signals::{block_shutdown_signals, shutdown_signals, wait_for_shutdown};
use crate::confine::{self, Policy, SeccompMode, ThreadKind};

/// The line `serve` prints for each instance it starts: `UUID TYPE SOCKET`.
fn announce(info: &InstanceInfo) {
    println!("{} {} {}", info.uuid, info.type_name, info.socket.display());
}

/// The knobs of `serve` that tune how instances are served.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    /// How long clients get to let an instance go once asked (`--remove-timeout`).
    pub(super) remove_timeout: Duration,
    /// The poll bound of every connection (`--poll-us`).
    pub(super) poll: Duration,
}

/// Runs the parent of `driver_name` with its sockets in `dir` and its definitions in `defs`;
/// clients get `tuning.remove_timeout` to let an instance go once asked. Returns the process exit
/// code.
pub(super) fn serve(
    driver_name: &str,
    (dir, defs): (&Path, &Path),
    create: &[String],
    tuning: Tuning,
    seccomp: SeccompMode,
    make_driver: impl FnOnce() -> Arc<dyn MdevDriver>,
) -> i32 {
    let Tuning {
        remove_timeout,
        poll,
    } = tuning;
    let fail = |what: String| {
        eprintln!("{driver_name}: {what}");
        1
    };
    block_shutdown_signals();
    if let Err(e) = confine::configure(Policy::new(seccomp)) {
        return fail(format!("confinement: {e}"));
    }
    let parent = match Parent::new(make_driver(), dir) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot use {}: {e}", dir.display())),
    };
    parent.set_remove_timeout(remove_timeout);
    parent.set_poll(poll);
    // Sockets passed in by a service manager (systemd socket activation), if any.
    let mut activated = match Activated::from_env() {
        Ok(a) => a,
        Err(e) => return fail(format!("socket activation: {e}")),
    };
    // Bound now (a parent already serving `dir` stops this one here), answered once the
    // start-up instances exist.
    let socket = match activated.take_control() {
        Some(l) => ControlSocket::from_listener(l),
        None => ControlSocket::bind(dir),
    };
    let socket = match socket {
        Ok(s) => s,
        Err(e) => return fail(format!("control socket: {e}")),
    };
    for spec in create {
        let created = parse_create_spec(spec)
            .map_err(|e| e.to_string())
            .and_then(|(t, u, p)| {
                let listener = u.and_then(|u| activated.take(&u.to_string()));
                parent
                    .create_on(&t, u, &p, listener)
                    .map_err(|e| e.to_string())
            });
        match created {
            Ok(info) => announce(&info),
            Err(e) => {
                error!("{spec}: {e}");
                parent.shutdown();
                return fail(format!("{spec}: {e}"));
            }
        }
    }
    let store = DefinitionStore::new(defs);
    start_auto_definitions(driver_name, &parent, &store, &mut activated);
    let control = match ControlServer::serve(parent.clone(), Some(store), socket) {
        Ok(c) => c,
        Err(e) => {
            parent.shutdown();
            return fail(format!("control socket: {e}"));
        }
    };
    for name in activated.leftover() {
        warn!("{driver_name}: passed-in socket {name} matches no instance; ignored");
    }
    info!("{driver_name}: control socket {}", control.path().display());
    // Start-up is done: from here the main thread only waits and then stops everything.
    if let Err(e) = confine::try_enter(ThreadKind::Main) {
        drop(control);
        parent.shutdown();
        return fail(format!("confinement: {e}"));
    }
    info!("{driver_name}: seccomp {seccomp}");
    wait_for_shutdown();
    drop(control);
    force_on_second_signal(driver_name, parent.clone());
    parent.shutdown_gracefully(remove_timeout);
    0
}

/// While the parent stops gracefully, a second SIGINT/SIGTERM closes every client at once.
fn force_on_second_signal(driver_name: &str, parent: Arc<Parent>) {
    let name = driver_name.to_string();
    let spawned = std::thread::Builder::new()
        .name("force-stop".into())
        .spawn(move || {
            if shutdown_signals().wait().is_ok() {
                info!("{name}: second signal: stopping now");
                parent.force();
            }
        });
    if let Err(e) = spawned {
        warn!("{driver_name}: a second signal will not force the stop: {e}");
    }
}

/// Starts every `auto` definition in `store` (on its passed-in socket when the service
/// manager passed one named after its UUID). Each failure, and each file that cannot be read,
/// is logged with its reason; the rest start regardless.
fn start_auto_definitions(
    driver_name: &str,
    parent: &Parent,
    store: &DefinitionStore,
    activated: &mut Activated,
) {
    let dir = store.dir().display();
    let scan = match store.scan() {
        Ok(s) => s,
        Err(e) => {
            error!("{driver_name}: definitions in {dir} not read: {e}");
            return;
        }
    };
    for bad in &scan.unreadable {
        error!("{driver_name}: {bad}; not started");
    }
    let (mut started, mut failed) = (0usize, 0usize);
    for def in scan.definitions.iter().filter(|d| d.auto) {
        let listener = activated.take(&def.uuid.to_string());
        match parent.create_on(&def.type_name, Some(def.uuid), &def.params, listener) {
            Ok(info) => {
                announce(&info);
                started += 1;
            }
            Err(e) => {
                error!(
                    "{driver_name}: defined instance {} ({}) not started: {e}",
                    def.uuid,
                    store.path_of(def.uuid).display()
                );
                failed += 1;
            }
        }
    }
    info!(
        "{driver_name}: definitions in {dir}: {} defined, {started} started, {failed} failed, \
         {} unreadable",
        scan.definitions.len(),
        scan.unreadable.len()
    );
}
