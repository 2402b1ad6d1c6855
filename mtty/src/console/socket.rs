//! A port on a UNIX socket: `socat -,raw,echo=0 UNIX:PATH` or `nc -U PATH` attaches. One
//! client at a time; a new client replaces the old one. While nobody is attached the guest's
//! bytes are dropped (as on an unplugged line) and the port shows no carrier.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use mdev::confine::ThreadKind;

use super::{spawn, Console, ConsoleError, HostLink, Outgoing, POLL_INTERVAL};

type Current = Arc<Mutex<Option<UnixStream>>>;

fn lock(c: &Current) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn remove_stale(path: &Path) -> Result<(), ConsoleError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConsoleError::io("stat console socket")(e)),
        Ok(m) if m.file_type().is_socket() && UnixStream::connect(path).is_err() => {
            std::fs::remove_file(path).map_err(ConsoleError::io("remove stale console socket"))
        }
        Ok(_) => Err(ConsoleError::SocketInUse(path.to_path_buf())),
    }
}

/// Listens at `path` and bridges clients to the port.
pub fn start(
    path: &Path,
    host: HostLink,
    stop: Arc<AtomicBool>,
    name: &str,
) -> Result<Console, ConsoleError> {
    remove_stale(path)?;
    let listener = UnixListener::bind(path).map_err(ConsoleError::io("bind console socket"))?;
    listener
        .set_nonblocking(true)
        .map_err(ConsoleError::io("console socket nonblocking"))?;
    let host = Arc::new(host);
    let current: Current = Arc::new(Mutex::new(None));
    let label = format!("{name} socket {}", path.display());
    let reader = {
        let (host, current, label) = (host.clone(), current.clone(), label.clone());
        spawn(
            ThreadKind::SocketConsole,
            format!("{name}-sock-rx"),
            move || serve_clients(&listener, &host, &current, &label),
        )?
    };
    let writer = {
        let (host, current) = (host.clone(), current.clone());
        spawn(
            ThreadKind::SocketConsole,
            format!("{name}-sock-tx"),
            move || write_out(&host, &current),
        )?
    };
    log::info!("{label}: listening");
    let owned: PathBuf = path.to_path_buf();
    Ok(Console::new(
        stop,
        vec![reader, writer],
        format!("socket {}", path.display()),
        Some(Box::new(move || {
            let _ = std::fs::remove_file(owned);
        })),
    ))
}

/// Accepts clients and forwards what they send to the guest.
fn serve_clients(listener: &UnixListener, host: &HostLink, current: &Current, label: &str) {
    let mut client: Option<UnixStream> = None;
    let mut buf = [0u8; 1024];
    let ms = u16::try_from(POLL_INTERVAL.as_millis()).unwrap_or(u16::MAX);
    while !host.stopped() {
        let (listen_ready, client_ready) = {
            let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = &client {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("{label}: poll failed: {e}");
                    return;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if listen_ready {
            match listener.accept() {
                Ok((s, _)) => {
                    if let Ok(out) = s.try_clone() {
                        if let Some(old) = lock(current).replace(out) {
                            let _ = old.shutdown(std::net::Shutdown::Both);
                        }
                        log::info!("{label}: client attached");
                        client = Some(s);
                        host.set_carrier(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => log::warn!("{label}: accept failed: {e}"),
            }
            continue;
        }
        if !client_ready {
            continue;
        }
        let n = match client.as_mut().map(|c| c.read(&mut buf)) {
            Some(Ok(n)) => n,
            Some(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
            Some(Err(_)) | None => 0,
        };
        if n == 0 {
            log::info!("{label}: client detached");
            client = None;
            lock(current).take();
            host.set_carrier(false);
            continue;
        }
        if !host.deliver(&buf[..n]) {
            return;
        }
    }
}

/// Writes the guest's bytes to the attached client, or drops them when nobody is attached.
fn write_out(host: &HostLink, current: &Current) {
    loop {
        match host.next_outgoing() {
            Outgoing::Closed => return,
            Outgoing::Idle => {}
            Outgoing::Bytes(bytes) => {
                let out = lock(current).as_ref().and_then(|s| s.try_clone().ok());
                let out = out.filter(|s| s.set_write_timeout(Some(POLL_INTERVAL)).is_ok());
                if let Some(mut s) = out {
                    // A slow client blocks only this thread; the channel fills and the
                    // guest's TX FIFO waits.
                    if let Err(e) = write_patiently(&mut s, &bytes, host) {
                        log::debug!("console client write failed: {e}");
                    }
                }
            }
        }
    }
}

/// Writes all of `bytes`, waiting for a slow reader but giving up when the console stops.
pub(crate) fn write_patiently(
    out: &mut impl Write,
    mut bytes: &[u8],
    host: &HostLink,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if host.stopped() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
