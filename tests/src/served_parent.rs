//! A real parent process (`mtty serve`, `mdpy serve`, or any command that ends up exec'ing
//! one, such as `systemd-socket-activate … mtty serve`) with its output captured, as the
//! tests that drive the binaries the way a user does need it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use mdev::parent::{ControlClient, InstanceInfo, CONTROL_SOCKET};
use nix::sys::signal::Signal;

use crate::pty::Running;
use crate::wait_until;

/// A running parent process; killed on drop if still running.
pub struct ServedParent {
    process: Running,
    dir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn capture(from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let mut t = sink.lock().unwrap_or_else(|p| p.into_inner());
            t.push_str(&line);
            t.push('\n');
        }
    });
    text
}

impl ServedParent {
    /// Spawns `cmd` (logging at `info`, output captured); its control socket will be
    /// `dir/control.sock`.
    pub fn spawn(mut cmd: Command, dir: &Path, what: &'static str) -> Self {
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut process = Running::start(cmd, what);
        let stdout = capture(process.child.stdout.take().expect("piped stdout"));
        let stderr = capture(process.child.stderr.take().expect("piped stderr"));
        ServedParent {
            process,
            dir: dir.to_path_buf(),
            stdout,
            stderr,
        }
    }

    /// Waits until the control socket answers (the parent answers only once its start-up
    /// instances exist) and returns the running instances. Panics, with what the process
    /// logged, if it exits first.
    pub fn wait_ready(&mut self) -> Vec<InstanceInfo> {
        let control = self.dir.join(CONTROL_SOCKET);
        wait_until("the control socket", || {
            assert!(
                self.process.running(),
                "the parent exited before serving; it logged:\n{}",
                self.stderr()
            );
            control.exists()
        });
        // The file can appear an instant before the socket listens: retry a refused connect.
        let mut client = None;
        wait_until("a control connection", || {
            client = ControlClient::connect(&self.dir).ok();
            client.is_some()
        });
        client
            .expect("connected")
            .list()
            .unwrap_or_else(|e| panic!("list: {e}; the parent logged:\n{}", self.stderr()))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What it logged on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends `sig` without waiting.
    pub fn signal(&self, sig: Signal) {
        self.process.signal(sig);
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// Waits for the exit (bounded; panics past it).
    pub fn exit_status(mut self) -> ExitStatus {
        self.process.exit_status()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.process.signal(Signal::SIGTERM);
        self.process.exit_status()
    }
}
