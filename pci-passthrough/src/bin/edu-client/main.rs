//! `edu-client`: the guest-side program of the nested passthrough test. It drives QEMU's
//! `edu` device either directly through the kernel's VFIO (`vfio ADDRESS`) or through
//! `pci-passthrough serve` over vfio-user (`vfio-user SOCKET`), and prints one `PASS`/`FAIL`
//! line per check: identification, liveness, factorial, MSI on an eventfd, DMA round trip;
//! over vfio-user also whether a host fd came with BAR0's region info (`bar0-no-host-fd`, the
//! default; `bar0-host-fd-granted` against `serve --trusted-client-mmap`).
//! `hold` keeps a device open (a second owner) and `reset` checks the reset rules.
//!
//! Build it static to run in a busybox guest:
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
//!  --target x86_64-unknown-linux-gnu -p pci-passthrough --bin edu-client`.

mod checks;
mod port;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pci_passthrough::PciAddress;

use crate::checks::{check_bar0_fd, run_checks, wait_for};
use crate::port::{KernelPort, VfioUserPort};

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
        /// What must come with BAR0's region info: no fd (the server's default), or the host
        /// device fd (a server started with --trusted-client-mmap).
        #[arg(long, value_enum, default_value_t = Bar0Fd::None)]
        expect_bar0_fd: Bar0Fd,
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

/// What a client is handed with BAR0's region info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Bar0Fd {
    /// Nothing: BAR0 is trapped, no host fd leaves the server.
    None,
    /// The host VFIO device fd, for direct mmap of BAR0.
    Granted,
}

impl Bar0Fd {
    /// The name of the check.
    fn check_name(self) -> &'static str {
        match self {
            Bar0Fd::None => "bar0-no-host-fd",
            Bar0Fd::Granted => "bar0-host-fd-granted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Expect {
    /// The reset is done.
    Ok,
    /// The reset is refused with EBUSY (a device of the set is open elsewhere).
    Busy,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Mode::Vfio { address } => match KernelPort::open(address) {
            Ok(mut port) => run_checks(&mut port).verdict(&format!("edu {address} via vfio")),
            Err(e) => {
                println!("FAIL open {address} via vfio: {e}");
                ExitCode::FAILURE
            }
        },
        Mode::VfioUser {
            socket,
            expect_bar0_fd,
        } => match VfioUserPort::connect(&socket) {
            Ok(mut port) => {
                let mut report = run_checks(&mut port);
                report.check(
                    expect_bar0_fd.check_name(),
                    check_bar0_fd(&mut port, expect_bar0_fd),
                );
                report.verdict(&format!("edu {} via vfio-user", socket.display()))
            }
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
