//! `pci-passthrough`: serves host PCI functions bound to vfio-pci over vfio-user, one socket
//! per function (`DIR/<address>.sock`), and measures a trapped BAR read both ways.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use log::{error, info};
use mdev::parent::cli::{block_shutdown_signals, wait_for_shutdown};
use mdev::pci::CommandRegister;
use mdev::region::CONFIG_REGION_INDEX;
use mdev::server::DeviceServer;
use mdev::DeviceSets;
use pci_passthrough::host::HostDevice;
use pci_passthrough::vfio_access::VfioAccess;
use pci_passthrough::vfio_host::VfioContainer;
use pci_passthrough::{Passthrough, PciAddress};

/// Offset of the PCI command register.
const PCI_COMMAND: u64 = mdev::pci::PCI_COMMAND as u64;
/// Command register: memory decoding and bus mastering on.
const PCI_COMMAND_MEMORY_MASTER: u16 = CommandRegister::MEMORY
    .union(CommandRegister::BUS_MASTER)
    .bits();

#[derive(Parser)]
#[command(
    name = "pci-passthrough",
    about = "Serve host PCI functions (bound to vfio-pci) over vfio-user"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve each function on DIR/<address>.sock until SIGINT/SIGTERM.
    Serve {
        /// Directory of the sockets.
        #[arg(long)]
        dir: PathBuf,
        /// PCI addresses (DDDD:BB:DD.F).
        #[arg(required = true)]
        addresses: Vec<PciAddress>,
    },
    /// Times a trapped BAR read: directly on the VFIO device fd, then through vfio-user.
    Bench {
        /// Directory for the temporary socket.
        #[arg(long)]
        dir: PathBuf,
        /// Region (BAR) index.
        #[arg(long, default_value_t = 0)]
        region: u32,
        /// Offset of the 4-byte read in the region.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Reads per measurement.
        #[arg(long, default_value_t = 10_000)]
        iterations: u32,
        /// The PCI function.
        address: PciAddress,
    },
}

fn socket_path(dir: &Path, address: PciAddress) -> PathBuf {
    dir.join(format!("{address}.sock"))
}

/// Says which VFIO interface each function is offered through, and refuses when one is
/// offered only through the (not implemented) cdev/iommufd path.
fn check_access(addresses: &[PciAddress]) -> Result<(), String> {
    for &address in addresses {
        let access = VfioAccess::probe(address);
        info!("{access}");
        access.choose().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn serve(dir: &Path, addresses: &[PciAddress]) -> Result<(), String> {
    block_shutdown_signals();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    check_access(addresses)?;
    let host = Arc::new(VfioContainer::new().map_err(|e| e.to_string())?);
    let passthrough = Passthrough::new(host);
    let sets = DeviceSets::new();
    let mut servers = Vec::new();
    for &address in addresses {
        let (device, key) = passthrough.open(address).map_err(|e| e.to_string())?;
        let handle = sets.register(&address.to_string(), Box::new(device), key);
        let path = socket_path(dir, address);
        let server = DeviceServer::bind(&path, handle).map_err(|e| e.to_string())?;
        println!(
            "{address} {} set={}",
            path.display(),
            server.handle().set().name()
        );
        servers.push(server);
    }
    wait_for_shutdown();
    for s in servers {
        s.shutdown();
    }
    Ok(())
}

fn per_read(start: Instant, iterations: u32) -> f64 {
    start.elapsed().as_nanos() as f64 / f64::from(iterations.max(1))
}

fn bench(
    dir: &Path,
    address: PciAddress,
    region: u32,
    offset: u64,
    iterations: u32,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    check_access(&[address])?;
    let host = Arc::new(VfioContainer::new().map_err(|e| e.to_string())?);
    let passthrough = Passthrough::new(host);
    let (device, key) = passthrough.open(address).map_err(|e| e.to_string())?;
    let file = device.host_device().file();
    let (Some(config), Some(base)) = (
        device.region_offset(CONFIG_REGION_INDEX),
        device.region_offset(region),
    ) else {
        return Err(format!("{address} has no region {region}"));
    };
    let enable = PCI_COMMAND_MEMORY_MASTER.to_le_bytes();
    file.write_all_at(&enable, config + PCI_COMMAND)
        .map_err(|e| format!("enable memory decoding: {e}"))?;
    let mut word = [0u8; 4];
    let start = Instant::now();
    for _ in 0..iterations {
        file.read_exact_at(&mut word, base + offset)
            .map_err(|e| format!("direct read: {e}"))?;
    }
    let direct = per_read(start, iterations);

    let sets = DeviceSets::new();
    let handle = sets.register(&address.to_string(), Box::new(device), key);
    let path = dir.join(format!("bench-{address}.sock"));
    let server = DeviceServer::bind(&path, handle).map_err(|e| e.to_string())?;
    let mut client = vfio_user::Client::new(&path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..iterations {
        client
            .region_read(region, offset, &mut word)
            .map_err(|e| format!("vfio-user read: {e}"))?;
    }
    let served = per_read(start, iterations);
    drop(client);
    server.shutdown();
    println!(
        "trapped BAR{region}+{offset:#x} 4-byte read, {iterations} reads: direct on the VFIO fd \
         {direct:.0} ns, through passthrough (vfio-user) {served:.0} ns ({:.1}x)",
        served / direct.max(1.0)
    );
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { dir, addresses } => serve(&dir, &addresses),
        Command::Bench {
            dir,
            region,
            offset,
            iterations,
            address,
        } => bench(&dir, address, region, offset, iterations),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("pci-passthrough: {e}");
            ExitCode::FAILURE
        }
    }
}
