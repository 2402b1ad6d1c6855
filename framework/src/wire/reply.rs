//! Replies: every successful answer the server sends, encoded here (the region info's
//! capability chain included), so the server never handles a byte offset.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vm_memory::ByteValued;

use super::{
    send_reply, server_capabilities, CapHeader, DeviceInfoMsg, DmaUnmapMsg, Header, IrqInfoMsg,
    RegionAccessMsg, RegionInfoMsg, SparseAreaMsg, SparseMmapMsg, VersionMsg,
    REGION_INFO_CAP_SPARSE_MMAP, SPARSE_MMAP_CAP_VERSION,
};
use crate::irq::IrqIndexInfo;
use crate::region::{RegionFlags, RegionInfo};

/// A successful reply.
#[derive(Debug)]
pub enum Reply<'a> {
    /// VERSION: the version agreed and the server's capabilities.
    Version {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// DEVICE_GET_INFO.
    DeviceInfo {
        /// `vfio_device_info.flags`.
        flags: u32,
        /// Number of regions.
        num_regions: u32,
        /// Number of interrupt indices.
        num_irqs: u32,
    },
    /// DEVICE_GET_REGION_INFO of region `index`, for a client buffer of `argsz` bytes.
    RegionInfo {
        /// The region.
        index: u32,
        /// The client's buffer size.
        argsz: u32,
        /// What the region is.
        info: &'a RegionInfo,
    },
    /// DEVICE_GET_IRQ_INFO.
    IrqInfo {
        /// The index.
        index: u32,
        /// What it offers.
        info: IrqIndexInfo,
    },
    /// REGION_READ: the bytes read.
    RegionRead {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
        /// The data.
        data: &'a [u8],
    },
    /// REGION_WRITE: how much was written.
    RegionWrite {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
        /// Bytes written.
        count: u32,
    },
    /// DMA_UNMAP: the request echoed.
    DmaUnmap {
        /// Flags as sent.
        flags: u32,
        /// Address as sent.
        address: u64,
        /// Size as sent.
        size: u64,
    },
    /// A reply with no body (SET_IRQS, DMA_MAP, DEVICE_RESET).
    Empty,
}

/// The body of a region info reply: the head, the capability chain when the client's buffer
/// holds it, and the fd to send.
struct RegionInfoBody {
    head: RegionInfoMsg,
    caps: Vec<u8>,
    fd: Option<RawFd>,
}

fn region_info_body(index: u32, argsz: u32, info: &RegionInfo) -> RegionInfoBody {
    let head_size = size_of::<RegionInfoMsg>();
    let mut head = RegionInfoMsg {
        argsz: head_size as u32,
        flags: info.flags.bits(),
        index,
        cap_offset: 0,
        size: info.size,
        offset: 0,
    };
    let mut caps = Vec::new();
    let mut fd = None;
    if let Some(mmap) = &info.mmap {
        head.offset = mmap.file_offset;
        fd = Some(mmap.file.as_raw_fd());
        if !mmap.areas.is_empty() {
            let cap = SparseMmapMsg {
                header: CapHeader {
                    id: REGION_INFO_CAP_SPARSE_MMAP,
                    version: SPARSE_MMAP_CAP_VERSION,
                    next: 0,
                },
                nr_areas: mmap.areas.len() as u32,
                reserved: 0,
            };
            caps.extend_from_slice(cap.as_slice());
            for a in &mmap.areas {
                let area = SparseAreaMsg {
                    offset: a.offset,
                    size: a.size,
                };
                caps.extend_from_slice(area.as_slice());
            }
            head.argsz = (head_size + caps.len()) as u32;
            if argsz >= head.argsz {
                head.flags |= RegionFlags::CAPS.bits();
                head.cap_offset = head_size as u32;
            } else {
                // The client's buffer is too small: it learns the size it needs and gets no
                // capability. CAPS stays clear: QEMU rejects CAPS with a cap_offset outside
                // its buffer, and retries with the larger argsz.
                caps.clear();
            }
        }
    }
    RegionInfoBody { head, caps, fd }
}

impl Reply<'_> {
    /// Sends this reply to the command `request` on `sock`.
    pub fn send(&self, sock: &UnixStream, request: &Header) -> io::Result<()> {
        match self {
            Reply::Version { major, minor } => {
                let v = VersionMsg {
                    major: *major,
                    minor: *minor,
                };
                let caps = server_capabilities();
                send_reply(sock, request, &[v.as_slice(), &caps], &[])
            }
            Reply::DeviceInfo {
                flags,
                num_regions,
                num_irqs,
            } => {
                let info = DeviceInfoMsg {
                    argsz: size_of::<DeviceInfoMsg>() as u32,
                    flags: *flags,
                    num_regions: *num_regions,
                    num_irqs: *num_irqs,
                };
                send_reply(sock, request, &[info.as_slice()], &[])
            }
            Reply::RegionInfo { index, argsz, info } => {
                let body = region_info_body(*index, *argsz, info);
                let fds: &[RawFd] = match &body.fd {
                    Some(fd) => std::slice::from_ref(fd),
                    None => &[],
                };
                send_reply(sock, request, &[body.head.as_slice(), &body.caps], fds)
            }
            Reply::IrqInfo { index, info } => {
                let out = IrqInfoMsg {
                    argsz: size_of::<IrqInfoMsg>() as u32,
                    flags: info.flags.bits(),
                    index: *index,
                    count: info.count,
                };
                send_reply(sock, request, &[out.as_slice()], &[])
            }
            Reply::RegionRead {
                region,
                offset,
                data,
            } => {
                let head = RegionAccessMsg {
                    offset: *offset,
                    region: *region,
                    count: data.len() as u32,
                };
                send_reply(sock, request, &[head.as_slice(), data], &[])
            }
            Reply::RegionWrite {
                region,
                offset,
                count,
            } => {
                let head = RegionAccessMsg {
                    offset: *offset,
                    region: *region,
                    count: *count,
                };
                send_reply(sock, request, &[head.as_slice()], &[])
            }
            Reply::DmaUnmap {
                flags,
                address,
                size,
            } => {
                let out = DmaUnmapMsg {
                    argsz: size_of::<DmaUnmapMsg>() as u32,
                    flags: *flags,
                    address: *address,
                    size: *size,
                };
                send_reply(sock, request, &[out.as_slice()], &[])
            }
            Reply::Empty => send_reply(sock, request, &[], &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::SharedMemory;

    #[test]
    fn region_info_asks_for_a_larger_buffer_without_claiming_caps() {
        let mem = SharedMemory::new("reply", 4096).unwrap();
        let info = RegionInfo::shared(&mem);
        let small = region_info_body(0, 32, &info);
        assert_eq!(
            small.head.argsz,
            32 + 16 + 16,
            "head + sparse cap + one area"
        );
        assert_eq!(small.head.flags & RegionFlags::CAPS.bits(), 0);
        assert!(small.caps.is_empty());
        assert!(small.fd.is_some());
        let big = region_info_body(0, 64, &info);
        assert_ne!(big.head.flags & RegionFlags::CAPS.bits(), 0);
        assert_eq!(big.head.cap_offset, 32);
        assert_eq!(big.caps.len(), 32);
        let trapped = region_info_body(7, 32, &RegionInfo::trapped(256));
        assert!(trapped.fd.is_none() && trapped.caps.is_empty());
        assert_eq!(trapped.head.size, 256);
    }
}
