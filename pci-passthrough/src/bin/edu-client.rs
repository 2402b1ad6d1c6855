//! `edu-client`: the guest-side program of the nested passthrough test. It drives QEMU's
//! `edu` device either directly through the kernel's VFIO (`vfio ADDRESS`) or through
//! `pci-passthrough serve` over vfio-user (`vfio-user SOCKET`), and prints one `PASS`/`FAIL`
//! line per check: identification, liveness, factorial, MSI on an eventfd, DMA round trip.
//! `hold` keeps a device open (a second owner) and `reset` checks the reset rules.
//!
//! Build it static to run in a busybox guest:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
//!  --target x86_64-unknown-linux-gnu -p pci-passthrough --bin edu-client`.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use mdev::dma::{DmaMapping, DmaProt};
use mdev::irq::{IrqAction, IrqIndex, SetIrqsFlags};
use mdev::region::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::wire::{self, Command, Header, WireError, HEADER_SIZE};
use mdev::{ConnectionId, SharedMemory};
use pci_passthrough::dma::IommuSpace;
use pci_passthrough::edu::*;
use pci_passthrough::host::{HostDevice, HostError, HostIrqSet, HostVfio};
use pci_passthrough::vfio_host::{VfioContainer, VfioDevice};
use pci_passthrough::PciAddress;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// PCI command register and its bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;
/// Where the client's DMA buffer sits in the device's view (below the 28-bit edu mask).
const DMA_IOVA: u64 = 0x10_0000;
/// Size of the client's DMA buffer.
const DMA_MEMORY_SIZE: u64 = 0x2000;
/// Where in the buffer the device writes back.
const DMA_RETURN_OFFSET: u64 = 0x1000;
/// Bytes moved each way.
const DMA_LEN: usize = 256;
/// 10!, what the factorial register must give for 10.
const FACTORIAL_OF_10: u32 = 3_628_800;
/// How long a device operation (factorial, DMA, interrupt) may take.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between status polls.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Capabilities sent with VERSION.
const CLIENT_CAPS: &[u8] = b"{\"capabilities\":{\"max_msg_fds\":8}}\0";
/// How long to wait for a server's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "edu-client",
    about = "Exercise QEMU's edu device through VFIO or vfio-user"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Every check, through the kernel's VFIO (/dev/vfio) on a function bound to vfio-pci.
    Vfio {
        /// The edu function (DDDD:BB:DD.F).
        address: PciAddress,
    },
    /// Every check, through `pci-passthrough serve`'s socket for the function.
    VfioUser {
        /// The function's vfio-user socket.
        socket: PathBuf,
    },
    /// Opens the device over vfio-user and holds it open until killed.
    Hold {
        /// The function's vfio-user socket.
        socket: PathBuf,
    },
    /// Asks for a device reset over vfio-user and checks the answer.
    Reset {
        /// The function's vfio-user socket.
        socket: PathBuf,
        /// The answer the reset rules call for.
        #[arg(long, value_enum)]
        expect: Expect,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Expect {
    /// The reset is done.
    Ok,
    /// The reset is refused with EBUSY (a device of the set is open elsewhere).
    Busy,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
enum EduError {
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
    fn errno(&self) -> Option<i32> {
        match self {
            EduError::Refused { errno, .. } => Some(*errno),
            EduError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// What the checks need from a way of reaching the device.
trait EduPort {
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
struct KernelPort {
    device: VfioDevice,
    iommu: IommuSpace<VfioContainer>,
    config: u64,
    bar0: u64,
}

impl KernelPort {
    fn open(address: PciAddress) -> Result<Self, EduError> {
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
struct VfioUserPort {
    sock: UnixStream,
    next_id: u16,
}

impl VfioUserPort {
    fn connect(path: &Path) -> Result<Self, EduError> {
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
        Ok(reply.payload)
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

    fn reset(&mut self) -> Result<(), EduError> {
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

/// Counts and prints check results.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String, EduError>) {
        match result {
            Ok(detail) => println!("PASS {name}: {detail}"),
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }

    fn verdict(&self, what: &str) -> ExitCode {
        if self.failed == 0 {
            println!("PASS {what}");
            ExitCode::SUCCESS
        } else {
            println!("FAIL {what}: {} check(s) failed", self.failed);
            ExitCode::FAILURE
        }
    }
}

/// Polls until `done` holds or the device timeout passes.
fn wait_for(
    what: &'static str,
    mut done: impl FnMut() -> Result<bool, EduError>,
) -> Result<(), EduError> {
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    while !done()? {
        if Instant::now() > deadline {
            return Err(EduError::Timeout(what));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(())
}

fn check_ids(port: &mut dyn EduPort) -> Result<String, EduError> {
    let mut id = [0u8; 4];
    port.config_read(0, &mut id)?;
    let vendor = u16::from_le_bytes([id[0], id[1]]);
    let device = u16::from_le_bytes([id[2], id[3]]);
    if (vendor, device) != (EDU_VENDOR_ID, EDU_DEVICE_ID) {
        return Err(EduError::Mismatch {
            what: "vendor:device id",
            got: u64::from(u32::from_le_bytes(id)),
            want: u64::from(EDU_VENDOR_ID) | u64::from(EDU_DEVICE_ID) << 16,
        });
    }
    Ok(format!("config {vendor:04x}:{device:04x}"))
}

fn enable_bus_master(port: &mut dyn EduPort) -> Result<String, EduError> {
    let mut cmd = [0u8; 2];
    port.config_read(PCI_COMMAND, &mut cmd)?;
    let value = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    port.config_write(PCI_COMMAND, &value.to_le_bytes())?;
    port.config_read(PCI_COMMAND, &mut cmd)?;
    let now = u16::from_le_bytes(cmd);
    if now & PCI_COMMAND_MASTER == 0 {
        return Err(EduError::Missing("bus master after enabling it"));
    }
    Ok(format!("command {now:#06x}"))
}

fn check_ident(port: &mut dyn EduPort) -> Result<String, EduError> {
    let ident = port.read32(EDU_IDENT)?;
    if ident != EDU_IDENT_VALUE {
        return Err(EduError::Mismatch {
            what: "identification register",
            got: ident.into(),
            want: EDU_IDENT_VALUE.into(),
        });
    }
    Ok(format!("BAR0 ident {ident:#010x}"))
}

fn check_liveness(port: &mut dyn EduPort) -> Result<String, EduError> {
    let x = 0x1234_5678;
    port.write32(EDU_LIVENESS, x)?;
    let back = port.read32(EDU_LIVENESS)?;
    if back != !x {
        return Err(EduError::Mismatch {
            what: "liveness register",
            got: back.into(),
            want: (!x).into(),
        });
    }
    Ok(format!("wrote {x:#010x}, read {back:#010x}"))
}

fn check_factorial(port: &mut dyn EduPort) -> Result<String, EduError> {
    port.write32(EDU_STATUS, 0)?;
    port.write32(EDU_FACTORIAL, 10)?;
    wait_for("factorial", || {
        Ok(port.read32(EDU_STATUS)? & EDU_STATUS_COMPUTING == 0)
    })?;
    let value = port.read32(EDU_FACTORIAL)?;
    if value != FACTORIAL_OF_10 {
        return Err(EduError::Mismatch {
            what: "factorial register",
            got: value.into(),
            want: FACTORIAL_OF_10.into(),
        });
    }
    Ok(format!("10! = {value}"))
}

fn check_msi(port: &mut dyn EduPort) -> Result<String, EduError> {
    let efd = EventFd::new(EFD_NONBLOCK)?;
    port.route_msi(&efd)?;
    port.write32(EDU_IRQ_RAISE, EDU_IRQ_FACT)?;
    let mut count = 0;
    wait_for("MSI on the eventfd", || match efd.read() {
        Ok(n) => {
            count = n;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e.into()),
    })?;
    let status = port.read32(EDU_IRQ_STATUS)?;
    port.write32(EDU_IRQ_ACK, status)?;
    Ok(format!(
        "eventfd count {count}, irq status {status:#x} acknowledged"
    ))
}

fn run_dma(port: &mut dyn EduPort, src: u64, dst: u64, cmd: u64) -> Result<(), EduError> {
    port.write64(EDU_DMA_SRC, src)?;
    port.write64(EDU_DMA_DST, dst)?;
    port.write64(EDU_DMA_COUNT, DMA_LEN as u64)?;
    port.write64(EDU_DMA_CMD, cmd | EDU_DMA_CMD_START)?;
    wait_for("DMA", || {
        Ok(port.read64(EDU_DMA_CMD)? & EDU_DMA_CMD_START == 0)
    })
}

fn check_dma(port: &mut dyn EduPort) -> Result<String, EduError> {
    let memory = SharedMemory::new("edu-dma", DMA_MEMORY_SIZE as usize)?;
    let pattern: Vec<u8> = (0..DMA_LEN)
        .map(|i| (i as u8).wrapping_mul(7) ^ 0x5a)
        .collect();
    memory.write(0, &pattern)?;
    port.dma_map(DMA_IOVA, &memory)?;
    // RAM → device buffer, then device buffer → RAM elsewhere.
    run_dma(port, DMA_IOVA, EDU_DMA_BUFFER, 0)?;
    run_dma(
        port,
        EDU_DMA_BUFFER,
        DMA_IOVA + DMA_RETURN_OFFSET,
        EDU_DMA_CMD_TO_RAM,
    )?;
    let mut back = vec![0u8; DMA_LEN];
    memory.read(DMA_RETURN_OFFSET, &mut back)?;
    if let Some(at) = back.iter().zip(&pattern).position(|(b, p)| b != p) {
        return Err(EduError::Mismatch {
            what: "DMA round trip, first differing byte",
            got: back[at].into(),
            want: pattern[at].into(),
        });
    }
    Ok(format!("{DMA_LEN} bytes via iova {DMA_IOVA:#x} and back"))
}

fn run_checks(port: &mut dyn EduPort, what: &str) -> ExitCode {
    let mut report = Report::default();
    report.check("config-id", check_ids(port));
    report.check("bus-master", enable_bus_master(port));
    report.check("ident", check_ident(port));
    report.check("liveness", check_liveness(port));
    report.check("factorial", check_factorial(port));
    report.check("msi", check_msi(port));
    report.check("dma", check_dma(port));
    report.verdict(what)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Mode::Vfio { address } => match KernelPort::open(address) {
            Ok(mut port) => run_checks(&mut port, &format!("edu {address} via vfio")),
            Err(e) => {
                println!("FAIL open {address} via vfio: {e}");
                ExitCode::FAILURE
            }
        },
        Mode::VfioUser { socket } => match VfioUserPort::connect(&socket) {
            Ok(mut port) => run_checks(
                &mut port,
                &format!("edu {} via vfio-user", socket.display()),
            ),
            Err(e) => {
                println!("FAIL open {}: {e}", socket.display());
                ExitCode::FAILURE
            }
        },
        Mode::Hold { socket } => match VfioUserPort::connect(&socket) {
            Ok(_port) => {
                println!("HOLD {} open", socket.display());
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            Err(e) => {
                println!("FAIL hold {}: {e}", socket.display());
                ExitCode::FAILURE
            }
        },
        Mode::Reset { socket, expect } => {
            let result = VfioUserPort::connect(&socket).and_then(|mut p| {
                if expect == Expect::Busy {
                    return p.reset();
                }
                // A client that just went away (a killed `hold`) is noticed by the server
                // asynchronously: EBUSY is retried until the device timeout.
                let mut last = Ok(());
                wait_for("reset (still busy)", || {
                    last = p.reset();
                    Ok(!matches!(&last, Err(e) if e.errno() == Some(libc::EBUSY)))
                })
                .and(last)
            });
            let got = match &result {
                Ok(()) => Some(Expect::Ok),
                Err(e) if e.errno() == Some(libc::EBUSY) => Some(Expect::Busy),
                Err(_) => None,
            };
            let outcome = result.map_or_else(|e| e.to_string(), |()| "done".into());
            if got == Some(expect) {
                println!("PASS reset {} ({expect:?}): {outcome}", socket.display());
                ExitCode::SUCCESS
            } else {
                println!(
                    "FAIL reset {} (expected {expect:?}): {outcome}",
                    socket.display()
                );
                ExitCode::FAILURE
            }
        }
    }
}
