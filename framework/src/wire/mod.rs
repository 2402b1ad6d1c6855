//! The vfio-user wire format: message header, per-command structs, framing with fd passing,
//! and validation. Nothing here knows about devices.
//!
//! Every message starts with a 16-byte [`Header`]; `message_size` counts the header. File
//! descriptors travel as `SCM_RIGHTS` ancillary data with the message's bytes.

mod framing;
mod reply;
mod request;

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

pub use framing::{read_message, read_message_within, Deadlines, MessageReader};
pub use reply::Reply;
pub use request::{DmaMapRequest, DmaUnmapRange, EncodedRequest, Request, RequestError};

use serde::Deserialize;
use vm_memory::ByteValued;

/// Size of the message header.
pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();
/// Protocol major version we speak.
pub const VERSION_MAJOR: u16 = 0;
/// Protocol minor version we speak.
pub const VERSION_MINOR: u16 = 1;
/// Largest REGION_READ/REGION_WRITE payload we accept and advertise.
pub const MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Most fds we accept with one message and advertise.
pub const MAX_MSG_FDS: u32 = 16;
/// Most DMA mappings one connection may hold (QEMU refuses a larger value).
pub const MAX_DMA_MAPS: u32 = 65535;
/// The page size we support for DMA.
pub const PGSIZES: u64 = 4096;
/// Largest message we accept: a maximal write plus its fixed part, with room for the
/// largest fixed struct.
pub const MAX_MESSAGE_SIZE: u32 = MAX_DATA_XFER_SIZE + 4096;

/// vfio-user commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// Version and capability negotiation.
    Version = 1,
    /// Add a DMA mapping.
    DmaMap = 2,
    /// Remove DMA mappings.
    DmaUnmap = 3,
    /// Device flags and counts.
    DeviceGetInfo = 4,
    /// One region's info.
    DeviceGetRegionInfo = 5,
    /// Region I/O eventfds (not offered).
    DeviceGetRegionIoFds = 6,
    /// One IRQ index's info.
    DeviceGetIrqInfo = 7,
    /// Configure interrupts.
    DeviceSetIrqs = 8,
    /// Read a region.
    RegionRead = 9,
    /// Write a region.
    RegionWrite = 10,
    /// Server-to-client DMA read (not used).
    DmaRead = 11,
    /// Server-to-client DMA write (not used).
    DmaWrite = 12,
    /// Reset the device.
    DeviceReset = 13,
    /// Dirty page tracking (not offered).
    DirtyPages = 14,
}

impl Command {
    /// The command for a wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        use Command::*;
        Some(match v {
            1 => Version,
            2 => DmaMap,
            3 => DmaUnmap,
            4 => DeviceGetInfo,
            5 => DeviceGetRegionInfo,
            6 => DeviceGetRegionIoFds,
            7 => DeviceGetIrqInfo,
            8 => DeviceSetIrqs,
            9 => RegionRead,
            10 => RegionWrite,
            11 => DmaRead,
            12 => DmaWrite,
            13 => DeviceReset,
            14 => DirtyPages,
            _ => return None,
        })
    }
}

/// Header flag bits.
pub mod flags {
    /// Message type mask.
    pub const TYPE_MASK: u32 = 0xf;
    /// A command.
    pub const TYPE_COMMAND: u32 = 0;
    /// A reply.
    pub const TYPE_REPLY: u32 = 1;
    /// The sender wants no reply.
    pub const NO_REPLY: u32 = 1 << 4;
    /// The reply reports an error in `error`.
    pub const ERROR: u32 = 1 << 5;
}

/// The header of every message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Matches a reply to its command.
    pub message_id: u16,
    /// A [`Command`] value.
    pub command: u16,
    /// Whole message size, header included.
    pub message_size: u32,
    /// [`flags`].
    pub flags: u32,
    /// errno of an error reply.
    pub error: u32,
}
// SAFETY: plain integers, no padding (2+2+4+4+4 bytes), any bit pattern is valid.
unsafe impl ByteValued for Header {}

/// VERSION payload (followed by NUL-terminated JSON).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionMsg {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for VersionMsg {}

/// DMA_MAP payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaMapMsg {
    /// Size of this struct.
    pub argsz: u32,
    /// Read/write permissions.
    pub flags: u32,
    /// Offset in the fd.
    pub offset: u64,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}
