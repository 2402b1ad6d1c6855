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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mtty::console::terminal::DETACH_KEY;
use mtty::uart::{
    Fcr, Ier, Lsr, Mcr, Msr, IER, IIR_FCR, IIR_RDA, LCR, LSR, MCR, MSR, RBR_THR, SCR,
};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::openpty;
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, LocalFlags, Termios};
use nix::unistd::Pid;
use uuid::Uuid;
use vfio_user::Client;

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");

/// How long any one thing the test waits for may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Waits for `cond`, checking every millisecond; fails with `what` after [`DEADLINE`].
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mtty-term-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------
// The terminal a person sits at.

/// A pseudo-terminal: the test types on the master and keeps a transcript of everything
/// written to the slave side; the slave is what `mtty` gets as its terminal.
struct Terminal {
    master: File,
    slave: OwnedFd,
    transcript: Arc<Mutex<Vec<u8>>>,
}

fn no_inherit(fd: BorrowedFd<'_>) {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("FD_CLOEXEC");
}

impl Terminal {
    fn open() -> Self {
        let pty = openpty(None, None).expect("openpty");
        no_inherit(pty.master.as_fd());
        no_inherit(pty.slave.as_fd());
        let mut reader = File::from(pty.master.try_clone().expect("dup master"));
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let sink = transcript.clone();
        // Ends with EIO once every slave descriptor is closed.
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master: File::from(pty.master),
            slave: pty.slave,
            transcript,
        }
    }

    /// The slave side, for a child's stdin/stdout/stderr.
    fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup slave"))
    }

    fn mode(&self) -> Termios {
        tcgetattr(&self.slave).expect("tcgetattr")
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type on the terminal");
    }

    fn shows(&self, text: &[u8]) -> bool {
        let t = self.transcript.lock().unwrap();
        t.windows(text.len()).any(|w| w == text)
    }

    fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }

    fn wait_shows(&self, text: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        while !self.shows(text) {
            assert!(
                Instant::now() < deadline,
                "terminal never showed {:?}; it shows {:?}",
                String::from_utf8_lossy(text),
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads a line from the slave side, as a program in canonical mode would.
    fn read_line_from_slave(&self) -> Vec<u8> {
        let mut line = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !line.ends_with(b"\n") {
            wait_readable(self.slave.as_fd(), deadline);
            let mut buf = [0u8; 256];
            let n = nix::unistd::read(self.slave.as_raw_fd(), &mut buf).expect("read slave");
            line.extend_from_slice(&buf[..n]);
        }
        line
    }
}

/// Fails unless `fd` becomes readable before `deadline`.
fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "nothing to read within {DEADLINE:?}");
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Raw mode as a serial console needs it: no line editing, no echo, no signals from keys.
fn is_raw(t: &Termios) -> bool {
    !t.local_flags
        .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
}

/// Fails unless `now` is the mode `before` was.
fn assert_restored(before: &Termios, now: &Termios) {
    assert_eq!(now.local_flags, before.local_flags, "local modes restored");
    assert_eq!(now.input_flags, before.input_flags, "input modes restored");
    assert_eq!(
        now.output_flags, before.output_flags,
        "output modes restored"
    );
    assert_eq!(
        now.control_flags, before.control_flags,
        "control modes restored"
    );
    assert_eq!(
        now.control_chars, before.control_chars,
        "control chars restored"
    );
}

/// Makes the child a session leader whose controlling terminal is its stdin, as a login
/// shell's child on a real terminal would have.
fn take_terminal() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions; it is async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours; fd 0 is the
    // slave side the parent set up as stdin. ioctl is async-signal-safe.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The mtty processes.

/// A child process that is killed if the test fails before it exits.
struct Running {
    child: Child,
    what: &'static str,
}

impl Running {
    fn start(mut cmd: Command, what: &'static str) -> Self {
        cmd.env("RUST_LOG", "info");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Running { child, what }
    }

    /// Starts `cmd` with `term` as its stdin, stdout, stderr and controlling terminal.
    fn on_terminal(mut cmd: Command, term: &Terminal, what: &'static str) -> Self {
        cmd.stdin(term.stdio())
            .stdout(term.stdio())
            .stderr(term.stdio());
        // SAFETY: the hook runs between fork and exec and calls only setsid and ioctl, both
        // async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(take_terminal);
        }
        Running::start(cmd, what)
    }

    fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, sig).unwrap_or_else(|e| panic!("signal {}: {e}", self.what));
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit.
    fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {DEADLINE:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `mtty serve --dir DIR --create mtty-1,uuid=…,port0=CONSOLE`; returns the command and the
/// instance's vfio-user socket.
fn serve(dir: &Path, console: &str) -> (Command, PathBuf) {
    let uuid = Uuid::new_v4();
    let mut cmd = Command::new(MTTY);
    cmd.arg("serve")
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
    let scratch = Scratch::new();
    let mut term = Terminal::open();
    let before = term.mode();
    assert!(!is_raw(&before), "a fresh pty starts in cooked mode");
    let (cmd, socket) = serve(&scratch.0, "terminal");
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
    let scratch = Scratch::new();
    let mut term = Terminal::open();
    let before = term.mode();
    let (cmd, socket) = serve(&scratch.0, "terminal");
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
    let scratch = Scratch::new();
    let term = Terminal::open();
    let before = term.mode();
    let (mut cmd, _) = serve(&scratch.0, "terminal");
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
    let scratch = Scratch::new();
    let (mut cmd, socket) = serve(&scratch.0, "pty");
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
        .arg(&scratch.0)
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
fn serve_socket(scratch: &Scratch) -> (Running, Client, PathBuf) {
    let console = scratch.0.join("port0.sock");
    let (mut cmd, socket) = serve(&scratch.0, &format!("socket:{}", console.display()));
    let log = File::create(scratch.0.join("serve.log")).expect("log file");
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
    cmd.arg("attach").arg(console);
    Running::on_terminal(cmd, term, "mtty attach")
}

#[test]
fn attach_round_trips_bytes_and_ctrl_close_bracket_detaches_restoring_the_terminal() {
    let scratch = Scratch::new();
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
    let scratch = Scratch::new();
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
