//! Typed requests: every command a client may send, parsed from a received [`Message`] and
//! validated once (struct sizes, `argsz`, flags, counts, data lengths, fd counts). A
//! [`Request`] that exists is well-formed; what is left to check needs the device (does the
//! region exist, is the access inside it, how many vectors does an index have).

use std::fs::File;
use std::mem::size_of;
use std::os::fd::{AsFd, BorrowedFd};

use vm_memory::ByteValued;

use super::{
    parse_client_capabilities, size32, ClientCapabilities, Command, DeviceInfoMsg, DmaMapMsg,
    DmaUnmapMsg, IrqInfoMsg, Message, RegionAccessMsg, RegionInfoMsg, SetIrqsMsg, VersionMsg,
    WireError, DMA_UNMAP_ALL, DMA_UNMAP_GET_DIRTY, MAX_DATA_XFER_SIZE,
};
use crate::dma::DmaProt;
use crate::irq::{IrqAction, IrqData, IrqIndex, IrqRequest, SetIrqsFlags};

/// What a `DMA_UNMAP` removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaUnmapRange {
    /// Every mapping of the connection.
    All,
    /// The mappings lying wholly inside `address..address + size`.
    Range {
        /// First IOVA.
        address: u64,
        /// Length in bytes.
        size: u64,
    },
}

/// A `DMA_MAP` request.
#[derive(Debug)]
pub struct DmaMapRequest {
    /// Allowed directions.
    pub prot: DmaProt,
    /// Offset of the range in `fd`.
    pub offset: u64,
    /// IOVA.
    pub address: u64,
    /// Length in bytes.
    pub size: u64,
    /// The memory, or `None` for a range announced without an fd.
    pub fd: Option<File>,
}

/// A validated command.
#[derive(Debug)]
pub enum Request {
    /// `VERSION`.
    Version {
        /// The client's major version.
        major: u16,
        /// The client's minor version.
        minor: u16,
        /// Its capabilities.
        capabilities: ClientCapabilities,
    },
    /// `DMA_MAP`.
    DmaMap(DmaMapRequest),
    /// `DMA_UNMAP`.
    DmaUnmap {
        /// The flags as sent (echoed in the reply).
        flags: u32,
        /// What to remove.
        range: DmaUnmapRange,
    },
    /// `DEVICE_GET_INFO`.
    GetDeviceInfo,
    /// `DEVICE_GET_REGION_INFO`.
    GetRegionInfo {
        /// The region index.
        index: u32,
        /// The size of the client's buffer for the reply (capabilities included).
        argsz: u32,
    },
    /// `DEVICE_GET_IRQ_INFO`.
    GetIrqInfo {
        /// The interrupt index.
        index: u32,
    },
    /// `DEVICE_SET_IRQS`.
    SetIrqs(IrqRequest),
    /// `REGION_READ`.
    RegionRead {
        /// Region index.
        region: u32,
        /// Offset in the region.
        offset: u64,
        /// Bytes to read, at most [`MAX_DATA_XFER_SIZE`].
        count: u32,
    },
    /// `REGION_WRITE`.
    RegionWrite {
        /// Region index.
        region: u32,
        /// Offset in the region.
        offset: u64,
        /// The bytes, at most [`MAX_DATA_XFER_SIZE`].
        data: Vec<u8>,
    },
    /// `DEVICE_RESET`.
    DeviceReset,
}

/// A request as a client puts it on the wire: the command, the payload after the header, and
/// the fds to pass with it.
#[derive(Debug)]
pub struct EncodedRequest<'a> {
    /// The command.
    pub command: Command,
    /// The bytes after the header.
    pub payload: Vec<u8>,
    /// The fds, in order.
    pub fds: Vec<BorrowedFd<'a>>,
}

