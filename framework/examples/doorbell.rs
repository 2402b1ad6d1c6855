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
//! open/close hooks, each thread's seccomp allow-list) is the framework's; the device only
//! answers register accesses.
//!
//! `MDEV_POLL_US=N` in the environment lets each connection poll its socket for up to N
//! microseconds after a request before it blocks, as `serve --poll-us` does for the device
//! binaries (and with the same default, 50); 0 never polls.

use std::sync::Arc;

use mdev::confine::{self, Policy, SeccompMode, ThreadKind};
use mdev::device_set::DeviceSets;
use mdev::parent::{block_shutdown_signals, wait_for_shutdown};
use mdev::pci::{Bar, BarSpec, InterruptLayout, PciConfig, PciDevice, PciFunction, PciIdentity};
use mdev::server::DeviceServer;
use mdev::Interrupts;

/// BAR0 register: read/write scratch.
const REG_SCRATCH: u64 = 0x00;
/// BAR0 register: writing 1 asserts the interrupt, 0 deasserts it.
const REG_DOORBELL: u64 = 0x04;

/// What is unique to a doorbell: a scratch register and the line it rings.
pub(crate) struct Doorbell {
    scratch: u32,
    irqs: Arc<Interrupts>,
}

impl PciFunction for Doorbell {
    fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (REG_SCRATCH, 4) => data.copy_from_slice(&self.scratch.to_le_bytes()),
            // Anything else reads as zero, as an unimplemented register would.
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, _bar: u8, offset: u64, data: &[u8]) {
        let Ok(word) = <[u8; 4]>::try_from(data).map(u32::from_le_bytes) else {
            return; // ignored, as hardware ignores writes it does not decode
        };
        match offset {
            REG_SCRATCH => self.scratch = word,
            // The framework keeps the status register's interrupt bit in step.
            REG_DOORBELL => self.irqs.update_line(word != 0),
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.scratch = 0;
        self.irqs.update_line(false);
    }

    fn describe(&self) -> String {
        String::from("doorbell example")
    }
}

/// The doorbell's PCI function: identity, one 4 KiB trapped BAR, INTx and one MSI vector.
pub(crate) fn doorbell() -> Result<PciDevice<Doorbell>, mdev::pci::FunctionError> {
    // Red Hat's QEMU vendor range, as the kernel samples use; INTA.
    let config = PciConfig::new(&PciIdentity::new(0x1b36, 0x00ee));
    let bar0 = BarSpec::memory32(4096);
    let irqs = InterruptLayout {
        intx: true,
        msi_vectors: 1,
        msix_vectors: 0,
    };
    PciDevice::new(config, vec![Bar::trapped(0, bar0)], irqs, |irqs| {
        Ok(Doorbell {
            scratch: 0,
            irqs: irqs.clone(),
        })
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| String::from("/tmp/doorbell.sock"));
    block_shutdown_signals();
    // Every thread the server starts gets its seccomp allow-list (see `mdev::confine`).
    confine::configure(Policy::new(SeccompMode::On))?;
    let sets = DeviceSets::new();
    let handle = sets.register("doorbell", Box::new(doorbell()?), None);
    let server = DeviceServer::bind(std::path::Path::new(&path), handle)?;
    server.set_poll(mdev::server::poll_from_env()?);
    // Start-up is done: this thread only waits for SIGINT/SIGTERM and stops the server.
    confine::try_enter(ThreadKind::Main)?;
    wait_for_shutdown();
    server.shutdown();
    Ok(())
}
