//! One client connection: version negotiation, the open it holds, its DMA mappings, and the
//! dispatch of every typed [`Request`] to the device and the connection's state. `wire` has
//! validated the message's shape; what is checked here needs the device (regions, vectors).
//! Malformed input gets an error reply and the stream stays in sync; input that breaks
//! framing closes the connection, releasing its open.

use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::poll::PollWindow;
use super::record::Recorder;
use super::shared::Shared;
use crate::device_set::{DeviceHandle, Open};
use crate::dma::{DmaMapping, DmaMappings};
use crate::error::DeviceError;
use crate::irq::IrqRequest;
use crate::owner::{ConnectionId, OwnerId};
use crate::region::{RegionFlags, RegionInfo};
use crate::wire::{
    self, Command, DmaMapRequest, DmaUnmapRange, Reply, Request, RequestError, WireError,
};

/// Why a command failed: each variant carries the detail for the log line and maps to the
/// errno of the error reply.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    /// The message is not a valid request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The device refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// VERSION again after the handshake.
    #[error("VERSION after negotiation")]
    VersionAgain,
    /// No such region.
    #[error("no region {0}")]
    NoRegion(u32),
    /// The region does not allow this direction.
    #[error("region {region} does not allow {need:?}")]
    Direction {
        /// The region.
        region: u32,
        /// What the access needed.
        need: RegionFlags,
    },
    /// The access does not fit the region.
    #[error("access {offset:#x}+{count} past the end of region {region} ({size:#x} bytes)")]
    PastEnd {
        /// The region.
        region: u32,
        /// Offset asked.
        offset: u64,
        /// Bytes asked.
        count: u64,
        /// The region's size.
        size: u64,
    },
    /// No such interrupt index on this device.
    #[error("no IRQ index {0}")]
    NoIrqIndex(u32),
    /// More vectors than the index has.
    #[error("{count} vectors asked, IRQ index {index} has {vectors}")]
    Vectors {
        /// The index.
        index: u32,
        /// Vectors asked.
        count: u32,
        /// Vectors offered.
        vectors: u32,
    },
    /// The reply could not be sent.
    #[error("reply failed: {0}")]
    Reply(std::io::Error),
}

impl CommandError {
    fn errno(&self) -> i32 {
        match self {
            CommandError::Request(e) => e.errno(),
            CommandError::Device(e) => e.errno(),
            CommandError::Reply(_) => libc::EPIPE,
            CommandError::VersionAgain
            | CommandError::NoRegion(_)
            | CommandError::Direction { .. }
            | CommandError::PastEnd { .. }
            | CommandError::NoIrqIndex(_)
            | CommandError::Vectors { .. } => libc::EINVAL,
        }
    }
}

struct Connection<'r> {
    id: ConnectionId,
    owner: OwnerId,
    sock: Arc<UnixStream>,
    reader: &'r mut wire::MessageReader,
    recorder: Recorder,
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
            ..Open::new(id, OwnerId(u32::try_from(c.pid()).unwrap_or(0)))
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

/// Serves connection `id` on `sock` until it ends. `reader` is the serving thread's own,
/// reused from connection to connection (emptied first).
pub(crate) fn serve_connection(
    sock: Arc<UnixStream>,
    id: ConnectionId,
    shared: Arc<Shared>,
    reader: &mut wire::MessageReader,
) {
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
        Some(uid) => debug!("{name}: {id} connected ({owner}, uid {uid})"),
        None => debug!("{name}: {id} connected (peer unknown)"),
    }
    reader.clear();
    let mut recorder = Recorder::open(shared.record_dir().as_deref(), &name, id);
    let timeout = shared.message_timeout();
    match negotiate(&sock, reader, &mut recorder, &handle, peer, timeout) {
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
                reader,
                recorder,
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
    debug!("{name}: {id} disconnected");
}

