//! `mdpy`: serve simple mediated displays over vfio-user, manage them, and look at what
//! their guests draw.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use mdev::parent::GenerateDocs;
use mdev_display::cli::{run_display, DisplayCommand};
use mdpy::driver::{DEFAULT_MAX_DEVICES, DRIVER_NAME};
use mdpy::{ConfigModeReader, MdpyDriver};

/// Simple mediated displays over vfio-user.
#[derive(Parser, Debug)]
#[command(name = "mdpy", version)]
struct Cli {
    /// How many instances may exist at once (for `serve`).
    #[arg(long, global = true, env = "MDPY_MAX_DEVICES", default_value_t = DEFAULT_MAX_DEVICES)]
    max_devices: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Display(DisplayCommand),
    /// Write man pages and shell completions (see contrib/generate-docs).
    #[command(hide = true)]
    GenerateDocs(GenerateDocs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Display(cmd) => run_display(
            DRIVER_NAME,
            cmd,
            || Arc::new(MdpyDriver::new(cli.max_devices)),
            Box::new(ConfigModeReader),
        ),
        Command::GenerateDocs(docs) => docs.run(Cli::command()),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