/// Why a message is not a valid request. Each variant carries what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The command number is not one of the protocol's.
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// A command of the protocol this server does not offer.
    #[error("{0:?} is not supported")]
    Unsupported(Command),
    /// The payload is shorter than the command's fixed part.
    #[error("{command:?}: payload of {got} bytes, at least {need} needed")]
    Short {
        /// The command.
        command: Command,
        /// Bytes received.
        got: usize,
        /// Bytes the fixed part needs.
        need: usize,
    },
    /// The client's `argsz` is smaller than the command's struct.
    #[error("{command:?}: argsz {argsz} below {need}")]
    Argsz {
        /// The command.
        command: Command,
        /// What it said.
        argsz: u32,
        /// The struct's size.
        need: usize,
    },
    /// Flags with unknown bits, or a combination the command does not take.
    #[error("{command:?}: flags {flags:#x} {why}")]
    Flags {
        /// The command.
        command: Command,
        /// The flags.
        flags: u32,
        /// What is wrong with them.
        why: &'static str,
    },
    /// The wrong number of fds came with the message.
    #[error("{command:?}: {got} fds, {want}")]
    Fds {
        /// The command.
        command: Command,
        /// Fds received.
        got: usize,
        /// What the command takes.
        want: &'static str,
    },
    /// An interrupt index outside VFIO's PCI layout.
    #[error("no IRQ index {0}")]
    IrqIndex(u32),
    /// A data length that does not match its count, or exceeds the transfer limit.
    #[error("{command:?}: {what} {got}, {limit}")]
    Length {
        /// The command.
        command: Command,
        /// What was measured.
        what: &'static str,
        /// Its value.
        got: u64,
        /// The rule it broke.
        limit: String,
    },
    /// The VERSION capability string is malformed.
    #[error("VERSION capabilities: {0}")]
    Capabilities(WireError),
}

impl RequestError {
    /// The errno for the error reply.
    pub fn errno(&self) -> i32 {
        match self {
            RequestError::UnknownCommand(_) | RequestError::Unsupported(_) => libc::ENOTSUP,
            _ => libc::EINVAL,
        }
    }
}

/// The fixed struct `T` at the start of `msg`'s payload.
fn fixed<T: ByteValued + Default>(msg: &Message, command: Command) -> Result<T, RequestError> {
    let need = size_of::<T>();
    let bytes = msg.payload.get(..need).ok_or(RequestError::Short {
        command,
        got: msg.payload.len(),
        need,
    })?;
    // Copied into an aligned value: the payload's alignment is not the struct's.
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(bytes);
    Ok(value)
}

/// Refuses fds on a command that takes none.
fn no_fds(msg: &Message, command: Command) -> Result<(), RequestError> {
    if msg.fds.is_empty() {
        Ok(())
    } else {
        Err(RequestError::Fds {
            command,
            got: msg.fds.len(),
            want: "none taken",
        })
    }
}

fn argsz(command: Command, argsz: u32, need: usize) -> Result<(), RequestError> {
    if (argsz as usize) < need {
        return Err(RequestError::Argsz {
            command,
            argsz,
            need,
        });
    }
    Ok(())
}

fn transfer(command: Command, count: u32) -> Result<(), RequestError> {
    if count > MAX_DATA_XFER_SIZE {
        return Err(RequestError::Length {
            command,
            what: "count",
            got: u64::from(count),
            limit: format!("at most max_data_xfer_size {MAX_DATA_XFER_SIZE}"),
        });
    }
    Ok(())
}

