//! A display PCI function on the framework's PCI function layer: a framebuffer BAR0 (memory
//! the framework serves) and an optional trapped register BAR described by a
//! [`DisplayModel`]. The lifecycle rules live
//! here once for every display device:
//!
//! * state (framebuffer, registers, mode, budget reservations) belongs to the device, not to
//!   a connection: `open_device` and `close_device` leave it alone, so closing one of two
//!   connections (or the last one, e.g. a viewer) never disturbs what the guest shows;
//! * registers go back to their reset values on a client's DEVICE_RESET and at creation only;
//! * the budget reservations live as long as the device and are returned when it drops.

use mdev::parent::Reservation;
use mdev::pci::{
    Bar, CommandRegister, InterruptLayout, PciConfig, PciDevice, PciFunction, PciIdentity,
    StatusRegister,
};
use mdev::{DeviceError, SetContext};

use crate::format::Mode;
use crate::framebuffer::Framebuffer;

/// Subsystem vendor id of the display functions (Red Hat, QEMU's PCI ids).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// Subsystem id of the display functions.
pub const SUBSYSTEM_ID: u16 = 0x1100;
/// Class: display controller.
pub const CLASS_DISPLAY: u8 = 0x03;
/// Subclass: other display controller.
pub const SUBCLASS_OTHER: u8 = 0x80;
/// The framebuffer is BAR0.
pub const FRAMEBUFFER_BAR: u8 = 0;

/// What a read of a register the model does not decode returns.
const UNDECODED_BYTE: u8 = 0xff;

/// The model-specific part of a display function: its register BAR, if any, and its mode.
pub trait DisplayModel: Send + 'static {
    /// The trapped register BAR, or `None`.
    fn register_bar(&self) -> Option<Bar> {
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

/// The display half of a function: framebuffer, model registers, budget reservations.
pub struct Display<M: DisplayModel> {
    framebuffer: Framebuffer,
    model: M,
    _reservations: Vec<Reservation>,
}

impl<M: DisplayModel> Display<M> {
    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The framebuffer.
    pub fn framebuffer(&self) -> &Framebuffer {
        &self.framebuffer
    }
}

impl<M: DisplayModel> PciFunction for Display<M> {
    fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        // The framebuffer is served by the framework; the only trapped BAR is the model's.
        self.model.read_registers(offset, data);
    }

    fn write_bar(&mut self, _bar: u8, offset: u64, data: &[u8]) {
        self.model.write_registers(offset, data);
    }

    fn reset(&mut self) {
        log::info!("{}: device reset", self.model.describe());
        self.model.reset();
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

    fn describe(&self) -> String {
        self.model.describe()
    }
}

/// A display function as the framework serves it.
pub type DisplayDevice<M> = PciDevice<Display<M>>;

/// Assembles a display function: `config` (identity and capabilities, see
/// [`display_config`]), the framebuffer as BAR0, the model's register BAR, no interrupts;
/// `reservations` are held until the device drops.
pub fn display_device<M: DisplayModel>(
    config: PciConfig,
    framebuffer: Framebuffer,
    model: M,
    reservations: Vec<Reservation>,
) -> Result<DisplayDevice<M>, DeviceError> {
    let mut bars = vec![framebuffer.bar(FRAMEBUFFER_BAR)];
    bars.extend(model.register_bar());
    let device = PciDevice::new(config, bars, InterruptLayout::default(), |_| {
        Ok(Display {
            framebuffer,
            model,
            _reservations: reservations,
        })
    })?;
    Ok(device)
}

/// The config space every display function starts from: `vendor_id`:`device_id` at
/// `revision`, class display controller (other), I/O and memory decoding on. BARs come from
/// [`display_device`]; the model adds its capabilities.
pub fn display_config(vendor_id: u16, device_id: u16, revision: u8) -> PciConfig {
    PciConfig::new(&PciIdentity {
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
    })
}

/// Maps an error from building config space (a fault of the device model, not of a guest) to
/// EINVAL, logging what failed.
pub fn config_error<E: std::fmt::Debug>(what: &'static str) -> impl FnOnce(E) -> DeviceError {
    move |e| {
        log::error!("{what}: {e:?}");
        DeviceError::InvalidArgument(what)
    }
}
