//! A complete device on the framework in one file: a PCI function with one 4 KiB trapped BAR
//! holding a scratch register and a doorbell that raises the device's interrupt (INTx, or MSI
//! when the client enabled it). Run it and attach it to QEMU:
//!
//! ```sh
//! cargo run -p mdev --example doorbell -- /tmp/doorbell.sock
//! qemu-system-x86_64 ... -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"/tmp/doorbell.sock"}}'
//! ```
//!
//! Everything protocol-shaped (sockets, messages, validation, several clients at once, the
//! open/close hooks) is the framework's; the device only answers register accesses.

use std::sync::Arc;

use mdev::device_set::DeviceSets;
use mdev::parent::cli::{block_shutdown_signals, wait_for_shutdown};
use mdev::pci::{BarKind, BarSpec, CommandRegister, PciConfig, PciIdentity, StatusRegister};
use mdev::region::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::server::DeviceServer;
use mdev::{Device, DeviceError, Interrupts, RegionInfo, SetContext};

/// BAR0 size.
const BAR0_SIZE: u64 = 4096;
/// BAR0 register: read/write scratch.
const REG_SCRATCH: u64 = 0x00;
/// BAR0 register: writing 1 asserts the interrupt, 0 deasserts it.
const REG_DOORBELL: u64 = 0x04;

pub(crate) struct Doorbell {
    config: PciConfig,
    scratch: u32,
    irqs: Arc<Interrupts>,
}

impl Doorbell {
    pub(crate) fn new() -> Result<Self, DeviceError> {
        let mut config = PciConfig::new(&PciIdentity {
            vendor_id: 0x1b36, // Red Hat's QEMU range, as the kernel samples use
            device_id: 0x00ee,
            subsystem_vendor_id: 0x1b36,
            subsystem_id: 0x00ee,
            revision: 1,
            class: 0xff,
            subclass: 0,
            prog_if: 0,
            interrupt_pin: 1,
            command: CommandRegister::empty(),
            status: StatusRegister::empty(),
        });
        config.add_bar(
            0,
            BarSpec {
                size: BAR0_SIZE,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
        )?;
        Ok(Doorbell {
            config,
            scratch: 0,
            irqs: Arc::new(Interrupts::new(true, 1, 0)),
        })
    }
}

impl Device for Doorbell {
    fn region_info(&self, index: u32) -> RegionInfo {
        match index {
            BAR0_REGION_INDEX => RegionInfo::trapped(BAR0_SIZE),
            CONFIG_REGION_INDEX => RegionInfo::trapped(256),
            _ => RegionInfo::absent(),
        }
    }

    fn interrupts(&self) -> &Arc<Interrupts> {
        &self.irqs
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match (region, offset, data.len()) {
            (CONFIG_REGION_INDEX, ..) => self.config.read(offset, data),
            (BAR0_REGION_INDEX, REG_SCRATCH, 4) => {
                data.copy_from_slice(&self.scratch.to_le_bytes())
            }
            // Anything else reads as zero, as an unimplemented register would.
            _ => data.fill(0),
        }
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let word = <[u8; 4]>::try_from(data).map(u32::from_le_bytes);
        match (region, offset, word) {
            (CONFIG_REGION_INDEX, ..) => self.config.write(offset, data),
            (BAR0_REGION_INDEX, REG_SCRATCH, Ok(v)) => self.scratch = v,
            (BAR0_REGION_INDEX, REG_DOORBELL, Ok(v)) => {
                self.config.set_interrupt_status(v != 0);
                self.irqs.update_line(v != 0);
            }
            _ => {} // ignored, as hardware ignores writes to nothing
        }
        Ok(())
    }

    fn open_device(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        log::info!("first open (by {:?})", ctx.requester);
        Ok(())
    }

    fn reset(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        self.config.reset();
        self.scratch = 0;
        self.irqs.update_line(false);
        Ok(())
    }

    fn describe(&self) -> String {
        String::from("doorbell example")
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| String::from("/tmp/doorbell.sock"));
    block_shutdown_signals();
    let sets = DeviceSets::new();
    let handle = sets.register("doorbell", Box::new(Doorbell::new()?), None);
    let server = DeviceServer::bind(std::path::Path::new(&path), handle)?;
    wait_for_shutdown();
    server.shutdown();
    Ok(())
}
