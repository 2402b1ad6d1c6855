//! systemd socket activation, end to end with the real `mdpy` binary and systemd's own
//! `systemd-socket-activate` (Debian's `systemd` package, `tests/provision-host`): it binds
//! the control socket and an instance's socket, starts `mdpy serve` on the first connection
//! with them as fds 3 and 4 named `control` and the UUID, and mdpy serves both; at shutdown
//! they are left in place for their owner.

use std::process::{Command, Stdio};

use mdev_tests::{wait_until, ScratchDir};

const UUID: &str = "5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

#[test]
fn passed_in_sockets_are_served_and_left_in_place() {
    let dir = ScratchDir::new("mdpy-activation");
    let control = dir.join("control.sock");
    let instance = dir.join(&format!("{UUID}.sock"));
    let mut child = Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&control)
        .arg("--listen")
        .arg(&instance)
        .arg(format!("--fdname=control:{UUID}"))
        .arg(env!("CARGO_BIN_EXE_mdpy"))
        .args(["serve", "--dir"])
        .arg(dir.path())
        .arg("--create")
        .arg(format!("xga,uuid={UUID}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate (Debian's systemd package; tests/provision-host)");

    // The first connection to the instance's socket starts mdpy, which serves it there.
    let mut client = None;
    wait_until("the instance socket answers", || {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "systemd-socket-activate exited"
        );
        client = vfio_user::Client::new(&instance).ok();
        client.is_some()
    });
    let mut client = client.expect("connected");
    let mut id = [0u8; 4];
    client.region_read(7, 0, &mut id).expect("config read");
    assert_eq!(
        u32::from_le_bytes(id),
        0x000f_1b36,
        "mdpy's vendor/device id"
    );
    drop(client);

    // The control socket is the passed-in one too: `mdpy list` finds the instance there.
    let out = Command::new(env!("CARGO_BIN_EXE_mdpy"))
        .args(["list", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("mdpy list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains(UUID),
        "list: {listing}"
    );

    // SAFETY: signalling our own child (systemd-socket-activate exec'd into mdpy).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut status = None;
    wait_until("mdpy exits after SIGTERM", || {
        status = child.try_wait().expect("wait");
        status.is_some()
    });
    assert!(status.is_some_and(|s| s.success()), "mdpy exits cleanly");
    assert!(
        control.exists(),
        "the manager's control socket is left alone"
    );
    assert!(instance.exists(), "the manager's instance socket too");
}