impl Request {
    /// Parses and validates `msg` (a command; its fds move into the request where the
    /// command takes them and are dropped otherwise).
    pub fn parse(msg: Message) -> Result<Request, RequestError> {
        let command = Command::from_u16(msg.header.command)
            .ok_or(RequestError::UnknownCommand(msg.header.command))?;
        match command {
            Command::Version => {
                no_fds(&msg, command)?;
                let v: VersionMsg = fixed(&msg, command)?;
                let capabilities = parse_client_capabilities(msg.tail::<VersionMsg>())
                    .map_err(RequestError::Capabilities)?;
                Ok(Request::Version {
                    major: v.major,
                    minor: v.minor,
                    capabilities,
                })
            }
            Command::DmaMap => parse_dma_map(msg),
            Command::DmaUnmap => {
                no_fds(&msg, command)?;
                let req: DmaUnmapMsg = fixed(&msg, command)?;
                argsz(command, req.argsz, size_of::<DmaUnmapMsg>())?;
                let bad = |why| RequestError::Flags {
                    command,
                    flags: req.flags,
                    why,
                };
                if req.flags & DMA_UNMAP_GET_DIRTY != 0 {
                    return Err(RequestError::Unsupported(Command::DirtyPages));
                }
                if req.flags & !DMA_UNMAP_ALL != 0 {
                    return Err(bad("has unknown bits"));
                }
                let range = if req.flags & DMA_UNMAP_ALL != 0 {
                    if req.address != 0 || req.size != 0 {
                        return Err(bad("(UNMAP_ALL) come with an address or size"));
                    }
                    DmaUnmapRange::All
                } else {
                    DmaUnmapRange::Range {
                        address: req.address,
                        size: req.size,
                    }
                };
                Ok(Request::DmaUnmap {
                    flags: req.flags,
                    range,
                })
            }
            Command::DeviceGetInfo => {
                no_fds(&msg, command)?;
                let req: DeviceInfoMsg = fixed(&msg, command)?;
                argsz(command, req.argsz, size_of::<DeviceInfoMsg>())?;
                Ok(Request::GetDeviceInfo)
            }
            Command::DeviceGetRegionInfo => {
                no_fds(&msg, command)?;
                let req: RegionInfoMsg = fixed(&msg, command)?;
                argsz(command, req.argsz, size_of::<RegionInfoMsg>())?;
                Ok(Request::GetRegionInfo {
                    index: req.index,
                    argsz: req.argsz,
                })
            }
            Command::DeviceGetIrqInfo => {
                no_fds(&msg, command)?;
                let req: IrqInfoMsg = fixed(&msg, command)?;
                Ok(Request::GetIrqInfo { index: req.index })
            }
            Command::DeviceSetIrqs => parse_set_irqs(msg),
            Command::RegionRead => {
                no_fds(&msg, command)?;
                let req: RegionAccessMsg = fixed(&msg, command)?;
                transfer(command, req.count)?;
                Ok(Request::RegionRead {
                    region: req.region,
                    offset: req.offset,
                    count: req.count,
                })
            }
            Command::RegionWrite => {
                no_fds(&msg, command)?;
                let req: RegionAccessMsg = fixed(&msg, command)?;
                transfer(command, req.count)?;
                let data = msg.tail::<RegionAccessMsg>();
                if data.len() != req.count as usize {
                    return Err(RequestError::Length {
                        command,
                        what: "data bytes",
                        got: data.len() as u64,
                        limit: format!("count says {}", req.count),
                    });
                }
                Ok(Request::RegionWrite {
                    region: req.region,
                    offset: req.offset,
                    data: data.to_vec(),
                })
            }
            Command::DeviceReset => {
                no_fds(&msg, command)?;
                Ok(Request::DeviceReset)
            }
            Command::DeviceGetRegionIoFds
            | Command::DmaRead
            | Command::DmaWrite
            | Command::DirtyPages => Err(RequestError::Unsupported(command)),
        }
    }

    /// The command this request answers to.
    pub fn command(&self) -> Command {
        match self {
            Request::Version { .. } => Command::Version,
            Request::DmaMap(_) => Command::DmaMap,
            Request::DmaUnmap { .. } => Command::DmaUnmap,
            Request::GetDeviceInfo => Command::DeviceGetInfo,
            Request::GetRegionInfo { .. } => Command::DeviceGetRegionInfo,
            Request::GetIrqInfo { .. } => Command::DeviceGetIrqInfo,
            Request::SetIrqs(_) => Command::DeviceSetIrqs,
            Request::RegionRead { .. } => Command::RegionRead,
            Request::RegionWrite { .. } => Command::RegionWrite,
            Request::DeviceReset => Command::DeviceReset,
        }
    }
}

