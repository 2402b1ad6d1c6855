//! Interrupts of one device: INTx with VFIO's level/automask semantics, MSI and MSI-X
//! vectors, each delivered by writing the eventfd a client handed over with `SET_IRQS`.
//!
//! The INTx line level is device state. Routing is per connection: a vector fires to every
//! connection that routed it, through its own eventfd, with its own INTx automask; one
//! connection's disable, mask or close changes only its own routes ([`Interrupts::release`]),
//! so a second client can never take a first one's interrupts away. An interrupt nobody
//! routed is dropped.
//!
//! Besides the device's own interrupts (INTx, MSI, MSI-X: one of them at a time per
//! connection), every device offers the device request interrupt (REQ, one vector): the
//! framework signals it to ask each client that routed it to let the device go, as the
//! kernel's `vfio_device_unregister` does through the driver's `request` op
//! ([`Interrupts::signal_request`]).
//!
//! Only eventfds are accepted, and the thread raising an interrupt never writes one: each
//! connection's eventfds are written by a delivery thread of its own (`signaller.rs`), so a
//! client that makes its eventfd block stalls nobody but itself.

mod signaller;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitflags::bitflags;
use log::debug;

pub(crate) use signaller::interrupt_thread;
use signaller::{Eventfd, Signaller};

/// Installs what interrupt delivery installs lazily (the wake-up signal's handler), so that a
/// confined connection thread never has to change a signal disposition.
pub(crate) fn prepare_for_confinement() {
    signaller::install_wakeup_handler();
}

use crate::error::DeviceError;
use crate::owner::ConnectionId;

/// VFIO PCI interrupt indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum IrqIndex {
    /// Legacy line interrupt (one vector).
    Intx = 0,
    /// MSI (up to 32 vectors).
    Msi = 1,
    /// MSI-X (up to 2048 vectors).
    Msix = 2,
    /// Error reporting (not offered by the sample devices).
    Err = 3,
    /// Device request: the server asks the client to release the device (QEMU then
    /// hot-unplugs it from its guest). Offered by every device [`Interrupts::new`] builds.
    Req = 4,
}

/// Number of interrupt indices a VFIO PCI device reports.
pub const PCI_NUM_IRQS: u32 = 5;

impl IrqIndex {
    /// Whether this index carries the device's own interrupts (INTx, MSI, MSI-X), of which a
    /// connection routes one at a time; ERR and REQ are routed alongside.
    pub fn is_device_interrupt(self) -> bool {
        matches!(self, IrqIndex::Intx | IrqIndex::Msi | IrqIndex::Msix)
    }

    /// The index for a wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => IrqIndex::Intx,
            1 => IrqIndex::Msi,
            2 => IrqIndex::Msix,
            3 => IrqIndex::Err,
            4 => IrqIndex::Req,
            _ => return None,
        })
    }
}

bitflags! {
    /// `vfio_irq_info.flags`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IrqInfoFlags: u32 {
        /// Interrupts are signalled through eventfds.
        const EVENTFD = 1 << 0;
        /// The index can be masked and unmasked.
        const MASKABLE = 1 << 1;
        /// Delivering an interrupt masks it until the client unmasks it (INTx).
        const AUTOMASKED = 1 << 2;
        /// The vector count cannot be changed while enabled.
        const NORESIZE = 1 << 3;
    }
}

bitflags! {
    /// `SET_IRQS` flags: one data type and one action.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SetIrqsFlags: u32 {
        /// No data: the action applies to `start..start+count`.
        const DATA_NONE = 1 << 0;
        /// One byte per vector: apply where it is non-zero.
        const DATA_BOOL = 1 << 1;
        /// One eventfd per vector, passed with the message.
        const DATA_EVENTFD = 1 << 2;
        /// Mask the vectors.
        const ACTION_MASK = 1 << 3;
        /// Unmask the vectors.
        const ACTION_UNMASK = 1 << 4;
        /// Set the trigger eventfds, or trigger the vectors.
        const ACTION_TRIGGER = 1 << 5;
    }
}

impl SetIrqsFlags {
    /// The data-type bits.
    pub const DATA_MASK: Self = Self::DATA_NONE
        .union(Self::DATA_BOOL)
        .union(Self::DATA_EVENTFD);
    /// The action bits.
    pub const ACTION_MASK_BITS: Self = Self::ACTION_MASK
        .union(Self::ACTION_UNMASK)
        .union(Self::ACTION_TRIGGER);
}

