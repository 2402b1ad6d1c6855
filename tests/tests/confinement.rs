//! Confinement through a real process: `confine-probe` serves a device whose register write
//! makes a system call that no thread's list has (`uname`, from its connection thread), in
//! each `--seccomp` mode.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use mdev_tests::{wait_until, ScratchDir};
use vfio_user::Client;

const PROBE: &str = env!("CARGO_BIN_EXE_confine-probe");
/// BAR0 register of the probe: a write makes the call, a read says how it went.
const REG_CALL: u64 = 0;
/// What the register reads once the call ran and succeeded.
const CALL_SUCCEEDED: u32 = 1;

/// The probe serving on a socket, its stderr captured.
struct Probe {
    child: Child,
    stderr: Arc<Mutex<String>>,
    _dir: ScratchDir,
    socket: std::path::PathBuf,
}

impl Probe {
    fn start(mode: &str) -> Self {
        let dir = ScratchDir::new(&format!("confine-{mode}"));
        let socket = dir.join("probe.sock");
        let mut child = Command::new(PROBE)
            .arg(&socket)
            .arg(mode)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("confine-probe starts");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("reads stdout");
        assert_eq!(ready.trim(), "ready");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let from = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        Probe {
            child,
            stderr,
            _dir: dir,
            socket,
        }
    }

    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill with a pid we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

fn make_the_call(client: &mut Client) -> Result<(), vfio_user::Error> {
    client.region_write(0, REG_CALL, &1u32.to_le_bytes())
}

fn outcome(client: &mut Client) -> u32 {
    let mut word = [0u8; 4];
    client.region_read(0, REG_CALL, &mut word).expect("read");
    u32::from_le_bytes(word)
}

fn lines_about_uname(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("mdev seccomp") && l.contains("uname"))
        .count()
}

fn connect(socket: &Path) -> Client {
    Client::new(socket).expect("connect")
}

#[test]
fn with_seccomp_on_a_call_off_the_list_kills_the_server_by_sigsys_and_names_the_call() {
    let mut probe = Probe::start("on");
    let mut client = connect(&probe.socket);
    let _ = make_the_call(&mut client);
    wait_until("the server to die", || !probe.alive());
    let status = probe.child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
    wait_until("the log line", || lines_about_uname(&probe.log()) == 1);
    let log = probe.log();
    let line = log
        .lines()
        .find(|l| l.contains("mdev seccomp"))
        .expect("a seccomp line");
    assert!(
        line.contains("connection thread") && line.contains("system call uname (63"),
        "{line}"
    );
    assert!(line.contains("killing the process"), "{line}");
}

#[test]
fn with_seccomp_log_the_call_runs_and_is_logged_once() {
    let mut probe = Probe::start("log");
    let mut client = connect(&probe.socket);
    make_the_call(&mut client).expect("write");
    assert_eq!(outcome(&mut client), CALL_SUCCEEDED, "the call really ran");
    make_the_call(&mut client).expect("second write");
    assert_eq!(outcome(&mut client), CALL_SUCCEEDED);
    // A second connection is another connection thread of the same kind: still once.
    let mut other = connect(&probe.socket);
    make_the_call(&mut other).expect("write from another connection");
    assert_eq!(outcome(&mut other), CALL_SUCCEEDED);
    assert!(probe.alive());
    wait_until("the log line", || lines_about_uname(&probe.log()) >= 1);
    drop((client, other));
    let status = probe.stop();
    let log = probe.log();
    assert_eq!(lines_about_uname(&log), 1, "{log}");
    let line = log.lines().find(|l| l.contains("uname")).expect("line");
    assert!(
        line.contains("connection thread") && line.contains("allowed"),
        "{line}"
    );
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn with_seccomp_off_nothing_is_filtered_or_logged() {
    let mut probe = Probe::start("off");
    let mut client = connect(&probe.socket);
    make_the_call(&mut client).expect("write");
    assert_eq!(outcome(&mut client), CALL_SUCCEEDED);
    assert!(probe.alive());
    drop(client);
    let status = probe.stop();
    let log = probe.log();
    assert!(!log.contains("mdev seccomp"), "{log}");
    assert!(status.success(), "{status:?}");
}

#[test]
fn with_seccomp_on_the_served_device_works_and_the_server_stops_cleanly() {
    let mut probe = Probe::start("on");
    let mut client = connect(&probe.socket);
    assert_eq!(outcome(&mut client), 0, "a read is on the list");
    let mut config = [0u8; 4];
    client
        .region_read(mdev::region::CONFIG_REGION_INDEX, 0, &mut config)
        .expect("config read");
    assert_eq!(u32::from_le_bytes(config), 0x00ef_1b36);
    assert!(probe.alive());
    drop(client);
    let status = probe.stop();
    assert!(status.success(), "{status:?}\n{}", probe.log());
    assert!(!probe.log().contains("mdev seccomp"), "{}", probe.log());
}
