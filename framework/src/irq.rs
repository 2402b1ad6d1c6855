//! Interrupts of one device: INTx with VFIO's level/automask semantics, MSI and MSI-X
//! vectors, each delivered by writing the eventfd a client handed over with `SET_IRQS`.
//!
//! The routing (which index is in use, masks, the INTx level) is device state shared by all
//! connections; each eventfd belongs to the connection that sent it and is dropped when that
//! connection closes ([`Interrupts::release`]). An interrupt with no eventfd is dropped.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use bitflags::bitflags;
use log::{debug, warn};

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
    /// Device request (not offered by the sample devices).
    Req = 4,
}

/// Number of interrupt indices a VFIO PCI device reports.
pub const PCI_NUM_IRQS: u32 = 5;

impl IrqIndex {
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
        }
    }
}

#[derive(Default)]
struct Vector {
    trigger: Option<(ConnectionId, File)>,
    masked: bool,
    /// The last write to `trigger` failed (e.g. a client left its eventfd counter full):
    /// warned once, quiet until a write succeeds again.
    failing: bool,
}

impl Vector {
    /// Writes the trigger eventfd, if any; returns whether one was set.
    fn fire(&mut self) -> bool {
        let Some((owner, fd)) = &self.trigger else {
            return false;
        };
        match signal(fd) {
            Ok(()) if self.failing => {
                log::info!("interrupt eventfd of {owner} writable again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) if !self.failing => {
                warn!("interrupt eventfd of {owner} not writable ({e}); dropping interrupts until it is");
                self.failing = true;
            }
            Err(_) => {}
        }
        true
    }
}

struct IndexState {
    info: IrqIndexInfo,
    vectors: Vec<Vector>,
    delivered: u64,
}

struct IrqState {
    indexes: Vec<IndexState>,
    /// INTx line level as the device drives it.
    intx_level: bool,
    /// The line level last seen by [`Interrupts::update_line`], for MSI edge detection.
    line: bool,
}

/// The interrupts of one device. Shared (behind `Arc`) between the device, which raises
/// interrupts from any thread, and the server, which applies `SET_IRQS`.
pub struct Interrupts {
    state: Mutex<IrqState>,
}

impl Interrupts {
    /// A device with INTx (when `intx`), `msi_vectors` MSI vectors and `msix_vectors` MSI-X
    /// vectors (0 for none).
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
        Self::with_layout(&[intx_info, msi_info, msix_info, none, none])
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
        self.lock().indexes.len() as u32
    }

    /// What index `index` offers, or `None` past the last index.
    pub fn info(&self, index: u32) -> Option<IrqIndexInfo> {
        self.lock().indexes.get(index as usize).map(|i| i.info)
    }

    /// The index that currently has trigger eventfds (VFIO allows only one at a time).
    pub fn active(&self) -> Option<IrqIndex> {
        let st = self.lock();
        Self::active_locked(&st)
    }

    fn active_locked(st: &IrqState) -> Option<IrqIndex> {
        st.indexes
            .iter()
            .position(|i| i.vectors.iter().any(|v| v.trigger.is_some()))
            .and_then(|p| IrqIndex::from_u32(p as u32))
    }

    /// How many interrupts were delivered on `index` so far.
    pub fn delivered(&self, index: IrqIndex) -> u64 {
        self.lock()
            .indexes
            .get(index as usize)
            .map_or(0, |i| i.delivered)
    }

    /// Whether INTx is masked (automasked after delivery, until the client unmasks it).
    pub fn intx_masked(&self) -> bool {
        self.lock()
            .indexes
            .first()
            .and_then(|i| i.vectors.first())
            .is_some_and(|v| v.masked)
    }

