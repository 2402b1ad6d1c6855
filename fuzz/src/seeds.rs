//! Seeds for the corpora: client traffic recorded by a server (`MDEV_RECORD_DIR`, the format
//! of `mdev::server::RECORD_DIR_ENV`), and the messages of the hostile-client tests
//! (`tests/tests/framework_hostile.rs`), written as inputs of the `wire` and `server` targets.

use mdev::dma::DmaProt;
use mdev::irq::SetIrqsFlags;
use mdev::wire::{
    self, flags, Command, DeviceInfoMsg, DmaMapMsg, DmaUnmapMsg, Header, RegionAccessMsg,
    RegionInfoMsg, SetIrqsMsg, VersionMsg, HEADER_SIZE, MAX_DATA_XFER_SIZE, MAX_MESSAGE_SIZE,
};
use vm_memory::ByteValued;

use crate::fds::FdKind;
use crate::targets::server::DeviceKind;

/// One message of a recording: the fds that came with it and its bytes (header first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Number of fds.
    pub fds: u8,
    /// The message.
    pub bytes: Vec<u8>,
}

impl Recorded {
    /// The message's command number.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }

    /// The fd byte of a target input: the count, and the kind such a message carries.
    pub fn fd_byte(&self) -> u8 {
        let kind = if self.command() == Command::DmaMap as u16 {
            FdKind::SealedMemfd
        } else {
            FdKind::EventFd
        };
        self.fds.min(0x1f) | (kind.bits() << 5)
    }
}

/// The messages of a recording; a truncated last record is dropped.
pub fn read_recording(mut bytes: &[u8]) -> Vec<Recorded> {
    let mut out = Vec::new();
    while let [fds, a, b, c, d, rest @ ..] = bytes {
        let len = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
        if len < HEADER_SIZE || rest.len() < len {
            break;
        }
        out.push(Recorded {
            fds: *fds,
            bytes: rest[..len].to_vec(),
        });
        bytes = &rest[len..];
    }
    out
}

/// A `server` input: `device`, then each message sent on one connection.
pub fn server_input(device: DeviceKind, messages: &[Recorded]) -> Vec<u8> {
    let mut out = vec![device.byte()];
    for m in messages {
        let Ok(len) = u16::try_from(m.bytes.len()) else {
            continue;
        };
        out.push(0);
        out.push(m.fd_byte());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&m.bytes);
    }
    out
}

/// A `wire` input: the messages back to back, the fds of the first that has any sent with
/// the first byte.
pub fn wire_input(messages: &[Recorded]) -> Vec<u8> {
    let fd_byte = messages
        .iter()
        .find(|m| m.fds > 0)
        .map_or(0, Recorded::fd_byte);
    let mut out = vec![fd_byte, 0];
    for m in messages {
        out.extend_from_slice(&m.bytes);
    }
    out
}

/// A message: header (size from the payload unless `size` is given) and payload.
pub fn message(id: u16, command: u16, flags: u32, payload: &[u8], size: Option<u32>) -> Vec<u8> {
    let header = Header {
        message_id: id,
        command,
        message_size: size.unwrap_or((HEADER_SIZE + payload.len()) as u32),
        flags,
        error: 0,
    };
    let mut out = header.as_slice().to_vec();
    out.extend_from_slice(payload);
    out
}

fn plain(bytes: Vec<u8>) -> Recorded {
    Recorded { fds: 0, bytes }
}

fn with_fds(fds: u8, bytes: Vec<u8>) -> Recorded {
    Recorded { fds, bytes }
}

fn version(caps: &[u8]) -> Vec<u8> {
    let mut p = VersionMsg { major: 0, minor: 1 }.as_slice().to_vec();
    p.extend_from_slice(caps);
    message(0, Command::Version as u16, 0, &p, None)
}

fn good_version() -> Recorded {
    plain(version(b"{\"capabilities\":{\"max_msg_fds\":8}}\0"))
}

fn access(id: u16, command: Command, region: u32, offset: u64, count: u32, data: &[u8]) -> Vec<u8> {
    let mut p = RegionAccessMsg {
        offset,
        region,
        count,
    }
    .as_slice()
    .to_vec();
    p.extend_from_slice(data);
    message(id, command as u16, 0, &p, None)
}

