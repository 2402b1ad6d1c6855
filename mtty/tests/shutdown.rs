//! The parent's orderly stop, through the real `mtty serve`: at SIGTERM every client that
//! routed the device request interrupt is asked to let go (REQ) and the parent waits for it
//! (`--remove-timeout`); a client that lets go lets the parent exit at once; a second SIGTERM
//! closes a client that does not, without waiting out the timeout.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mdev::irq::{IrqIndex, SetIrqsFlags};
use mdev_tests::{ScratchDir, ServedParent};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");

/// `mtty serve` with one mtty-1 instance and the given removal timeout; its socket.
fn serve(dir: &ScratchDir, timeout: &str) -> (ServedParent, std::path::PathBuf) {
    let run = dir.join("run");
    let mut cmd = Command::new(MTTY);
    cmd.arg("serve")
        .arg("--dir")
        .arg(&run)
        .arg("--defs")
        .arg(dir.join("defs"))
        .args(["--remove-timeout", timeout, "--create", "mtty-1"]);
    let mut parent = ServedParent::spawn(cmd, &run, "mtty serve");
    let instances = parent.wait_ready();
    let socket = instances[0].socket.clone();
    (parent, socket)
}

/// A client that routed REQ to `event`.
fn asking_client(socket: &Path) -> (vfio_user::Client, EventFd) {
    let mut client = vfio_user::Client::new(socket).expect("connect");
    let event = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).expect("eventfd");
    let flags = (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits();
    client
        .set_irqs(
            IrqIndex::Req as u32,
            flags,
            0,
            1,
            &[event.as_fd().as_raw_fd()],
        )
        .expect("SET_IRQS REQ");
    (client, event)
}

/// Waits (10 s at most) for `event` to be signalled.
fn asked(event: &EventFd) -> bool {
    let mut fds = [PollFd::new(event.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(10_000u16)), Ok(1))
}

#[test]
fn sigterm_asks_the_clients_and_exits_once_they_let_go() {
    let dir = ScratchDir::new("stop-graceful");
    let (mut parent, socket) = serve(&dir, "30");
    let (client, event) = asking_client(&socket);
    let t = Instant::now();
    parent.signal(Signal::SIGTERM);
    assert!(asked(&event), "the client was asked to let go");
    std::thread::sleep(Duration::from_millis(300));
    assert!(parent.running(), "the parent waits for the client");
    drop(client);
    assert!(parent.exit_status().success());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "not the 30 s timeout"
    );
}

#[test]
fn a_second_sigterm_closes_a_client_that_does_not_let_go() {
    let dir = ScratchDir::new("stop-forced");
    let (mut parent, socket) = serve(&dir, "60");
    let (mut client, event) = asking_client(&socket);
    parent.signal(Signal::SIGTERM);
    assert!(asked(&event));
    std::thread::sleep(Duration::from_millis(300));
    assert!(parent.running(), "still waiting for the client");
    let t = Instant::now();
    parent.signal(Signal::SIGTERM);
    assert!(parent.exit_status().success());
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "not the 60 s timeout"
    );
    let mut b = [0u8; 4];
    assert!(
        client.region_read(0, 0, &mut b).is_err(),
        "the client's connection was closed"
    );
}
