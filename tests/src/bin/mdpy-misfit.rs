//! `mdpy-misfit SOCKET WIDTHxHEIGHT BAR0_BYTES`: serves, on the vfio-user socket SOCKET, one
//! PCI function that is mdpy in every respect (ids, class, the mode capability at 0x40, built
//! by mdpy's own `mdpy_config`) except that its BAR0 is `BAR0_BYTES` long whatever the mode
//! says. Real mdpy instances size BAR0 from their mode and always fit; this test device
//! reports a mode larger than its BAR so that the end-to-end test can check that the guest
//! driver (`tests/guest/mdpy-fb`) refuses it instead of mapping past BAR0. It scans nothing
//! out. Runs until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;

use mdev::device_set::DeviceSets;
use mdev::parent::{block_shutdown_signals, wait_for_shutdown};
use mdev::server::DeviceServer;
use mdev_display::{display_device, DisplayModel, Framebuffer, Mode};
use mdpy::device::mdpy_config;
use mdpy::types::FORMAT;

/// The model of a function whose mode does not fit its framebuffer: nothing is scanned out.
struct Misfit {
    mode: Mode,
    bar_size: u64,
}

impl DisplayModel for Misfit {
    fn scanout(&self) -> Option<Mode> {
        None
    }

    fn describe(&self) -> String {
        format!(
            "mdpy-misfit: reports {}x{} with a {}-byte BAR0",
            self.mode.width, self.mode.height, self.bar_size
        )
    }
}

/// Parses `WIDTHxHEIGHT`.
fn size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

fn serve(socket: &Path, mode: Mode, bar_size: u64) -> Result<(), Box<dyn std::error::Error>> {
    let config = mdpy_config(&mode)?;
    let framebuffer = Framebuffer::new("mdpy-misfit", bar_size)?;
    let model = Misfit { mode, bar_size };
    log::info!("{}", model.describe());
    let device = display_device(config, framebuffer, model, Vec::new())?;
    block_shutdown_signals();
    let sets = DeviceSets::new();
    let handle = sets.register("mdpy-misfit", Box::new(device), None);
    let server = DeviceServer::bind(socket, handle)?;
    wait_for_shutdown();
    server.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some((width, height)), Some(bar_size)) = (
        args.first(),
        args.get(1).and_then(|s| size(s)),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: mdpy-misfit SOCKET WIDTHxHEIGHT BAR0_BYTES");
        return ExitCode::from(2);
    };
    if args.len() != 3 || !bar_size.is_power_of_two() || bar_size < 4096 {
        eprintln!("mdpy-misfit: BAR0_BYTES must be a power of two of at least 4096");
        return ExitCode::from(2);
    }
    match serve(
        Path::new(socket),
        Mode::packed(FORMAT, width, height),
        bar_size,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mdpy-misfit: {e}");
            ExitCode::FAILURE
        }
    }
}
