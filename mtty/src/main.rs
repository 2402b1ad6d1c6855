//! `mtty`: serve mediated serial cards over vfio-user, manage them, and attach to a port's
//! console socket.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use mdev::parent::cli::{run, ParentCommand};
use mdev::parent::GenerateDocs;
use mtty::console::terminal::LogWriter;
use mtty::driver::{DEFAULT_MAX_PORTS, DRIVER_NAME};
use mtty::MttyDriver;

/// Mediated PCI serial cards (16550A ports) over vfio-user.
#[derive(Parser, Debug)]
#[command(name = "mtty", version)]
struct Cli {
    /// Ports shared by all instances (for `serve`).
    #[arg(long, global = true, env = "MTTY_MAX_PORTS", default_value_t = DEFAULT_MAX_PORTS)]
    max_ports: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(flatten)]
    Parent(ParentCommand),
    /// Attach this terminal to a port served with `portN=socket:PATH` (Ctrl-] detaches).
    Attach {
        /// The port's console socket.
        socket: PathBuf,
    },
    /// Write man pages and shell completions (see contrib/generate-docs).
    #[command(hide = true)]
    GenerateDocs(GenerateDocs),
}

fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // Through a writer that keeps log lines readable while a terminal console holds the
    // terminal raw; a piped target loses colour detection, so it is decided here.
    logger.target(env_logger::Target::Pipe(Box::new(LogWriter::stderr())));
    if std::env::var_os("RUST_LOG_STYLE").is_none() && std::io::stderr().is_terminal() {
        logger.write_style(env_logger::WriteStyle::Always);
    }
    logger.init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Parent(cmd) => run(DRIVER_NAME, cmd, || {
            Arc::new(MttyDriver::new(cli.max_ports))
        }),
        Command::Attach { socket } => match mtty::console::terminal::attach(&socket) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mtty attach {}: {e}", socket.display());
                1
            }
        },
        Command::GenerateDocs(docs) => docs.run(Cli::command()),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
