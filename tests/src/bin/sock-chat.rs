//! `sock-chat PATH EXPECT REPLY [TIMEOUT_SECS]`: connects to the UNIX socket PATH (retrying
//! until it exists), reads until the text EXPECT has arrived, then sends REPLY and a newline.
//! The end-to-end test's host side of a serial console. Exit 1 on timeout.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, expect, reply, rest @ ..] = args.as_slice() else {
        eprintln!("usage: sock-chat PATH EXPECT REPLY [TIMEOUT_SECS]");
        return ExitCode::from(2);
    };
    let secs = rest.first().and_then(|s| s.parse().ok()).unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("sock-chat: {path}: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(expect.as_str()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            eprintln!(
                "sock-chat: timed out; got {:?}",
                String::from_utf8_lossy(&seen)
            );
            return ExitCode::FAILURE;
        }
        match sock.read(&mut buf) {
            Ok(0) => {
                eprintln!(
                    "sock-chat: closed; got {:?}",
                    String::from_utf8_lossy(&seen)
                );
                return ExitCode::FAILURE;
            }
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eprintln!("sock-chat: read: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("sock-chat: got {:?}", String::from_utf8_lossy(&seen).trim());
    if let Err(e) = sock.write_all(format!("{reply}\n").as_bytes()) {
        eprintln!("sock-chat: write: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