impl Request {
    /// Encodes the request as a client sends it; [`Request::parse`] of the result gives an
    /// equal request back (a VERSION's capability string keeps only the keys this server
    /// reads).
    pub fn encode(&self) -> EncodedRequest<'_> {
        let mut fds = Vec::new();
        let payload = match self {
            Request::Version {
                major,
                minor,
                capabilities,
            } => {
                let mut p = VersionMsg {
                    major: *major,
                    minor: *minor,
                }
                .as_slice()
                .to_vec();
                let mut caps = serde_json::Map::new();
                if let Some(n) = capabilities.max_msg_fds {
                    caps.insert("max_msg_fds".into(), n.into());
                }
                if let Some(n) = capabilities.max_data_xfer_size {
                    caps.insert("max_data_xfer_size".into(), n.into());
                }
                let json = serde_json::json!({ "capabilities": caps });
                p.extend_from_slice(json.to_string().as_bytes());
                p.push(0);
                p
            }
            Request::DmaMap(m) => {
                fds.extend(m.fd.as_ref().map(File::as_fd));
                DmaMapMsg {
                    argsz: size32::<DmaMapMsg>(),
                    flags: m.prot.bits(),
                    offset: m.offset,
                    address: m.address,
                    size: m.size,
                }
                .as_slice()
                .to_vec()
            }
            Request::DmaUnmap { flags, range } => {
                let (address, size) = match range {
                    DmaUnmapRange::All => (0, 0),
                    DmaUnmapRange::Range { address, size } => (*address, *size),
                };
                DmaUnmapMsg {
                    argsz: size32::<DmaUnmapMsg>(),
                    flags: *flags,
                    address,
                    size,
                }
                .as_slice()
                .to_vec()
            }
            Request::GetDeviceInfo => DeviceInfoMsg {
                argsz: size32::<DeviceInfoMsg>(),
                ..Default::default()
            }
            .as_slice()
            .to_vec(),
            Request::GetRegionInfo { index, argsz } => RegionInfoMsg {
                argsz: *argsz,
                index: *index,
                ..Default::default()
            }
            .as_slice()
            .to_vec(),
            Request::GetIrqInfo { index } => IrqInfoMsg {
                argsz: size32::<IrqInfoMsg>(),
                index: *index,
                ..Default::default()
            }
            .as_slice()
            .to_vec(),
            Request::SetIrqs(req) => encode_set_irqs(req, &mut fds),
            Request::RegionRead {
                region,
                offset,
                count,
            } => RegionAccessMsg {
                offset: *offset,
                region: *region,
                count: *count,
            }
            .as_slice()
            .to_vec(),
            Request::RegionWrite {
                region,
                offset,
                data,
            } => {
                let mut p = RegionAccessMsg {
                    offset: *offset,
                    region: *region,
                    count: u32::try_from(data.len()).unwrap_or(u32::MAX),
                }
                .as_slice()
                .to_vec();
                p.extend_from_slice(data);
                p
            }
            Request::DeviceReset => Vec::new(),
        };
        EncodedRequest {
            command: self.command(),
            payload,
            fds,
        }
    }
}

fn encode_set_irqs<'a>(req: &'a IrqRequest, fds: &mut Vec<BorrowedFd<'a>>) -> Vec<u8> {
    let action = match req.action {
        IrqAction::Mask => SetIrqsFlags::ACTION_MASK,
        IrqAction::Unmask => SetIrqsFlags::ACTION_UNMASK,
        IrqAction::Trigger => SetIrqsFlags::ACTION_TRIGGER,
    };
    let (data, bools) = match &req.data {
        IrqData::None => (SetIrqsFlags::DATA_NONE, Vec::new()),
        IrqData::Bool(b) => (
            SetIrqsFlags::DATA_BOOL,
            b.iter().map(|&b| u8::from(b)).collect(),
        ),
        IrqData::Eventfds(files) => {
            fds.extend(files.iter().map(File::as_fd));
            (SetIrqsFlags::DATA_EVENTFD, Vec::new())
        }
    };
    let mut p = SetIrqsMsg {
        argsz: u32::try_from(size_of::<SetIrqsMsg>() + bools.len()).unwrap_or(u32::MAX),
        flags: (action | data).bits(),
        index: req.index as u32,
        start: req.start,
        count: req.count,
    }
    .as_slice()
    .to_vec();
    p.extend_from_slice(&bools);
    p
}

fn parse_dma_map(mut msg: Message) -> Result<Request, RequestError> {
    let command = Command::DmaMap;
    let req: DmaMapMsg = fixed(&msg, command)?;
    argsz(command, req.argsz, size_of::<DmaMapMsg>())?;
    let prot = DmaProt::from_bits(req.flags).ok_or(RequestError::Flags {
        command,
        flags: req.flags,
        why: "has unknown bits",
    })?;
    if msg.fds.len() > 1 {
        return Err(RequestError::Fds {
            command,
            got: msg.fds.len(),
            want: "at most 1 taken",
        });
    }
    Ok(Request::DmaMap(DmaMapRequest {
        prot,
        offset: req.offset,
        address: req.address,
        size: req.size,
        fd: msg.fds.pop(),
    }))
}