/// The first message must be VERSION. The device is opened before the reply, so a failing
/// `open_device` reaches the client as an error reply to VERSION.
/// The whole handshake must arrive within `timeout` of the connect.
fn negotiate(
    sock: &UnixStream,
    reader: &mut wire::MessageReader,
    recorder: &mut Recorder,
    handle: &DeviceHandle,
    peer: Open,
    timeout: Duration,
) -> Result<(), String> {
    let id = peer.conn;
    let deadlines = wire::Deadlines {
        first_byte: Instant::now().checked_add(timeout),
        rest: timeout,
    };
    let msg = reader.next(sock, &deadlines).map_err(|e| {
        if let WireError::BadSize(_) | WireError::TooManyFds(_) = e {
            let _ = wire::send_error(sock, &wire::Header::default(), e.errno());
        }
        e.to_string()
    })?;
    recorder.message(&msg);
    let header = msg.header;
    let fail = |errno: i32, what: &str| {
        let _ = wire::send_error(sock, &header, errno);
        Err(what.to_string())
    };
    let (minor, caps) = match Request::parse(msg) {
        Ok(Request::Version {
            major,
            minor,
            capabilities,
        }) => {
            if major != wire::VERSION_MAJOR {
                return fail(libc::ENOTSUP, "unsupported major version");
            }
            (minor, capabilities)
        }
        Ok(_) => return fail(libc::EINVAL, "first message is not VERSION"),
        Err(e) => {
            return fail(
                libc::EINVAL,
                &format!("first message is not a valid VERSION: {e}"),
            )
        }
    };
    debug!("{}: {id} client capabilities {caps:?}", handle.name());
    if let Err(e) = handle.open_as(peer) {
        return fail(e.errno(), &format!("open failed: {e}"));
    }
    let reply = Reply::Version {
        major: wire::VERSION_MAJOR,
        minor: minor.min(wire::VERSION_MINOR),
    };
    if let Err(e) = reply.send(sock, &header) {
        handle.close(id);
        return Err(format!("VERSION reply failed: {e}"));
    }
    Ok(())
}

