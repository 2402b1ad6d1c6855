//! Instances of a parent's types, each registered in its device set and served on its own
//! socket.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use log::{info, warn};
use uuid::Uuid;

use super::driver::{CreateParams, MdevDriver, MdevType};
use crate::device_set::{DeviceHandle, DeviceSets, Open};
use crate::error::DeviceError;
use crate::server::{deadline_after, Departure, DeviceServer, ServerError, DEFAULT_REMOVE_TIMEOUT};

/// Why a removal found the instance still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// These holders routed no device request interrupt (REQ): they cannot be asked to let
    /// go, so nobody was asked and nothing was disturbed.
    CannotBeAsked,
    /// They were asked (REQ) and had not let go when the wait ended.
    DidNotRelease(Duration),
}

impl std::fmt::Display for BusyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BusyReason::CannotBeAsked => write!(
                f,
                "which registered no request interrupt and cannot be asked to let go"
            ),
            BusyReason::DidNotRelease(waited) => write!(
                f,
                "which did not let go within {:.1} s of being asked (REQ)",
                waited.as_secs_f64()
            ),
        }
    }
}

/// Why a parent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ParentError {
    /// The driver refused to create the device.
    #[error("cannot create {type_name}: {source}")]
    Create {
        /// The type asked for.
        type_name: String,
        /// The driver's error.
        #[source]
        source: DeviceError,
    },
    /// The UUID is taken.
    #[error("instance {0} already exists")]
    Exists(Uuid),
    /// No such instance.
    #[error("no instance {0}")]
    NotFound(Uuid),
    /// The instance is held open and removal was not forced.
    #[error("instance {uuid} is held by {}, {why}; use force to close it", holders_text(.holders))]
    Busy {
        /// The instance.
        uuid: Uuid,
        /// Who holds it.
        holders: Vec<Open>,
        /// Whether they were asked.
        why: BusyReason,
    },
    /// Another removal of the instance is under way.
    #[error("instance {0} is already being removed")]
    Leaving(Uuid),
    /// Serving the instance failed.
    #[error(transparent)]
    Serve(#[from] ServerError),
    /// A filesystem error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ParentError {
    /// The errno a control client receives.
    pub fn errno(&self) -> i32 {
        match self {
            ParentError::Create { source, .. } => source.errno(),
            ParentError::Exists(_) => libc::EEXIST,
            ParentError::NotFound(_) => libc::ENOENT,
            ParentError::Busy { .. } => libc::EBUSY,
            ParentError::Leaving(_) => libc::EALREADY,
            ParentError::Serve(e) => e.errno(),
            ParentError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// "conn#3 (pid 42, uid 0, driving), …" for an error message.
fn holders_text(opens: &[Open]) -> String {
    let all: Vec<String> = opens
        .iter()
        .map(|o| {
            let uid = o.uid.map_or(String::new(), |u| format!(", uid {u}"));
            let role = if o.driving { ", driving" } else { "" };
            format!("{} ({}{uid}{role})", o.conn, o.owner)
        })
        .collect();
    all.join(", ")
}

/// What a listing shows of an instance.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance UUID.
    pub uuid: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The socket clients connect to.
    pub socket: PathBuf,
    /// Connections currently open.
    pub open_connections: usize,
    /// Who holds it open: each connection, its client's pid and uid, whether it drives the
    /// device.
    #[serde(default)]
    pub holders: Vec<Holder>,
    /// Its device set.
    pub device_set: String,
    /// It is being removed: its clients were asked to let go, new ones are refused.
    #[serde(default)]
    pub leaving: bool,
    /// Its create-time parameters.
    pub params: CreateParams,
    /// What the device says of itself (`Device::describe`), e.g. where its consoles are.
    #[serde(default)]
    pub description: String,
}

struct Instance {
    type_name: String,
    params: CreateParams,
    server: DeviceServer,
    /// A removal (or the parent's shutdown) is under way.
    leaving: bool,
}

/// One client holding an instance open, as a listing shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Holder {
    /// The connection number.
    pub connection: u64,
    /// The client's process id (0 when unknown).
    pub pid: u32,
    /// The client's user id, when known.
    pub uid: Option<u32>,
    /// It routed interrupts or mapped DMA memory (a VMM), rather than only reading and
    /// writing regions (a viewer).
    pub driving: bool,
}

impl From<&Open> for Holder {
    fn from(o: &Open) -> Self {
        Holder {
            connection: o.conn.0,
            pid: o.owner.0,
            uid: o.uid,
            driving: o.driving,
        }
    }
}

impl Instance {
    fn info(&self, uuid: Uuid) -> InstanceInfo {
        let opens = self.server.handle().opens();
        InstanceInfo {
            uuid,
            type_name: self.type_name.clone(),
            socket: self
                .server
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            open_connections: opens.len(),
            holders: opens.iter().map(Holder::from).collect(),
            device_set: self.server.handle().set().name(),
            leaving: self.leaving,
            params: self.params.clone(),
            description: self.server.handle().lock().describe(),
        }
    }
}

/// A parent device: one driver, its instances, their sockets.
pub struct Parent {
    driver: Arc<dyn MdevDriver>,
    sets: DeviceSets,
    dir: PathBuf,
    instances: Mutex<BTreeMap<Uuid, Instance>>,
    /// Milliseconds clients get to let an instance go once asked (remove, stop, shutdown).
    remove_timeout_ms: AtomicU64,
    /// A forced shutdown was asked for (a second SIGTERM): waits end at once.
    forcing: AtomicBool,
    /// Poll bound of every instance's connections, in microseconds (`serve --poll-us`).
    poll_us: AtomicU64,
}

impl Parent {
    /// A parent serving its instances' sockets in `dir` (created 0700 if missing).
    pub fn new(driver: Arc<dyn MdevDriver>, dir: &Path) -> io::Result<Arc<Self>> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(Arc::new(Parent {
            driver,
            sets: DeviceSets::new(),
            dir: dir.to_path_buf(),
            instances: Mutex::new(BTreeMap::new()),
            remove_timeout_ms: AtomicU64::new(millis(DEFAULT_REMOVE_TIMEOUT)),
            forcing: AtomicBool::new(false),
            poll_us: AtomicU64::new(0),
        }))
    }

    /// How long clients get to let an instance go once asked, when a removal does not say
    /// (default [`DEFAULT_REMOVE_TIMEOUT`]; `serve --remove-timeout`).
    pub fn remove_timeout(&self) -> Duration {
        Duration::from_millis(self.remove_timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets [`Parent::remove_timeout`].
    pub fn set_remove_timeout(&self, timeout: Duration) {
        self.remove_timeout_ms
            .store(millis(timeout), Ordering::Relaxed);
    }

    /// How long each connection of an instance polls its socket after a request before it
    /// blocks, at most (see [`DeviceServer::set_poll`]; `serve --poll-us`). Zero (the
    /// default of the library) never polls.
    pub fn poll(&self) -> Duration {
        Duration::from_micros(self.poll_us.load(Ordering::Relaxed))
    }

    /// Sets [`Parent::poll`] for every instance, running and to come.
    pub fn set_poll(&self, max: Duration) {
        let us = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
        self.poll_us.store(us, Ordering::Relaxed);
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        for inst in instances.values() {
            inst.server.set_poll(max);
        }
    }

    /// The socket directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The driver.
    pub fn driver(&self) -> &Arc<dyn MdevDriver> {
        &self.driver
    }

    /// Where instance `uuid` is served.
    pub fn socket_path(&self, uuid: Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.sock"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, Instance>> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The driver's types, with availability now.
    pub fn types(&self) -> Vec<MdevType> {
        self.driver.types()
    }

    /// Creates an instance of `type_name` (a fresh UUID when `uuid` is `None`), registers it
    /// and serves it. Every step is undone if a later one fails.
    pub fn create(
        &self,
        type_name: &str,
        uuid: Option<Uuid>,
        params: &CreateParams,
    ) -> Result<InstanceInfo, ParentError> {
        self.create_on(type_name, uuid, params, None)
    }

    /// As [`Parent::create`], served on `listener` (a socket passed in by the service
    /// manager) instead of a socket bound at `DIR/UUID.sock` when one is given.
    pub fn create_on(
        &self,
        type_name: &str,
        uuid: Option<Uuid>,
        params: &CreateParams,
        listener: Option<UnixListener>,
    ) -> Result<InstanceInfo, ParentError> {
        let uuid = uuid.unwrap_or_else(Uuid::new_v4);
        let mut instances = self.lock();
        if instances.contains_key(&uuid) {
            return Err(ParentError::Exists(uuid));
        }
        // init: the driver builds the device and takes its budget.
        let new = self
            .driver
            .create(type_name, uuid, params)
            .map_err(|source| ParentError::Create {
                type_name: type_name.to_string(),
                source,
            })?;
        // register: the device joins its set. On failure below, dropping `handle` unregisters
        // it and drops the device, which returns its budget.
        let handle = self
            .sets
            .register(&uuid.to_string(), new.device, new.set_key);
        let server = match listener {
            Some(l) => DeviceServer::from_listener(l, handle)?,
            None => DeviceServer::bind(&self.socket_path(uuid), handle)?,
        };
        server.set_poll(self.poll());
        let inst = Instance {
            type_name: type_name.to_string(),
            params: params.clone(),
            server,
            leaving: false,
        };
        let info = inst.info(uuid);
        instances.insert(uuid, inst);
        info!("{}: created {uuid} of type {type_name}", self.driver.name());
        Ok(info)
    }

    /// Removes an instance gracefully, clients getting the parent's
    /// [`Parent::remove_timeout`] to let go; see [`Parent::remove_within`].
    pub fn remove(&self, uuid: Uuid, force: bool) -> Result<(), ParentError> {
        self.remove_within(uuid, force, self.remove_timeout())
    }

    /// Removes an instance the way the kernel unregisters a device in use: new opens are
    /// refused at once; every client whose connection routed the device request interrupt
    /// (REQ) is asked, once, to let the device go (QEMU unplugs it from its guest and
    /// closes its connection); the removal waits for them, at most `timeout`. Then, once
    /// nothing holds the instance, it stops serving, unregisters and drops the device (its
    /// budget returns).
    ///
    /// Without `force` it is refused with EBUSY, naming who holds the instance (pid and uid
    /// from the peer credentials), when a holder cannot be asked (it routed no REQ; nobody
    /// is asked then) or has not let go in time; the instance then serves on as before. With
    /// `force` whatever still holds it at the end is closed.
    pub fn remove_within(
        &self,
        uuid: Uuid,
        force: bool,
        timeout: Duration,
    ) -> Result<(), ParentError> {
        let mut departure = {
            let mut instances = self.lock();
            let inst = instances
                .get_mut(&uuid)
                .ok_or(ParentError::NotFound(uuid))?;
            if inst.leaving {
                return Err(ParentError::Leaving(uuid));
            }
            let departure = inst.server.depart();
            let unaskable = departure.unaskable();
            if !force && !unaskable.is_empty() {
                // Dropping the departure lets the instance serve on, undisturbed.
                return Err(ParentError::Busy {
                    uuid,
                    holders: unaskable,
                    why: BusyReason::CannotBeAsked,
                });
            }
            inst.leaving = true;
            departure
        };
        // Waiting happens outside the instances lock: listings and other instances go on.
        departure.ask();
        let released = departure.wait(deadline_after(timeout));
        let result = if released && departure.holders().is_empty() {
            Ok(())
        } else if force || self.forcing.load(Ordering::Relaxed) {
            if departure.disconnect() {
                Ok(())
            } else {
                Err(ParentError::Busy {
                    uuid,
                    holders: departure.holders(),
                    why: BusyReason::DidNotRelease(timeout),
                })
            }
        } else {
            Err(ParentError::Busy {
                uuid,
                holders: departure.holders(),
                why: BusyReason::DidNotRelease(timeout),
            })
        };
        if let Err(e) = result {
            warn!("{}: {e}", self.driver.name());
            // The instance serves on: clients are accepted again. Undone under the instances
            // lock, the device first, so a removal that starts next finds both settled.
            let mut instances = self.lock();
            drop(departure);
            if let Some(inst) = instances.get_mut(&uuid) {
                inst.leaving = false;
            }
            return Err(e);
        }
        self.finish_removal(uuid, departure);
        Ok(())
    }

    /// The last step of a removal: nothing holds the instance and it refuses new opens.
    fn finish_removal(&self, uuid: Uuid, departure: Departure) {
        departure.complete();
        let inst = self.lock().remove(&uuid);
        // Shutting down outside the instances lock: the listener stops, then the handle
        // drops (unregister) and the device drops (uninit, its budget returns).
        if let Some(inst) = inst {
            inst.server.shutdown();
            info!("{}: removed {uuid}", self.driver.name());
        }
    }

    /// Every instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.lock().iter().map(|(u, i)| i.info(*u)).collect()
    }

    /// The registered device of an instance (for in-process viewers and tests).
    pub fn handle(&self, uuid: Uuid) -> Option<Arc<DeviceHandle>> {
        self.lock().get(&uuid).map(|i| i.server.handle().clone())
    }

    /// Removes every instance at once, closing whatever holds them (nobody is asked).
    pub fn shutdown(&self) {
        let all: Vec<Uuid> = self.lock().keys().copied().collect();
        for uuid in all {
            if let Err(ParentError::Leaving(_)) = self.remove_within(uuid, true, Duration::ZERO) {
                // Another removal is waiting on it: take it from under that removal, which
                // then finds nothing left to do.
                let inst = self.lock().remove(&uuid);
                if let Some(inst) = inst {
                    inst.server.disconnector().disconnect_all();
                    inst.server.shutdown();
                    info!("{}: removed {uuid}", self.driver.name());
                }
            }
        }
    }

    /// The parent's orderly stop (SIGTERM): every instance refuses new clients and asks its
    /// clients to let go (REQ), all of them first; then the parent waits for them, at most
    /// `timeout` in all (or until [`Parent::force`]), closes what still holds an instance
    /// and removes every instance.
    pub fn shutdown_gracefully(&self, timeout: Duration) {
        let mut departing: Vec<(Uuid, Departure)> = {
            let mut instances = self.lock();
            instances
                .iter_mut()
                .filter(|(_, inst)| !inst.leaving)
                .map(|(uuid, inst)| {
                    inst.leaving = true;
                    (*uuid, inst.server.depart())
                })
                .collect()
        };
        let asked: usize = departing.iter_mut().map(|(_, d)| d.ask().len()).sum();
        if asked > 0 {
            info!(
                "{}: asked {asked} client(s) to let go; waiting at most {:.1} s (a second \
                 SIGTERM closes them at once)",
                self.driver.name(),
                timeout.as_secs_f64()
            );
        }
        let deadline = deadline_after(timeout);
        for (_, d) in &departing {
            if !self.forcing.load(Ordering::Relaxed) {
                d.wait(deadline);
            }
        }
        for (uuid, d) in departing {
            if !d.disconnect() {
                warn!(
                    "{}: {uuid} still held after closing its clients",
                    self.driver.name()
                );
            }
            self.finish_removal(uuid, d);
        }
        // Instances another removal was working on are closed too.
        self.shutdown();
    }

    /// Cuts a graceful shutdown or removal short: their waits end and every client is
    /// closed (a second SIGTERM).
    pub fn force(&self) {
        self.forcing.store(true, Ordering::Relaxed);
        for inst in self.lock().values() {
            inst.server.disconnector().disconnect_all();
        }
        info!("{}: closing every client now", self.driver.name());
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
