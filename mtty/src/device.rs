//! The mtty PCI function: the kernel sample's identity (a WCH CH352 so the guest's stock
//! `8250_pci` binds), one 8-byte I/O BAR per port, INTx and one MSI vector.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use mdev::parent::Reservation;
use mdev::pci::{
    Bar, BarSpec, CommandRegister, InterruptLayout, PciConfig, PciDevice, PciFunction, PciIdentity,
    StatusRegister, PCI_NUM_BARS,
};
use mdev::{DeviceError, Interrupts, IrqIndex, SetContext};

use crate::card::{Card, Line, Port};
use crate::console::{self, Console, ConsoleSpec, PortKick};
use crate::uart::{REGISTER_COUNT, UNDECODED_READ};

/// Vendor id (WCH).
pub const VENDOR_ID: u16 = 0x4348;
/// Device id (CH352 2S).
pub const DEVICE_ID: u16 = 0x3253;
/// Revision.
pub const REVISION: u8 = 0x10;
/// Class: simple communication controller.
pub const CLASS_SERIAL: u8 = 0x07;
/// Subclass: serial controller.
pub const SUBCLASS_SERIAL: u8 = 0x00;
/// Programming interface: 16550-compatible.
pub const PROG_IF_16550: u8 = 0x02;
/// Size of each port's I/O BAR.
pub const PORT_BAR_SIZE: u64 = REGISTER_COUNT;

/// The config space of an mtty function: the kernel sample's identity (its BARs come with
/// the device).
pub fn mtty_config() -> PciConfig {
    PciConfig::new(&PciIdentity {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        subsystem_vendor_id: VENDOR_ID,
        subsystem_id: DEVICE_ID,
        revision: REVISION,
        class: CLASS_SERIAL,
        subclass: SUBCLASS_SERIAL,
        prog_if: PROG_IF_16550,
        interrupt_pin: 1,
        command: CommandRegister::IO,
        status: StatusRegister::FAST_BACK,
    })
}

/// One 8-byte I/O BAR per port.
fn port_bars(ports: usize) -> Vec<Bar> {
    (0..ports.min(PCI_NUM_BARS))
        .filter_map(|i| u8::try_from(i).ok())
        .map(|i| Bar::trapped(i, BarSpec::io(PORT_BAR_SIZE)))
        .collect()
}

/// The device-specific part of an mtty card: its ports and their consoles.
pub struct Mtty {
    name: String,
    // Declared before `consoles`: the card (and with it the device's channel ends) drops
    // first, so console threads see the device gone and exit before they are joined.
    card: Arc<Card>,
    consoles: Vec<(usize, Console)>,
    _reservation: Option<Reservation>,
}

/// An mtty card as the framework serves it.
pub type MttyDevice = PciDevice<Mtty>;

/// A card named `name` with one port per console spec, holding `reservation` (its ports in
/// the budget) until it drops. Nothing is left running on failure.
pub fn new_mtty(
    name: &str,
    consoles: &[ConsoleSpec],
    reservation: Option<Reservation>,
) -> Result<MttyDevice, DeviceError> {
    let irqs = InterruptLayout {
        intx: true,
        msi_vectors: 1,
        msix_vectors: 0,
    };
    let device = PciDevice::new(
        mtty_config(),
        port_bars(consoles.len()),
        irqs,
        |interrupts| Mtty::new(name, consoles, interrupts, reservation),
    )?;
    Ok(device)
}

impl Mtty {
    fn new(
        name: &str,
        consoles: &[ConsoleSpec],
        interrupts: &Arc<Interrupts>,
        reservation: Option<Reservation>,
    ) -> Result<Self, DeviceError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut hosts = Vec::new();
        let card = Arc::new_cyclic(|weak: &Weak<Card>| {
            let kick: Weak<dyn PortKick> = weak.clone();
            let ports = consoles
                .iter()
                .enumerate()
                .map(|(i, spec)| match spec {
                    ConsoleSpec::Loopback => Port::new(Line::Loopback),
                    _ => {
                        let (guest, host) = console::link(kick.clone(), i, stop.clone());
                        hosts.push((i, spec.clone(), host));
                        Port::new(Line::console(guest))
                    }
                })
                .collect();
            Card::new(ports, interrupts.clone())
        });
        let mut running = Vec::new();
        for (i, spec, host) in hosts {
            let label = format!("{name} port{i}");
            match console::start(&spec, host, &label) {
                Ok(Some(c)) => {
                    log::info!("{label}: {}", c.description());
                    running.push((i, c));
                }
                Ok(None) => {}
                Err(e) => {
                    log::error!("{label}: {e}");
                    return Err(console_error(e));
                }
            }
        }
        Ok(Mtty {
            name: name.to_string(),
            card,
            consoles: running,
            _reservation: reservation,
        })
    }

    /// The ports (for tests and tools in this process).
    pub fn card(&self) -> &Arc<Card> {
        &self.card
    }

    /// What each non-loopback port is connected to (`port1 pty /dev/pts/3`).
    pub fn consoles(&self) -> Vec<String> {
        self.consoles
            .iter()
            .map(|(i, c)| format!("port{i} {}", c.description()))
            .collect()
    }
}

fn console_error(e: console::ConsoleError) -> DeviceError {
    match e.errno() {
        libc::EINVAL => DeviceError::InvalidArgument("bad console"),
        libc::EBUSY => DeviceError::Busy("console in use"),
        errno => DeviceError::Io(std::io::Error::from_raw_os_error(errno)),
    }
}

impl PciFunction for Mtty {
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        // A wider access is a run of byte accesses, as a bus splits it for a byte-wide part.
        let done = self.card.access(usize::from(bar), offset, false, |uart| {
            for (i, b) in data.iter_mut().enumerate() {
                *b = match u8::try_from(offset + i as u64) {
                    Ok(off) => uart.read(off),
                    Err(_) => UNDECODED_READ,
                };
            }
        });
        if done.is_none() {
            data.fill(UNDECODED_READ);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let _ = self.card.access(usize::from(bar), offset, true, |uart| {
            for (i, &b) in data.iter().enumerate() {
                if let Ok(off) = u8::try_from(offset + i as u64) {
                    uart.write(off, b);
                }
            }
        });
    }

    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        // Port state is the card's: a second client, or one reattaching, finds it as it was.
        log::debug!("{}: first open", self.name);
        Ok(())
    }

    fn close_device(&mut self, _ctx: &SetContext) {
        log::info!(
            "{}: last close; port state kept; interrupts delivered so far: {} INTx, {} MSI",
            self.name,
            self.card.interrupts_delivered(IrqIndex::Intx),
            self.card.interrupts_delivered(IrqIndex::Msi),
        );
    }

    fn reset(&mut self) {
        log::info!("{}: device reset", self.name);
        self.card.reset();
    }

    fn describe(&self) -> String {
        let consoles = self.consoles();
        if consoles.is_empty() {
            format!("{}: every port loops back", self.name)
        } else {
            format!("{}: {}", self.name, consoles.join("; "))
        }
    }
}
