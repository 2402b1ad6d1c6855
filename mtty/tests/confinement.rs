//! Every thread of a running `mtty serve` carries a seccomp filter (the default `--seccomp=on`):
//! with a control client connected, a vfio-user client with interrupts routed, and socket and
//! pty consoles, each thread's `Seccomp:` field in `/proc/PID/task/TID/status` reads 2.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use mdev::parent::ControlClient;
use mdev_tests::{threads, wait_until, ScratchDir, ServedParent, ThreadStatus};
use mtty::device::VENDOR_ID;
use vfio_user::Client;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");
/// SET_IRQS flags: route the vectors to the eventfds given.
const DATA_EVENTFD_TRIGGER: u32 = 0x24;
/// IRQ index of MSI.
const MSI: u32 = 1;

fn serve(dir: &Path, args: &[&str]) -> ServedParent {
    let mut cmd = Command::new(MTTY);
    cmd.arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--defs")
        .arg(dir.join("defs"))
        .args(args)
        .env_remove("MDEV_SECCOMP");
    ServedParent::spawn(cmd, dir, "mtty serve")
}

#[test]
fn every_thread_of_a_serving_mtty_is_filtered() {
    let scratch = ScratchDir::new("confined-mtty");
    let dir = scratch.join("run");
    let console = scratch.join("port0.sock");
    let spec = format!("mtty-2,port0=socket:{},port1=pty", console.display());
    let mut parent = serve(&dir, &["--create", &spec]);
    let instances = parent.wait_ready();
    let socket = instances[0].socket.clone();
    // An instance created at run time, by the control connection thread.
    let mut control = ControlClient::connect(&dir).expect("control");
    let params = [("port0".to_string(), "pty".to_string())]
        .into_iter()
        .collect();
    let created = control.create("mtty-1", None, &params).expect("create");

    let mut client = Client::new(&socket).expect("vfio-user client");
    let efd = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    client
        .set_irqs(MSI, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .expect("route MSI");
    let mut second = Client::new(&created.socket).expect("client of the new instance");
    second
        .set_irqs(MSI, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .expect("route MSI");
    let _console_client =
        std::os::unix::net::UnixStream::connect(&console).expect("console client");

    let pid = parent.pid();
    let expected = [
        "control",
        "control-conn",
        "accept-",
        "conn#",
        "irq-",
        "mtty",
    ];
    wait_until("every kind of thread to run", || {
        let names: Vec<String> = threads(pid).into_iter().map(|t| t.name).collect();
        expected
            .iter()
            .all(|e| names.iter().any(|n| n.starts_with(e)))
            && names.iter().filter(|n| n.starts_with("irq-")).count() == 2
    });
    let all = threads(pid);
    // main, control, control-conn, 2 accept, 2 conn, 2 irq, socket rx+tx, 2 × pty rx+tx.
    assert!(all.len() >= 15, "{all:#?}");
    let unfiltered: Vec<&ThreadStatus> = all.iter().filter(|t| t.seccomp != Some(2)).collect();
    assert!(
        unfiltered.is_empty(),
        "threads without a filter: {unfiltered:#?}"
    );

    drop((client, second, control));
    let status = parent.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn with_seccomp_off_no_thread_is_filtered() {
    let scratch = ScratchDir::new("unconfined-mtty");
    let dir = scratch.join("run");
    let mut parent = serve(&dir, &["--seccomp", "off", "--create", "mtty-1"]);
    let instances = parent.wait_ready();
    let _client = Client::new(&instances[0].socket).expect("vfio-user client");
    let pid = parent.pid();
    wait_until("a connection thread", || {
        threads(pid).iter().any(|t| t.name.starts_with("conn#"))
    });
    let all = threads(pid);
    assert!(all.iter().all(|t| t.seccomp == Some(0)), "{all:#?}");
    assert!(
        parent.stderr().contains("seccomp off"),
        "{}",
        parent.stderr()
    );
}

/// `nobody` and `nogroup` on Debian.
const NOBODY: u32 = 65534;

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn an_unprivileged_user_serves_with_no_capabilities_and_no_new_privileges() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = ScratchDir::new("unprivileged-mtty");
    let dir = scratch.join("run");
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        // Run as nobody, without supplementary groups: what a service account gets.
        std::os::unix::fs::chown(scratch.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            MTTY,
        ]);
        c
    } else {
        Command::new(MTTY)
    };
    cmd.arg("serve")
        .arg("--dir")
        .arg(&dir)
        .arg("--defs")
        .arg(scratch.join("defs"))
        .args(["--create", "mtty-1,port0=pty"])
        .env_remove("MDEV_SECCOMP");
    let mut parent = ServedParent::spawn(cmd, &dir, "mtty serve as an unprivileged user");
    let instances = parent.wait_ready();
    let mut client = Client::new(&instances[0].socket).expect("vfio-user client");
    let mut id = [0u8; 4];
    client
        .region_read(mdev::region::CONFIG_REGION_INDEX, 0, &mut id)
        .expect("config read");
    assert_eq!(u32::from_le_bytes(id) & 0xffff, u32::from(VENDOR_ID));

    let pid = parent.pid();
    if root {
        assert!(
            status_field(pid, "Uid:").starts_with("65534"),
            "runs as nobody"
        );
    }
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "socket directory");
    assert_eq!(mode(&instances[0].socket), 0o600, "device socket");
    assert_eq!(mode(&dir.join("control.sock")), 0o600, "control socket");
    drop(client);
    let log = parent.stderr();
    let status = parent.terminate();
    assert!(status.success(), "{status:?}\n{log}");
}