/// What one index offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqIndexInfo {
    /// Number of vectors; 0 when the index is not offered.
    pub count: u32,
    /// `vfio_irq_info.flags`.
    pub flags: IrqInfoFlags,
}

/// The action of a `SET_IRQS` request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqAction {
    /// Mask vectors.
    Mask,
    /// Unmask vectors.
    Unmask,
    /// Trigger vectors, or set their trigger eventfds.
    Trigger,
}

/// The data of a `SET_IRQS` request.
#[derive(Debug)]
pub enum IrqData {
    /// Apply to every vector of the range.
    None,
    /// Apply where the byte is non-zero.
    Bool(Vec<bool>),
    /// One eventfd per vector of the range.
    Eventfds(Vec<File>),
}

/// What kind of data a `SET_IRQS` request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqDataKind {
    /// None: the action applies to the whole range.
    None,
    /// One flag per vector.
    Bool,
    /// One eventfd per vector.
    Eventfds,
}

/// Which vectors a `SET_IRQS` request addressed and what it did, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqSpan {
    /// The interrupt index.
    pub index: IrqIndex,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What was done.
    pub action: IrqAction,
    /// With what kind of data: a trigger with eventfds routes vectors, one without fires
    /// (or, with a count of 0, disables) them.
    pub data: IrqDataKind,
}

/// A validated `SET_IRQS` request.
#[derive(Debug)]
pub struct IrqRequest {
    /// The interrupt index.
    pub index: IrqIndex,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
    /// What to do.
    pub action: IrqAction,
    /// With what.
    pub data: IrqData,
}

impl IrqRequest {
    /// The request without its data.
    pub fn span(&self) -> IrqSpan {
        IrqSpan {
            index: self.index,
            start: self.start,
            count: self.count,
            action: self.action,
            data: match self.data {
                IrqData::None => IrqDataKind::None,
                IrqData::Bool(_) => IrqDataKind::Bool,
                IrqData::Eventfds(_) => IrqDataKind::Eventfds,
            },
        }
    }
}

/// One connection's route of one vector: its eventfd and, for INTx, its own automask.
struct Route {
    owner: ConnectionId,
    fd: Arc<Eventfd>,
    masked: bool,
}

#[derive(Default)]
struct Vector {
    /// Every connection that routed this vector, in the order they did.
    routes: Vec<Route>,
}

impl Vector {
    fn route_mut(&mut self, owner: ConnectionId) -> Option<&mut Route> {
        self.routes.iter_mut().find(|r| r.owner == owner)
    }
}

struct IndexState {
    info: IrqIndexInfo,
    vectors: Vec<Vector>,
    delivered: u64,
}

impl IndexState {
    fn routed_by(&self, owner: ConnectionId) -> bool {
        self.vectors
            .iter()
            .any(|v| v.routes.iter().any(|r| r.owner == owner))
    }
}

struct IrqState {
    indexes: Vec<IndexState>,
    /// INTx line level as the device drives it.
    intx_level: bool,
    /// The line level last seen by [`Interrupts::update_line`], for MSI edge detection.
    line: bool,
    /// The delivery thread of every connection that routed a vector.
    signallers: HashMap<ConnectionId, Signaller>,
}

/// Which routes of a vector a delivery reaches.
#[derive(Clone, Copy)]
enum Whom {
    /// Every connection that routed it (the device raised it).
    Everyone,
    /// Only this connection (it triggered the vector itself).
    Only(ConnectionId),
}

impl Whom {
    fn includes(self, owner: ConnectionId) -> bool {
        match self {
            Whom::Everyone => true,
            Whom::Only(o) => o == owner,
        }
    }
}

impl IrqState {
    /// Fires `index`/`vector` to the unmasked routes `whom` selects; INTx routes mask
    /// themselves (automask). Counts one delivery when any route fired.
    fn fire(&mut self, index: IrqIndex, vector: u32, whom: Whom) {
        let automask = index == IrqIndex::Intx;
        let IrqState {
            indexes,
            signallers,
            ..
        } = self;
        let Some(idx) = indexes.get_mut(index as usize) else {
            return;
        };
        let Some(v) = idx.vectors.get_mut(vector as usize) else {
            return;
        };
        let mut fired = false;
        for r in v.routes.iter_mut() {
            if r.masked || !whom.includes(r.owner) {
                continue;
            }
            if let Some(s) = signallers.get(&r.owner) {
                s.fire(&r.fd);
                fired = true;
                r.masked = automask;
            }
        }
        if fired {
            idx.delivered += 1;
        }
    }

