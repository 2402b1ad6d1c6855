//! The consoles a person sits at, driven the way a person would: the real `mtty` binary runs
//! on a pseudo-terminal this test owns (as its controlling terminal), a vfio-user client plays
//! the guest's 8250 driver, and the test types on the pty master and reads what appears there.
//!
//! - `port0=terminal`: the serving terminal in raw mode, bytes both ways, Ctrl-] detaches
//!   (terminal restored, carrier dropped, the device keeps serving), the terminal restored when
//!   the process is stopped;
//! - `port0=pty`: a new `/dev/pts/N` named in the log, bytes both ways, reopening allowed;
//! - `mtty attach SOCKET`: a terminal bridged to a `socket:` console until Ctrl-] or until
//!   the server goes away, the terminal restored either way.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mdev_tests::pty::{assert_restored, is_raw, wait_readable, Running, Terminal, DEADLINE};
use mdev_tests::{wait_until, ScratchDir};
use mtty::console::terminal::DETACH_KEY;
use mtty::uart::{
    Fcr, Ier, Lsr, Mcr, Msr, IER, IIR_FCR, IIR_RDA, LCR, LSR, MCR, MSR, RBR_THR, SCR,
};
use nix::sys::signal::Signal;
use nix::sys::termios::tcgetattr;
use uuid::Uuid;
use vfio_user::Client;

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");

/// `mtty serve --dir DIR --create mtty-1,uuid=…,port0=CONSOLE`; returns the command and the
/// instance's vfio-user socket.
fn serve(dir: &Path, console: &str) -> (Command, PathBuf) {
    let uuid = Uuid::new_v4();
    let mut cmd = Command::new(MTTY);
    cmd.env("RUST_LOG", "info")
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--create")
        .arg(format!("mtty-1,uuid={uuid},port0={console}"));
    (cmd, dir.join(format!("{uuid}.sock")))
}

// ---------------------------------------------------------------------------------------
// The guest: a vfio-user client programming port 0 as the 8250 driver does.

const PORT: u32 = 0;

