//! `serial-peer [--hello] SOCKET OUTDIR [TIMEOUT_SECS]`: the host end of the guest tool's
//! `guest-pci serial-xfer` on a serial port's socket console (connecting as soon as the socket
//! exists, retrying until TIMEOUT_SECS, default 60; the same bound applies to every wait for
//! the guest). The guest leads; each request is a command byte and a little-endian u32 N:
//! - `S` N: N bytes follow; they are saved as OUTDIR/g2h-K.bin and answered with `A`;
//! - `R` N: N random bytes (from /dev/urandom) are sent and saved as OUTDIR/h2g-K.bin;
//! - `Q`: the end (exit status 0).
//!
//! With `--hello` it first sends `H` (the guest's `hello` step waits for it: the host is
//! attached). K counts the requests from 1. One line per transfer on stdout:
//! `serial-peer DIR K bytes=N secs=S bytes_per_s=R [reads=C]` (guest-to-host timed from the
//! first byte received to the last, with C the number of reads that took them: how the
//! console batched them; host-to-guest from the first write until all were written).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, String>;

fn connect(path: &str, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(format!("{path}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn report(dir: &str, k: u32, bytes: usize, secs: f64, extra: &str) {
    #[expect(
        clippy::cast_precision_loss,
        reason = "a rate for printing; sizes are far below 2^52"
    )]
    let rate = bytes as f64 / secs.max(1e-9);
    println!("serial-peer {dir} {k} bytes={bytes} secs={secs:.3} bytes_per_s={rate:.0}{extra}");
}

/// Receives `n` bytes into `out`; returns the seconds from the first byte and the reads.
fn receive(sock: &mut UnixStream, n: usize, out: &Path) -> Result<(f64, usize)> {
    let mut data = vec![0u8; n];
    let mut got = 0;
    let mut reads = 0;
    let mut t0 = None;
    while got < n {
        match sock.read(&mut data[got..]) {
            Ok(0) => return Err(format!("console closed after {got} of {n} bytes")),
            Ok(k) => {
                t0.get_or_insert_with(Instant::now);
                got += k;
                reads += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {got} of {n} bytes: {e}")),
        }
    }
    std::fs::write(out, &data).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((t0.map_or(0.0, |t| t.elapsed().as_secs_f64()), reads))
}

fn send_random(sock: &mut UnixStream, n: usize, out: &Path) -> Result<f64> {
    let mut data = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    std::fs::write(out, &data).map_err(|e| format!("{}: {e}", out.display()))?;
    let t0 = Instant::now();
    sock.write_all(&data)
        .map_err(|e| format!("write to the console: {e}"))?;
    Ok(t0.elapsed().as_secs_f64())
}

fn serve(sock: &mut UnixStream, outdir: &Path) -> Result<()> {
    for k in 1.. {
        let mut h = [0u8; 5];
        sock.read_exact(&mut h)
            .map_err(|e| format!("request {k}: {e}"))?;
        let n = u32::from_le_bytes([h[1], h[2], h[3], h[4]]);
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        match h[0] {
            b'S' => {
                let (secs, reads) = receive(sock, n, &outdir.join(format!("g2h-{k}.bin")))?;
                sock.write_all(b"A").map_err(|e| format!("ack: {e}"))?;
                report("guest-to-host", k, n, secs, &format!(" reads={reads}"));
            }
            b'R' => {
                let secs = send_random(sock, n, &outdir.join(format!("h2g-{k}.bin")))?;
                report("host-to-guest", k, n, secs, "");
            }
            b'Q' => return Ok(()),
            c => return Err(format!("request {k}: unknown command {c:#04x}")),
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let hello = args.first().is_some_and(|a| a == "--hello");
    if hello {
        args.remove(0);
    }
    let (Some(path), Some(outdir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: serial-peer [--hello] SOCKET OUTDIR [TIMEOUT_SECS]");
        return ExitCode::from(2);
    };
    let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(60);
    let timeout = Duration::from_secs(secs);
    let r = connect(path, timeout).and_then(|mut s| {
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        if hello {
            s.write_all(b"H").map_err(|e| format!("hello: {e}"))?;
        }
        serve(&mut s, &PathBuf::from(outdir))
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serial-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
