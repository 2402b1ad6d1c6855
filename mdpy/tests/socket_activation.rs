//! systemd socket activation, end to end with the real `mdpy` binary: the control socket and
//! an instance's socket are bound by "the service manager" (this test), passed in as fds 3
//! and 4 with LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES, and served; at shutdown they are left in
//! place for their owner.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UUID: &str = "5f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9";

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "mdpy did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn passed_in_sockets_are_served_and_left_in_place() {
    let dir = std::env::temp_dir().join(format!("mdpy-activation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let control = UnixListener::bind(dir.join("control.sock")).unwrap();
    let instance = UnixListener::bind(dir.join(format!("{UUID}.sock"))).unwrap();
    let (cfd, ifd) = (control.as_raw_fd(), instance.as_raw_fd());

    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ LISTEN_FDS=2 LISTEN_FDNAMES="control:$1" exec "$0" serve --dir "$2" --create "xga,uuid=$1""#)
        .arg(env!("CARGO_BIN_EXE_mdpy"))
        .arg(UUID)
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec: move the two
    // listeners out of the way, then onto fds 3 and 4 (dup2 clears close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            let c = libc::fcntl(cfd, libc::F_DUPFD, 100);
            let i = libc::fcntl(ifd, libc::F_DUPFD, 100);
            if c < 0 || i < 0 || libc::dup2(c, 3) < 0 || libc::dup2(i, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn mdpy");

    // The instance answers on the passed-in socket (the listener queues the connection even
    // before mdpy accepts).
    let mut client = vfio_user::Client::new(&dir.join(format!("{UUID}.sock"))).expect("connect");
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
        .arg(&dir)
        .output()
        .expect("mdpy list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listing.contains(UUID),
        "list: {listing}"
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(wait_exit(&mut child).success(), "mdpy exits cleanly");
    assert!(
        dir.join("control.sock").exists(),
        "the manager's control socket is left alone"
    );
    assert!(
        dir.join(format!("{UUID}.sock")).exists(),
        "the manager's instance socket too"
    );
    drop((control, instance));
    let _ = std::fs::remove_dir_all(&dir);
}