fn connect(socket: &Path, server: &mut Running) -> Client {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(c) = Client::new(socket) {
            return c;
        }
        assert!(server.running(), "mtty serve exited before serving");
        assert!(
            Instant::now() < deadline,
            "{} not served within {DEADLINE:?}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reg(c: &mut Client, off: u8) -> u8 {
    let mut b = [0u8; 1];
    c.region_read(PORT, u64::from(off), &mut b)
        .expect("register read");
    b[0]
}

fn set_reg(c: &mut Client, off: u8, v: u8) {
    c.region_write(PORT, u64::from(off), &[v])
        .expect("register write");
}

/// 115200 8N1, FIFOs on (trigger 1), DTR/RTS/OUT2, receive interrupt enabled.
fn init_port(c: &mut Client) {
    set_reg(c, LCR, 0x80);
    set_reg(c, RBR_THR, 1);
    set_reg(c, IER, 0);
    set_reg(c, LCR, 0x03);
    set_reg(
        c,
        IIR_FCR,
        (Fcr::ENABLE | Fcr::CLEAR_RX | Fcr::CLEAR_TX).bits(),
    );
    set_reg(c, MCR, (Mcr::DTR | Mcr::RTS | Mcr::OUT2).bits());
    set_reg(c, IER, Ier::RDA.bits());
}

fn carrier(c: &mut Client) -> bool {
    reg(c, MSR) & Msr::DCD.bits() != 0
}

fn data_ready(c: &mut Client) -> bool {
    reg(c, LSR) & Lsr::DR.bits() != 0
}

/// Receives `want` bytes, checking on the first one that the port raises its
/// received-data interrupt.
fn receive(c: &mut Client, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < want {
        if data_ready(c) {
            if got.is_empty() {
                assert_eq!(
                    reg(c, IIR_FCR) & 0x0f,
                    IIR_RDA,
                    "received data raises the RX interrupt"
                );
            }
            got.push(reg(c, RBR_THR));
        } else {
            assert!(
                Instant::now() < deadline,
                "only {:?} of {want} byte(s) received within {DEADLINE:?}",
                String::from_utf8_lossy(&got)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

/// Transmits `bytes`, each once the transmitter has room, as a polling driver does.
fn transmit(c: &mut Client, bytes: &[u8]) {
    for &b in bytes {
        wait_until("THR empty", || reg(c, LSR) & Lsr::THRE.bits() != 0);
        set_reg(c, RBR_THR, b);
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

#[test]
fn terminal_console_is_raw_carries_bytes_both_ways_and_is_restored_on_sigterm() {
    let scratch = ScratchDir::new("mtty-term");
    let mut term = Terminal::open();
    let before = term.mode();
    assert!(!is_raw(&before), "a fresh pty starts in cooked mode");
    let (cmd, socket) = serve(scratch.path(), "terminal");
    let mut server = Running::on_terminal(cmd, &term, "mtty serve (terminal)");
    let mut c = connect(&socket, &mut server);
    wait_until("the serving terminal in raw mode", || is_raw(&term.mode()));
    term.wait_shows(b"Ctrl-] detaches");
    // Log lines written while the terminal is raw still start at the left margin.
    term.wait_shows(b"port0: terminal\r\n");
    init_port(&mut c);
    assert!(carrier(&mut c), "the terminal is attached: DCD on");

    // Keys the line discipline would otherwise act on (Ctrl-C, CR, Ctrl-D) reach the guest.
    let typed = b"hi\x03there\r\x04";
    term.type_keys(typed);
    assert_eq!(receive(&mut c, typed.len()), typed);
    assert!(!data_ready(&mut c), "nothing more than what was typed");

    // And the guest's output is written as is (no CR added before LF).
    transmit(&mut c, b"guest> ok\nnext");
    term.wait_shows(b"guest> ok\nnext");

    // Stopped with the guest still connected, it exits cleanly and leaves a sane terminal.
    server.signal(Signal::SIGTERM);
    let status = server.exit_status();
    assert!(status.success(), "mtty serve exited with {status}");
    assert_restored(&before, &term.mode());
}

#[test]
fn ctrl_close_bracket_detaches_the_terminal_console_and_the_card_keeps_serving() {
    let scratch = ScratchDir::new("mtty-term");
    let mut term = Terminal::open();
    let before = term.mode();
    let (cmd, socket) = serve(scratch.path(), "terminal");
    let mut server = Running::on_terminal(cmd, &term, "mtty serve (terminal)");
    let mut c = connect(&socket, &mut server);
    wait_until("the serving terminal in raw mode", || is_raw(&term.mode()));
    init_port(&mut c);
    assert!(carrier(&mut c));

    // What precedes the escape key in the same burst is delivered; what follows is not.
    let mut keys = b"ab".to_vec();
    keys.push(DETACH_KEY);
    keys.extend_from_slice(b"cd");
    term.type_keys(&keys);
    wait_until("carrier lost on detach", || !carrier(&mut c));
    assert_eq!(receive(&mut c, 2), b"ab");
    assert!(
        !data_ready(&mut c),
        "nothing after the escape key reached the guest"
    );
    term.wait_shows(b"[mtty: terminal detached]");

    // The terminal is the user's again: cooked, echoing, lines readable by others.
    wait_until("terminal restored on detach", || !is_raw(&term.mode()));
    assert_restored(&before, &term.mode());
    term.type_keys(b"late\n");
    assert!(
        term.read_line_from_slave().ends_with(b"late\n"),
        "the line typed after detaching is left for the terminal's next reader"
    );
    term.wait_shows(b"late");
    assert!(
        !data_ready(&mut c),
        "keys typed after detaching never reach the guest"
    );

    // The card is still served: registers work, the guest may still transmit.
    set_reg(&mut c, SCR, 0x5a);
    assert_eq!(reg(&mut c, SCR), 0x5a);
    transmit(&mut c, b"into the void");
    wait_until("transmitter drained", || {
        reg(&mut c, LSR) & Lsr::TEMT.bits() != 0
    });
    assert!(server.running(), "detaching does not stop the server");

    // With the terminal cooked again, Ctrl-C is the user's way to stop the server.
    term.type_keys(b"\x03");
    let status = server.exit_status();
    assert!(
        status.success(),
        "mtty serve exited with {status} on Ctrl-C"
    );
    assert_restored(&before, &term.mode());
}

#[test]
fn a_failed_start_after_the_terminal_console_restores_the_terminal() {
    let scratch = ScratchDir::new("mtty-term");
    let term = Terminal::open();
    let before = term.mode();
    let (mut cmd, _) = serve(scratch.path(), "terminal");
    // The terminal can be one port's console only: the second instance fails, the first is
    // torn down, and the process exits with an error.
    cmd.arg("--create").arg("mtty-1,port0=terminal");
    let mut server = Running::on_terminal(cmd, &term, "mtty serve (two terminals)");
    let status = server.exit_status();
    assert_eq!(status.code(), Some(1), "mtty serve exited with {status}");
    term.wait_shows(b"already a console");
    assert_restored(&before, &term.mode());
}

/// Reads the `/dev/pts/N` a pty console was given from the server's log.
fn pty_path_from_log(log: impl Read + Send + 'static) -> (PathBuf, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let drain = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut tx = Some(tx);
        for line in io::BufReader::new(log).lines() {
            let Ok(line) = line else { break };
            eprintln!("[serve] {line}");
            if let Some(at) = line.find("pty /dev/pts/") {
                let path: String = line[at + 4..]
                    .chars()
                    .take_while(|ch| *ch == '/' || ch.is_ascii_alphanumeric())
                    .collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(PathBuf::from(path));
                }
            }
        }
    });
    let path = rx
        .recv_timeout(DEADLINE)
        .expect("the pty console's path in the log");
    (path, drain)
}

fn open_pts(path: &Path) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Reads `want` bytes from `f` (each read bounded by the deadline).
fn read_bytes(f: &mut File, want: usize) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < want {
        wait_readable(f.as_fd(), deadline);
        let mut buf = vec![0u8; want - got.len()];
        let n = f.read(&mut buf).expect("read pty");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[test]
fn pty_console_round_trips_bytes_and_can_be_reopened() {
    let scratch = ScratchDir::new("mtty-term");
    let (mut cmd, socket) = serve(scratch.path(), "pty");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = Running::start(cmd, "mtty serve (pty)");
    let log = server.child.stderr.take().expect("stderr");
    let (path, log_drain) = pty_path_from_log(log);
    let mut c = connect(&socket, &mut server);
    init_port(&mut c);
    assert!(carrier(&mut c), "a pty console has carrier");

    // `mtty list` tells the user where the port is.
    let listing = Command::new(env!("CARGO_BIN_EXE_mtty"))
        .args(["list", "--json", "--dir"])
        .arg(scratch.path())
        .output()
        .expect("mtty list");
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains(&format!("port0 pty {}", path.display())),
        "list names the pty: {listing}"
    );

    for session in 0..2 {
        let mut pts = open_pts(&path);
        assert!(
            is_raw(&tcgetattr(&pts).expect("tcgetattr")),
            "the server keeps its pty raw"
        );
        let to_guest = format!("to guest {session}\r\x03");
        pts.write_all(to_guest.as_bytes()).expect("write pty");
        assert_eq!(receive(&mut c, to_guest.len()), to_guest.as_bytes());

        let to_host = format!("to host {session}\n");
        transmit(&mut c, to_host.as_bytes());
        assert_eq!(read_bytes(&mut pts, to_host.len()), to_host.as_bytes());
    }

    server.signal(Signal::SIGTERM);
    let status = server.exit_status();
    assert!(status.success(), "mtty serve exited with {status}");
    log_drain.join().expect("log reader");
}

/// `mtty serve` with port 0 on a console socket, its log in the scratch directory.
fn serve_socket(scratch: &ScratchDir) -> (Running, Client, PathBuf) {
    let console = scratch.join("port0.sock");
    let (mut cmd, socket) = serve(scratch.path(), &format!("socket:{}", console.display()));
    let log = File::create(scratch.join("serve.log")).expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut server = Running::start(cmd, "mtty serve (socket)");
    let mut c = connect(&socket, &mut server);
    init_port(&mut c);
    wait_until("console socket listening", || console.exists());
    (server, c, console)
}

fn attach(console: &Path, term: &Terminal) -> Running {
    let mut cmd = Command::new(MTTY);
    cmd.env("RUST_LOG", "info").arg("attach").arg(console);
    Running::on_terminal(cmd, term, "mtty attach")
}

#[test]
fn attach_round_trips_bytes_and_ctrl_close_bracket_detaches_restoring_the_terminal() {
    let scratch = ScratchDir::new("mtty-term");
    let (mut server, mut c, console) = serve_socket(&scratch);
    assert!(!carrier(&mut c), "nobody attached yet");

    let mut term = Terminal::open();
    let before = term.mode();
    let mut attached = attach(&console, &term);
    wait_until("attach puts the terminal in raw mode", || {
        is_raw(&term.mode())
    });
    wait_until("the guest sees the carrier", || carrier(&mut c));
    term.wait_shows(b"Ctrl-] detaches");

    let typed = b"ping\r\x03";
    term.type_keys(typed);
    assert_eq!(receive(&mut c, typed.len()), typed);
    transmit(&mut c, b"pong\nback");
    term.wait_shows(b"pong\nback");

    term.type_keys(&[DETACH_KEY]);
    let status = attached.exit_status();
    assert!(status.success(), "mtty attach exited with {status}");
    assert_restored(&before, &term.mode());
    term.wait_shows(b"[mtty: detached]");
    wait_until("the guest sees the carrier drop", || !carrier(&mut c));
    assert!(server.running(), "detaching leaves the server running");

    // Attaching again works.
    let mut again = attach(&console, &term);
    wait_until("reattached", || carrier(&mut c));
    transmit(&mut c, b"welcome back");
    term.wait_shows(b"welcome back");
    term.type_keys(&[DETACH_KEY]);
    assert!(again.exit_status().success());
    assert_restored(&before, &term.mode());

    server.signal(Signal::SIGTERM);
    assert!(server.exit_status().success());
}

#[test]
fn attach_ends_and_restores_the_terminal_when_the_server_goes_away() {
    let scratch = ScratchDir::new("mtty-term");
    let (mut server, mut c, console) = serve_socket(&scratch);
    let term = Terminal::open();
    let before = term.mode();
    let mut attached = attach(&console, &term);
    wait_until("attach puts the terminal in raw mode", || {
        is_raw(&term.mode())
    });
    wait_until("the guest sees the carrier", || carrier(&mut c));
    drop(c);

    server.signal(Signal::SIGTERM);
    assert!(server.exit_status().success());
    let status = attached.exit_status();
    assert!(status.success(), "mtty attach exited with {status}");
    assert_restored(&before, &term.mode());
}
