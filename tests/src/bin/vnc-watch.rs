//! `vnc-watch ADDR:PORT SECS [raw|zrle]`: a VNC viewer that watches for SECS seconds and
//! prints what it saw: how many updates came while the picture was changing (from the first
//! change to the last), i.e. the frames per second a viewer sees, and their bytes. A figure,
//! never a verdict: exit status 1 only when the connection fails.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mdev_tests::rfb_client::{RfbClient, DESKTOP_SIZE, RAW, ZRLE};

fn run(addr: SocketAddr, secs: f64, encoding: i32) -> std::io::Result<String> {
    let mut v = RfbClient::connect(addr)?;
    v.set_encodings(&[encoding, DESKTOP_SIZE])?;
    v.request(false)?;
    let first = v.expect_update(Duration::from_secs(10))?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut changes: Vec<(Instant, usize)> = Vec::new();
    loop {
        v.request(true)?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(u) = v.next_update(left)? {
            changes.push((Instant::now(), u.bytes));
        }
    }
    let n = changes.len();
    let bytes: usize = changes.iter().map(|c| c.1).sum();
    let span = match (changes.first(), changes.last()) {
        (Some(a), Some(b)) if n > 1 => b.0 - a.0,
        _ => Duration::ZERO,
    };
    let fps = if span.is_zero() {
        0.0
    } else {
        (n - 1) as f64 / span.as_secs_f64()
    };
    Ok(format!(
        "{}x{}: first update {} KiB; then {n} updates in {:.2} s of change = {fps:.1} updates/s, \
         {} KiB in all, {:.1} KiB per update",
        v.width,
        v.height,
        first.bytes / 1024,
        span.as_secs_f64(),
        bytes / 1024,
        bytes as f64 / 1024.0 / n.max(1) as f64
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [addr, secs, rest @ ..] if rest.len() <= 1 => {
            let encoding = match rest.first().map(String::as_str) {
                None | Some("zrle") => Some(ZRLE),
                Some("raw") => Some(RAW),
                Some(_) => None,
            };
            addr.parse::<SocketAddr>()
                .ok()
                .zip(secs.parse::<f64>().ok())
                .zip(encoding)
        }
        _ => None,
    };
    let Some(((addr, secs), encoding)) = parsed else {
        eprintln!("usage: vnc-watch ADDR:PORT SECS [raw|zrle]");
        return ExitCode::from(2);
    };
    match run(addr, secs, encoding) {
        Ok(line) => {
            println!("vnc-watch: {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vnc-watch: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
