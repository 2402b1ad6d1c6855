//! Instances of a parent's types, each registered in its device set and served on its own
//! socket.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::info;
use uuid::Uuid;

use super::driver::{CreateParams, MdevDriver, MdevType};
use crate::device_set::{DeviceHandle, DeviceSets, Open};
use crate::error::DeviceError;
use crate::server::{DeviceServer, ServerError};

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
    /// The instance is open and removal was not forced.
    #[error("instance {uuid} is held by {}; use force to remove it anyway", holders_text(.holders))]
    Busy {
        /// The instance.
        uuid: Uuid,
        /// Who holds it.
        holders: Vec<Open>,
    },
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
        }))
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
        let inst = Instance {
            type_name: type_name.to_string(),
            params: params.clone(),
            server,
        };
        let info = inst.info(uuid);
        instances.insert(uuid, inst);
        info!("{}: created {uuid} of type {type_name}", self.driver.name());
        Ok(info)
    }

    /// Removes an instance: stops serving (closing its connections when `force`), unregisters
    /// it and drops the device. Refused with EBUSY, naming who holds it, when it is open and
    /// not forced. The check and the refusal of new opens are one step under the device
    /// set's lock: a client connecting during a remove is refused, never accepted and then
    /// closed.
    pub fn remove(&self, uuid: Uuid, force: bool) -> Result<(), ParentError> {
        let inst = {
            let mut instances = self.lock();
            let inst = instances.get(&uuid).ok_or(ParentError::NotFound(uuid))?;
            if let Err(holders) = inst.server.handle().retire(force) {
                return Err(ParentError::Busy { uuid, holders });
            }
            instances.remove(&uuid).ok_or(ParentError::NotFound(uuid))?
        };
        // Shutting down outside the instances lock: connections close (close_device runs),
        // then the handle drops (unregister) and the device drops (uninit).
        inst.server.shutdown();
        info!("{}: removed {uuid}", self.driver.name());
        Ok(())
    }

    /// Every instance.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        self.lock().iter().map(|(u, i)| i.info(*u)).collect()
    }

    /// The registered device of an instance (for in-process viewers and tests).
    pub fn handle(&self, uuid: Uuid) -> Option<Arc<DeviceHandle>> {
        self.lock().get(&uuid).map(|i| i.server.handle().clone())
    }

    /// Removes every instance, forcing.
    pub fn shutdown(&self) {
        let all: Vec<Uuid> = self.lock().keys().copied().collect();
        for uuid in all {
            let _ = self.remove(uuid, true);
        }
    }
}
