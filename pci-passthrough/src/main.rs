//! `pci-passthrough`: serves host PCI functions bound to vfio-pci over vfio-user, one socket
//! per function (`DIR/<address>.sock`), and measures a BAR read: directly on the VFIO device
//! fd, then through the server with the default trust and with `--trusted-client-mmap`.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use log::{error, info, warn};
use mdev::confine::{self, Policy, SeccompMode, ThreadKind};
use mdev::parent::cli::{parse_seconds, PollArg, SeccompArg};
use mdev::parent::GenerateDocs;
use mdev::parent::{block_shutdown_signals, wait_for_shutdown};
use mdev::pci::CommandRegister;
use mdev::region::{RegionFlags, CONFIG_REGION_INDEX};
use mdev::server::{ask_and_wait, DeviceServer};
use mdev::DeviceSets;
use pci_passthrough::host::{HostDevice, HostVfio};
use pci_passthrough::vfio_access::VfioAccess;
use pci_passthrough::vfio_host::{self, VfioContainer};
use pci_passthrough::{ClientTrust, Passthrough, PassthroughDevice, PciAddress};

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
        /// How long clients get to let the functions go at SIGTERM once asked (the device
        /// request interrupt: QEMU unplugs them from its guest) before they are closed; a
        /// second SIGTERM closes them at once.
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_seconds)]
        remove_timeout: Duration,
        /// Trust every client with the host VFIO device fd: the region info of each BAR the
        /// host lets be mapped carries it, for direct mmap. The fd gives the client every
        /// ioctl of the device (reset, interrupt routing, config and region access) and stays
        /// with it after its connection closes. Without this flag (the default) no client
        /// receives any host fd and every BAR is trapped.
        #[arg(long)]
        trusted_client_mmap: bool,
        /// Polling after each request.
        #[command(flatten)]
        poll: PollArg,
        /// Confinement of every thread (VFIO ioctls by request number).
        #[command(flatten)]
        seccomp: SeccompArg,
        /// PCI addresses (DDDD:BB:DD.F).
        #[arg(required = true)]
        addresses: Vec<PciAddress>,
    },
    /// Times a 4-byte BAR read: directly on the VFIO device fd, then through vfio-user with
    /// the default trust (trapped) and with --trusted-client-mmap (trapped and mmap'd).
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
    /// Write man pages and shell completions (see contrib/generate-docs).
    #[command(hide = true)]
    GenerateDocs(GenerateDocs),
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

/// Says which trust `device` is served with and what that means for its BARs.
fn log_client_trust<V: HostVfio>(device: &PassthroughDevice<V>) {
    let address = device.address();
    let bars = device.host_mmap_able_bars();
    let named = bars
        .iter()
        .map(|b| format!("BAR{b}"))
        .collect::<Vec<_>>()
        .join(", ");
    match (device.client_trust(), bars.is_empty()) {
        (ClientTrust::ProtocolOnly, true) => info!(
            "{address}: client trust {}: clients receive protocol replies only, no host fd; \
             every BAR is trapped",
            ClientTrust::ProtocolOnly
        ),
        (ClientTrust::ProtocolOnly, false) => info!(
            "{address}: client trust {}: clients receive protocol replies only, no host fd; \
             every BAR is trapped, including {named} which the host lets be mapped \
             (--trusted-client-mmap would hand out the host VFIO device fd for it)",
            ClientTrust::ProtocolOnly
        ),
        (ClientTrust::TrustedClientMmap, true) => warn!(
            "{address}: client trust {}: no BAR of this function can be mapped on the host, \
             so no host fd is handed out; every BAR is trapped",
            ClientTrust::TrustedClientMmap
        ),
        (ClientTrust::TrustedClientMmap, false) => warn!(
            "{address}: client trust {}: every client receives the host VFIO device fd with \
             the region info of {named} (direct mmap); that fd carries every device ioctl \
             (reset, SET_IRQS, config and region access) and stays with the client after \
             its connection closes",
            ClientTrust::TrustedClientMmap
        ),
    }
}

