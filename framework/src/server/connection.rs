//! One client connection: version negotiation, the open it holds, its DMA mappings, and the
//! dispatch of every command to the device. Malformed input gets an error reply and the
//! stream stays in sync; input that breaks framing closes the connection, releasing its open.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use vm_memory::ByteValued;

use super::listener::Shared;
use crate::device_set::{DeviceHandle, Open};
use crate::dma::{DmaMapping, DmaMappings, DmaProt};
use crate::error::DeviceError;
use crate::irq::{IrqAction, IrqData, IrqIndex, IrqRequest, SetIrqsFlags};
use crate::owner::{ConnectionId, OwnerId};
use crate::region::{RegionFlags, RegionInfo};
use crate::wire::{self, Command, Message, WireError};

/// Counters over all connections of one server.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Commands answered with an error.
    pub errors: AtomicU64,
    /// Connections closed because the stream could not be kept in sync.
    pub dropped: AtomicU64,
    /// Connections refused because the device already served its maximum.
    pub refused: AtomicU64,
}

/// Why a command failed: the errno for the reply, and a line for the log.
struct Failure {
    errno: i32,
    what: String,
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        Failure {
            errno: e.errno(),
            what: e.to_string(),
        }
    }
}

impl From<WireError> for Failure {
    fn from(e: WireError) -> Self {
        Failure {
            errno: e.errno(),
            what: e.to_string(),
        }
    }
}

fn einval(what: impl Into<String>) -> Failure {
    Failure {
        errno: libc::EINVAL,
        what: what.into(),
    }
}

struct Connection {
    id: ConnectionId,
    owner: OwnerId,
    sock: UnixStream,
    handle: Arc<DeviceHandle>,
    dma: DmaMappings,
    /// (size, flags) of every region, read once at open: regions do not change while a
    /// device is registered.
    regions: Vec<(u64, RegionFlags)>,
    /// Last value told to the device set: this connection routed interrupts or mapped DMA.
    driving: bool,
}

/// Who is at the other end, as the kernel reports it (`SO_PEERCRED`).
fn peer(sock: &UnixStream, id: ConnectionId) -> Open {
    match nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) => Open {
            uid: Some(c.uid()),
            ..Open::new(id, OwnerId(c.pid() as u32))
        },
        Err(_) => Open::new(id, OwnerId(0)),
    }
}

/// Releases the connection's slot in the listener however the thread ends, a panic in a
/// device hook included.
struct Slot<'a> {
    shared: &'a Shared,
    id: ConnectionId,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

pub(crate) fn serve_connection(sock: UnixStream, id: ConnectionId, shared: Arc<Shared>) {
    let _slot = Slot {
        shared: &shared,
        id,
    };
    shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
    let peer = peer(&sock, id);
    let owner = peer.owner;
    let handle = shared.handle.clone();
    let name = handle.name().to_string();
    match peer.uid {
        Some(uid) => info!("{name}: {id} connected ({owner}, uid {uid})"),
        None => info!("{name}: {id} connected (peer unknown)"),
    }
    match negotiate(&sock, &handle, peer, shared.message_timeout()) {
        Ok(()) => {
            let regions = {
                let dev = handle.lock();
                (0..dev.num_regions())
                    .map(|i| {
                        let r: RegionInfo = dev.region_info(i);
                        (r.size, r.flags)
                    })
                    .collect()
            };
            let mut conn = Connection {
                id,
                owner,
                sock,
                handle: handle.clone(),
                dma: DmaMappings::new(wire::MAX_DMA_MAPS as usize),
                regions,
                driving: false,
            };
            // A bug in a device (or here) must cost one connection, not wedge the client or
            // leak its open: catch the panic, then release and close as for any other end.
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.run(&shared)));
            if run.is_err() {
                error!("{name}: {id}: panicked while serving; closing the connection");
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            conn.release();
            handle.close(id);
        }
        Err(e) => warn!("{name}: {id} not opened: {e}"),
    }
    info!("{name}: {id} disconnected");
}