impl Connection<'_> {
    fn run(&mut self, shared: &Shared) {
        let deadlines = wire::Deadlines::idle_then(shared.message_timeout());
        let mut window = PollWindow::new(shared.poll_max());
        loop {
            // The bound may change while the connection lives (`DeviceServer::set_poll`).
            window.set_max(shared.poll_max());
            let next = if window.max().is_zero() {
                self.reader.next(&self.sock, &deadlines)
            } else {
                let replied = Instant::now();
                let poll_until = Some(window.current())
                    .filter(|w| !w.is_zero())
                    .and_then(|w| replied.checked_add(w));
                let next = self.reader.next_polling(&self.sock, &deadlines, poll_until);
                window.observe(replied.elapsed());
                next
            };
            let msg = match next {
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
            self.recorder.message(&msg);
            if msg.header.flags & wire::flags::TYPE_MASK != wire::flags::TYPE_COMMAND {
                // A reply we never asked for: ignore it, as there is nothing to answer.
                warn!(
                    "{}: {}: unexpected reply message ignored",
                    self.handle.name(),
                    self.id
                );
                continue;
            }
            let header = msg.header;
            let no_reply = msg.no_reply();
            let result = Request::parse(msg)
                .map_err(CommandError::from)
                .and_then(|request| self.dispatch(request, &header, no_reply));
            if matches!(
                Command::from_u16(header.command),
                Some(Command::DmaMap | Command::DmaUnmap | Command::DeviceSetIrqs)
            ) {
                self.update_driving();
            }
            if let Err(e) = result {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                let errno = e.errno();
                warn!(
                    "{}: {}: command {} (id {}) failed: {e} (errno {errno})",
                    self.handle.name(),
                    self.id,
                    header.command,
                    header.message_id,
                );
                if matches!(e, CommandError::Reply(_)) {
                    return;
                }
                if !no_reply && wire::send_error(&self.sock, &header, errno).is_err() {
                    return;
                }
            }
        }
    }

    /// Serves one request; on success its reply (if one is wanted) has been sent.
    fn dispatch(
        &mut self,
        request: Request,
        header: &wire::Header,
        no_reply: bool,
    ) -> Result<(), CommandError> {
        // Register reads are a few bytes: those need no allocation.
        let mut small = [0u8; 8];
        let mut large = Vec::new();
        let region_info;
        let reply = match request {
            Request::Version { .. } => return Err(CommandError::VersionAgain),
            Request::GetDeviceInfo => {
                let dev = self.handle.lock();
                Reply::DeviceInfo {
                    flags: dev.flags().bits(),
                    num_regions: dev.num_regions(),
                    num_irqs: dev.interrupts().num_indexes(),
                }
            }
            Request::GetRegionInfo { index, argsz } => {
                if index as usize >= self.regions.len() {
                    return Err(CommandError::NoRegion(index));
                }
                region_info = self.handle.lock().region_info(index);
                Reply::RegionInfo {
                    index,
                    argsz,
                    info: &region_info,
                }
            }
            Request::GetIrqInfo { index } => {
                let info = self
                    .handle
                    .interrupts()
                    .info(index)
                    .ok_or(CommandError::NoIrqIndex(index))?;
                Reply::IrqInfo { index, info }
            }
            Request::SetIrqs(req) => {
                self.set_irqs(req)?;
                Reply::Empty
            }
            Request::RegionRead {
                region,
                offset,
                count,
            } => {
                self.check_access(region, offset, count, RegionFlags::READ)?;
                let data = match small.get_mut(..count as usize) {
                    Some(d) => d,
                    None => {
                        large.resize(count as usize, 0);
                        &mut large[..]
                    }
                };
                self.handle.lock().read(region, offset, data)?;
                Reply::RegionRead {
                    region,
                    offset,
                    data,
                }
            }
            Request::RegionWrite {
                region,
                offset,
                data,
            } => {
                let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
                self.check_access(region, offset, count, RegionFlags::WRITE)?;
                self.handle.lock().write(region, offset, &data)?;
                Reply::RegionWrite {
                    region,
                    offset,
                    count,
                }
            }
            Request::DmaMap(req) => {
                self.dma_map(req)?;
                Reply::Empty
            }
            Request::DmaUnmap { flags, range } => {
                self.dma_unmap(range)?;
                let (address, size) = match range {
                    DmaUnmapRange::All => (0, 0),
                    DmaUnmapRange::Range { address, size } => (address, size),
                };
                Reply::DmaUnmap {
                    flags,
                    address,
                    size,
                }
            }
            Request::DeviceReset => {
                self.handle.reset(self.owner)?;
                info!("{}: device reset by {}", self.handle.name(), self.id);
                Reply::Empty
            }
        };
        if no_reply {
            return Ok(());
        }
        reply.send(&self.sock, header).map_err(CommandError::Reply)
    }

    fn check_access(
        &self,
        region: u32,
        offset: u64,
        count: u32,
        need: RegionFlags,
    ) -> Result<(), CommandError> {
        let (size, flags) = *self
            .regions
            .get(region as usize)
            .ok_or(CommandError::NoRegion(region))?;
        if !flags.contains(need) {
            return Err(CommandError::Direction { region, need });
        }
        let past_end = CommandError::PastEnd {
            region,
            offset,
            count: u64::from(count),
            size,
        };
        match offset.checked_add(u64::from(count)) {
            Some(end) if end <= size => Ok(()),
            _ => Err(past_end),
        }
    }

    fn set_irqs(&mut self, req: IrqRequest) -> Result<(), CommandError> {
        let index = req.index as u32;
        let vectors = self
            .handle
            .interrupts()
            .info(index)
            .ok_or(CommandError::NoIrqIndex(index))?
            .count;
        if req.count > vectors {
            return Err(CommandError::Vectors {
                index,
                count: req.count,
                vectors,
            });
        }
        let span = req.span();
        self.handle.interrupts().apply(self.id, req)?;
        self.handle.lock().irqs_changed(self.id, &span)?;
        Ok(())
    }

    fn dma_map(&mut self, req: DmaMapRequest) -> Result<(), CommandError> {
        let map = DmaMapping {
            iova: req.address,
            size: req.size,
            prot: req.prot,
            file_offset: req.offset,
            file: req.fd.map(Arc::new),
            memory: None,
        };
        let added = self.dma.insert(map)?.clone();
        if let Err(e) = self.handle.lock().dma_map(self.id, &added) {
            let _ = self.dma.remove(added.iova, added.size);
            return Err(e.into());
        }
        Ok(())
    }

    fn dma_unmap(&mut self, range: DmaUnmapRange) -> Result<(), CommandError> {
        let removed = match range {
            DmaUnmapRange::All => self.dma.clear(),
            DmaUnmapRange::Range { address, size } => self.dma.remove(address, size)?,
        };
        let mut dev = self.handle.lock();
        for m in &removed {
            dev.dma_unmap(self.id, m);
        }
        Ok(())
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