    /// The device interrupt index (INTx, MSI, MSI-X) connection `owner` has routed, if any
    /// (VFIO allows one at a time).
    fn active_for(&self, owner: ConnectionId) -> Option<IrqIndex> {
        self.first_device_index(|i| i.routed_by(owner))
    }

    /// The first device interrupt index (INTx, MSI, MSI-X) whose state satisfies `pred`.
    fn first_device_index(&self, pred: impl Fn(&IndexState) -> bool) -> Option<IrqIndex> {
        [IrqIndex::Intx, IrqIndex::Msi, IrqIndex::Msix]
            .into_iter()
            .find(|&index| self.indexes.get(index as usize).is_some_and(&pred))
    }

    /// Whether connection `owner` routed a vector of any index (REQ and ERR included).
    fn routes_any(&self, owner: ConnectionId) -> bool {
        self.indexes.iter().any(|i| i.routed_by(owner))
    }

    /// Removes every route of `owner` on the indexes `which` selects; returns its delivery
    /// thread when it has no route left, for the caller to stop outside the lock.
    fn unroute(&mut self, owner: ConnectionId, which: Option<IrqIndex>) -> Option<Signaller> {
        for (pos, idx) in self.indexes.iter_mut().enumerate() {
            if which.is_some_and(|w| w as usize != pos) {
                continue;
            }
            for v in &mut idx.vectors {
                v.routes.retain(|r| r.owner != owner);
            }
        }
        if self.routes_any(owner) {
            None
        } else {
            self.signallers.remove(&owner)
        }
    }
}

/// The interrupts of one device. Shared (behind `Arc`) between the device, which raises
/// interrupts from any thread, and the server, which applies `SET_IRQS`.
///
/// Routing is per connection: a vector fires to every connection that routed it, each
/// through its own eventfd and delivery thread; one connection's disable, mask or close
/// touches only its own routes.
pub struct Interrupts {
    state: Mutex<IrqState>,
}

impl Interrupts {
    /// A device with INTx (when `intx`), `msi_vectors` MSI vectors and `msix_vectors` MSI-X
    /// vectors (0 for none), and the device request interrupt (REQ, one vector), through
    /// which the framework asks clients to let the device go when it is removed. No error
    /// reporting (ERR) vector.
    pub fn new(intx: bool, msi_vectors: u32, msix_vectors: u32) -> Self {
        let intx_info = IrqIndexInfo {
            count: u32::from(intx),
            flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::MASKABLE | IrqInfoFlags::AUTOMASKED,
        };
        let msi_info = IrqIndexInfo {
            count: msi_vectors.min(32),
            flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
        };
        let msix_info = IrqIndexInfo {
            count: msix_vectors.min(2048),
            flags: IrqInfoFlags::EVENTFD | IrqInfoFlags::NORESIZE,
        };
        let none = IrqIndexInfo {
            count: 0,
            flags: IrqInfoFlags::EVENTFD,
        };
        let req_info = IrqIndexInfo {
            count: 1,
            flags: IrqInfoFlags::EVENTFD,
        };
        Self::with_layout(&[intx_info, msi_info, msix_info, none, req_info])
    }

