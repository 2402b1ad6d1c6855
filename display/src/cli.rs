//! The viewer subcommands both display binaries offer next to the parent's (together:
//! [`DisplayCommand`]): `snapshot [--dir D] UUID --out OUT.png` (or `UUID OUT.png`),
//! `snapshot [--dir D] UUID --every SECS --out-dir D2`, `view [--dir D] UUID` (in this
//! terminal) and `view [--dir D] UUID --vnc ADDR:PORT` (a view-only VNC server).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use mdev::confine::{self, Policy, ThreadKind};
use mdev::parent::cli::{run, DirArg, ParentCommand, SeccompArg};
use mdev::parent::MdevDriver;
use uuid::Uuid;

use crate::client::{ClientError, DisplayClient, ModeReader};
use crate::snapshot::save_png;
use crate::terminal::run_live_view;
use crate::vnc::{VncConfig, VncServer};

/// Viewer subcommands; flatten into a binary's subcommand enum.
#[derive(Subcommand, Debug, Clone)]
pub enum ViewerCommand {
    /// Save the instance's current frame as a PNG (once, or every SECS seconds into a
    /// directory until interrupted). Attaches as an extra client; the guest is not disturbed.
    Snapshot {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Take a snapshot every SECS seconds.
        #[arg(long, value_name = "SECS", requires = "out_dir")]
        every: Option<u64>,
        /// Directory for periodic snapshots (UUID-UNIXTIME-SEQ.png).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// With --every: stop after N snapshots (default: until interrupted).
        #[arg(long, value_name = "N", requires = "every")]
        count: Option<u64>,
        /// With --every: write a file only when the picture changed since the last one.
        #[arg(long, requires = "every")]
        changes_only: bool,
        /// Instance UUID.
        uuid: Uuid,
        /// Output file of a single snapshot (same as the positional OUT.png).
        #[arg(
            long = "out",
            short = 'o',
            value_name = "OUT.png",
            conflicts_with = "out_file"
        )]
        out: Option<PathBuf>,
        /// Output file of a single snapshot.
        #[arg(value_name = "OUT.png", required_unless_present_any = ["every", "out"])]
        out_file: Option<PathBuf>,
        /// Confinement once connected.
        #[command(flatten)]
        seccomp: SeccompArg,
    },
    /// Show the instance's display live in this (truecolor) terminal; q, Esc or Ctrl-C quits.
    /// With --vnc, serve it to VNC viewers instead (view-only) until interrupted.
    View {
        /// Where the parent's sockets are.
        #[command(flatten)]
        dir: DirArg,
        /// Instance UUID.
        uuid: Uuid,
        /// Serve the display over VNC (RFB 3.8, view-only, no password) on ADDR:PORT, or PORT
        /// on 127.0.0.1, e.g. 127.0.0.1:5900 (port 0: any free port). Prints `listening on
        /// ADDR:PORT` once bound.
        #[arg(long, value_name = "ADDR:PORT", value_parser = crate::vnc::parse_listen_address)]
        vnc: Option<SocketAddr>,
        /// Allow --vnc on an address other than loopback: anyone who can reach it sees the
        /// display (RFB here has neither password nor encryption).
        #[arg(long, requires = "vnc")]
        vnc_listen_any: bool,
        /// With --vnc: frames captured per second while a viewer is connected.
        #[arg(long, requires = "vnc", value_name = "N", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..=240))]
        vnc_fps: u32,
        /// With --vnc: viewers served at once (more are refused).
        #[arg(long, requires = "vnc", value_name = "N", default_value_t = 16)]
        vnc_max_viewers: usize,
        /// Confinement once connected.
        #[command(flatten)]
        seccomp: SeccompArg,
    },
}

/// Every subcommand of a display binary: the parent's and the viewer's.
#[derive(Subcommand, Debug, Clone)]
pub enum DisplayCommand {
    /// `serve`, `types`, `list`, `create`, `remove`.
    #[command(flatten)]
    Parent(ParentCommand),
    /// `snapshot`, `view`.
    #[command(flatten)]
    Viewer(ViewerCommand),
}