/// The first message must be VERSION. The device is opened before the reply, so a failing
/// `open_device` reaches the client as an error reply to VERSION.
/// The whole handshake must arrive within `timeout` of the connect.
fn negotiate(
    sock: &UnixStream,
    handle: &DeviceHandle,
    peer: Open,
    timeout: Duration,
) -> Result<(), String> {
    let id = peer.conn;
    let deadlines = wire::Deadlines {
        first_byte: Instant::now().checked_add(timeout),
        rest: timeout,
    };
    let msg = wire::read_message_within(sock, &deadlines).map_err(|e| {
        if let WireError::BadSize(_) | WireError::TooManyFds(_) = e {
            let _ = wire::send_error(sock, &wire::Header::default(), e.errno());
        }
        e.to_string()
    })?;
    let fail = |errno: i32, what: &str| {
        let _ = wire::send_error(sock, &msg.header, errno);
        Err(what.to_string())
    };
    if msg.command() != Some(Command::Version) {
        return fail(libc::EINVAL, "first message is not VERSION");
    }
    let v: wire::VersionMsg = match msg.fixed() {
        Ok(v) => v,
        Err(_) => return fail(libc::EINVAL, "short VERSION"),
    };
    if v.major != wire::VERSION_MAJOR {
        return fail(libc::ENOTSUP, "unsupported major version");
    }
    let caps = match wire::parse_client_capabilities(msg.tail::<wire::VersionMsg>()) {
        Ok(c) => c,
        Err(e) => return fail(libc::EINVAL, &e.to_string()),
    };
    debug!("{}: {id} client capabilities {caps:?}", handle.name());
    if let Err(e) = handle.open_as(peer) {
        return fail(e.errno(), &format!("open failed: {e}"));
    }
    let reply = wire::VersionMsg {
        major: wire::VERSION_MAJOR,
        minor: v.minor.min(wire::VERSION_MINOR),
    };
    let caps = wire::server_capabilities();
    if let Err(e) = wire::send_reply(sock, &msg.header, &[reply.as_slice(), &caps], &[]) {
        handle.close(id);
        return Err(format!("VERSION reply failed: {e}"));
    }
    Ok(())
}