// SAFETY: plain integers, no padding (4+4+8+8+8).
unsafe impl ByteValued for DmaMapMsg {}

/// DMA_UNMAP payload (and reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmaUnmapMsg {
    /// Size of this struct (plus a bitmap when dirty tracking is asked for).
    pub argsz: u32,
    /// `UNMAP_ALL`, `GET_DIRTY_PAGE_INFO`.
    pub flags: u32,
    /// IOVA.
    pub address: u64,
    /// Length.
    pub size: u64,
}
// SAFETY: plain integers, no padding (4+4+8+8).
unsafe impl ByteValued for DmaUnmapMsg {}

/// DMA_UNMAP flag: unmap everything.
pub const DMA_UNMAP_ALL: u32 = 1 << 1;
/// DMA_UNMAP flag: return a dirty bitmap (not supported).
pub const DMA_UNMAP_GET_DIRTY: u32 = 1 << 0;

/// DEVICE_GET_INFO payload (and reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceInfoMsg {
    /// Size of this struct.
    pub argsz: u32,
    /// `vfio_device_info.flags`.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indices.
    pub num_irqs: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for DeviceInfoMsg {}

/// DEVICE_GET_REGION_INFO payload (and reply head): `struct vfio_region_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionInfoMsg {
    /// Client buffer size / size needed.
    pub argsz: u32,
    /// Region flags.
    pub flags: u32,
    /// Region index.
    pub index: u32,
    /// Offset of the first capability from the start of this struct.
    pub cap_offset: u32,
    /// Region size.
    pub size: u64,
    /// Offset to mmap at in the fd sent with the reply.
    pub offset: u64,
}
// SAFETY: plain integers, no padding (4*4+8+8).
unsafe impl ByteValued for RegionInfoMsg {}

/// Region capability id: sparse mmap areas.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Version of the sparse mmap capability we send.
pub const SPARSE_MMAP_CAP_VERSION: u16 = 1;

/// A region capability header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CapHeader {
    /// Capability id.
    pub id: u16,
    /// Capability version.
    pub version: u16,
    /// Offset of the next capability, 0 for none.
    pub next: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for CapHeader {}

/// The sparse mmap capability head; `nr_areas` [`SparseAreaMsg`]s follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SparseMmapMsg {
    /// Header.
    pub header: CapHeader,
    /// Number of areas.
    pub nr_areas: u32,
    /// Reserved.
    pub reserved: u32,
}
// SAFETY: plain integers, no padding (8+4+4).
unsafe impl ByteValued for SparseMmapMsg {}

/// One sparse mmap area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SparseAreaMsg {
    /// Offset in the region.
    pub offset: u64,
    /// Length.
    pub size: u64,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for SparseAreaMsg {}

/// DEVICE_GET_IRQ_INFO payload (and reply).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IrqInfoMsg {
    /// Size of this struct.
    pub argsz: u32,
    /// IRQ info flags.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// Number of vectors.
    pub count: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for IrqInfoMsg {}

/// DEVICE_SET_IRQS payload (followed by bools for DATA_BOOL).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetIrqsMsg {
    /// Size of this struct plus data.
    pub argsz: u32,
    /// Data type and action.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}
// SAFETY: plain integers, no padding.
unsafe impl ByteValued for SetIrqsMsg {}

/// REGION_READ / REGION_WRITE head (and reply head).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionAccessMsg {
    /// Offset in the region.
    pub offset: u64,
    /// Region index.
    pub region: u32,
    /// Byte count.
    pub count: u32,
}
// SAFETY: plain integers, no padding (8+4+4).
unsafe impl ByteValued for RegionAccessMsg {}

/// Capabilities a client announces in VERSION. Unknown keys are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct ClientCapabilities {
    /// Most fds the client accepts in one message.
    #[serde(default)]
    pub max_msg_fds: Option<u64>,
    /// Largest data transfer the client accepts.
    #[serde(default)]
    pub max_data_xfer_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct ClientVersionJson {
    #[serde(default)]
    capabilities: ClientCapabilities,
}