/// Runs a display binary's command for driver `driver_name`: `make_driver` builds the driver
/// for `serve`, `reader` reads the mode for the viewer. Returns the process exit code.
pub fn run_display(
    driver_name: &str,
    cmd: DisplayCommand,
    make_driver: impl FnOnce() -> Arc<dyn MdevDriver>,
    reader: Box<dyn ModeReader>,
) -> i32 {
    match cmd {
        DisplayCommand::Parent(cmd) => run(driver_name, cmd, make_driver),
        DisplayCommand::Viewer(cmd) => run_viewer(driver_name, cmd, reader),
    }
}

/// Why a viewer command failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewerError {
    /// Talking to the device failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The device scans nothing out.
    #[error("nothing is scanned out (display disabled or mode invalid)")]
    NoScanout,
    /// `view` needs a terminal on standard output.
    #[error("view needs a terminal on standard output (use snapshot for files)")]
    NotATerminal,
    /// A single snapshot was asked for without an output file.
    #[error("no output file given (--out OUT.png)")]
    NoOutput,
    /// The viewer could not be confined.
    #[error(transparent)]
    Confine(#[from] confine::ConfineError),
    /// Creating the output directory failed.
    #[error("{0}: {1}")]
    OutDir(PathBuf, #[source] std::io::Error),
    /// The VNC server could not start or stopped.
    #[error("vnc: {0}")]
    Vnc(#[from] crate::vnc::VncError),
}

/// Runs a viewer command of driver `driver_name`, reading modes with `reader`. Returns the
/// process exit code.
pub fn run_viewer(driver_name: &str, cmd: ViewerCommand, reader: Box<dyn ModeReader>) -> i32 {
    let socket = |d: &DirArg, uuid: Uuid| d.resolve(driver_name).join(format!("{uuid}.sock"));
    let (ViewerCommand::Snapshot { seccomp, .. } | ViewerCommand::View { seccomp, .. }) = &cmd;
    if let Err(e) = confine::configure(Policy::new(seccomp.mode)) {
        eprintln!("{driver_name}: confinement: {e}");
        return 1;
    }
    let result = match cmd {
        ViewerCommand::Snapshot {
            dir,
            every: Some(secs),
            out_dir,
            count,
            changes_only,
            uuid,
            ..
        } => {
            let out_dir = out_dir.unwrap_or_else(|| PathBuf::from("."));
            connect_confined(&socket(&dir, uuid), reader)
                .and_then(|mut client| {
                    let period = Duration::from_secs(secs.max(1));
                    let every = Periodic {
                        period,
                        count,
                        changes_only,
                    };
                    snapshot_every(&mut client, &every, &out_dir, uuid)
                })
                .map(|written| log::info!("{written} snapshot(s) written"))
        }
        ViewerCommand::Snapshot {
            dir,
            uuid,
            out,
            out_file,
            ..
        } => match out.or(out_file) {
            Some(out) => snapshot_once(&socket(&dir, uuid), reader, &out),
            None => Err(ViewerError::NoOutput),
        },
        ViewerCommand::View {
            dir,
            uuid,
            vnc: Some(listen),
            vnc_listen_any,
            vnc_fps,
            vnc_max_viewers,
            ..
        } => {
            let config = VncConfig {
                name: format!("{driver_name} {uuid}"),
                fps: vnc_fps,
                max_viewers: vnc_max_viewers,
                ..VncConfig::default()
            };
            serve_vnc(&socket(&dir, uuid), reader, listen, vnc_listen_any, config)
        }
        ViewerCommand::View { .. } if !std::io::stdout().is_terminal() => {
            Err(ViewerError::NotATerminal)
        }
        ViewerCommand::View { dir, uuid, .. } => {
            // The terminal's event source (its fd, the SIGWINCH hook) is set up before the
            // filter goes on.
            let _ = crossterm::event::poll(Duration::ZERO);
            connect_confined(&socket(&dir, uuid), reader)
                .and_then(|mut c| run_live_view(&mut c).map_err(ViewerError::from))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{driver_name}: {e}");
            1
        }
    }
}

/// Serves the instance on `socket` to VNC viewers on `listen` (a loopback address unless
/// `listen_any`) until the instance can no longer be read. Prints `listening on ADDR:PORT`
/// on standard output once bound. In a confined process the server's threads confine
/// themselves as they start, and this thread once the server runs (bound, connected,
/// started).
pub fn serve_vnc(
    socket: &Path,
    reader: Box<dyn ModeReader>,
    listen: SocketAddr,
    listen_any: bool,
    config: VncConfig,
) -> Result<(), ViewerError> {
    let listener = crate::vnc::bind(listen, listen_any)?;
    let client = DisplayClient::connect(socket, reader)?;
    let server = VncServer::start(client, listener, config)?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {}", server.local_addr());
    let _ = out.flush();
    confine::try_enter(ThreadKind::VncMain)?;
    server.wait()?;
    Ok(())
}

/// Connects to the instance on `socket`, then confines this thread as a viewer (when the
/// process is confined).
fn connect_confined(
    socket: &Path,
    reader: Box<dyn ModeReader>,
) -> Result<DisplayClient, ViewerError> {
    let client = DisplayClient::connect(socket, reader)?;
    confine::try_enter(ThreadKind::Viewer)?;
    Ok(client)
}

/// Writes one PNG of the current frame of the instance on `socket` to `out`.
pub fn snapshot_once(
    socket: &Path,
    reader: Box<dyn ModeReader>,
    out: &Path,
) -> Result<(), ViewerError> {
    let mut client = connect_confined(socket, reader)?;
    let frame = client.frame()?.ok_or(ViewerError::NoScanout)?;
    save_png(&frame, out)?;
    log::info!(
        "snapshot {}x{} {:?} -> {}",
        frame.width(),
        frame.height(),
        frame.mode().format,
        out.display()
    );
    Ok(())
}

/// How [`snapshot_every`] takes its snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Periodic {
    /// Time between snapshots.
    pub period: Duration,
    /// Stop after this many (forever when `None`).
    pub count: Option<u64>,
    /// Write a file only when the picture (mode and pixels) changed since the last one.
    pub changes_only: bool,
}

/// Writes a PNG of `client`'s current frame into `out_dir` as `every` says, as
/// `UUID-UNIXTIME-SEQ.png`. A moment with nothing scanned out is skipped. Stops early when
/// the server asks the client to let the device go. Returns how many files were written.
pub fn snapshot_every(
    client: &mut DisplayClient,
    every: &Periodic,
    out_dir: &Path,
    uuid: Uuid,
) -> Result<u64, ViewerError> {
    std::fs::create_dir_all(out_dir).map_err(|e| ViewerError::OutDir(out_dir.into(), e))?;
    let mut next = Instant::now();
    let mut written = 0;
    let mut filter = ChangeFilter::default();
    for seq in 0..every.count.unwrap_or(u64::MAX) {
        if seq > 0 {
            next += every.period;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        if client.release_requested() {
            log::info!("the instance is being removed: the viewer lets it go");
            break;
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = out_dir.join(format!("{uuid}-{stamp}-{seq:05}.png"));
        match client.frame()? {
            Some(frame) => {
                if !filter.changed(&frame) && every.changes_only {
                    log::debug!("snapshot {seq}: picture unchanged, not written");
                    continue;
                }
                save_png(&frame, &path)?;
                written += 1;
                log::info!("snapshot -> {}", path.display());
            }
            None => log::info!("no scan-out; snapshot {seq} skipped"),
        }
    }
    Ok(written)
}

/// Tells whether a frame shows something other than the frame it saw last: its mode or any
/// visible pixel byte (compared through a 64-bit digest).
#[derive(Debug, Default)]
pub struct ChangeFilter {
    last: Option<u64>,
}

impl ChangeFilter {
    /// True for the first frame and for every frame that differs from the previous one.
    pub fn changed(&mut self, frame: &crate::Frame<'_>) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{:?}", frame.mode()).hash(&mut h);
        for y in 0..frame.height() {
            frame.line(y).hash(&mut h);
        }
        let digest = h.finish();
        self.last.replace(digest) != Some(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: ViewerCommand,
    }

    const UUID: &str = "0b6d2a0c-5b43-4e3c-9a34-5b7f5c8f2d11";

    fn out_of(args: &[&str]) -> Option<PathBuf> {
        match Cli::try_parse_from(args).expect("parses").command {
            ViewerCommand::Snapshot { out, out_file, .. } => out.or(out_file),
            ViewerCommand::View { .. } => None,
        }
    }

    #[test]
    fn snapshot_takes_the_output_as_option_or_positional() {
        let want = Some(PathBuf::from("a.png"));
        assert_eq!(out_of(&["x", "snapshot", UUID, "--out", "a.png"]), want);
        assert_eq!(
            out_of(&["x", "snapshot", "--dir", "/d", UUID, "a.png"]),
            want
        );
        assert_eq!(out_of(&["x", "snapshot", UUID, "-o", "a.png"]), want);
        assert!(Cli::try_parse_from(["x", "snapshot", UUID]).is_err());
        assert!(Cli::try_parse_from(["x", "snapshot", UUID, "--out", "a", "b"]).is_err());
        assert!(Cli::try_parse_from(["x", "snapshot", UUID, "--every", "2"]).is_err());
        let every = ["x", "snapshot", UUID, "--every", "2", "--out-dir", "/tmp/s"];
        assert!(matches!(
            Cli::try_parse_from(every).unwrap().command,
            ViewerCommand::Snapshot {
                every: Some(2),
                count: None,
                ..
            }
        ));
        let counted = [&every[..], &["--count", "3"]].concat();
        assert!(matches!(
            Cli::try_parse_from(counted).unwrap().command,
            ViewerCommand::Snapshot { count: Some(3), .. }
        ));
        assert!(Cli::try_parse_from(["x", "snapshot", UUID, "-o", "a", "--count", "3"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["x", "view", UUID]).unwrap().command,
            ViewerCommand::View { .. }
        ));
    }

    #[test]
    fn view_serves_vnc_on_an_address_given_explicitly() {
        let vnc_of = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(ViewerCommand::View {
                vnc,
                vnc_listen_any,
                vnc_fps,
                ..
            }) => Ok((vnc, vnc_listen_any, vnc_fps)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.kind()),
        };
        assert_eq!(vnc_of(&["x", "view", UUID]), Ok((None, false, 30)));
        let local: SocketAddr = "127.0.0.1:5901".parse().unwrap();
        assert_eq!(
            vnc_of(&["x", "view", UUID, "--vnc", "5901"]),
            Ok((Some(local), false, 30))
        );
        assert_eq!(
            vnc_of(&[
                "x",
                "view",
                "--vnc",
                "127.0.0.1:5901",
                UUID,
                "--vnc-fps",
                "60"
            ]),
            Ok((Some(local), false, 60))
        );
        let any: SocketAddr = "0.0.0.0:5900".parse().unwrap();
        assert_eq!(
            vnc_of(&[
                "x",
                "view",
                UUID,
                "--vnc",
                "0.0.0.0:5900",
                "--vnc-listen-any"
            ]),
            Ok((Some(any), true, 30))
        );
        // The address is not optional (it would swallow the UUID), and the VNC options need it.
        assert!(vnc_of(&["x", "view", "--vnc", UUID]).is_err());
        assert!(vnc_of(&["x", "view", UUID, "--vnc-listen-any"]).is_err());
        assert!(vnc_of(&["x", "view", UUID, "--vnc", "5900", "--vnc-fps", "0"]).is_err());
    }

    #[test]
    fn change_filter_sees_pixels_and_modes() {
        use crate::{Frame, Mode, PixelFormat};
        let mode = Mode::packed(PixelFormat::Xrgb8888, 4, 2);
        let mut fb = vec![0u8; 4 * 4 * 2];
        let mut f = ChangeFilter::default();
        assert!(
            f.changed(&Frame::new(mode, &fb).unwrap()),
            "the first frame is new"
        );
        assert!(
            !f.changed(&Frame::new(mode, &fb).unwrap()),
            "the same frame is not"
        );
        fb[31] = 1;
        assert!(
            f.changed(&Frame::new(mode, &fb).unwrap()),
            "a changed last pixel is"
        );
        let small = Mode::packed(PixelFormat::Xrgb8888, 4, 1);
        assert!(f.changed(&Frame::new(small, &fb).unwrap()), "a new mode is");
    }
}
