//! A port on a new pseudo-terminal: attach with `screen /dev/pts/N` or `picocom`. The server
//! keeps the slave side open (in raw mode) so the master never hangs up between sessions;
//! bytes the guest sends while nobody reads are dropped once the pty's buffer is full.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};

use mdev::confine::ThreadKind;

use super::{spawn, wait_readable, Console, ConsoleError, HostLink, Outgoing, POLL_INTERVAL};

fn nix_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> ConsoleError {
    move |e| ConsoleError::io(what)(std::io::Error::from(e))
}

/// Creates a pty and bridges its master to the port.
pub fn start(host: HostLink, stop: Arc<AtomicBool>, name: &str) -> Result<Console, ConsoleError> {
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY).map_err(nix_err("posix_openpt"))?;
    grantpt(&master).map_err(nix_err("grantpt"))?;
    unlockpt(&master).map_err(nix_err("unlockpt"))?;
    let path = ptsname_r(&master).map_err(nix_err("ptsname"))?;
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&master),
        FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
    )
    .map_err(nix_err("pty nonblocking"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .map_err(ConsoleError::io("open pty slave"))?;
    let mut t = tcgetattr(&slave).map_err(nix_err("tcgetattr"))?;
    cfmakeraw(&mut t);
    tcsetattr(&slave, SetArg::TCSANOW, &t).map_err(nix_err("tcsetattr"))?;
    let rx = Arc::new(master);
    let tx = rx.clone();
    let host = Arc::new(host);
    host.set_carrier(true);
    let label = format!("{name} pty {path}");
    let reader = {
        let (host, label) = (host.clone(), label.clone());
        spawn(
            ThreadKind::PtyConsole,
            format!("{name}-pty-rx"),
            move || read_in(rx, &host, &label),
        )?
    };
    let writer = spawn(
        ThreadKind::PtyConsole,
        format!("{name}-pty-tx"),
        move || write_out(tx, &host),
    )?;
    log::info!("{label}: ready");
    Ok(Console::new(
        stop,
        vec![reader, writer],
        format!("pty {path}"),
        Some(Box::new(move || drop(slave))),
    ))
}

fn read_in(master: Arc<PtyMaster>, host: &HostLink, label: &str) {
    let mut buf = [0u8; 1024];
    while !host.stopped() {
        match wait_readable(master.as_fd()) {
            Ok(r) if r.is_empty() => continue,
            Ok(_) => {}
            Err(e) => {
                log::error!("{label}: poll failed: {e}");
                return;
            }
        }
        match (&*master).read(&mut buf) {
            Ok(0) => std::thread::sleep(POLL_INTERVAL),
            Ok(n) => {
                if !host.deliver(&buf[..n]) {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            // EIO: no slave open; wait for one.
            Err(_) => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

fn write_out(master: Arc<PtyMaster>, host: &HostLink) {
    loop {
        let bytes = match host.next_outgoing() {
            Outgoing::Closed => return,
            Outgoing::Idle => continue,
            Outgoing::Bytes(b) => b,
        };
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match (&*master).write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Give a reader one interval to catch up, then drop what is left.
                    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                    let ms = u16::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u16::MAX);
                    if !matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0) {
                        log::debug!("pty full: {} byte(s) dropped", rest.len());
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("pty write failed: {e}");
                    break;
                }
            }
        }
    }
}