    /// The raw trigger fds of `index`, one entry per vector (`None` where unset). For a
    /// passthrough device that hands the client's eventfds to the host kernel.
    pub fn trigger_fds(&self, index: IrqIndex) -> Vec<Option<RawFd>> {
        self.lock()
            .indexes
            .get(index as usize)
            .map(|i| {
                i.vectors
                    .iter()
                    .map(|v| v.trigger.as_ref().map(|(_, f)| f.as_raw_fd()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Drives the INTx line. A rising level on an unmasked line delivers one interrupt and
    /// masks the line until the client unmasks it; unmasking while the level is still high
    /// delivers again.
    pub fn set_intx_level(&self, asserted: bool) {
        let mut st = self.lock();
        st.intx_level = asserted;
        if asserted {
            Self::deliver_intx(&mut st);
        }
    }

    fn deliver_intx(st: &mut IrqState) {
        let Some(intx) = st.indexes.first_mut() else {
            return;
        };
        let Some(v) = intx.vectors.first_mut() else {
            return;
        };
        if v.masked {
            return;
        }
        if v.fire() {
            v.masked = true;
            intx.delivered += 1;
        }
    }

    /// Delivers one edge interrupt on `index`/`vector` (MSI, MSI-X). Dropped when no eventfd
    /// is set or the vector is masked.
    pub fn signal(&self, index: IrqIndex, vector: u32) {
        let mut st = self.lock();
        Self::signal_locked(&mut st, index, vector);
    }

    fn signal_locked(st: &mut IrqState, index: IrqIndex, vector: u32) {
        let Some(idx) = st.indexes.get_mut(index as usize) else {
            return;
        };
        let Some(v) = idx.vectors.get_mut(vector as usize) else {
            return;
        };
        if v.masked {
            return;
        }
        if v.fire() {
            idx.delivered += 1;
        }
    }

    /// The usual way a single-vector device reports its interrupt condition: with MSI or
    /// MSI-X in use, a rising edge sends vector 0; otherwise the INTx line follows `asserted`.
    pub fn update_line(&self, asserted: bool) {
        let mut st = self.lock();
        let rising = asserted && !st.line;
        st.line = asserted;
        match Self::active_locked(&st) {
            Some(idx @ (IrqIndex::Msi | IrqIndex::Msix)) => {
                st.intx_level = false;
                if rising {
                    Self::signal_locked(&mut st, idx, 0);
                }
            }
            _ => {
                st.intx_level = asserted;
                if asserted {
                    Self::deliver_intx(&mut st);
                }
            }
        }
    }

    /// Applies a `SET_IRQS` request from connection `owner`, with VFIO's rules.
    pub fn apply(&self, owner: ConnectionId, req: IrqRequest) -> Result<(), DeviceError> {
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
                // Disable the whole index.
                for v in &mut st.indexes[pos].vectors {
                    v.trigger = None;
                    v.masked = false;
                }
                debug!("irq index {:?} disabled by {owner}", req.index);
            }
            (IrqAction::Trigger, IrqData::Eventfds(files)) => {
                if let Some(active) = Self::active_locked(&st) {
                    if active != req.index {
                        return Err(DeviceError::InvalidArgument(
                            "another interrupt index is enabled",
                        ));
                    }
                }
                for (i, f) in files.into_iter().enumerate() {
                    set_nonblocking(&f);
                    let v = &mut st.indexes[pos].vectors[req.start as usize + i];
                    v.trigger = Some((owner, f));
                    v.failing = false;
                    v.masked = false;
                }
                debug!(
                    "irq index {:?} vectors {}..{} routed to eventfds of {owner}",
                    req.index, req.start, end
                );
                // A level still high on a fresh INTx eventfd is delivered at once.
                if req.index == IrqIndex::Intx && st.intx_level {
                    Self::deliver_intx(&mut st);
                }
            }
            (IrqAction::Trigger, _) => {
                for i in 0..req.count {
                    if selected(i as usize) {
                        if req.index == IrqIndex::Intx {
                            Self::deliver_intx(&mut st);
                        } else {
                            Self::signal_locked(&mut st, req.index, req.start + i);
                        }
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
                    st.indexes[pos].vectors[0].masked = !unmask;
                    if unmask && st.intx_level {
                        Self::deliver_intx(&mut st);
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops every eventfd connection `owner` handed over. Other connections keep theirs.
    pub fn release(&self, owner: ConnectionId) {
        let mut st = self.lock();
        for idx in &mut st.indexes {
            for v in &mut idx.vectors {
                if v.trigger.as_ref().is_some_and(|(o, _)| *o == owner) {
                    v.trigger = None;
                    v.masked = false;
                }
            }
        }
    }

    /// Device reset: the line goes low and INTx is unmasked; eventfds stay (the client owns
    /// them and disables them itself).
    pub fn reset(&self) {
        let mut st = self.lock();
        st.intx_level = false;
        st.line = false;
        for idx in &mut st.indexes {
            for v in &mut idx.vectors {
                v.masked = false;
            }
        }
    }
}

fn set_nonblocking(f: &File) {
    // A hostile client could pass a pipe instead of an eventfd: never let a full pipe block
    // the device. Eventfds are unaffected by O_NONBLOCK except for a counter overflow.
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a valid fd we own; F_GETFL/F_SETFL do not touch memory.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}

fn signal(mut f: &File) -> std::io::Result<()> {
    f.write_all(&1u64.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn eventfd() -> (File, EventFd) {
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: `e` owns this open fd and outlives the borrow, which is only used to
        // duplicate it into a new fd the returned `File` owns.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(e.as_raw_fd()) };
        let file = File::from(borrowed.try_clone_to_owned().unwrap());
        (file, e)
    }

    fn count(e: &EventFd) -> u64 {
        e.read().unwrap_or(0)
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
        assert_eq!(count(&e), 1);
        irqs.set_intx_level(true);
        assert_eq!(count(&e), 0, "masked after delivery");
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
        assert_eq!(count(&e), 1, "level still high: delivered again on unmask");
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
        assert_eq!(count(&e), 0);
    }

    #[test]
    fn msi_edges_only_and_no_eventfd_drops_silently() {
        let irqs = Interrupts::new(true, 1, 0);
        irqs.update_line(true); // nothing routed: dropped, no panic
        irqs.update_line(false);
        let e = route(&irqs, ConnectionId(1), IrqIndex::Msi);
        irqs.update_line(true);
        irqs.update_line(true);
        assert_eq!(count(&e), 1);
        irqs.update_line(false);
        irqs.update_line(true);
        assert_eq!(count(&e), 1);
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
    fn a_pipe_that_fills_never_blocks_delivery() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let irqs = Interrupts::new(false, 1, 0);
        irqs.apply(
            ConnectionId(1),
            IrqRequest {
                index: IrqIndex::Msi,
                start: 0,
                count: 1,
                action: IrqAction::Trigger,
                data: IrqData::Eventfds(vec![File::from(w)]),
            },
        )
        .unwrap();
        for _ in 0..100_000 {
            irqs.signal(IrqIndex::Msi, 0);
        }
        let failing = || irqs.lock().indexes[IrqIndex::Msi as usize].vectors[0].failing;
        assert!(failing(), "a full pipe is noticed (and warned about once)");
        let mut r = File::from(r);
        set_nonblocking(&r);
        let mut buf = [0u8; 4096];
        while r.read(&mut buf).is_ok_and(|n| n > 0) {}
        irqs.signal(IrqIndex::Msi, 0);
        assert!(!failing(), "delivery resumes once the reader drains");
        r.read_exact(&mut buf[..8]).unwrap();
    }
}