/// Parses the NUL-terminated capability JSON of a VERSION message. An empty payload means
/// "defaults"; a payload without NUL, not UTF-8 or not valid JSON is an error.
pub fn parse_client_capabilities(payload: &[u8]) -> Result<ClientCapabilities, WireError> {
    if payload.is_empty() {
        return Ok(ClientCapabilities::default());
    }
    let nul = payload
        .iter()
        .position(|b| *b == 0)
        .ok_or(WireError::Invalid("capability string without NUL"))?;
    let text = std::str::from_utf8(&payload[..nul])
        .map_err(|_| WireError::Invalid("capability string is not UTF-8"))?;
    if text.trim().is_empty() {
        return Ok(ClientCapabilities::default());
    }
    let v: ClientVersionJson =
        serde_json::from_str(text).map_err(|_| WireError::Invalid("capability JSON malformed"))?;
    Ok(v.capabilities)
}

/// The server's capability JSON, NUL-terminated.
pub fn server_capabilities() -> Vec<u8> {
    let json = serde_json::json!({
        "capabilities": {
            "max_msg_fds": MAX_MSG_FDS,
            "max_data_xfer_size": MAX_DATA_XFER_SIZE,
            "pgsizes": PGSIZES,
            "max_dma_maps": MAX_DMA_MAPS,
        }
    });
    let mut bytes = json.to_string().into_bytes();
    bytes.push(0);
    bytes
}

/// A framing or validation failure.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed mid-message ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The header's size cannot be honoured; the stream cannot be kept in sync.
    #[error("message size {0} outside {HEADER_SIZE}..={MAX_MESSAGE_SIZE}")]
    BadSize(u32),
    /// More fds than we accept arrived with one message.
    #[error("at least {0} fds with one message, at most {MAX_MSG_FDS} accepted")]
    TooManyFds(usize),
    /// A message began but did not complete in time (or the first message did not come).
    #[error("message not complete in time")]
    TimedOut,
    /// A message that was framed correctly but is not valid.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
    /// A socket error.
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
}

impl WireError {
    /// The errno for an error reply.
    pub fn errno(&self) -> i32 {
        match self {
            WireError::BadSize(_) => libc::E2BIG,
            WireError::TooManyFds(_) | WireError::Invalid(_) => libc::EINVAL,
            WireError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            WireError::Closed | WireError::Truncated { .. } => libc::EPIPE,
            WireError::TimedOut => libc::ETIMEDOUT,
        }
    }
}

/// One received message.
#[derive(Debug)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// File descriptors that came with it.
    pub fds: Vec<File>,
}

impl Message {
    /// The command, if known.
    pub fn command(&self) -> Option<Command> {
        Command::from_u16(self.header.command)
    }

    /// True when the sender asked for no reply.
    pub fn no_reply(&self) -> bool {
        self.header.flags & flags::NO_REPLY != 0
    }

    /// The payload after the fixed struct `T`.
    pub fn tail<T: ByteValued>(&self) -> &[u8] {
        self.payload.get(std::mem::size_of::<T>()..).unwrap_or(&[])
    }
}

/// Iovecs kept on the stack when sending: a header and up to three body parts, which covers
/// every reply; a longer list spills to the heap.
const INLINE_IOV: usize = 4;

/// Sends `parts` as one message, with `fds` attached.
pub fn send(sock: &UnixStream, parts: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
    match parts.split_first() {
        Some((head, body)) => send_parts(sock, head, body, fds),
        None => Ok(()),
    }
}

