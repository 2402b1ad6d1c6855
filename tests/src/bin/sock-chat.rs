//! `sock-chat PATH [TIMEOUT_SECS]`: a byte pipe between stdin/stdout and the UNIX socket PATH
//! (connecting as soon as it exists, retrying until TIMEOUT_SECS, default 60): what arrives on
//! the socket goes to stdout, stdin goes to the socket. The end-to-end test's host side of a
//! serial console, run as a shell coprocess. Exits when the socket closes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: sock-chat PATH [TIMEOUT_SECS]");
        return ExitCode::from(2);
    };
    let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(60);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("sock-chat: {path}: {e}");
                return ExitCode::FAILURE;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut to_sock = match sock.try_clone() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sock-chat: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        // At the end of stdin just stop sending: a console peer may take a half-close for a
        // hang-up, and the output is still wanted.
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_sock.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut from_sock = sock;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 1024];
    loop {
        match from_sock.read(&mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => {
                if stdout
                    .write_all(&buf[..n])
                    .and_then(|_| stdout.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => {
                eprintln!("sock-chat: read: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
