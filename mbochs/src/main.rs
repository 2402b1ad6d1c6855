//! `mbochs`: serve bochs-display compatible mediated devices over vfio-user, manage them, and
//! look at what their guests draw.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use mbochs::driver::{DEFAULT_MAX_MBYTES, DRIVER_NAME};
use mbochs::{DispiModeReader, MbochsDriver};
use mdev::parent::GenerateDocs;
use mdev_display::cli::{run_display, DisplayCommand};

/// bochs-display compatible mediated devices over vfio-user.
#[derive(Parser, Debug)]
#[command(name = "mbochs", version)]
struct Cli {
    /// Framebuffer memory pool shared by all instances, in MiB (for `serve`).
    #[arg(long, global = true, env = "MBOCHS_MAX_MBYTES", default_value_t = DEFAULT_MAX_MBYTES)]
    max_mbytes: u64,
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
            || Arc::new(MbochsDriver::new(cli.max_mbytes)),
            Box::new(DispiModeReader),
        ),
        Command::GenerateDocs(docs) => docs.run(Cli::command()),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
