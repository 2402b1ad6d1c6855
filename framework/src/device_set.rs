//! Device sets: devices grouped by a key the driver chooses (a singleton set when it chooses
//! none), sharing one set-wide lock. Under that lock the framework counts opens and calls
//! `open_device` only on a device's first open and `close_device` only on its last close.
//!
//! Lifecycle of a device: **init** (the driver builds it, taking its budget) → **register**
//! ([`DeviceSets::register`]: it joins its set) → served → **unregister** (the last
//! [`DeviceHandle`] drops: it leaves its set, and the set is freed with its last device) →
//! **uninit** (the device value drops, returning its budget). A failure at any step undoes
//! exactly the steps before it, because each step is owned by a value that undoes it on drop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use log::{debug, error, info, warn};

use crate::device::Device;
use crate::error::DeviceError;
use crate::irq::Interrupts;
use crate::owner::{ConnectionId, OwnerId};
pub use crate::set_context::{DeviceId, MemberState, Open, SetContext};

/// The key devices of one set share (vfio-pci uses the reset scope: a slot or a bus).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceSetKey(pub String);

impl From<&str> for DeviceSetKey {
    fn from(s: &str) -> Self {
        DeviceSetKey(s.to_string())
    }
}

struct SetState {
    members: Vec<MemberState>,
    /// Threads waiting in [`DeviceHandle::wait_closed`]: a close wakes them only when there
    /// are some (a condvar's notify is a system call even when nobody waits).
    close_waiters: usize,
}

/// One device set: the set-wide lock and the open state of every member.
pub struct DeviceSet {
    key: Option<DeviceSetKey>,
    serial: u64,
    state: Mutex<SetState>,
    /// Notified whenever a member's open closes (a removal waits on it).
    closed: Condvar,
    registry: Weak<Registry>,
}

impl std::fmt::Debug for DeviceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSet")
            .field("name", &self.name())
            .finish()
    }
}

impl DeviceSet {
    /// The key, or `None` for a singleton set.
    pub fn key(&self) -> Option<&DeviceSetKey> {
        self.key.as_ref()
    }

