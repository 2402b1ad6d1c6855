//! `mdpy view --vnc` runs confined like the servers: with a VNC client connected and the
//! guest drawing, every thread of the viewer process (main, the poller, the listener and the
//! client's session) carries a seccomp filter (`Seccomp:` 2 in `/proc/PID/task/TID/status`),
//! and none of them made a call off its list.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mdev_display::testing::map_framebuffer_rw;
use mdev_tests::rfb_client::{RfbClient, DESKTOP_SIZE, ZRLE};
use mdev_tests::{threads, wait_until, ScratchDir, ServedParent, ThreadStatus};
use uuid::Uuid;
use vfio_user::Client;

const MDPY: &str = env!("CARGO_BIN_EXE_mdpy");

/// Long enough for an update to reach the client on a loaded machine.
const SOON: Duration = Duration::from_secs(10);

#[test]
fn every_thread_of_a_vnc_viewer_is_filtered() {
    let scratch = ScratchDir::new("confined-vnc");
    let dir = scratch.join("run");
    let uuid = Uuid::new_v4();
    let mut serve = Command::new(MDPY);
    serve
        .arg("serve")
        .arg("--dir")
        .arg(&dir)
        .arg("--defs")
        .arg(scratch.join("defs"))
        .arg("--create")
        .arg(format!("xga,uuid={uuid}"))
        .env_remove("MDEV_SECCOMP");
    let mut parent = ServedParent::spawn(serve, &dir, "mdpy serve");
    let instances = parent.wait_ready();

    let mut view = Command::new(MDPY);
    view.arg("view")
        .arg("--dir")
        .arg(&dir)
        .arg(uuid.to_string())
        .args(["--vnc", "127.0.0.1:0"])
        .env_remove("MDEV_SECCOMP");
    let mut viewer = ServedParent::spawn(view, &dir, "mdpy view --vnc");
    let mut addr: Option<SocketAddr> = None;
    wait_until("view --vnc to listen", || {
        assert!(viewer.running(), "view --vnc exited:\n{}", viewer.stderr());
        addr = viewer
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("listening on "))
            .and_then(|a| a.trim().parse().ok());
        addr.is_some()
    });
    let addr = addr.expect("listening");

    // A client gets the whole picture, then an update after the guest draws (the session
    // is woken through its eventfd by the poller).
    let guest = Client::new(&instances[0].socket).expect("guest client");
    let mut fb = map_framebuffer_rw(&guest).expect("map BAR0");
    let mut client = RfbClient::connect(addr).expect("rfb client");
    client.set_encodings(&[ZRLE, DESKTOP_SIZE]).unwrap();
    client.request(false).unwrap();
    client.expect_update(SOON).expect("the whole picture");
    fb[..64 * 1024].fill(0xff);
    client.request(true).unwrap();
    client.expect_update(SOON).expect("the guest's drawing");

    let pid = viewer.pid();
    let expected = ["vnc-poller", "vnc-listener", "vnc-viewer-"];
    wait_until("every kind of VNC thread to run", || {
        let names: Vec<String> = threads(pid).into_iter().map(|t| t.name).collect();
        expected
            .iter()
            .all(|e| names.iter().any(|n| n.starts_with(e)))
    });
    let all = threads(pid);
    // main, poller, listener, one session.
    assert!(all.len() >= 4, "{all:#?}");
    let unfiltered: Vec<&ThreadStatus> = all.iter().filter(|t| t.seccomp != Some(2)).collect();
    assert!(
        unfiltered.is_empty(),
        "threads without a filter: {unfiltered:#?}"
    );
    assert!(
        !viewer.stderr().contains("mdev seccomp"),
        "{}",
        viewer.stderr()
    );

    // The session and the poller keep working under their filters: a second client.
    let mut second = RfbClient::connect(addr).expect("second rfb client");
    second.set_encodings(&[ZRLE, DESKTOP_SIZE]).unwrap();
    second.request(false).unwrap();
    second.expect_update(SOON).expect("the whole picture");
    drop((client, second));
    assert!(viewer.running(), "{}", viewer.stderr());

    // Removing the instance asks the viewer to let go: it stops by itself (still under its
    // filters) and the removal completes without force.
    drop(fb);
    drop(guest);
    let removed = Command::new(MDPY)
        .arg("remove")
        .arg("--dir")
        .arg(&dir)
        .arg(uuid.to_string())
        .output()
        .expect("mdpy remove");
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let stderr = viewer.stderr();
    let status = viewer.exit_status();
    assert!(status.success(), "view --vnc: {status:?}\n{stderr}");
    assert!(!stderr.contains("mdev seccomp"), "{stderr}");
    let status = parent.terminate();
    assert!(status.success(), "{status:?}");
}
