//! `guest-pci serial-xfer`: timed bulk transfers through a serial port driven by the guest's
//! stock driver (`/dev/ttySN`), against the host tool `serial-peer` on the port's console.
//!
//! ```text
//! guest-pci serial-xfer TTY STEP...
//!   send:BAUD:FILE     send FILE to the host
//!   recv:BAUD:N:FILE   receive N bytes from the host into FILE
//!   base:BAUD_BASE     set the port's clock so that divisor 1 is BAUD_BASE baud
//!                      (TIOCSSERIAL, as `setserial TTY baud_base N` does)
//!   hello              wait (up to a minute) for the host's `H` (`serial-peer --hello`),
//!                      skipping anything before it: the host is attached
//! ```
//! The port is opened once, raw, 8N1, RTS/CTS flow control; each step sets its speed (any
//! baud, through `BOTHER`). The guest leads and the host follows; each request is a command
//! byte and a little-endian u32 length:
//! - `S` N, then N bytes: the host keeps them; it answers `A` when it has all of them;
//! - `R` N: the host sends N bytes of its own;
//! - `Q` 0: the end.
//!
//! Prints one line per transfer: `serial DIR BAUD bytes=N secs=S bytes_per_s=R`, timed from
//! the request written until the host's `A` (send) or the last byte received (recv). (Timing
//! from the first byte received would be wrong: with one vCPU busy in the serial interrupt,
//! the reader may first run when nearly everything has arrived.)

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::{num, open_rw, Result};

/// The whole exchange must end within this long (a stuck transfer fails, never hangs).
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `hello` waits for the host.
const HELLO_TIMEOUT: Duration = Duration::from_secs(60);

