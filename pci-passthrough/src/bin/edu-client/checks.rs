//! The checks `edu-client` runs against an edu device, and the report it prints.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mdev::region::{RegionFlags, BAR0_REGION_INDEX};
use mdev::SharedMemory;
use pci_passthrough::edu::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::port::{EduError, EduPort, VfioUserPort};
use crate::Bar0Fd;

/// PCI command register and its bits.
const PCI_COMMAND: u64 = mdev::pci::PCI_COMMAND as u64;
const PCI_COMMAND_MEMORY: u16 = mdev::pci::CommandRegister::MEMORY.bits();
const PCI_COMMAND_MASTER: u16 = mdev::pci::CommandRegister::BUS_MASTER.bits();
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

/// Counts and prints check results.
#[derive(Default)]
pub(crate) struct Report {
    failed: usize,
}

impl Report {
    pub(crate) fn check(&mut self, name: &str, result: Result<String, EduError>) {
        match result {
            Ok(detail) => println!("PASS {name}: {detail}"),
            Err(e) => {
                self.failed += 1;
                println!("FAIL {name}: {e}");
            }
        }
    }

    pub(crate) fn verdict(&self, what: &str) -> ExitCode {
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
pub(crate) fn wait_for(
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
    port.config_read(mdev::pci::PCI_VENDOR_ID as u64, &mut id)?;
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

/// What came with BAR0's region info, against what the server's trust calls for: nothing
/// by default; with `--trusted-client-mmap`, the host VFIO device fd, which this client then
/// maps to read the identification register itself.
pub(crate) fn check_bar0_fd(port: &mut VfioUserPort, expect: Bar0Fd) -> Result<String, EduError> {
    let (info, fds) = port.region_info(BAR0_REGION_INDEX)?;
    let mmap_flag = info.flags & RegionFlags::MMAP.bits() != 0;
    let want_fds = match expect {
        Bar0Fd::None => 0,
        Bar0Fd::Granted => 1,
    };
    if fds.len() != want_fds {
        return Err(EduError::Mismatch {
            what: "fds with BAR0's region info",
            got: fds.len() as u64,
            want: want_fds as u64,
        });
    }
    if mmap_flag != (expect == Bar0Fd::Granted) {
        return Err(EduError::Mismatch {
            what: "MMAP flag of BAR0",
            got: mmap_flag.into(),
            want: (expect == Bar0Fd::Granted).into(),
        });
    }
    let Some(fd) = fds.first() else {
        return Ok(format!(
            "BAR0 region info (flags {:#x}, {} bytes) came with no fd: trapped",
            info.flags, info.size
        ));
    };
    let at = info
        .offset
        .checked_add(EDU_IDENT)
        .ok_or(EduError::BadReply("DEVICE_GET_REGION_INFO"))?;
    let map = memmap2::MmapOptions::new().offset(at).len(4).map_raw(fd)?;
    // SAFETY: `map` is a live 4-byte shared mapping of the identification register (offset
    // 0 of BAR0, so 4-aligned: the mapping keeps the in-page offset); device memory is read
    // with a volatile load.
    let ident = unsafe { map.as_ptr().cast::<u32>().read_volatile() };
    if ident != EDU_IDENT_VALUE {
        return Err(EduError::Mismatch {
            what: "identification register through the granted fd",
            got: ident.into(),
            want: EDU_IDENT_VALUE.into(),
        });
    }
    Ok(format!(
        "BAR0 region info (flags {:#x}) came with the host VFIO device fd; ident {ident:#010x} \
         read through this client's own mapping of it",
        info.flags
    ))
}

/// Every device check, reported into a new report.
pub(crate) fn run_checks(port: &mut dyn EduPort) -> Report {
    let mut report = Report::default();
    report.check("config-id", check_ids(port));
    report.check("bus-master", enable_bus_master(port));
    report.check("ident", check_ident(port));
    report.check("liveness", check_liveness(port));
    report.check("factorial", check_factorial(port));
    report.check("msi", check_msi(port));
    report.check("dma", check_dma(port));
    report
}