fn parse_set_irqs(msg: Message) -> Result<Request, RequestError> {
    let command = Command::DeviceSetIrqs;
    let req: SetIrqsMsg = fixed(&msg, command)?;
    let bad = |why| RequestError::Flags {
        command,
        flags: req.flags,
        why,
    };
    let flags = SetIrqsFlags::from_bits(req.flags).ok_or(bad("has unknown bits"))?;
    let data_bits = flags & SetIrqsFlags::DATA_MASK;
    let action_bits = flags & SetIrqsFlags::ACTION_MASK_BITS;
    if data_bits.bits().count_ones() != 1 || action_bits.bits().count_ones() != 1 {
        return Err(bad("need one data type and one action"));
    }
    let index = IrqIndex::from_u32(req.index).ok_or(RequestError::IrqIndex(req.index))?;
    let action = if action_bits == SetIrqsFlags::ACTION_MASK {
        IrqAction::Mask
    } else if action_bits == SetIrqsFlags::ACTION_UNMASK {
        IrqAction::Unmask
    } else {
        IrqAction::Trigger
    };
    let count = req.count as usize;
    let data = if data_bits == SetIrqsFlags::DATA_EVENTFD {
        if msg.fds.len() != count {
            return Err(RequestError::Fds {
                command,
                got: msg.fds.len(),
                want: "one per vector needed",
            });
        }
        IrqData::Eventfds(msg.fds)
    } else {
        no_fds(&msg, command)?;
        if data_bits == SetIrqsFlags::DATA_BOOL {
            let bools = msg.tail::<SetIrqsMsg>();
            let bools = bools.get(..count).ok_or(RequestError::Length {
                command,
                what: "DATA_BOOL bytes",
                got: bools.len() as u64,
                limit: format!("count says {count}"),
            })?;
            IrqData::Bool(bools.iter().map(|b| *b != 0).collect())
        } else {
            IrqData::None
        }
    };
    Ok(Request::SetIrqs(IrqRequest {
        index,
        start: req.start,
        count: req.count,
        action,
        data,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    fn msg(command: Command, payload: &[u8], fds: usize) -> Message {
        let fds = (0..fds)
            .map(|_| {
                File::from(
                    nix::sys::memfd::memfd_create(
                        c"req",
                        nix::sys::memfd::MemFdCreateFlag::empty(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        Message {
            header: Header {
                command: command as u16,
                ..Default::default()
            },
            payload: payload.to_vec(),
            fds,
        }
    }

    #[test]
    fn every_structural_rule_is_checked_once_here() {
        let access = RegionAccessMsg {
            offset: 0,
            region: 0,
            count: 4,
        };
        let mut write = access.as_slice().to_vec();
        write.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            Request::parse(msg(Command::RegionWrite, &write, 0)),
            Err(RequestError::Length { .. })
        ));
        write.push(4);
        assert!(matches!(
            Request::parse(msg(Command::RegionWrite, &write, 0)),
            Ok(Request::RegionWrite { ref data, .. }) if data == &[1, 2, 3, 4]
        ));
        assert!(matches!(
            Request::parse(msg(Command::RegionWrite, &write, 1)),
            Err(RequestError::Fds { .. })
        ));
        let huge = RegionAccessMsg {
            count: MAX_DATA_XFER_SIZE + 1,
            ..access
        };
        assert!(Request::parse(msg(Command::RegionRead, huge.as_slice(), 0)).is_err());
        assert!(matches!(
            Request::parse(msg(Command::RegionRead, &[0; 3], 0)),
            Err(RequestError::Short { need: 16, .. })
        ));
        let e = Request::parse(msg(Command::DirtyPages, &[], 0)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
        let e = Request::parse(Message {
            header: Header {
                command: 99,
                ..Default::default()
            },
            payload: vec![],
            fds: vec![],
        })
        .unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
    }

    #[test]
    fn set_irqs_takes_exactly_one_eventfd_per_vector_and_fds_nowhere_else() {
        let set = |flags: u32, count: u32| SetIrqsMsg {
            argsz: 20,
            flags,
            index: 1,
            start: 0,
            count,
        };
        let eventfd_trigger = (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits();
        assert!(Request::parse(msg(
            Command::DeviceSetIrqs,
            set(eventfd_trigger, 2).as_slice(),
            2
        ))
        .is_ok());
        assert!(Request::parse(msg(
            Command::DeviceSetIrqs,
            set(eventfd_trigger, 2).as_slice(),
            1
        ))
        .is_err());
        let none_trigger = (SetIrqsFlags::DATA_NONE | SetIrqsFlags::ACTION_TRIGGER).bits();
        assert!(Request::parse(msg(
            Command::DeviceSetIrqs,
            set(none_trigger, 0).as_slice(),
            0
        ))
        .is_ok());
        assert!(Request::parse(msg(
            Command::DeviceSetIrqs,
            set(none_trigger, 0).as_slice(),
            1
        ))
        .is_err());
        assert!(Request::parse(msg(Command::DeviceSetIrqs, set(0x3f, 1).as_slice(), 0)).is_err());
        assert!(Request::parse(msg(Command::DeviceSetIrqs, set(1 << 9, 1).as_slice(), 0)).is_err());
        let bools = (SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_TRIGGER).bits();
        let mut m = set(bools, 3).as_slice().to_vec();
        m.extend_from_slice(&[1, 0]);
        assert!(Request::parse(msg(Command::DeviceSetIrqs, &m, 0)).is_err());
        m.push(1);
        assert!(matches!(
            Request::parse(msg(Command::DeviceSetIrqs, &m, 0)),
            Ok(Request::SetIrqs(IrqRequest { data: IrqData::Bool(ref b), .. })) if b == &[true, false, true]
        ));
    }

    #[test]
    fn dma_requests_check_flags_argsz_and_fds() {
        let map = DmaMapMsg {
            argsz: 32,
            flags: 3,
            offset: 0,
            address: 0x1000,
            size: 0x1000,
        };
        assert!(matches!(
            Request::parse(msg(Command::DmaMap, map.as_slice(), 1)),
            Ok(Request::DmaMap(DmaMapRequest { fd: Some(_), .. }))
        ));
        assert!(Request::parse(msg(Command::DmaMap, map.as_slice(), 2)).is_err());
        let small = DmaMapMsg { argsz: 8, ..map };
        assert!(matches!(
            Request::parse(msg(Command::DmaMap, small.as_slice(), 0)),
            Err(RequestError::Argsz { .. })
        ));
        let all = DmaUnmapMsg {
            argsz: 24,
            flags: DMA_UNMAP_ALL,
            address: 0,
            size: 0,
        };
        assert!(matches!(
            Request::parse(msg(Command::DmaUnmap, all.as_slice(), 0)),
            Ok(Request::DmaUnmap {
                range: DmaUnmapRange::All,
                ..
            })
        ));
        let bad = DmaUnmapMsg { size: 1, ..all };
        assert!(Request::parse(msg(Command::DmaUnmap, bad.as_slice(), 0)).is_err());
        let dirty = DmaUnmapMsg {
            flags: DMA_UNMAP_GET_DIRTY,
            ..all
        };
        let e = Request::parse(msg(Command::DmaUnmap, dirty.as_slice(), 0)).unwrap_err();
        assert_eq!(e.errno(), libc::ENOTSUP);
    }

    #[test]
    fn every_request_encodes_to_what_parses_back_to_it() {
        let map = DmaMapMsg {
            argsz: 40,
            flags: 1,
            offset: 8,
            address: 0x1000,
            size: 0x2000,
        };
        let bools = SetIrqsMsg {
            argsz: 22,
            flags: (SetIrqsFlags::DATA_BOOL | SetIrqsFlags::ACTION_MASK).bits(),
            index: 1,
            start: 2,
            count: 2,
        };
        let mut bools = bools.as_slice().to_vec();
        bools.extend_from_slice(&[0, 7]);
        let mut version = VersionMsg { major: 0, minor: 3 }.as_slice().to_vec();
        version.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":4,\"other\":1}}\0");
        let mut write = RegionAccessMsg {
            offset: 3,
            region: 2,
            count: 2,
        }
        .as_slice()
        .to_vec();
        write.extend_from_slice(&[9, 9]);
        let cases = [
            msg(Command::Version, &version, 0),
            msg(Command::DmaMap, map.as_slice(), 1),
            msg(Command::DeviceSetIrqs, &bools, 0),
            msg(Command::RegionWrite, &write, 0),
            msg(Command::DeviceReset, &[], 0),
        ];
        for m in cases {
            let first = Request::parse(m).unwrap();
            let e = first.encode();
            let again = Message {
                header: Header {
                    command: e.command as u16,
                    ..Default::default()
                },
                payload: e.payload.clone(),
                fds: e
                    .fds
                    .iter()
                    .map(|f| File::from(f.try_clone_to_owned().unwrap()))
                    .collect(),
            };
            let back = Request::parse(again).unwrap();
            assert_eq!(back.command(), first.command());
            assert_eq!(back.encode().payload, e.payload, "{first:?}");
            assert_eq!(back.encode().fds.len(), e.fds.len());
        }
    }
}
