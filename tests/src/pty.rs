//! A terminal a person sits at, for tests that run a real binary on it (the mtty terminal
//! console and `mtty attach`, the display viewers): a pseudo-terminal whose master the test
//! types on and reads a transcript from, and child processes that take its slave as their
//! controlling terminal and are killed if the test fails before they exit.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::pty::{openpty, Winsize};
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, LocalFlags, Termios};
use nix::unistd::Pid;

/// How long any one thing such a test waits for may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A pseudo-terminal: the test types on the master and keeps a transcript of everything
/// written to the slave side; the slave is what the program under test gets as its terminal.
pub struct Terminal {
    master: File,
    slave: OwnedFd,
    transcript: Arc<Mutex<Vec<u8>>>,
}

fn no_inherit(fd: BorrowedFd<'_>) {
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("FD_CLOEXEC");
}

impl Terminal {
    /// A terminal of the default size.
    pub fn open() -> Self {
        Self::open_sized(None)
    }

    /// A terminal of `cols` × `rows` (set on the slave by openpty).
    pub fn with_size(cols: u16, rows: u16) -> Self {
        Self::open_sized(Some(Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }))
    }

    fn open_sized(size: Option<Winsize>) -> Self {
        let pty = openpty(size.as_ref(), None).expect("openpty");
        no_inherit(pty.master.as_fd());
        no_inherit(pty.slave.as_fd());
        let mut reader = File::from(pty.master.try_clone().expect("dup master"));
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let sink = transcript.clone();
        // Ends with EIO once every slave descriptor is closed.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
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
    pub fn stdio(&self) -> Stdio {
        Stdio::from(self.slave.try_clone().expect("dup slave"))
    }

    /// The slave's current modes.
    pub fn mode(&self) -> Termios {
        tcgetattr(&self.slave).expect("tcgetattr")
    }

    /// Types `keys` as a person would.
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type on the terminal");
    }

    /// Everything written to the terminal so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.transcript.lock().unwrap().clone()
    }

    /// How many bytes were written to the terminal so far.
    pub fn len(&self) -> usize {
        self.transcript.lock().unwrap().len()
    }

    /// True before anything was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `text` was written to the terminal.
    pub fn shows(&self, text: &[u8]) -> bool {
        let t = self.transcript.lock().unwrap();
        t.windows(text.len()).any(|w| w == text)
    }

    /// The transcript as text (for failure messages).
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.transcript.lock().unwrap()).into_owned()
    }

    /// Waits (up to [`DEADLINE`]) until `text` was written to the terminal.
    pub fn wait_shows(&self, text: &[u8]) {
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
    pub fn read_line_from_slave(&self) -> Vec<u8> {
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
pub fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "nothing to read in time");
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(n) if n > 0 => return,
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Raw mode as a console or a full-screen viewer needs it: no line editing, no echo, no
/// signals from keys.
pub fn is_raw(t: &Termios) -> bool {
    !t.local_flags
        .intersects(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
}

/// Fails unless `now` is the mode `before` was.
pub fn assert_restored(before: &Termios, now: &Termios) {
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

/// A child process that is killed if the test fails before it exits.
pub struct Running {
    /// The process.
    pub child: Child,
    what: &'static str,
}

impl Running {
    /// Spawns `cmd`; `what` names it in failure messages.
    pub fn start(mut cmd: Command, what: &'static str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Running { child, what }
    }

    /// Starts `cmd` with `term` as its stdin, stdout, stderr and controlling terminal.
    pub fn on_terminal(mut cmd: Command, term: &Terminal, what: &'static str) -> Self {
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

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        kill(pid, sig).unwrap_or_else(|e| panic!("signal {}: {e}", self.what));
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit.
    pub fn exit_status(&mut self) -> ExitStatus {
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

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.exit_status()
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