impl Connection {
    fn run(&mut self, shared: &Shared) {
        let deadlines = wire::Deadlines::idle_then(shared.message_timeout());
        loop {
            let msg = match wire::read_message_within(&self.sock, &deadlines) {
                Ok(m) => m,
                Err(WireError::Closed) => return,
                Err(e @ (WireError::BadSize(_) | WireError::TooManyFds(_))) => {
                    warn!(
                        "{}: {}: {e}; closing the connection",
                        self.handle.name(),
                        self.id
                    );
                    let _ = wire::send_error(&self.sock, &wire::Header::default(), e.errno());
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    warn!(
                        "{}: {}: {e}; closing the connection",
                        self.handle.name(),
                        self.id
                    );
                    shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            if msg.header.flags & wire::flags::TYPE_MASK != wire::flags::TYPE_COMMAND {
                // A reply we never asked for: ignore it, as there is nothing to answer.
                warn!(
                    "{}: {}: unexpected reply message ignored",
                    self.handle.name(),
                    self.id
                );
                continue;
            }
            let result = self.dispatch(&msg);
            if matches!(
                msg.command(),
                Some(Command::DmaMap | Command::DmaUnmap | Command::DeviceSetIrqs)
            ) {
                self.update_driving();
            }
            if let Err(f) = result {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "{}: {}: command {} (id {}) failed: {} (errno {})",
                    self.handle.name(),
                    self.id,
                    msg.header.command,
                    msg.header.message_id,
                    f.what,
                    f.errno
                );
                if !msg.no_reply() && wire::send_error(&self.sock, &msg.header, f.errno).is_err() {
                    return;
                }
            }
        }
    }

    /// Handles one command; on success the reply (if any) has been sent.
    fn dispatch(&mut self, msg: &Message) -> Result<(), Failure> {
        let Some(cmd) = msg.command() else {
            return Err(Failure {
                errno: libc::ENOTSUP,
                what: format!("unknown command {}", msg.header.command),
            });
        };
        match cmd {
            Command::Version => Err(einval("VERSION after negotiation")),
            Command::DeviceGetInfo => {
                let req: wire::DeviceInfoMsg = msg.fixed()?;
                if (req.argsz as usize) < std::mem::size_of::<wire::DeviceInfoMsg>() {
                    return Err(einval("DEVICE_GET_INFO argsz too small"));
                }
                let dev = self.handle.lock();
                let info = wire::DeviceInfoMsg {
                    argsz: std::mem::size_of::<wire::DeviceInfoMsg>() as u32,
                    flags: dev.flags().bits(),
                    num_regions: dev.num_regions(),
                    num_irqs: dev.interrupts().num_indexes(),
                };
                drop(dev);
                self.reply(msg, &[info.as_slice()], &[])
            }
            Command::DeviceGetRegionInfo => self.region_info(msg),
            Command::DeviceGetIrqInfo => {
                let req: wire::IrqInfoMsg = msg.fixed()?;
                let info = self
                    .handle
                    .interrupts()
                    .info(req.index)
                    .ok_or_else(|| einval(format!("no IRQ index {}", req.index)))?;
                let out = wire::IrqInfoMsg {
                    argsz: std::mem::size_of::<wire::IrqInfoMsg>() as u32,
                    flags: info.flags.bits(),
                    index: req.index,
                    count: info.count,
                };
                self.reply(msg, &[out.as_slice()], &[])
            }
            Command::DeviceSetIrqs => {
                self.set_irqs(msg)?;
                self.reply(msg, &[], &[])
            }
            Command::RegionRead => {
                let req: wire::RegionAccessMsg = msg.fixed()?;
                self.check_access(&req, RegionFlags::READ)?;
                // Register reads are a few bytes: those need no allocation.
                let mut small = [0u8; 8];
                let mut large = Vec::new();
                let data = match small.get_mut(..req.count as usize) {
                    Some(d) => d,
                    None => {
                        large.resize(req.count as usize, 0);
                        &mut large[..]
                    }
                };
                self.handle.lock().read(req.region, req.offset, data)?;
                self.reply(msg, &[req.as_slice(), data], &[])
            }
            Command::RegionWrite => {
                let req: wire::RegionAccessMsg = msg.fixed()?;
                let data = msg.tail::<wire::RegionAccessMsg>();
                if data.len() != req.count as usize {
                    return Err(einval(format!(
                        "REGION_WRITE count {} but {} data bytes",
                        req.count,
                        data.len()
                    )));
                }
                self.check_access(&req, RegionFlags::WRITE)?;
                self.handle.lock().write(req.region, req.offset, data)?;
                self.reply(msg, &[req.as_slice()], &[])
            }
            Command::DmaMap => {
                self.dma_map(msg)?;
                self.reply(msg, &[], &[])
            }
            Command::DmaUnmap => {
                let req = self.dma_unmap(msg)?;
                self.reply(msg, &[req.as_slice()], &[])
            }
            Command::DeviceReset => {
                self.handle.reset(self.owner)?;
                info!("{}: device reset by {}", self.handle.name(), self.id);
                self.reply(msg, &[], &[])
            }
            Command::DeviceGetRegionIoFds
            | Command::DmaRead
            | Command::DmaWrite
            | Command::DirtyPages => Err(Failure {
                errno: libc::ENOTSUP,
                what: format!("{cmd:?} is not supported"),
            }),
        }
    }

    /// Sends the reply to `msg`, unless its sender asked for none.
    fn reply(&self, msg: &Message, body: &[&[u8]], fds: &[RawFd]) -> Result<(), Failure> {
        if msg.no_reply() {
            return Ok(());
        }
        wire::send_reply(&self.sock, &msg.header, body, fds).map_err(|e| Failure {
            errno: libc::EPIPE,
            what: format!("reply failed: {e}"),
        })
    }

    fn check_access(&self, req: &wire::RegionAccessMsg, need: RegionFlags) -> Result<(), Failure> {
        if req.count > wire::MAX_DATA_XFER_SIZE {
            return Err(einval(format!(
                "count {} above max_data_xfer_size",
                req.count
            )));
        }
        let (size, flags) = *self
            .regions
            .get(req.region as usize)
            .ok_or_else(|| einval(format!("no region {}", req.region)))?;
        if !flags.contains(need) {
            return Err(einval(format!(
                "region {} does not allow {need:?}",
                req.region
            )));
        }
        let end = req
            .offset
            .checked_add(u64::from(req.count))
            .ok_or_else(|| einval("offset + count overflows"))?;
        if end > size {
            return Err(einval(format!(
                "access {:#x}+{} past the end of region {} ({size:#x} bytes)",
                req.offset, req.count, req.region
            )));
        }
        Ok(())
    }

    fn region_info(&mut self, msg: &Message) -> Result<(), Failure> {
        let req: wire::RegionInfoMsg = msg.fixed()?;
        if (req.argsz as usize) < std::mem::size_of::<wire::RegionInfoMsg>() {
            return Err(einval("DEVICE_GET_REGION_INFO argsz too small"));
        }
        if req.index as usize >= self.regions.len() {
            return Err(einval(format!("no region {}", req.index)));
        }
        let info = self.handle.lock().region_info(req.index);
        let head_size = std::mem::size_of::<wire::RegionInfoMsg>();
        let mut caps = Vec::new();
        let mut out = wire::RegionInfoMsg {
            argsz: head_size as u32,
            flags: info.flags.bits(),
            index: req.index,
            cap_offset: 0,
            size: info.size,
            offset: 0,
        };
        let mut fds = Vec::new();
        if let Some(mmap) = &info.mmap {
            out.offset = mmap.file_offset;
            fds.push(mmap.file.as_raw_fd());
            if !mmap.areas.is_empty() {
                let head = wire::SparseMmapMsg {
                    header: wire::CapHeader {
                        id: wire::REGION_INFO_CAP_SPARSE_MMAP,
                        version: wire::SPARSE_MMAP_CAP_VERSION,
                        next: 0,
                    },
                    nr_areas: mmap.areas.len() as u32,
                    reserved: 0,
                };
                caps.extend_from_slice(head.as_slice());
                for a in &mmap.areas {
                    caps.extend_from_slice(
                        wire::SparseAreaMsg {
                            offset: a.offset,
                            size: a.size,
                        }
                        .as_slice(),
                    );
                }
                out.argsz = (head_size + caps.len()) as u32;
                if req.argsz >= out.argsz {
                    out.flags |= RegionFlags::CAPS.bits();
                    out.cap_offset = head_size as u32;
                } else {
                    // The client's buffer is too small: tell it the size it needs and send no
                    // capability. The CAPS flag stays clear: QEMU rejects CAPS with a
                    // cap_offset outside its buffer, and retries with the larger argsz.
                    caps.clear();
                }
            }
        }
        self.reply(msg, &[out.as_slice(), &caps], &fds)
    }

    fn set_irqs(&mut self, msg: &Message) -> Result<(), Failure> {
        let req: wire::SetIrqsMsg = msg.fixed()?;
        let flags = SetIrqsFlags::from_bits(req.flags)
            .ok_or_else(|| einval(format!("unknown SET_IRQS flags {:#x}", req.flags)))?;
        let data_bits = flags & SetIrqsFlags::DATA_MASK;
        let action_bits = flags & SetIrqsFlags::ACTION_MASK_BITS;
        if data_bits.bits().count_ones() != 1 || action_bits.bits().count_ones() != 1 {
            return Err(einval(format!(
                "SET_IRQS flags {:#x} need one data type and one action",
                req.flags
            )));
        }
        let index = IrqIndex::from_u32(req.index)
            .ok_or_else(|| einval(format!("no IRQ index {}", req.index)))?;
        let vectors = self
            .handle
            .interrupts()
            .info(req.index)
            .map_or(0, |i| i.count);
        if req.count > vectors {
            return Err(einval(format!(
                "{} vectors asked, index has {vectors}",
                req.count
            )));
        }
        let action = if action_bits == SetIrqsFlags::ACTION_MASK {
            IrqAction::Mask
        } else if action_bits == SetIrqsFlags::ACTION_UNMASK {
            IrqAction::Unmask
        } else {
            IrqAction::Trigger
        };
        let data = if data_bits == SetIrqsFlags::DATA_NONE {
            IrqData::None
        } else if data_bits == SetIrqsFlags::DATA_BOOL {
            let bools = msg.tail::<wire::SetIrqsMsg>();
            let bools = bools
                .get(..req.count as usize)
                .ok_or_else(|| einval("DATA_BOOL shorter than count"))?;
            IrqData::Bool(bools.iter().map(|b| *b != 0).collect())
        } else {
            if msg.fds.len() != req.count as usize {
                return Err(einval(format!(
                    "{} eventfds for {} vectors",
                    msg.fds.len(),
                    req.count
                )));
            }
            let files = msg
                .fds
                .iter()
                .map(|f| f.try_clone())
                .collect::<Result<Vec<_>, _>>()
                .map_err(DeviceError::from)?;
            IrqData::Eventfds(files)
        };
        if !matches!(data, IrqData::Eventfds(_)) && !msg.fds.is_empty() {
            return Err(einval("fds sent with a SET_IRQS that takes none"));
        }
        let request = IrqRequest {
            index,
            start: req.start,
            count: req.count,
            action,
            data,
        };
        let span = request.span();
        self.handle.interrupts().apply(self.id, request)?;
        self.handle.lock().irqs_changed(self.id, &span)?;
        Ok(())
    }

    fn dma_map(&mut self, msg: &Message) -> Result<(), Failure> {
        let req: wire::DmaMapMsg = msg.fixed()?;
        let prot = DmaProt::from_bits(req.flags)
            .ok_or_else(|| einval(format!("unknown DMA_MAP flags {:#x}", req.flags)))?;
        if msg.fds.len() > 1 {
            return Err(einval(format!("DMA_MAP with {} fds", msg.fds.len())));
        }
        let file = match msg.fds.first() {
            Some(f) => Some(Arc::new(f.try_clone().map_err(DeviceError::from)?)),
            None => None,
        };
        let map = DmaMapping {
            iova: req.address,
            size: req.size,
            prot,
            file_offset: req.offset,
            file,
            memory: None,
        };
        let added = self.dma.insert(map)?.clone();
        if let Err(e) = self.handle.lock().dma_map(self.id, &added) {
            let _ = self.dma.remove(added.iova, added.size);
            return Err(e.into());
        }
        Ok(())
    }

    fn dma_unmap(&mut self, msg: &Message) -> Result<wire::DmaUnmapMsg, Failure> {
        let req: wire::DmaUnmapMsg = msg.fixed()?;
        if req.flags & wire::DMA_UNMAP_GET_DIRTY != 0 {
            return Err(Failure {
                errno: libc::ENOTSUP,
                what: "dirty page tracking is not supported".into(),
            });
        }
        if req.flags & !(wire::DMA_UNMAP_ALL | wire::DMA_UNMAP_GET_DIRTY) != 0 {
            return Err(einval(format!("unknown DMA_UNMAP flags {:#x}", req.flags)));
        }
        let removed = if req.flags & wire::DMA_UNMAP_ALL != 0 {
            if req.address != 0 || req.size != 0 {
                return Err(einval("UNMAP_ALL with an address or size"));
            }
            self.dma.clear()
        } else {
            self.dma.remove(req.address, req.size)?
        };
        let mut dev = self.handle.lock();
        for m in &removed {
            dev.dma_unmap(self.id, m);
        }
        Ok(wire::DmaUnmapMsg {
            argsz: std::mem::size_of::<wire::DmaUnmapMsg>() as u32,
            ..req
        })
    }

    /// Tells the device set when this connection starts or stops driving the device (it
    /// holds DMA mappings or interrupt routes).
    fn update_driving(&mut self) {
        let now = !self.dma.is_empty() || self.handle.interrupts().routed_by(self.id);
        if now != self.driving {
            self.driving = now;
            self.handle.set_driving(self.id, now);
        }
    }

    /// Gives back what this connection holds: its DMA mappings (the device is told of each).
    fn release(&mut self) {
        let maps = self.dma.clear();
        if !maps.is_empty() {
            let mut dev = self.handle.lock();
            for m in &maps {
                dev.dma_unmap(self.id, m);
            }
        }
    }
}