    /// A printable name: the key, or `singleton-N`.
    pub fn name(&self) -> String {
        match &self.key {
            Some(k) => k.0.clone(),
            None => format!("singleton-{}", self.serial),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SetState> {
        // Hooks run under this lock; a panicking hook must not wedge the whole set.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of every member's open state, taken under the set lock.
    pub fn members(&self) -> Vec<MemberState> {
        self.lock().members.clone()
    }

    /// Number of devices in the set.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// True when the set has no device (only while its last device is leaving).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for DeviceSet {
    fn drop(&mut self) {
        let Some(key) = &self.key else { return };
        if let Some(reg) = self.registry.upgrade() {
            let mut sets = reg.lock();
            // Remove our entry only if it is still ours (a new set with the same key may
            // already have replaced it).
            if sets.get(key).is_some_and(|w| w.strong_count() == 0) {
                sets.remove(key);
            }
        }
        debug!("device set {} freed", key.0);
    }
}

struct Registry {
    sets: Mutex<HashMap<DeviceSetKey, Weak<DeviceSet>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceSetKey, Weak<DeviceSet>>> {
        self.sets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The registry of device sets of one driver (or one process): devices registered with the
/// same key join the same set.
#[derive(Clone)]
pub struct DeviceSets {
    registry: Arc<Registry>,
}

impl Default for DeviceSets {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceSets {
    /// An empty registry.
    pub fn new() -> Self {
        DeviceSets {
            registry: Arc::new(Registry {
                sets: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Number of live keyed sets (singletons are not listed).
    pub fn keyed_sets(&self) -> usize {
        self.registry
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Registers `device` under `name`, joining the set `key` (created if it does not exist)
    /// or a new singleton set.
    pub fn register(
        &self,
        name: &str,
        device: Box<dyn Device>,
        key: Option<DeviceSetKey>,
    ) -> Arc<DeviceHandle> {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let id = DeviceId(SERIAL.fetch_add(1, Ordering::Relaxed));
        let new_set = |key: Option<DeviceSetKey>| {
            Arc::new(DeviceSet {
                key,
                serial: SERIAL.fetch_add(1, Ordering::Relaxed),
                state: Mutex::new(SetState {
                    members: Vec::new(),
                    close_waiters: 0,
                }),
                closed: Condvar::new(),
                registry: Arc::downgrade(&self.registry),
            })
        };
        let set = match key {
            None => new_set(None),
            Some(key) => {
                let mut sets = self.registry.lock();
                match sets.get(&key).and_then(Weak::upgrade) {
                    Some(set) => set,
                    None => {
                        let set = new_set(Some(key.clone()));
                        sets.insert(key, Arc::downgrade(&set));
                        set
                    }
                }
            }
        };
        set.lock().members.push(MemberState::new(id, name));
        info!("{name}: registered in device set {}", set.name());
        let interrupts = device.interrupts().clone();
        Arc::new(DeviceHandle {
            id,
            name: name.to_string(),
            set,
            device: Mutex::new(device),
            interrupts,
        })
    }
}

/// A registered device: its set membership, the device itself behind its mutex, and the open
/// bookkeeping. Dropping the last handle unregisters the device.
pub struct DeviceHandle {
    id: DeviceId,
    name: String,
    set: Arc<DeviceSet>,
    device: Mutex<Box<dyn Device>>,
    interrupts: Arc<Interrupts>,
}

impl std::fmt::Debug for DeviceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceHandle")
            .field("name", &self.name)
            .field("set", &self.set.name())
            .finish()
    }
}

impl DeviceHandle {
    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The set the device belongs to.
    pub fn set(&self) -> &Arc<DeviceSet> {
        &self.set
    }

    /// The device's interrupts.
    pub fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    /// Locks the device for an access. Takes only the device's mutex, never the set lock.
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn Device>> {
        // A device that panicked mid-access keeps its last state; the server keeps serving.
        self.device.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of connections holding the device open.
    pub fn open_count(&self) -> usize {
        let st = self.set.lock();
        st.members
            .iter()
            .find(|m| m.id == self.id)
            .map_or(0, |m| m.opens.len())
    }

    /// Opens the device for connection `conn` of `owner`. On the first open, `open_device`
    /// runs under the set lock; if it fails (or panics) the open fails and the count stays 0.
    pub fn open(&self, conn: ConnectionId, owner: OwnerId) -> Result<(), DeviceError> {
        self.open_as(Open::new(conn, owner))
    }

    /// As [`DeviceHandle::open`], recording everything `open` says of the client.
    pub fn open_as(&self, open: Open) -> Result<(), DeviceError> {
        let (conn, owner) = (open.conn, open.owner);
        let mut st = self.set.lock();
        let pos = Self::position(&st, self.id)?;
        if st.members[pos].leaving {
            return Err(DeviceError::Gone);
        }
        if st.members[pos].opens.iter().any(|o| o.conn == conn) {
            return Err(DeviceError::Busy(
                "connection already holds the device open",
            ));
        }
        if st.members[pos].opens.is_empty() {
            let ctx = SetContext {
                this: self.id,
                requester: Some(owner),
                members: &st.members,
            };
            if let Err(e) = self.run_hook("open_device", |d| d.open_device(&ctx)) {
                warn!("{}: open_device failed for {conn}: {e}", self.name);
                return Err(e);
            }
            info!("{}: open_device (first open, {conn} of {owner})", self.name);
        }
        st.members[pos].opens.push(open);
        debug!(
            "{}: {conn} opened, {} open",
            self.name,
            st.members[pos].opens.len()
        );
        Ok(())
    }

    /// Runs a lifecycle hook on the device; a panic in it becomes an error, so it costs the
    /// one request and leaves the bookkeeping as an ordinary failure would.
    fn run_hook<T>(
        &self,
        hook: &'static str,
        f: impl FnOnce(&mut dyn Device) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let mut dev = self.lock();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(dev.as_mut()))) {
            Ok(r) => r,
            Err(_) => {
                error!("{}: {hook} panicked", self.name);
                Err(DeviceError::Panicked(hook))
            }
        }
    }

    /// Records whether connection `conn` drives the device (see [`Open::driving`]).
    pub fn set_driving(&self, conn: ConnectionId, driving: bool) {
        let mut st = self.set.lock();
        let Ok(pos) = Self::position(&st, self.id) else {
            return;
        };
        if let Some(o) = st.members[pos].opens.iter_mut().find(|o| o.conn == conn) {
            o.driving = driving;
        }
    }

    /// Every open of the device, as a listing shows who holds it.
    pub fn opens(&self) -> Vec<Open> {
        let st = self.set.lock();
        st.members
            .iter()
            .find(|m| m.id == self.id)
            .map(|m| m.opens.clone())
            .unwrap_or_default()
    }

    /// Marks the device as leaving, so no new connection can open it, unless it is open and
    /// `force` is not set: then nothing changes and the opens are returned. Checked and
    /// marked under the set lock, so no open slips in between.
    pub fn retire(&self, force: bool) -> Result<(), Vec<Open>> {
        let mut st = self.set.lock();
        let Ok(pos) = Self::position(&st, self.id) else {
            return Ok(());
        };
        let m = &mut st.members[pos];
        if !force && !m.opens.is_empty() {
            return Err(m.opens.clone());
        }
        m.leaving = true;
        Ok(())
    }

    /// The first step of a graceful removal: marks the device as leaving (new opens fail
    /// with ENODEV) and returns who holds it now, each with whether its connection routed
    /// the device request interrupt (REQ) and so can be asked to let go. One step under the
    /// set lock: no open slips in between.
    pub fn begin_leaving(&self) -> Vec<(Open, bool)> {
        let mut st = self.set.lock();
        let Ok(pos) = Self::position(&st, self.id) else {
            return Vec::new();
        };
        st.members[pos].leaving = true;
        let askable = self.interrupts.request_routes();
        st.members[pos]
            .opens
            .iter()
            .map(|o| (o.clone(), askable.contains(&o.conn)))
            .collect()
    }

    /// Undoes [`DeviceHandle::begin_leaving`] (or [`DeviceHandle::retire`]): the removal was
    /// refused, and the device accepts opens again.
    pub fn stay(&self) {
        let mut st = self.set.lock();
        if let Ok(pos) = Self::position(&st, self.id) {
            st.members[pos].leaving = false;
        }
    }

    /// Whether the device is leaving (new opens are refused).
    pub fn is_leaving(&self) -> bool {
        let st = self.set.lock();
        Self::position(&st, self.id).is_ok_and(|pos| st.members[pos].leaving)
    }

    /// Asks every client whose connection routed the device request interrupt (REQ) to let
    /// the device go, signalling REQ once to each, as the kernel's `vfio_device_unregister`
    /// asks through the driver's `request` op; returns the opens that were asked.
    pub fn request_release(&self) -> Vec<Open> {
        let st = self.set.lock();
        let asked = self.interrupts.signal_request();
        let opens = Self::position(&st, self.id)
            .map(|pos| st.members[pos].opens.clone())
            .unwrap_or_default();
        for o in opens.iter().filter(|o| asked.contains(&o.conn)) {
            info!(
                "{}: asked {} ({}{}) to release the device (REQ)",
                self.name,
                o.conn,
                o.owner,
                o.uid.map_or(String::new(), |u| format!(", uid {u}"))
            );
        }
        opens
            .into_iter()
            .filter(|o| asked.contains(&o.conn))
            .collect()
    }

    /// Waits until none of `conns` holds the device open, or until `deadline`. Returns
    /// whether they all closed. Woken by every close in the set, never by polling.
    pub fn wait_closed(&self, conns: &[ConnectionId], deadline: Instant) -> bool {
        let mut st = self.set.lock();
        loop {
            let held = Self::position(&st, self.id).is_ok_and(|pos| {
                st.members[pos]
                    .opens
                    .iter()
                    .any(|o| conns.contains(&o.conn))
            });
            if !held {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if left.is_zero() {
                return false;
            }
            st.close_waiters += 1;
            st = self
                .set
                .closed
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            st.close_waiters -= 1;
        }
    }

    /// Closes connection `conn`'s open: its eventfds are dropped (the device is told with
    /// `connection_closed`), and on the last close `close_device` runs under the set lock.
    /// Closing a connection that is not open is a no-op. A hook that panics is logged; the
    /// open is released all the same.
    pub fn close(&self, conn: ConnectionId) {
        let mut st = self.set.lock();
        let Ok(pos) = Self::position(&st, self.id) else {
            return;
        };
        let Some(i) = st.members[pos].opens.iter().position(|o| o.conn == conn) else {
            return;
        };
        let owner = st.members[pos].opens.remove(i).owner;
        if st.close_waiters > 0 {
            self.set.closed.notify_all();
        }
        self.interrupts.release(conn);
        let _ = self.run_hook("connection_closed", |d| {
            d.connection_closed(conn);
            Ok(())
        });
        if st.members[pos].opens.is_empty() {
            let ctx = SetContext {
                this: self.id,
                requester: Some(owner),
                members: &st.members,
            };
            let _ = self.run_hook("close_device", |d| {
                d.close_device(&ctx);
                Ok(())
            });
            info!(
                "{}: close_device (last close, {conn} of {owner})",
                self.name
            );
        } else {
            debug!(
                "{}: {conn} closed, {} still open",
                self.name,
                st.members[pos].opens.len()
            );
        }
    }

    /// A client's DEVICE_RESET, run under the set lock so the device sees a stable set.
    ///
    /// A reset would disturb every other client that drives the device (a second VMM's
    /// guest is using it), so it is refused with EBUSY while a connection of another owner
    /// drives it; passive clients (viewers) never block it. Beyond that the device decides
    /// (a passthrough device checks its whole set).
    pub fn reset(&self, requester: OwnerId) -> Result<(), DeviceError> {
        let st = self.set.lock();
        let pos = Self::position(&st, self.id)?;
        if let Some(other) = st.members[pos].driven_by_others(requester).next() {
            warn!(
                "{}: reset by {requester} refused: {} of {} drives the device",
                self.name, other.conn, other.owner
            );
            return Err(DeviceError::Busy("another client drives the device"));
        }
        let ctx = SetContext {
            this: self.id,
            requester: Some(requester),
            members: &st.members,
        };
        let r = self.run_hook("reset", |d| d.reset(&ctx));
        drop(st);
        if r.is_ok() {
            self.interrupts.reset();
        }
        r
    }

    fn position(st: &SetState, id: DeviceId) -> Result<usize, DeviceError> {
        st.members
            .iter()
            .position(|m| m.id == id)
            .ok_or(DeviceError::InvalidArgument("device is not registered"))
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        let mut st = self.set.lock();
        st.members.retain(|m| m.id != self.id);
        info!(
            "{}: unregistered from device set {}",
            self.name,
            self.set.name()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::RegionInfo;

    struct Quiet {
        irqs: Arc<Interrupts>,
        resets: Arc<AtomicU64>,
    }

    impl Device for Quiet {
        fn region_info(&self, _index: u32) -> RegionInfo {
            RegionInfo::absent()
        }
        fn interrupts(&self) -> &Arc<Interrupts> {
            &self.irqs
        }
        fn read(&mut self, _: u32, _: u64, _: &mut [u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn write(&mut self, _: u32, _: u64, _: &[u8]) -> Result<(), DeviceError> {
            Ok(())
        }
        fn reset(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
            self.resets.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn quiet() -> (Arc<DeviceHandle>, Arc<AtomicU64>) {
        let resets = Arc::new(AtomicU64::new(0));
        let dev = Quiet {
            irqs: Arc::new(Interrupts::new(true, 1, 0)),
            resets: resets.clone(),
        };
        (DeviceSets::new().register("q", Box::new(dev), None), resets)
    }

    const VMM_A: OwnerId = OwnerId(100);
    const VMM_B: OwnerId = OwnerId(200);
    const VIEWER: OwnerId = OwnerId(300);

    #[test]
    fn a_reset_is_refused_while_another_client_drives_the_device() {
        let (h, resets) = quiet();
        let (a, b) = (ConnectionId(1), ConnectionId(2));
        h.open(a, VMM_A).unwrap();
        h.open(b, VMM_B).unwrap();
        h.set_driving(a, true);
        h.set_driving(b, true);
        let e = h.reset(VMM_B).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert_eq!(
            resets.load(Ordering::Relaxed),
            0,
            "the device was not touched"
        );
        // Once the other VMM stops driving (it left), the reset goes through.
        h.close(a);
        h.reset(VMM_B).unwrap();
        assert_eq!(resets.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_passive_client_never_blocks_a_vmm_reset() {
        let (h, resets) = quiet();
        h.open(ConnectionId(1), VIEWER).unwrap();
        h.open(ConnectionId(2), VMM_A).unwrap();
        h.set_driving(ConnectionId(2), true);
        h.reset(VMM_A).unwrap();
        // Several connections of one client process are one owner.
        h.open(ConnectionId(3), VMM_A).unwrap();
        h.set_driving(ConnectionId(3), true);
        h.reset(VMM_A).unwrap();
        assert_eq!(resets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_leaving_device_refuses_opens_and_a_held_one_is_not_retired() {
        let (h, _) = quiet();
        h.open(ConnectionId(1), VMM_A).unwrap();
        let holders = h.retire(false).unwrap_err();
        assert_eq!(holders[0].owner, VMM_A);
        h.open(ConnectionId(2), VMM_B).unwrap();
        h.close(ConnectionId(1));
        h.close(ConnectionId(2));
        h.retire(false).unwrap();
        let e = h.open(ConnectionId(3), VMM_B).unwrap_err();
        assert_eq!(e.errno(), libc::ENODEV);
        assert_eq!(h.open_count(), 0);
    }

    fn route_req(h: &DeviceHandle, conn: ConnectionId) -> vmm_sys_util::eventfd::EventFd {
        use crate::irq::{IrqAction, IrqData, IrqIndex, IrqRequest};
        use std::os::fd::{AsRawFd, BorrowedFd};
        let e = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        // SAFETY: `e` owns this open fd for the duration of the borrow; it is duplicated.
        let fd = unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) };
        let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        h.interrupts()
            .apply(
                conn,
                IrqRequest {
                    index: IrqIndex::Req,
                    start: 0,
                    count: 1,
                    action: IrqAction::Trigger,
                    data: IrqData::Eventfds(vec![file]),
                },
            )
            .unwrap();
        e
    }

    #[test]
    fn leaving_asks_only_the_connections_that_routed_req_and_a_close_ends_the_wait() {
        let (h, _) = quiet();
        let (vmm, viewer) = (ConnectionId(1), ConnectionId(2));
        h.open(vmm, VMM_A).unwrap();
        h.open(viewer, VIEWER).unwrap();
        let req = route_req(&h, vmm);
        let holders = h.begin_leaving();
        assert_eq!(
            holders
                .iter()
                .map(|(o, askable)| (o.conn, *askable))
                .collect::<Vec<_>>(),
            [(vmm, true), (viewer, false)]
        );
        assert_eq!(
            h.open(ConnectionId(3), VMM_B).unwrap_err().errno(),
            libc::ENODEV
        );
        let asked = h.request_release();
        assert_eq!(asked.iter().map(|o| o.conn).collect::<Vec<_>>(), [vmm]);
        assert!(h
            .interrupts()
            .wait_delivered(std::time::Duration::from_secs(10)));
        assert_eq!(req.read().unwrap(), 1, "REQ signalled once");
        // The asked client closes from another thread, as QEMU does after the unplug.
        let closer = {
            let h = h.clone();
            std::thread::spawn(move || h.close(vmm))
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        assert!(h.wait_closed(&[vmm], deadline));
        closer.join().unwrap();
        assert_eq!(
            h.open_count(),
            1,
            "the viewer was not asked and still holds it"
        );
    }

    #[test]
    fn a_wait_that_runs_out_reports_the_holder_and_staying_accepts_opens_again() {
        let (h, _) = quiet();
        h.open(ConnectionId(1), VMM_A).unwrap();
        let _req = route_req(&h, ConnectionId(1));
        h.begin_leaving();
        assert!(h.is_leaving());
        h.request_release();
        let t = Instant::now();
        let soon = t + std::time::Duration::from_millis(50);
        assert!(!h.wait_closed(&[ConnectionId(1)], soon));
        assert!(t.elapsed() >= std::time::Duration::from_millis(50));
        h.stay();
        assert!(!h.is_leaving());
        h.open(ConnectionId(2), VMM_B).unwrap();
        assert_eq!(h.open_count(), 2);
    }
}
