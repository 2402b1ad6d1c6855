//! Test-only server for the confinement tests (`tests/tests/confinement.rs`): a PCI function
//! whose BAR0 register at offset 0, when written, makes a system call that no thread's list
//! has (`uname`), served with `mdev::confine` in the mode given, the way the device binaries
//! confine themselves. Not a device anyone ships: it exists to prove that a device making a
//! call off its list is stopped (`on`), logged (`log`) or left alone (`off`).
//!
//! `confine-probe SOCKET on|log|off`: prints `ready` once serving, runs until SIGTERM.
//! BAR0+0 reads 1 once a write made the call and it succeeded (sysname "Linux"), 2 when it
//! failed, 0 before any write.

use std::path::PathBuf;
use std::process::ExitCode;

use mdev::confine::{self, Policy, SeccompMode, ThreadKind};
use mdev::device_set::DeviceSets;
use mdev::parent::{block_shutdown_signals, wait_for_shutdown};
use mdev::pci::{Bar, BarSpec, InterruptLayout, PciConfig, PciDevice, PciFunction, PciIdentity};
use mdev::server::DeviceServer;

/// BAR0 register: a write makes the forbidden call; a read says how it went.
const REG_CALL: u64 = 0;

/// The function: remembers the outcome of its last call.
struct Probe {
    outcome: u32,
}

/// Makes the call no list allows: `uname`.
fn forbidden_call() -> u32 {
    // SAFETY: an all-zero utsname is a valid buffer for uname to fill.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a live, writable utsname.
    let r = unsafe { libc::uname(&mut name) };
    let linux = name.sysname.iter().take(5).map(|&c| c as u8).eq(*b"Linux");
    if r == 0 && linux {
        1
    } else {
        2
    }
}

impl PciFunction for Probe {
    fn read_bar(&mut self, _bar: u8, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (REG_CALL, 4) => data.copy_from_slice(&self.outcome.to_le_bytes()),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, _bar: u8, offset: u64, _data: &[u8]) {
        if offset == REG_CALL {
            self.outcome = forbidden_call();
        }
    }

    fn describe(&self) -> String {
        String::from("confinement probe (test only)")
    }
}

fn probe() -> Result<PciDevice<Probe>, mdev::pci::FunctionError> {
    let config = PciConfig::new(&PciIdentity {
        interrupt_pin: 0,
        ..PciIdentity::new(0x1b36, 0x00ef)
    });
    let bar0 = BarSpec::memory32(4096);
    let irqs = InterruptLayout {
        intx: false,
        msi_vectors: 0,
        msix_vectors: 0,
    };
    PciDevice::new(config, vec![Bar::trapped(0, bar0)], irqs, |_| {
        Ok(Probe { outcome: 0 })
    })
}

fn run(socket: PathBuf, mode: SeccompMode) -> Result<(), Box<dyn std::error::Error>> {
    block_shutdown_signals();
    confine::configure(Policy::new(mode))?;
    let sets = DeviceSets::new();
    let handle = sets.register("probe", Box::new(probe()?), None);
    let server = DeviceServer::bind(&socket, handle)?;
    confine::try_enter(ThreadKind::Main)?;
    println!("ready");
    wait_for_shutdown();
    server.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args = std::env::args().skip(1);
    let (Some(socket), Some(mode)) = (args.next(), args.next()) else {
        eprintln!("usage: confine-probe SOCKET on|log|off");
        return ExitCode::from(2);
    };
    let mode = match mode.as_str() {
        "on" => SeccompMode::On,
        "log" => SeccompMode::Log,
        "off" => SeccompMode::Off,
        _ => {
            eprintln!("confine-probe: mode is on, log or off");
            return ExitCode::from(2);
        }
    };
    match run(PathBuf::from(socket), mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("confine-probe: {e}");
            ExitCode::FAILURE
        }
    }
}