    /// A device with an explicit layout, one entry per index (a passthrough device copies
    /// the host's).
    pub fn with_layout(layout: &[IrqIndexInfo]) -> Self {
        let indexes = layout
            .iter()
            .map(|info| IndexState {
                info: *info,
                vectors: (0..info.count).map(|_| Vector::default()).collect(),
                delivered: 0,
            })
            .collect();
        Interrupts {
            state: Mutex::new(IrqState {
                indexes,
                intx_level: false,
                line: false,
                signallers: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IrqState> {
        // A panic while holding this lock cannot leave the state inconsistent (every update is
        // a single field store), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of indices reported to clients.
    pub fn num_indexes(&self) -> u32 {
        u32::try_from(self.lock().indexes.len()).unwrap_or(u32::MAX)
    }

    /// What index `index` offers, or `None` past the last index.
    pub fn info(&self, index: u32) -> Option<IrqIndexInfo> {
        self.lock().indexes.get(index as usize).map(|i| i.info)
    }

    /// The first device interrupt index (INTx, MSI, MSI-X) any connection has routed.
    pub fn active(&self) -> Option<IrqIndex> {
        self.lock()
            .first_device_index(|i| i.vectors.iter().any(|v| !v.routes.is_empty()))
    }

    /// The device interrupt index (INTx, MSI, MSI-X) connection `owner` has routed, if any.
    pub fn active_for(&self, owner: ConnectionId) -> Option<IrqIndex> {
        self.lock().active_for(owner)
    }

    /// Whether the device's interrupt line is asserted (what the status register's
    /// interrupt bit shows).
    pub fn line_asserted(&self) -> bool {
        let st = self.lock();
        st.line || st.intx_level
    }

    /// How many interrupts were delivered on `index` so far.
    pub fn delivered(&self, index: IrqIndex) -> u64 {
        self.lock()
            .indexes
            .get(index as usize)
            .map_or(0, |i| i.delivered)
    }

    /// Whether INTx is masked for every connection that routed it (automasked after
    /// delivery, until each client unmasks it); false when nobody routed it.
    pub fn intx_masked(&self) -> bool {
        let st = self.lock();
        st.indexes
            .first()
            .and_then(|i| i.vectors.first())
            .is_some_and(|v| !v.routes.is_empty() && v.routes.iter().all(|r| r.masked))
    }

    /// The raw trigger fds of `index`, one entry per vector (`None` where unset): where
    /// several connections routed a vector, the most recent one's. For a passthrough device
    /// that hands a client's eventfd to the host kernel.
    pub fn trigger_fds(&self, index: IrqIndex) -> Vec<Option<RawFd>> {
        self.lock()
            .indexes
            .get(index as usize)
            .map(|i| {
                i.vectors
                    .iter()
                    .map(|v| v.routes.last().map(|r| r.fd.raw_fd()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drives the INTx line. A rising level delivers one interrupt to every connection whose
    /// INTx route is unmasked and masks that route until its client unmasks it; unmasking
    /// while the level is still high delivers again.
    pub fn set_intx_level(&self, asserted: bool) {
        let mut st = self.lock();
        st.intx_level = asserted;
        if asserted {
            st.fire(IrqIndex::Intx, 0, Whom::Everyone);
        }
    }

    /// Delivers one edge interrupt on `index`/`vector` (MSI, MSI-X) to every connection that
    /// routed it. Dropped when none did.
    pub fn signal(&self, index: IrqIndex, vector: u32) {
        self.lock().fire(index, vector, Whom::Everyone);
    }

    /// The connections that routed the device request interrupt (REQ): those that can be
    /// asked to let the device go.
    pub fn request_routes(&self) -> Vec<ConnectionId> {
        let st = self.lock();
        st.indexes
            .get(IrqIndex::Req as usize)
            .and_then(|i| i.vectors.first())
            .map(|v| v.routes.iter().map(|r| r.owner).collect())
            .unwrap_or_default()
    }

    /// Signals the device request interrupt (REQ) once to every connection that routed it,
    /// asking each client to release the device; returns those connections. A VMM answers
    /// by unplugging the device from its guest and closing its connection.
    pub fn signal_request(&self) -> Vec<ConnectionId> {
        let mut st = self.lock();
        let asked = st
            .indexes
            .get(IrqIndex::Req as usize)
            .and_then(|i| i.vectors.first())
            .map(|v| v.routes.iter().map(|r| r.owner).collect())
            .unwrap_or_default();
        st.fire(IrqIndex::Req, 0, Whom::Everyone);
        asked
    }

    /// The usual way a single-vector device reports its interrupt condition: the INTx line
    /// follows `asserted`, and a rising edge sends vector 0 of MSI and MSI-X. Each connection
    /// routes one index, so each sees the interrupt once, the way it asked for it.
    pub fn update_line(&self, asserted: bool) {
        let mut st = self.lock();
        let rising = asserted && !st.line;
        st.line = asserted;
        st.intx_level = asserted;
        if asserted {
            st.fire(IrqIndex::Intx, 0, Whom::Everyone);
        }
        if rising {
            st.fire(IrqIndex::Msi, 0, Whom::Everyone);
            st.fire(IrqIndex::Msix, 0, Whom::Everyone);
        }
    }

    /// Applies a `SET_IRQS` request from connection `owner`, with VFIO's rules, to `owner`'s
    /// routes only.
    pub fn apply(&self, owner: ConnectionId, req: IrqRequest) -> Result<(), DeviceError> {
        let mut stopped = None;
        let r = self.apply_locked(owner, req, &mut stopped);
        // A delivery thread stuck in a client's eventfd takes a moment to stop: never
        // under the lock.
        drop(stopped);
        r
    }

    fn apply_locked(
        &self,
        owner: ConnectionId,
        req: IrqRequest,
        stopped: &mut Option<Signaller>,
    ) -> Result<(), DeviceError> {
        let mut st = self.lock();
        let pos = req.index as usize;
        let info = st
            .indexes
            .get(pos)
            .map(|i| i.info)
            .ok_or(DeviceError::InvalidArgument("no such interrupt index"))?;
        let end = req
            .start
            .checked_add(req.count)
            .ok_or(DeviceError::InvalidArgument("vector range overflows"))?;
        if end > info.count {
            return Err(DeviceError::InvalidArgument("vector range past the index"));
        }
        if let IrqData::Bool(b) = &req.data {
            if b.len() != req.count as usize {
                return Err(DeviceError::InvalidArgument("bool count mismatch"));
            }
        }
        if let IrqData::Eventfds(f) = &req.data {
            if f.len() != req.count as usize {
                return Err(DeviceError::InvalidArgument("eventfd count mismatch"));
            }
        }
        let selected: Vec<bool> = match &req.data {
            IrqData::Bool(b) => b.clone(),
            _ => vec![true; req.count as usize],
        };
        let selected = |i: usize| selected.get(i).copied().unwrap_or(false);
        match (req.action, req.data) {
            (IrqAction::Trigger, IrqData::None) if req.count == 0 => {
                // Disable the index, for this connection.
                *stopped = st.unroute(owner, Some(req.index));
                debug!("irq index {:?} disabled by {owner}", req.index);
            }
            (IrqAction::Trigger, IrqData::Eventfds(files)) => {
                if let Some(active) = st.active_for(owner) {
                    if req.index.is_device_interrupt() && active != req.index {
                        return Err(DeviceError::InvalidArgument(
                            "another interrupt index is enabled",
                        ));
                    }
                }
                // Every fd is checked before anything changes.
                let fds = files
                    .into_iter()
                    .map(|f| Eventfd::new(f).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| match e.raw_os_error() {
                        Some(libc::EINVAL) => {
                            DeviceError::InvalidArgument("an interrupt fd is not an eventfd")
                        }
                        _ => DeviceError::Io(e),
                    })?;
                if let std::collections::hash_map::Entry::Vacant(slot) = st.signallers.entry(owner)
                {
                    slot.insert(Signaller::start(owner)?);
                }
                for (i, fd) in fds.into_iter().enumerate() {
                    let v = &mut st.indexes[pos].vectors[req.start as usize + i];
                    let route = Route {
                        owner,
                        fd,
                        masked: false,
                    };
                    match v.route_mut(owner) {
                        Some(r) => *r = route,
                        None => v.routes.push(route),
                    }
                }
                debug!(
                    "irq index {:?} vectors {}..{} routed to eventfds of {owner}",
                    req.index, req.start, end
                );
                // A level still high on a fresh INTx eventfd is delivered at once.
                if req.index == IrqIndex::Intx && st.intx_level {
                    st.fire(IrqIndex::Intx, 0, Whom::Only(owner));
                }
            }
            (IrqAction::Trigger, _) => {
                // A client triggering a vector itself reaches its own eventfd only.
                for i in 0..req.count {
                    if selected(i as usize) {
                        st.fire(req.index, req.start + i, Whom::Only(owner));
                    }
                }
            }
            (IrqAction::Mask | IrqAction::Unmask, IrqData::Eventfds(_)) => {
                return Err(DeviceError::NotSupported("mask/unmask through an eventfd"));
            }
            (action, _) => {
                if req.index != IrqIndex::Intx {
                    return Err(DeviceError::NotSupported(
                        "masking is offered for INTx only",
                    ));
                }
                if req.count == 0 {
                    return Err(DeviceError::InvalidArgument("empty vector range"));
                }
                if selected(0) {
                    let unmask = action == IrqAction::Unmask;
                    if let Some(r) = st.indexes[pos].vectors[0].route_mut(owner) {
                        r.masked = !unmask;
                    }
                    if unmask && st.intx_level {
                        st.fire(IrqIndex::Intx, 0, Whom::Only(owner));
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every route connection `owner` made (and stops its delivery thread). Other
    /// connections keep theirs.
    pub fn release(&self, owner: ConnectionId) {
        let stopped = self.lock().unroute(owner, None);
        drop(stopped);
    }

    /// Waits until every interrupt raised so far has been written to its eventfd (or found
    /// unwritable), at most `limit` per connection. Returns whether all were. Delivery is
    /// asynchronous (each connection's eventfds are written by a thread of its own); tests
    /// and orderly shutdowns use this to observe its end.
    pub fn wait_delivered(&self, limit: Duration) -> bool {
        // The lock is held while waiting so no signaller is dropped under us; delivery
        // threads never take it, so they make progress.
        let st = self.lock();
        st.signallers.values().all(|s| s.wait_idle(limit))
    }

    /// Whether connection `owner` has routed a device interrupt (INTx, MSI, MSI-X): it
    /// drives the device. Routing only REQ or ERR does not count.
    pub fn routed_by(&self, owner: ConnectionId) -> bool {
        self.lock().active_for(owner).is_some()
    }

    /// Device reset: the line goes low and INTx is unmasked; routes stay (each client owns
    /// its eventfds and disables them itself).
    pub fn reset(&self) {
        let mut st = self.lock();
        st.intx_level = false;
        st.line = false;
        for idx in &mut st.indexes {
            for v in &mut idx.vectors {
                for r in &mut v.routes {
                    r.masked = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn eventfd() -> (File, EventFd) {
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: `e` owns this open fd and outlives the borrow, which is only used to
        // duplicate it into a new fd the returned `File` owns.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(e.as_raw_fd()) };
        let file = File::from(borrowed.try_clone_to_owned().unwrap());
        (file, e)
    }

    /// Interrupts delivered to `e` so far (after the delivery threads caught up).
    fn count(irqs: &Interrupts, e: &EventFd) -> u64 {
        assert!(irqs.wait_delivered(Duration::from_secs(10)));
        e.read().unwrap_or(0)
    }

    fn request(index: IrqIndex, action: IrqAction, count: u32, data: IrqData) -> IrqRequest {
        IrqRequest {
            index,
            start: 0,
            count,
            action,
            data,
        }
    }

    fn route(irqs: &Interrupts, owner: ConnectionId, index: IrqIndex) -> EventFd {
        let (f, e) = eventfd();
        irqs.apply(
            owner,
            IrqRequest {
                index,
                start: 0,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqData::Eventfds(vec![f]),
            },
        )
        .unwrap();
        e
    }

    #[test]
    fn intx_is_automasked_until_unmask_and_redelivers_while_level_high() {
        let irqs = Interrupts::new(true, 1, 0);
        let c = ConnectionId(1);
        let e = route(&irqs, c, IrqIndex::Intx);
        irqs.set_intx_level(true);
        assert_eq!(count(&irqs, &e), 1);
        irqs.set_intx_level(true);
        assert_eq!(count(&irqs, &e), 0, "masked after delivery");
        irqs.apply(
            c,
            IrqRequest {
                index: IrqIndex::Intx,
                start: 0,
                count: 1,
                action: IrqAction::Unmask,
                data: IrqData::None,
            },
        )
        .unwrap();
        assert_eq!(
            count(&irqs, &e),
            1,
            "level still high: delivered again on unmask"
        );
        irqs.set_intx_level(false);
        irqs.apply(
            c,
            IrqRequest {
                index: IrqIndex::Intx,
                start: 0,
                count: 1,
                action: IrqAction::Unmask,
                data: IrqData::None,
            },
        )
        .unwrap();
        assert_eq!(count(&irqs, &e), 0);
    }

    #[test]
    fn msi_edges_only_and_no_eventfd_drops_silently() {
        let irqs = Interrupts::new(true, 1, 0);
        irqs.update_line(true); // nothing routed: dropped, no panic
        irqs.update_line(false);
        let e = route(&irqs, ConnectionId(1), IrqIndex::Msi);
        irqs.update_line(true);
        irqs.update_line(true);
        assert_eq!(count(&irqs, &e), 1);
        irqs.update_line(false);
        irqs.update_line(true);
        assert_eq!(count(&irqs, &e), 1);
        assert_eq!(irqs.delivered(IrqIndex::Msi), 2);
    }

    #[test]
    fn closing_a_connection_drops_only_its_eventfds() {
        let irqs = Interrupts::new(true, 1, 0);
        let _e = route(&irqs, ConnectionId(1), IrqIndex::Intx);
        irqs.release(ConnectionId(2));
        assert_eq!(irqs.active(), Some(IrqIndex::Intx));
        irqs.release(ConnectionId(1));
        assert_eq!(irqs.active(), None);
    }

    #[test]
    fn only_one_index_may_be_enabled() {
        let irqs = Interrupts::new(true, 1, 0);
        let _e = route(&irqs, ConnectionId(1), IrqIndex::Intx);
        let (f, _e2) = eventfd();
        let err = irqs
            .apply(
                ConnectionId(1),
                IrqRequest {
                    index: IrqIndex::Msi,
                    start: 0,
                    count: 1,
                    action: IrqAction::Trigger,
                    data: IrqData::Eventfds(vec![f]),
                },
            )
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
    }

    #[test]
    fn bad_ranges_are_einval() {
        let irqs = Interrupts::new(true, 1, 0);
        for (start, count) in [(0, 2), (1, 1), (u32::MAX, 2)] {
            let r = irqs.apply(
                ConnectionId(1),
                IrqRequest {
                    index: IrqIndex::Intx,
                    start,
                    count,
                    action: IrqAction::Trigger,
                    data: IrqData::None,
                },
            );
            assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        }
        let r = irqs.apply(
            ConnectionId(1),
            IrqRequest {
                index: IrqIndex::Msix,
                start: 0,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqData::None,
            },
        );
        assert!(r.is_err(), "MSI-X not offered");
    }

    #[test]
    fn only_eventfds_are_accepted_as_interrupt_fds() {
        let (_r, w) = nix::unistd::pipe().unwrap();
        let irqs = Interrupts::new(false, 1, 0);
        let err = irqs
            .apply(
                ConnectionId(1),
                request(
                    IrqIndex::Msi,
                    IrqAction::Trigger,
                    1,
                    IrqData::Eventfds(vec![File::from(w)]),
                ),
            )
            .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        assert_eq!(irqs.active(), None);
    }

    #[test]
    fn a_second_connection_routes_alongside_the_first_and_leaves_it_intact() {
        let irqs = Interrupts::new(true, 1, 0);
        let (a, b) = (ConnectionId(1), ConnectionId(2));
        let ea = route(&irqs, a, IrqIndex::Intx);
        let eb = route(&irqs, b, IrqIndex::Intx);
        irqs.set_intx_level(true);
        assert_eq!(
            (count(&irqs, &ea), count(&irqs, &eb)),
            (1, 1),
            "both see it"
        );
        irqs.set_intx_level(false);
        // b unmasks and disables INTx, as a booting VMM does: a keeps its route and mask.
        irqs.apply(
            b,
            request(IrqIndex::Intx, IrqAction::Unmask, 1, IrqData::None),
        )
        .unwrap();
        irqs.apply(
            b,
            request(IrqIndex::Intx, IrqAction::Trigger, 0, IrqData::None),
        )
        .unwrap();
        irqs.apply(
            a,
            request(IrqIndex::Intx, IrqAction::Unmask, 1, IrqData::None),
        )
        .unwrap();
        irqs.set_intx_level(true);
        assert_eq!((count(&irqs, &ea), count(&irqs, &eb)), (1, 0));
        // b comes back with MSI, then leaves: a's INTx route is untouched throughout.
        let ebm = route(&irqs, b, IrqIndex::Msi);
        irqs.set_intx_level(false);
        irqs.apply(
            a,
            request(IrqIndex::Intx, IrqAction::Unmask, 1, IrqData::None),
        )
        .unwrap();
        irqs.update_line(true);
        assert_eq!((count(&irqs, &ea), count(&irqs, &ebm)), (1, 1));
        irqs.release(b);
        assert_eq!(irqs.active_for(b), None);
        assert_eq!(irqs.active_for(a), Some(IrqIndex::Intx));
        irqs.update_line(false);
        irqs.apply(
            a,
            request(IrqIndex::Intx, IrqAction::Unmask, 1, IrqData::None),
        )
        .unwrap();
        irqs.update_line(true);
        assert_eq!(count(&irqs, &ea), 1);
    }

    #[test]
    fn a_client_triggering_a_vector_reaches_only_its_own_eventfd() {
        let irqs = Interrupts::new(false, 1, 0);
        let ea = route(&irqs, ConnectionId(1), IrqIndex::Msi);
        let eb = route(&irqs, ConnectionId(2), IrqIndex::Msi);
        irqs.apply(
            ConnectionId(2),
            request(IrqIndex::Msi, IrqAction::Trigger, 1, IrqData::None),
        )
        .unwrap();
        assert_eq!((count(&irqs, &ea), count(&irqs, &eb)), (0, 1));
    }

    #[test]
    fn a_blocked_eventfd_stalls_nobody_else_and_its_owner_still_leaves() {
        let irqs = Interrupts::new(false, 1, 0);
        let (hostile, he) = eventfd();
        irqs.apply(
            ConnectionId(1),
            request(
                IrqIndex::Msi,
                IrqAction::Trigger,
                1,
                IrqData::Eventfds(vec![hostile]),
            ),
        )
        .unwrap();
        // The client makes its eventfd blocking again and fills the counter to the top.
        // SAFETY: fcntl on an fd `he` owns; no memory is touched.
        unsafe {
            let fl = libc::fcntl(he.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(he.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        he.write(u64::MAX - 1).unwrap();
        let good = route(&irqs, ConnectionId(2), IrqIndex::Msi);
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            irqs.update_line(true);
            irqs.update_line(false);
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "raising never blocked"
        );
        // The other connection's interrupts arrive (its own thread is not stuck).
        let mut got = 0;
        while got == 0 && t.elapsed() < Duration::from_secs(10) {
            got = good.read().unwrap_or(0);
        }
        assert!(got > 0, "the other connection still gets interrupts");
        // The stuck owner leaves: its delivery thread is interrupted and stops.
        let t = std::time::Instant::now();
        irqs.release(ConnectionId(1));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(irqs.active_for(ConnectionId(1)), None);
    }

    #[test]
    fn every_device_offers_one_request_vector_routed_alongside_its_interrupts() {
        let irqs = Interrupts::new(true, 1, 0);
        let req = irqs.info(IrqIndex::Req as u32).unwrap();
        assert_eq!(req.count, 1);
        assert!(req.flags.contains(IrqInfoFlags::EVENTFD));
        assert_eq!(irqs.info(IrqIndex::Err as u32).unwrap().count, 0);
        let c = ConnectionId(1);
        let _intx = route(&irqs, c, IrqIndex::Intx);
        let _req = route(&irqs, c, IrqIndex::Req);
        assert_eq!(
            irqs.active_for(c),
            Some(IrqIndex::Intx),
            "REQ is no device interrupt"
        );
        // MSI instead of INTx is still refused while INTx is routed; REQ does not count.
        let (f, _e) = eventfd();
        let r = irqs.apply(
            c,
            request(
                IrqIndex::Msi,
                IrqAction::Trigger,
                1,
                IrqData::Eventfds(vec![f]),
            ),
        );
        assert_eq!(r.unwrap_err().errno(), libc::EINVAL);
        // A connection routing only REQ does not drive the device.
        let viewer = ConnectionId(2);
        let _vreq = route(&irqs, viewer, IrqIndex::Req);
        assert!(!irqs.routed_by(viewer));
        assert!(irqs.routed_by(c));
    }

    #[test]
    fn a_request_reaches_each_connection_that_routed_it_once_and_no_other() {
        let irqs = Interrupts::new(false, 1, 0);
        let (a, b, c) = (ConnectionId(1), ConnectionId(2), ConnectionId(3));
        let ea = route(&irqs, a, IrqIndex::Req);
        let eb = route(&irqs, b, IrqIndex::Req);
        let ec = route(&irqs, c, IrqIndex::Msi);
        let mut routes = irqs.request_routes();
        routes.sort();
        assert_eq!(routes, [a, b]);
        let mut asked = irqs.signal_request();
        asked.sort();
        assert_eq!(asked, [a, b]);
        assert_eq!(
            (count(&irqs, &ea), count(&irqs, &eb), count(&irqs, &ec)),
            (1, 1, 0)
        );
        // Disabling REQ (count 0) withdraws the route; the MSI route stays.
        irqs.apply(
            a,
            request(IrqIndex::Req, IrqAction::Trigger, 0, IrqData::None),
        )
        .unwrap();
        assert_eq!(irqs.signal_request(), [b]);
        assert_eq!((count(&irqs, &ea), count(&irqs, &eb)), (0, 1));
        // Releasing a connection that routed REQ only stops its delivery thread too.
        irqs.release(b);
        assert!(irqs.signal_request().is_empty());
        assert_eq!(irqs.active_for(c), Some(IrqIndex::Msi));
    }
}