fn serve(
    dir: &Path,
    addresses: &[PciAddress],
    trust: ClientTrust,
    (remove_timeout, poll): (Duration, Duration),
    seccomp: SeccompMode,
) -> Result<(), String> {
    block_shutdown_signals();
    let policy = Policy::new(seccomp).with_device_syscalls(vfio_host::runtime_syscalls());
    confine::configure(policy).map_err(|e| format!("confinement: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    check_access(addresses)?;
    let host = Arc::new(VfioContainer::new().map_err(|e| e.to_string())?);
    let passthrough = Passthrough::new(host);
    let sets = DeviceSets::new();
    let mut servers = Vec::new();
    for &address in addresses {
        let (device, key) = passthrough
            .open_with(address, trust)
            .map_err(|e| e.to_string())?;
        log_client_trust(&device);
        let handle = sets.register(&address.to_string(), Box::new(device), key);
        let path = socket_path(dir, address);
        let server = DeviceServer::bind(&path, handle).map_err(|e| e.to_string())?;
        server.set_poll(poll);
        println!(
            "{address} {} set={}",
            path.display(),
            server.handle().set().name()
        );
        servers.push(server);
    }
    // Start-up is done (groups, devices and sockets are open): the main thread only waits.
    confine::try_enter(ThreadKind::Main).map_err(|e| format!("confinement: {e}"))?;
    info!("seccomp {seccomp}");
    wait_for_shutdown();
    stop_gracefully(servers, remove_timeout);
    Ok(())
}

/// Every function refuses new clients and asks its clients to let go (REQ), all first; then
/// the clients get `timeout` in all (a second SIGTERM ends the wait), what is left is
/// closed, and the servers stop.
fn stop_gracefully(servers: Vec<DeviceServer>, timeout: Duration) {
    let closers: Vec<_> = servers.iter().map(DeviceServer::disconnector).collect();
    let spawned = std::thread::Builder::new()
        .name("force-stop".into())
        .spawn(move || {
            wait_for_shutdown();
            info!("second signal: closing every client now");
            for c in &closers {
                c.disconnect_all();
            }
        });
    if let Err(e) = spawned {
        warn!("a second signal will not force the stop: {e}");
    }
    let mut departures: Vec<_> = servers.iter().map(DeviceServer::depart).collect();
    if !ask_and_wait(&mut departures, timeout) {
        warn!(
            "clients did not let go within {:.1} s",
            timeout.as_secs_f64()
        );
    }
    for d in departures {
        if !d.disconnect() {
            warn!(
                "{}: still held after closing its clients",
                d.handle().name()
            );
        }
        d.complete();
    }
    for s in servers {
        s.shutdown();
    }
}

fn per_read(start: Instant, iterations: u32) -> f64 {
    start.elapsed().as_nanos() as f64 / f64::from(iterations.max(1))
}

/// What a BAR read costs when the function is served with one trust.
struct ServedReads {
    trust: ClientTrust,
    /// pread on the host VFIO device fd, in this process (the baseline).
    direct_ns: f64,
    /// Whether the client received a host fd with the BAR's region info.
    host_fd: bool,
    /// REGION_READ over vfio-user (trapped).
    trapped_ns: f64,
    /// A load from the client's own mapping of the fd, when it received one.
    mmapped_ns: Option<f64>,
}

/// Times `iterations` 4-byte loads from the client's mapping of a region at `offset`,
/// through the fd that came with its region info (`file`, the region at `region_start`).
fn time_mmapped_reads(
    info: &vfio_user::Region,
    (file, region_start): (&std::fs::File, u64),
    offset: u64,
    iterations: u32,
) -> Result<f64, String> {
    if !RegionFlags::from_bits_truncate(info.flags).contains(RegionFlags::MMAP) {
        return Err("an fd came without the MMAP flag".into());
    }
    let refused = || format!("offset {offset:#x} is not an aligned, mmap-able word");
    let end = offset.checked_add(4).ok_or_else(refused)?;
    let in_area = info.sparse_areas.is_empty()
        || info
            .sparse_areas
            .iter()
            .any(|a| a.offset <= offset && end <= a.offset.saturating_add(a.size));
    if !in_area || !offset.is_multiple_of(4) || end > info.size {
        return Err(refused());
    }
    let at = region_start.checked_add(offset).ok_or_else(refused)?;
    let map = memmap2::MmapOptions::new()
        .offset(at)
        .len(4)
        .map_raw(file)
        .map_err(|e| format!("mmap of the region: {e}"))?;
    let word = map.as_ptr().cast::<u32>();
    let mut sum = 0u32;
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: `map` is a live 4-byte shared mapping of the BAR at `offset`, which was
        // checked to be 4-aligned (the mapping keeps the in-page offset), and lies inside a
        // mmap-able area of the region; a volatile load is how device memory is read.
        sum = sum.wrapping_add(unsafe { word.read_volatile() });
    }
    let per = per_read(start, iterations);
    std::hint::black_box(sum);
    Ok(per)
}

/// Times direct reads on a device fd of this process's own (memory decoding turned on),
/// then closes it, then opens `address` with `trust`, serves it and times a vfio-user
/// client's reads (trapped, and mmap'd when the client got an fd), then stops.
fn bench_served(
    (host, passthrough): (&VfioContainer, &Passthrough<VfioContainer>),
    dir: &Path,
    address: PciAddress,
    trust: ClientTrust,
    (region, offset, iterations): (u32, u64, u32),
) -> Result<ServedReads, String> {
    let enable = PCI_COMMAND_MEMORY_MASTER.to_le_bytes();
    let direct = host.open(address).map_err(|e| e.to_string())?;
    let offset_of = |index: u32| {
        direct
            .region_info(index)
            .ok()
            .filter(|r| r.size > 0)
            .map(|r| r.offset)
            .ok_or_else(|| format!("{address} has no region {index}"))
    };
    let base = offset_of(region)?;
    direct
        .write(offset_of(CONFIG_REGION_INDEX)? + PCI_COMMAND, &enable)
        .map_err(|e| format!("enable memory decoding: {e}"))?;
    let file = direct.file().ok_or("the device fd is closed")?;
    let mut word = [0u8; 4];
    let start = Instant::now();
    for _ in 0..iterations {
        file.read_exact_at(&mut word, base + offset)
            .map_err(|e| format!("direct read: {e}"))?;
    }
    let direct_ns = per_read(start, iterations);
    drop(file);
    drop(direct);

    let (device, key) = passthrough
        .open_with(address, trust)
        .map_err(|e| e.to_string())?;
    let sets = DeviceSets::new();
    let handle = sets.register(&address.to_string(), Box::new(device), key);
    let tag = match trust {
        ClientTrust::ProtocolOnly => "default",
        ClientTrust::TrustedClientMmap => "trusted",
    };
    let path = dir.join(format!("bench-{tag}-{address}.sock"));
    let server = DeviceServer::bind(&path, handle).map_err(|e| e.to_string())?;
    let mut client = vfio_user::Client::new(&path).map_err(|e| e.to_string())?;
    // The client's open reset the device: it turns decoding on again, as a driver would.
    client
        .region_write(CONFIG_REGION_INDEX, PCI_COMMAND, &enable)
        .map_err(|e| format!("enable memory decoding over vfio-user: {e}"))?;
    let start = Instant::now();
    for _ in 0..iterations {
        client
            .region_read(region, offset, &mut word)
            .map_err(|e| format!("vfio-user read: {e}"))?;
    }
    let trapped_ns = per_read(start, iterations);
    let info = client
        .region(region)
        .ok_or_else(|| format!("the client saw no region {region}"))?;
    let mmapped_ns = match &info.file_offset {
        Some(backing) => Some(time_mmapped_reads(
            info,
            (backing.file(), backing.start()),
            offset,
            iterations,
        )?),
        None => None,
    };
    let host_fd = info.file_offset.is_some();
    drop(client);
    server.shutdown();
    Ok(ServedReads {
        trust,
        direct_ns,
        host_fd,
        trapped_ns,
        mmapped_ns,
    })
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
    let passthrough = Passthrough::new(host.clone());
    // One mode after the other: the device is closed in between, as by a restarted server.
    let runs = [ClientTrust::ProtocolOnly, ClientTrust::TrustedClientMmap]
        .into_iter()
        .map(|trust| {
            bench_served(
                (&host, &passthrough),
                dir,
                address,
                trust,
                (region, offset, iterations),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "BAR{region}+{offset:#x} 4-byte read, {iterations} reads per figure, default vs \
         --trusted-client-mmap:"
    );
    for r in &runs {
        let mode = match r.trust {
            ClientTrust::ProtocolOnly => "default (protocol only)",
            ClientTrust::TrustedClientMmap => "--trusted-client-mmap",
        };
        let ratio = |ns: f64| format!("{ns:.0} ns ({:.1}x direct)", ns / r.direct_ns.max(1.0));
        let mmapped = r
            .mmapped_ns
            .map_or_else(|| "not offered".to_string(), ratio);
        println!(
            "  {mode:<24} host fd to client: {:<7} | direct on the VFIO fd {:.0} ns | \
             trapped REGION_READ through passthrough {} | client's own mmap {mmapped}",
            if r.host_fd { "granted" } else { "none" },
            r.direct_ns,
            ratio(r.trapped_ns),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            dir,
            remove_timeout,
            trusted_client_mmap,
            poll,
            seccomp,
            addresses,
        } => {
            let trust = if trusted_client_mmap {
                ClientTrust::TrustedClientMmap
            } else {
                ClientTrust::ProtocolOnly
            };
            serve(
                &dir,
                &addresses,
                trust,
                (remove_timeout, poll.bound()),
                seccomp.mode,
            )
        }
        Command::Bench {
            dir,
            region,
            offset,
            iterations,
            address,
        } => bench(&dir, address, region, offset, iterations),
        Command::GenerateDocs(docs) => {
            return ExitCode::from(u8::try_from(docs.run(Cli::command())).unwrap_or(1))
        }
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