fn set_irqs(id: u16, flags: u32, index: u32, start: u32, count: u32) -> Vec<u8> {
    let p = SetIrqsMsg {
        argsz: 20,
        flags,
        index,
        start,
        count,
    };
    message(id, Command::DeviceSetIrqs as u16, 0, p.as_slice(), None)
}

fn dma_map(id: u16, flags: u32, address: u64, size: u64) -> Vec<u8> {
    let p = DmaMapMsg {
        argsz: 32,
        flags,
        offset: 0,
        address,
        size,
    };
    message(id, Command::DmaMap as u16, 0, p.as_slice(), None)
}

fn dma_unmap(id: u16, flags: u32, address: u64, size: u64) -> Vec<u8> {
    let p = DmaUnmapMsg {
        argsz: 24,
        flags,
        address,
        size,
    };
    message(id, Command::DmaUnmap as u16, 0, p.as_slice(), None)
}

/// The hostile tests' messages, one sequence per test, each starting on a fresh connection.
pub fn hostile() -> Vec<(&'static str, Vec<Recorded>)> {
    use Command::*;
    let rw = (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits();
    let bools = (SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_TRIGGER).bits();
    let unmask = (SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_UNMASK).bits();
    let prot = DmaProt::all().bits();
    let info = DeviceInfoMsg {
        argsz: 16,
        ..Default::default()
    };
    let region_info = |argsz| RegionInfoMsg {
        argsz,
        index: 0,
        ..Default::default()
    };
    vec![
        (
            "bad-region-accesses",
            vec![
                good_version(),
                plain(access(1, RegionRead, 99, 0, 4, &[])),
                plain(access(2, RegionRead, 1, 0, 4, &[])),
                plain(access(3, RegionRead, 0, 4094, 4, &[])),
                plain(access(4, RegionRead, 0, u64::MAX - 1, 4, &[])),
                plain(access(5, RegionRead, 0, 0, u32::MAX, &[])),
                plain(access(6, RegionRead, 2, 0, MAX_DATA_XFER_SIZE + 1, &[])),
                plain(access(7, RegionWrite, 42, 0, 8, &[0xaa; 8])),
                plain(access(8, RegionWrite, 0, 0, 64, &[0xbb; 8])),
                plain(message(9, RegionRead as u16, 0, &[1, 2, 3], None)),
                plain(access(10, RegionWrite, 0, 0x20, 4, &[0x5a; 4])),
                plain(access(11, RegionRead, 0, 0x20, 4, &[])),
            ],
        ),
        (
            "unknown-and-unsupported-commands",
            vec![
                good_version(),
                plain(message(1, 99, 0, &[], None)),
                plain(message(2, DmaRead as u16, 0, &[0; 16], None)),
                plain(message(3, DirtyPages as u16, 0, &[0; 16], None)),
                plain(message(4, DeviceGetRegionIoFds as u16, 0, &[0; 16], None)),
                plain(message(5, Version as u16, 0, &[0; 4], None)),
            ],
        ),
        (
            "version-without-nul",
            vec![plain(version(b"{\"capabilities\":{}}"))],
        ),
        ("version-bad-json", vec![plain(version(b"{nope\0"))]),
        (
            "version-not-utf8",
            vec![plain(version(&[0xff, 0xfe, 0x00]))],
        ),
        (
            "version-unknown-keys",
            vec![plain(version(
                b"{\"capabilities\":{\"twin_socket\":{\"supported\":true}},\"x\":1}\0",
            ))],
        ),
        (
            "first-message-not-version",
            vec![plain(access(0, RegionRead, 0, 0, 4, &[]))],
        ),
        (
            "framing-size-zero",
            vec![
                good_version(),
                plain(message(5, RegionWrite as u16, 0, &[], Some(0))),
            ],
        ),
        (
            "framing-size-eight",
            vec![
                good_version(),
                plain(message(5, RegionWrite as u16, 0, &[], Some(8))),
            ],
        ),
        (
            "framing-size-too-large",
            vec![
                good_version(),
                plain(message(
                    5,
                    RegionWrite as u16,
                    0,
                    &[],
                    Some(MAX_MESSAGE_SIZE + 1),
                )),
            ],
        ),
        (
            "framing-size-max",
            vec![
                good_version(),
                plain(message(5, RegionWrite as u16, 0, &[], Some(u32::MAX))),
            ],
        ),
        (
            "bad-interrupt-requests",
            vec![
                good_version(),
                plain(set_irqs(1, 0x3f, 0, 0, 1)),
                plain(set_irqs(2, 0x1000, 0, 0, 1)),
                plain(set_irqs(3, 0x21, 9, 0, 1)),
                plain(set_irqs(4, 0x21, 0, 1, 1)),
                plain(set_irqs(5, 0x21, 1, u32::MAX, 1)),
                plain(set_irqs(6, rw, 0, 0, 1)),
                plain(set_irqs(7, bools, 0, 0, 1)),
                with_fds(2, set_irqs(8, rw, 0, 0, 1)),
                with_fds(1, set_irqs(9, rw, 0, 0, 1)),
                plain(set_irqs(10, unmask, 0, 0, 1)),
            ],
        ),
        (
            "bad-dma-requests",
            vec![
                good_version(),
                plain(dma_map(1, prot, 0x1000, 0)),
                plain(dma_map(2, prot, u64::MAX - 10, 0x1000)),
                plain(dma_map(3, 0x80, 0x1000, 0x1000)),
                with_fds(2, dma_map(4, prot, 0x1000, 0x1000)),
                plain(dma_map(5, prot, 0xfffc_0000, 0x40000)),
                plain(dma_map(6, prot, 0xfffd_0000, 0x1000)),
                plain(dma_unmap(7, 0, 0xfffc_0000, 0x1000)),
                with_fds(1, dma_map(8, prot, 0x10_0000, 0x1_0000)),
                plain(dma_unmap(9, wire::DMA_UNMAP_ALL, 0, 0)),
            ],
        ),
        (
            "too-many-fds",
            vec![good_version(), with_fds(20, set_irqs(1, rw, 0, 0, 20))],
        ),
        (
            "posted-writes",
            vec![
                good_version(),
                plain(message(
                    1,
                    RegionWrite as u16,
                    flags::NO_REPLY,
                    &access(0, RegionWrite, 0, 0x30, 4, &7u32.to_le_bytes())[HEADER_SIZE..],
                    None,
                )),
                plain(message(
                    2,
                    RegionWrite as u16,
                    flags::NO_REPLY,
                    &access(0, RegionWrite, 77, 0, 4, &[0; 4])[HEADER_SIZE..],
                    None,
                )),
                plain(access(3, RegionRead, 0, 0x30, 4, &[])),
            ],
        ),
        (
            "region-info-small-buffer",
            vec![
                good_version(),
                plain(message(
                    1,
                    DeviceGetRegionInfo as u16,
                    0,
                    region_info(32).as_slice(),
                    None,
                )),
                plain(message(
                    2,
                    DeviceGetRegionInfo as u16,
                    0,
                    region_info(64).as_slice(),
                    None,
                )),
                plain(message(3, DeviceGetInfo as u16, 0, info.as_slice(), None)),
            ],
        ),
        ("fd-flood-on-version", vec![with_fds(24, version(b"{}\0"))]),
        (
            "fd-flood-on-device-info",
            vec![
                good_version(),
                with_fds(
                    24,
                    message(1, DeviceGetInfo as u16, 0, info.as_slice(), None),
                ),
            ],
        ),
        (
            "fd-flood-on-dma-map",
            vec![
                good_version(),
                with_fds(24, dma_map(1, prot, 0x10_0000, 0x1000)),
            ],
        ),
        (
            "reset-and-irq-info",
            vec![
                good_version(),
                plain(message(1, DeviceReset as u16, 0, &[], None)),
                plain(message(
                    2,
                    DeviceGetIrqInfo as u16,
                    0,
                    &[16, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
                    None,
                )),
                with_fds(1, set_irqs(3, rw, 1, 0, 1)),
                plain(message(4, DeviceReset as u16, 0, &[], None)),
            ],
        ),
    ]
}
