//! How `edu-client` reaches the device: the kernel's VFIO ([`KernelPort`]) or a vfio-user
//! connection to `pci-passthrough serve` ([`VfioUserPort`]), behind one trait the checks use.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mdev::dma::{DmaMapping, DmaProt};
use mdev::irq::{IrqAction, IrqIndex, SetIrqsFlags};
use mdev::region::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::wire::{self, Command, Header, WireError, HEADER_SIZE};
use mdev::{ConnectionId, SharedMemory};
use pci_passthrough::dma::IommuSpace;
use pci_passthrough::host::{HostDevice, HostError, HostIrqSet, HostVfio};
use pci_passthrough::vfio_host::{VfioContainer, VfioDevice};
use pci_passthrough::PciAddress;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

/// Capabilities sent with VERSION.
const CLIENT_CAPS: &[u8] = b"{\"capabilities\":{\"max_msg_fds\":8}}\0";
/// Room offered for a region's capability chain (sparse mmap areas).
const REGION_INFO_CAPS_ROOM: usize = 256;
/// How long to wait for a server's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EduError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("vfio-user: {0}")]
    Wire(#[from] WireError),
    #[error(transparent)]
    Device(#[from] mdev::DeviceError),
    #[error("{what} refused with errno {errno}")]
    Refused { what: &'static str, errno: i32 },
    #[error("{0}: malformed reply")]
    BadReply(&'static str),
    #[error("{what}: read {got:#x}, expected {want:#x}")]
    Mismatch {
        what: &'static str,
        got: u64,
        want: u64,
    },
    #[error("the device has no {0}")]
    Missing(&'static str),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl EduError {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            EduError::Refused { errno, .. } => Some(*errno),
            EduError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// What the checks need from a way of reaching the device.
pub(crate) trait EduPort {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError>;
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError>;
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError>;
    fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError>;
    /// Lets the device reach `memory` at `iova`.
    fn dma_map(&mut self, iova: u64, memory: &SharedMemory) -> Result<(), EduError>;
    /// Routes MSI vector 0 to `efd`.
    fn route_msi(&mut self, efd: &EventFd) -> Result<(), EduError>;

    fn read32(&mut self, offset: u64) -> Result<u32, EduError> {
        let mut b = [0u8; 4];
        self.bar_read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn write32(&mut self, offset: u64, value: u32) -> Result<(), EduError> {
        self.bar_write(offset, &value.to_le_bytes())
    }
    fn read64(&mut self, offset: u64) -> Result<u64, EduError> {
        let mut b = [0u8; 8];
        self.bar_read(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    fn write64(&mut self, offset: u64, value: u64) -> Result<(), EduError> {
        self.bar_write(offset, &value.to_le_bytes())
    }
}

/// The kernel's VFIO: a type1 container, the group, the device fd.
pub(crate) struct KernelPort {
    device: VfioDevice,
    iommu: IommuSpace<VfioContainer>,
    config: u64,
    bar0: u64,
}

impl KernelPort {
    pub(crate) fn open(address: PciAddress) -> Result<Self, EduError> {
        let host = Arc::new(VfioContainer::new()?);
        let device = host.open(address)?;
        let offset = |index, name| match device.region_info(index) {
            Ok(r) if r.size > 0 => Ok(r.offset),
            _ => Err(EduError::Missing(name)),
        };
        let (config, bar0) = (
            offset(CONFIG_REGION_INDEX, "config space")?,
            offset(BAR0_REGION_INDEX, "BAR0")?,
        );
        Ok(KernelPort {
            iommu: IommuSpace::new(host),
            device,
            config,
            bar0,
        })
    }
}

impl EduPort for KernelPort {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError> {
        Ok(self.device.read(self.config + offset, data)?)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError> {
        Ok(self.device.write(self.config + offset, data)?)
    }
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError> {
        Ok(self.device.read(self.bar0 + offset, data)?)
    }
    fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError> {
        Ok(self.device.write(self.bar0 + offset, data)?)
    }
    fn dma_map(&mut self, iova: u64, memory: &SharedMemory) -> Result<(), EduError> {
        let map = DmaMapping {
            iova,
            size: memory.len() as u64,
            prot: DmaProt::READ | DmaProt::WRITE,
            file_offset: 0,
            file: Some(memory.file().clone()),
            memory: None,
        };
        Ok(self.iommu.map(ConnectionId(0), &map)?)
    }
    fn route_msi(&mut self, efd: &EventFd) -> Result<(), EduError> {
        Ok(self.device.set_irqs(&HostIrqSet {
            index: IrqIndex::Msi as u32,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            eventfds: Some(vec![efd.as_raw_fd()]),
        })?)
    }
}

/// A vfio-user connection to `pci-passthrough serve`.
pub(crate) struct VfioUserPort {
    sock: UnixStream,
    next_id: u16,
}

impl VfioUserPort {
    pub(crate) fn connect(path: &Path) -> Result<Self, EduError> {
        let sock = UnixStream::connect(path)?;
        sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut port = VfioUserPort { sock, next_id: 0 };
        let version = wire::VersionMsg {
            major: wire::VERSION_MAJOR,
            minor: wire::VERSION_MINOR,
        };
        port.request(
            "VERSION",
            Command::Version,
            &[version.as_slice(), CLIENT_CAPS],
            &[],
        )?;
        Ok(port)
    }

    /// Sends one command and returns its reply's payload, or the errno of an error reply.
    fn request(
        &mut self,
        what: &'static str,
        command: Command,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<Vec<u8>, EduError> {
        Ok(self.request_message(what, command, parts, fds)?.payload)
    }

    /// Sends one command and returns its whole reply, fds included, or the errno of an error
    /// reply.
    fn request_message(
        &mut self,
        what: &'static str,
        command: Command,
        parts: &[&[u8]],
        fds: &[RawFd],
    ) -> Result<wire::Message, EduError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let size = HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
        let header = Header {
            message_id: id,
            command: command as u16,
            message_size: u32::try_from(size).map_err(|_| EduError::BadReply(what))?,
            flags: wire::flags::TYPE_COMMAND,
            error: 0,
        };
        let mut all = vec![header.as_slice()];
        all.extend_from_slice(parts);
        wire::send(&self.sock, &all, fds)?;
        let reply = wire::read_message(&self.sock)?;
        if reply.header.message_id != id {
            return Err(EduError::BadReply(what));
        }
        if reply.header.flags & wire::flags::ERROR != 0 {
            return Err(EduError::Refused {
                what,
                errno: reply.header.error as i32,
            });
        }
        Ok(reply)
    }

    /// DEVICE_GET_REGION_INFO for `index`: the fixed part of the reply and every fd the
    /// server attached to it.
    pub(crate) fn region_info(
        &mut self,
        index: u32,
    ) -> Result<(wire::RegionInfoMsg, Vec<File>), EduError> {
        let head = std::mem::size_of::<wire::RegionInfoMsg>();
        let req = wire::RegionInfoMsg {
            argsz: (head + REGION_INFO_CAPS_ROOM) as u32,
            index,
            ..wire::RegionInfoMsg::default()
        };
        let reply = self.request_message(
            "DEVICE_GET_REGION_INFO",
            Command::DeviceGetRegionInfo,
            &[req.as_slice()],
            &[],
        )?;
        let info = reply
            .payload
            .get(..head)
            .and_then(wire::RegionInfoMsg::from_slice)
            .copied()
            .ok_or(EduError::BadReply("DEVICE_GET_REGION_INFO"))?;
        Ok((info, reply.fds))
    }

    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), EduError> {
        let req = wire::RegionAccessMsg {
            offset,
            region,
            count: data.len() as u32,
        };
        let head = std::mem::size_of::<wire::RegionAccessMsg>();
        let reply = self.request("REGION_READ", Command::RegionRead, &[req.as_slice()], &[])?;
        let bytes = reply
            .get(head..head + data.len())
            .ok_or(EduError::BadReply("REGION_READ"))?;
        data.copy_from_slice(bytes);
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), EduError> {
        let req = wire::RegionAccessMsg {
            offset,
            region,
            count: data.len() as u32,
        };
        self.request(
            "REGION_WRITE",
            Command::RegionWrite,
            &[req.as_slice(), data],
            &[],
        )?;
        Ok(())
    }

    pub(crate) fn reset(&mut self) -> Result<(), EduError> {
        self.request("DEVICE_RESET", Command::DeviceReset, &[], &[])?;
        Ok(())
    }
}

impl EduPort for VfioUserPort {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError> {
        self.region_read(CONFIG_REGION_INDEX, offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError> {
        self.region_write(CONFIG_REGION_INDEX, offset, data)
    }
    fn bar_read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), EduError> {
        self.region_read(BAR0_REGION_INDEX, offset, data)
    }
    fn bar_write(&mut self, offset: u64, data: &[u8]) -> Result<(), EduError> {
        self.region_write(BAR0_REGION_INDEX, offset, data)
    }
    fn dma_map(&mut self, iova: u64, memory: &SharedMemory) -> Result<(), EduError> {
        let map = wire::DmaMapMsg {
            argsz: std::mem::size_of::<wire::DmaMapMsg>() as u32,
            flags: (DmaProt::READ | DmaProt::WRITE).bits(),
            offset: 0,
            address: iova,
            size: memory.len() as u64,
        };
        let fd = memory.file().as_raw_fd();
        self.request("DMA_MAP", Command::DmaMap, &[map.as_slice()], &[fd])?;
        Ok(())
    }
    fn route_msi(&mut self, efd: &EventFd) -> Result<(), EduError> {
        let set = wire::SetIrqsMsg {
            argsz: std::mem::size_of::<wire::SetIrqsMsg>() as u32,
            flags: (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits(),
            index: IrqIndex::Msi as u32,
            start: 0,
            count: 1,
        };
        let fd = efd.as_raw_fd();
        self.request("SET_IRQS", Command::DeviceSetIrqs, &[set.as_slice()], &[fd])?;
        Ok(())
    }
}