/// Sends `head` followed by `body` as one message, `fds` attached to its first byte. Nothing
/// is allocated for the usual reply (see [`INLINE_IOV`]).
fn send_parts(sock: &UnixStream, head: &[u8], body: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let total = head.len() + body.iter().map(|p| p.len()).sum::<usize>();
    if fds.is_empty() && total <= SMALL_REPLY {
        // The usual reply (a register value, a status): gathered into one buffer and sent
        // with `send`, which costs the kernel less than a `sendmsg` of several pieces.
        let mut buf = [0u8; SMALL_REPLY];
        let mut at = 0;
        for p in std::iter::once(head).chain(body.iter().copied()) {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        return send_all(sock, &buf[..total]);
    }
    let mut inline = [IoSlice::new(&[]); INLINE_IOV];
    let mut spilled = Vec::new();
    let parts = std::iter::once(head).chain(body.iter().copied());
    let mut iov: &mut [IoSlice<'_>] = if body.len() < INLINE_IOV {
        for (slot, p) in inline.iter_mut().zip(parts) {
            *slot = IoSlice::new(p);
        }
        &mut inline[..=body.len()]
    } else {
        spilled.extend(parts.map(IoSlice::new));
        &mut spilled
    };
    let mut left: usize = head.len() + body.iter().map(|p| p.len()).sum::<usize>();
    let rights = [ControlMessage::ScmRights(fds)];
    let mut cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    while left > 0 {
        match sendmsg::<()>(sock.as_raw_fd(), iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
            Ok(n) => {
                left -= n;
                IoSlice::advance_slices(&mut iov, n);
                // The fds went with the first bytes.
                cmsgs = &[];
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Replies up to this size without fds go out in one `send` from a stack buffer.
const SMALL_REPLY: usize = 256;

/// Sends all of `bytes` (no fds), without SIGPIPE.
fn send_all(sock: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    use nix::sys::socket::{send, MsgFlags};
    while !bytes.is_empty() {
        match send(sock.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends a reply to `request`: its id and command, `body` after the header, `fds` attached.
pub fn send_reply(
    sock: &UnixStream,
    request: &Header,
    body: &[&[u8]],
    fds: &[RawFd],
) -> io::Result<()> {
    let len: usize = body.iter().map(|b| b.len()).sum();
    let header = Header {
        message_id: request.message_id,
        command: request.command,
        message_size: wire_u32(HEADER_SIZE + len)?,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    send_parts(sock, header.as_slice(), body, fds)
}

/// `n` as a 32-bit wire length, or EMSGSIZE (what we send is bounded far below that).
pub(crate) fn wire_u32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::from_raw_os_error(libc::EMSGSIZE))
}

/// The size of wire struct `T` as a 32-bit `argsz`.
#[expect(
    clippy::cast_possible_truncation,
    reason = "wire structs are a few dozen bytes"
)]
pub(crate) const fn size32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// Sends an error reply carrying `errno`.
pub fn send_error(sock: &UnixStream, request: &Header, errno: i32) -> io::Result<()> {
    let header = Header {
        message_id: request.message_id,
        command: request.command,
        message_size: size32::<Header>(),
        flags: flags::TYPE_REPLY | flags::ERROR,
        error: errno.unsigned_abs(),
    };
    send(sock, &[header.as_slice()], &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn struct_sizes_match_the_protocol() {
        assert_eq!(HEADER_SIZE, 16);
        assert_eq!(std::mem::size_of::<DmaMapMsg>(), 32);
        assert_eq!(std::mem::size_of::<DmaUnmapMsg>(), 24);
        assert_eq!(std::mem::size_of::<DeviceInfoMsg>(), 16);
        assert_eq!(std::mem::size_of::<RegionInfoMsg>(), 32);
        assert_eq!(std::mem::size_of::<IrqInfoMsg>(), 16);
        assert_eq!(std::mem::size_of::<SetIrqsMsg>(), 20);
        assert_eq!(std::mem::size_of::<RegionAccessMsg>(), 16);
        assert_eq!(std::mem::size_of::<SparseMmapMsg>(), 16);
    }

    #[test]
    fn a_message_and_its_fds_round_trip() {
        let (a, b) = pair();
        let file = tempfile_like();
        let h = Header {
            message_id: 7,
            command: 2,
            message_size: 16 + 4,
            flags: 0,
            error: 0,
        };
        send(&a, &[h.as_slice(), b"abcd"], &[file.as_raw_fd()]).unwrap();
        let m = read_message(&b).unwrap();
        assert_eq!(m.header, h);
        assert_eq!(m.payload, b"abcd");
        assert_eq!(m.fds.len(), 1);
        assert_eq!(m.command(), Some(Command::DmaMap));
    }

    #[test]
    fn sizes_out_of_bounds_are_refused_before_allocating() {
        for size in [0u32, 15, MAX_MESSAGE_SIZE + 1, u32::MAX] {
            let (mut a, b) = pair();
            let h = Header {
                message_size: size,
                ..Default::default()
            };
            a.write_all(h.as_slice()).unwrap();
            assert!(matches!(read_message(&b), Err(WireError::BadSize(s)) if s == size));
        }
    }

    #[test]
    fn eof_between_and_inside_messages_are_told_apart() {
        let (a, b) = pair();
        drop(a);
        assert!(matches!(read_message(&b), Err(WireError::Closed)));
        let (mut a, b) = pair();
        a.write_all(&[1, 2, 3]).unwrap();
        drop(a);
        assert!(matches!(read_message(&b), Err(WireError::Truncated { .. })));
        let (mut a, b) = pair();
        let h = Header {
            message_size: 100,
            ..Default::default()
        };
        a.write_all(h.as_slice()).unwrap();
        a.write_all(&[0; 10]).unwrap();
        drop(a);
        assert!(matches!(read_message(&b), Err(WireError::Truncated { .. })));
    }

    /// Open fds of this process that refer to a memfd named `name` (other tests' fds do not
    /// disturb the count).
    fn open_fds_named(name: &str) -> usize {
        let want = format!("/memfd:{name} (deleted)");
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy() == want)
            .count()
    }

    #[test]
    fn fds_past_the_limit_are_refused_and_none_stays_open() {
        let (a, b) = pair();
        let file = File::from(
            nix::sys::memfd::memfd_create(c"fd-limit", nix::sys::memfd::MemFdCreateFlag::empty())
                .unwrap(),
        );
        let many = vec![file.as_raw_fd(); MAX_MSG_FDS as usize + 4];
        let h = Header {
            message_id: 1,
            command: Command::DmaMap as u16,
            message_size: 16 + 4,
            ..Default::default()
        };
        // Sent before counting: the fds the kernel will install on receive are not there yet.
        send(&a, &[h.as_slice(), b"abcd"], &many).unwrap();
        assert_eq!(open_fds_named("fd-limit"), 1);
        for _ in 0..3 {
            let e = read_message(&b).unwrap_err();
            assert!(
                matches!(e, WireError::TooManyFds(n) if n > MAX_MSG_FDS as usize),
                "{e}"
            );
            assert_eq!(
                open_fds_named("fd-limit"),
                1,
                "the fds that did arrive were closed"
            );
            send(&a, &[h.as_slice(), b"abcd"], &many).unwrap();
        }
    }

    #[test]
    fn a_partial_message_times_out_but_an_idle_connection_does_not() {
        let (mut a, b) = pair();
        let limits = Deadlines::idle_then(Duration::from_millis(50));
        b.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        // Idle: nothing sent, the read waits (here cut by the socket timeout) — no TimedOut.
        let e = read_message_within(&b, &limits).unwrap_err();
        assert!(matches!(e, WireError::Io(_)), "{e}");
        b.set_read_timeout(None).unwrap();
        a.write_all(&[1, 2, 3]).unwrap();
        let t = Instant::now();
        let e = read_message_within(&b, &limits).unwrap_err();
        assert!(matches!(e, WireError::TimedOut), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(e.errno(), libc::ETIMEDOUT);
        // A first message that must come by a deadline (the VERSION handshake).
        let (_a, b) = pair();
        let first = Deadlines {
            first_byte: Some(Instant::now() + Duration::from_millis(30)),
            rest: Duration::from_millis(30),
        };
        assert!(matches!(
            read_message_within(&b, &first),
            Err(WireError::TimedOut)
        ));
    }

    #[test]
    fn capability_json_is_parsed_leniently_but_safely() {
        let caps =
            parse_client_capabilities(b"{\"capabilities\":{\"max_msg_fds\":16,\"new_thing\":1}}\0")
                .unwrap();
        assert_eq!(caps.max_msg_fds, Some(16));
        assert!(parse_client_capabilities(b"{}\0").is_ok());
        assert!(parse_client_capabilities(b"").is_ok());
        assert!(
            parse_client_capabilities(b"{\"capabilities\":{}}").is_err(),
            "no NUL"
        );
        assert!(parse_client_capabilities(b"{nope\0").is_err());
        assert!(parse_client_capabilities(&[0xff, 0xfe, 0]).is_err());
        let ours = server_capabilities();
        assert_eq!(ours.last(), Some(&0));
    }

    fn tempfile_like() -> File {
        let fd =
            nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
        File::from(fd)
    }
}
