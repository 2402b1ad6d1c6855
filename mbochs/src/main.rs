//! `mbochs`: serve bochs-display compatible mediated devices over vfio-user, manage them, and
//! look at what their guests draw.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use mbochs::driver::{DEFAULT_MAX_MBYTES, DRIVER_NAME};
use mbochs::{DispiModeReader, MbochsDriver};
use mdev_display::cli::{run_display, DisplayCommand};

/// bochs-display compatible mediated devices over vfio-user.
#[derive(Parser, Debug)]
#[command(name = "mbochs", version)]
struct Cli {
    /// Framebuffer memory pool shared by all instances, in MiB (for `serve`).
    #[arg(long, global = true, env = "MBOCHS_MAX_MBYTES", default_value_t = DEFAULT_MAX_MBYTES)]
    max_mbytes: u64,
    #[command(subcommand)]
    command: DisplayCommand,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = run_display(
        DRIVER_NAME,
        cli.command,
        || Arc::new(MbochsDriver::new(cli.max_mbytes)),
        Box::new(DispiModeReader),
    );
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