/// Sets `tty` raw, 8N1, RTS/CTS, receiver on, modem lines ignored, at `baud`.
fn configure(tty: &File, baud: u32) -> Result<()> {
    let fd = tty.as_raw_fd();
    // SAFETY: `termios2` is plain integers; all zero is a valid value for TCGETS2 to fill.
    let mut t: libc::termios2 = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open tty we hold; TCGETS2 writes one `struct termios2`, which `t` is.
    if unsafe { libc::ioctl(fd, libc::TCGETS2, &mut t) } < 0 {
        return Err(format!("TCGETS2: {}", std::io::Error::last_os_error()));
    }
    t.c_iflag &= !(libc::IGNBRK
        | libc::BRKINT
        | libc::PARMRK
        | libc::ISTRIP
        | libc::INLCR
        | libc::IGNCR
        | libc::ICRNL
        | libc::IXON
        | libc::IXOFF
        | libc::IXANY);
    t.c_oflag &= !libc::OPOST;
    t.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
    // Input speed follows the output speed when CIBAUD is 0.
    t.c_cflag &= !(libc::CSIZE | libc::PARENB | libc::CSTOPB | libc::CBAUD | (libc::CBAUD << 16));
    t.c_cflag |= libc::CS8 | libc::CREAD | libc::CLOCAL | libc::CRTSCTS | libc::BOTHER;
    t.c_ospeed = baud;
    t.c_ispeed = baud;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: as above; TCSETSW2 reads one `struct termios2` after the output drained.
    if unsafe { libc::ioctl(fd, libc::TCSETSW2, &t) } < 0 {
        return Err(format!(
            "TCSETSW2 {baud}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `struct serial_struct` (linux/serial.h), for TIOCGSERIAL / TIOCSSERIAL.
#[repr(C)]
struct SerialStruct {
    kind: i32,
    line: i32,
    port: u32,
    irq: i32,
    flags: i32,
    xmit_fifo_size: i32,
    custom_divisor: i32,
    baud_base: i32,
    close_delay: u16,
    io_type: u8,
    reserved_char: u8,
    hub6: i32,
    closing_wait: u16,
    closing_wait2: u16,
    iomem_base: *mut u8,
    iomem_reg_shift: u16,
    port_high: u32,
    iomap_base: libc::c_ulong,
}

/// Sets the port's clock so that divisor 1 is `baud_base` baud (the driver then allows any
/// speed up to it).
fn set_baud_base(tty: &File, baud_base: u32) -> Result<()> {
    let fd = tty.as_raw_fd();
    // SAFETY: `SerialStruct` is integers and a raw pointer; all zero is a valid value.
    let mut s: SerialStruct = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open tty; TIOCGSERIAL writes one `struct serial_struct`, which `s`
    // is (same layout, repr(C)).
    if unsafe { libc::ioctl(fd, libc::TIOCGSERIAL, &mut s) } < 0 {
        return Err(format!("TIOCGSERIAL: {}", std::io::Error::last_os_error()));
    }
    s.baud_base = i32::try_from(baud_base).map_err(|e| e.to_string())?;
    // SAFETY: as above; TIOCSSERIAL reads one `struct serial_struct`.
    if unsafe { libc::ioctl(fd, libc::TIOCSSERIAL, &s) } < 0 {
        return Err(format!(
            "TIOCSSERIAL baud_base {baud_base}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Reads until the host's `H`, for at most [`HELLO_TIMEOUT`].
fn hello(tty: &mut File) -> Result<()> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let mut b = [0u8];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("no hello from the host".into());
        }
        let mut pfd = libc::pollfd {
            fd: tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for an fd we hold open, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if n == 0 {
            continue;
        }
        match tty.read(&mut b) {
            Ok(1) if b[0] == b'H' => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("tty read: {e}")),
        }
    }
}

fn request(tty: &mut File, cmd: u8, len: u32) -> Result<()> {
    let mut h = [cmd, 0, 0, 0, 0];
    h[1..].copy_from_slice(&len.to_le_bytes());
    tty.write_all(&h).map_err(|e| format!("tty write: {e}"))
}

fn report(dir: &str, baud: u32, bytes: usize, secs: f64) {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a rate for printing; sizes are far below 2^52"
    )]
    let rate = bytes as f64 / secs.max(1e-9);
    println!("serial {dir} {baud} bytes={bytes} secs={secs:.3} bytes_per_s={rate:.0}");
}

fn send(tty: &mut File, baud: u32, path: &str) -> Result<()> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let len = u32::try_from(data.len()).map_err(|e| e.to_string())?;
    configure(tty, baud)?;
    let t0 = Instant::now();
    request(tty, b'S', len)?;
    tty.write_all(&data)
        .map_err(|e| format!("tty write: {e}"))?;
    let mut ack = [0u8];
    tty.read_exact(&mut ack)
        .map_err(|e| format!("tty read (ack): {e}"))?;
    if ack[0] != b'A' {
        return Err(format!("host answered {:#04x}, not 'A'", ack[0]));
    }
    report(
        "guest-to-host",
        baud,
        data.len(),
        t0.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn recv(tty: &mut File, baud: u32, n: usize, path: &str) -> Result<()> {
    let len = u32::try_from(n).map_err(|e| e.to_string())?;
    configure(tty, baud)?;
    let mut data = vec![0u8; n];
    let mut got = 0;
    let t0 = Instant::now();
    request(tty, b'R', len)?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while got < n {
        if Instant::now() > deadline {
            return Err(format!("recv: {got} of {n} bytes before the timeout"));
        }
        match tty.read(&mut data[got..]) {
            Ok(0) => return Err(format!("recv: end of file after {got} bytes")),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("tty read: {e}")),
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    std::fs::write(path, &data).map_err(|e| format!("{path}: {e}"))?;
    report("host-to-guest", baud, n, secs);
    Ok(())
}

/// `serial-xfer TTY STEP...`.
pub fn run(tty: &str, steps: &[&str]) -> Result<()> {
    let mut f = open_rw(tty)?;
    for step in steps {
        let parts: Vec<&str> = step.split(':').collect();
        let baud = |s: &str| num(s).and_then(|b| u32::try_from(b).map_err(|e| e.to_string()));
        match parts.as_slice() {
            ["send", b, path] => send(&mut f, baud(b)?, path)?,
            ["base", b] => set_baud_base(&f, baud(b)?)?,
            ["hello"] => {
                // Raw already, so that the host's byte comes through as it is.
                configure(&f, 115_200)?;
                hello(&mut f)?;
            }
            ["recv", b, n, path] => {
                let n = usize::try_from(num(n)?).map_err(|e| e.to_string())?;
                recv(&mut f, baud(b)?, n, path)?;
            }
            _ => {
                return Err(format!(
                    "bad step '{step}' (send:BAUD:FILE, recv:BAUD:N:FILE, base:BAUD_BASE, hello)"
                ))
            }
        }
    }
    request(&mut f, b'Q', 0)?;
    // Closing waits for the output to drain.
    drop(f);
    Ok(())
}
