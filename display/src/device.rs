//! A display PCI function as the framework sees it: config space, a framebuffer BAR0 and an
//! optional trapped register BAR described by a [`DisplayModel`]. The lifecycle rules live
//! here once for every display device:
//!
//! * state (framebuffer, registers, mode, budget reservations) belongs to the device, not to
//!   a connection: `open_device` and `close_device` leave it alone, so closing one of two
//!   connections (or the last one, e.g. a viewer) never disturbs what the guest shows;
//! * registers go back to their reset values on a client's DEVICE_RESET and at creation only;
//! * the budget reservations live as long as the device and are returned when it drops.

use std::sync::Arc;

use mdev::parent::Reservation;
use mdev::pci::{BarKind, BarSpec, CommandRegister, PciConfig, PciIdentity, StatusRegister};
use mdev::region::{BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::{Device, DeviceError, Interrupts, RegionInfo, SetContext};

use crate::format::Mode;
use crate::framebuffer::Framebuffer;

/// Size of the config-space region (a conventional PCI function).
pub const CONFIG_SPACE_SIZE: u64 = 256;

/// Subsystem vendor id of the display functions (Red Hat, QEMU's PCI ids).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem id of the display functions.
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// Class: display controller.
pub const CLASS_DISPLAY: u8 = 0x03;
/// Subclass: other display controller.
pub const SUBCLASS_OTHER: u8 = 0x80;
/// The framebuffer is BAR0.
const FRAMEBUFFER_BAR: usize = 0;

/// What a read of a region the device does not decode returns.
const UNDECODED_BYTE: u8 = 0xff;

/// The model-specific part of a display function: its register BAR, if any, and its mode.
pub trait DisplayModel: Send + 'static {
    /// The trapped register BAR: (VFIO region index, size), or `None`.
    fn register_bar(&self) -> Option<(u32, u64)> {
        None
    }

    /// A read of the register BAR (`offset + data.len()` lies inside it).
    fn read_registers(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(UNDECODED_BYTE);
    }

    /// A write to the register BAR.
    fn write_registers(&mut self, _offset: u64, _data: &[u8]) {}

    /// Registers back to their reset values. The framebuffer contents stay (as VRAM does).
    fn reset(&mut self) {}

    /// The mode scanned out now.
    fn scanout(&self) -> Option<Mode>;

    /// A short description for logs.
    fn describe(&self) -> String;
}

/// A display function: config space, framebuffer, model registers, budget reservations.
pub struct DisplayDevice<M: DisplayModel> {
    config: PciConfig,
    framebuffer: Framebuffer,
    model: M,
    interrupts: Arc<Interrupts>,
    _reservations: Vec<Reservation>,
}

impl<M: DisplayModel> DisplayDevice<M> {
    /// A device from its parts. `config` is the function's config space after reset;
    /// `reservations` are held until the device drops.
    pub fn new(
        config: PciConfig,
        framebuffer: Framebuffer,
        model: M,
        reservations: Vec<Reservation>,
    ) -> Self {
        DisplayDevice {
            config,
            framebuffer,
            model,
            // Display functions raise no interrupts.
            interrupts: Arc::new(Interrupts::new(false, 0, 0)),
            _reservations: reservations,
        }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The framebuffer.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.framebuffer
    }

    /// The config space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }
}

impl<M: DisplayModel> Device for DisplayDevice<M> {
    fn region_info(&self, index: u32) -> RegionInfo {
        match index {
            BAR0_REGION_INDEX => self.framebuffer.region_info(),
            CONFIG_REGION_INDEX => RegionInfo::trapped(CONFIG_SPACE_SIZE),
            i => match self.model.register_bar() {
                Some((bar, size)) if bar == i => RegionInfo::trapped(size),
                _ => RegionInfo::absent(),
            },
        }
    }

    fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match region {
            BAR0_REGION_INDEX => self.framebuffer.read(offset, data),
            CONFIG_REGION_INDEX => self.config.read(offset, data),
            r if self.model.register_bar().is_some_and(|(bar, _)| bar == r) => {
                self.model.read_registers(offset, data)
            }
            _ => data.fill(UNDECODED_BYTE),
        }
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match region {
            BAR0_REGION_INDEX => self.framebuffer.write(offset, data),
            CONFIG_REGION_INDEX => self.config.write(offset, data),
            r if self.model.register_bar().is_some_and(|(bar, _)| bar == r) => {
                self.model.write_registers(offset, data)
            }
            _ => {}
        }
        Ok(())
    }

    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        // Nothing to set up and, above all, nothing to reset: a second client (a viewer)
        // attaching after the last one left must find the picture the guest drew.
        log::debug!("{}: first open", self.model.describe());
        Ok(())
    }

    fn close_device(&mut self, _ctx: &SetContext) {
        // The framebuffer, the mode and the budget stay with the device until it is removed.
        log::debug!("{}: last close; state kept", self.model.describe());
    }

    fn reset(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        log::info!("{}: device reset", self.model.describe());
        self.config.reset();
        self.model.reset();
        Ok(())
    }

    fn describe(&self) -> String {
        self.model.describe()
    }
}

/// The config space every display function starts from: `vendor_id`:`device_id` at
/// `revision`, class display controller (other), I/O and memory decoding on, and BAR0 a
/// prefetchable 32-bit framebuffer of `framebuffer_size` bytes. The model adds its own BARs
/// and capabilities.
pub fn display_config(
    vendor_id: u16,
    device_id: u16,
    revision: u8,
    framebuffer_size: u64,
) -> Result<PciConfig, DeviceError> {
    let mut config = PciConfig::new(&PciIdentity {
        vendor_id,
        device_id,
        subsystem_vendor_id: SUBSYSTEM_VENDOR_ID,
        subsystem_id: SUBSYSTEM_ID,
        revision,
        class: CLASS_DISPLAY,
        subclass: SUBCLASS_OTHER,
        prog_if: 0,
        interrupt_pin: 0,
        command: CommandRegister::IO | CommandRegister::MEMORY,
        status: StatusRegister::empty(),
    });
    config
        .add_bar(
            FRAMEBUFFER_BAR,
            BarSpec {
                size: framebuffer_size,
                kind: BarKind::Memory32,
                prefetchable: true,
            },
        )
        .map_err(config_error("framebuffer BAR"))?;
    Ok(config)
}

/// Maps an error from building config space (a fault of the device model, not of a guest) to
/// EINVAL, logging what failed.
pub fn config_error<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> DeviceError {
    move |e| {
        log::error!("{what}: {e:?}");
        DeviceError::InvalidArgument(what)
    }
}
