//! The host terminal as a port's console, in raw mode. [`DETACH_KEY`] (Ctrl-]) detaches:
//! the terminal is restored and the port loses its carrier. The terminal is also restored when
//! the device goes away, on a panic, and when [`attach`] returns.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};

use mdev::confine::ThreadKind;

use super::{spawn, wait_readable, Console, ConsoleError, HostLink, Outgoing};

/// The byte that detaches the terminal (Ctrl-], as in telnet).
pub const DETACH_KEY: u8 = 0x1d;

static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Raw mode for as long as it lives.
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches the terminal to raw mode.
    pub fn enable() -> std::io::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = crossterm::terminal::disable_raw_mode();
                previous(info);
            }));
        });
        crossterm::terminal::enable_raw_mode()?;
        Ok(RawTerminal(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Log output for a process whose terminal may be in raw mode: while it is, each line feed
/// is written as CR LF (raw mode turns off the output processing that would add the CR), so
/// log lines start at the left margin instead of drifting right across the guest's console.
pub struct LogWriter<W> {
    out: W,
    raw: fn() -> bool,
}

impl LogWriter<std::io::Stderr> {
    /// Standard error, translated while crossterm holds the terminal raw.
    pub fn stderr() -> Self {
        LogWriter {
            out: std::io::stderr(),
            raw: || crossterm::terminal::is_raw_mode_enabled().unwrap_or(false),
        }
    }
}

impl<W: Write> Write for LogWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !(self.raw)() || !buf.contains(&b'\n') {
            return self.out.write(buf);
        }
        let mut translated = Vec::with_capacity(buf.len() + 8);
        let mut previous = 0u8;
        for &b in buf {
            if b == b'\n' && previous != b'\r' {
                translated.push(b'\r');
            }
            translated.push(b);
            previous = b;
        }
        self.out.write_all(&translated)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Connects the host terminal to the port (one port per process).
pub fn start(host: HostLink, stop: Arc<AtomicBool>, name: &str) -> Result<Console, ConsoleError> {
    if TERMINAL_TAKEN.swap(true, Ordering::AcqRel) {
        return Err(ConsoleError::TerminalBusy);
    }
    let raw = match RawTerminal::enable() {
        Ok(r) => r,
        Err(e) => {
            TERMINAL_TAKEN.store(false, Ordering::Release);
            return Err(ConsoleError::io("terminal raw mode")(e));
        }
    };
    let host = Arc::new(host);
    host.set_carrier(true);
    let attached = Arc::new(AtomicBool::new(true));
    let raw = Arc::new(std::sync::Mutex::new(Some(raw)));
    let reader = {
        let (host, attached, raw) = (host.clone(), attached.clone(), raw.clone());
        spawn(
            ThreadKind::TerminalConsole,
            format!("{name}-term-rx"),
            move || {
                read_stdin(&host);
                attached.store(false, Ordering::Release);
                host.set_carrier(false);
                raw.lock().unwrap_or_else(|p| p.into_inner()).take();
                eprintln!("\r\n[mtty: terminal detached]");
            },
        )?
    };
    let writer = {
        let attached = attached.clone();
        spawn(
            ThreadKind::TerminalConsole,
            format!("{name}-term-tx"),
            move || loop {
                match host.next_outgoing() {
                    Outgoing::Closed => return,
                    Outgoing::Idle => {}
                    Outgoing::Bytes(b) if attached.load(Ordering::Acquire) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&b).and_then(|()| out.flush());
                    }
                    Outgoing::Bytes(_) => {}
                }
            },
        )?
    };
    eprintln!("[mtty: {name} on this terminal; Ctrl-] detaches]\r");
    Ok(Console::new(
        stop,
        vec![reader, writer],
        String::from("terminal"),
        Some(Box::new(move || {
            raw.lock().unwrap_or_else(|p| p.into_inner()).take();
            TERMINAL_TAKEN.store(false, Ordering::Release);
        })),
    ))
}

fn read_stdin(host: &HostLink) {
    let stdin = std::io::stdin();
    let mut buf = [0u8; 256];
    while !host.stopped() {
        match wait_readable(stdin.as_fd()) {
            Ok(r) if r.is_empty() => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match stdin.lock().read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let chunk = &buf[..n];
        let (send, detach) = match chunk.iter().position(|&b| b == DETACH_KEY) {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if !host.deliver(send) || detach {
            return;
        }
    }
}

/// `mtty attach`: bridges this terminal (raw) to a port's console socket until the socket
/// closes or [`DETACH_KEY`] is pressed.
pub fn attach(path: &Path) -> std::io::Result<()> {
    let sock = UnixStream::connect(path)?;
    let mut from_port = sock.try_clone()?;
    let _raw = RawTerminal::enable()?;
    eprintln!("[mtty: attached to {}; Ctrl-] detaches]\r", path.display());
    let done = Arc::new(AtomicBool::new(false));
    let printer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = from_port.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut out = std::io::stdout().lock();
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let stdin = std::io::stdin();
    let mut to_port = sock;
    let mut buf = [0u8; 256];
    while !done.load(Ordering::Acquire) {
        if wait_readable(stdin.as_fd())?.is_empty() {
            continue;
        }
        let n = stdin.lock().read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        match chunk.iter().position(|&b| b == DETACH_KEY) {
            Some(i) => {
                to_port.write_all(&chunk[..i])?;
                break;
            }
            None => to_port.write_all(chunk)?,
        }
    }
    let _ = to_port.shutdown(std::net::Shutdown::Both);
    let _ = printer.join();
    eprintln!("\r\n[mtty: detached]\r");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_get_carriage_returns_only_while_raw() {
        let mut raw = LogWriter {
            out: Vec::new(),
            raw: || true,
        };
        raw.write_all(b"one\ntwo\r\n\n").unwrap();
        assert_eq!(raw.out, b"one\r\ntwo\r\n\r\n");
        let mut cooked = LogWriter {
            out: Vec::new(),
            raw: || false,
        };
        cooked.write_all(b"one\ntwo\n").unwrap();
        assert_eq!(cooked.out, b"one\ntwo\n");
    }
}
