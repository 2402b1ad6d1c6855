//! The VNC server seen by a real, independent VNC client: PyPI's `vncdotool` (provisioned
//! into `.cache/vnc-client/` by `tests/vnc-client/provision`, pinned) captures a frame as a
//! PNG, which must equal the `snapshot` PNG of the same frame pixel for pixel: mdpy's colour
//! bars (raw and ZRLE, the server's pixel format and one the client sets), and mbochs before
//! and after a mode change the client follows through DesktopSize.
//!
//! Skipped, loudly, only when the package registry cannot be reached to provision the client.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mbochs::{DispiModeReader, MbochsDriver};
use mdev_display::cli::snapshot_once;
use mdev_display::testing::{draw_pattern, expected_rgb, map_framebuffer_rw};
use mdev_display::vnc::{self, VncConfig, VncServer};
use mdev_display::{DisplayClient, Mode, ModeReader, PixelFormat};
use mdev_tests::bochs_guest::set_mode;
use mdev_tests::ParentHarness;
use mdpy::{ConfigModeReader, MdpyDriver};
use vfio_user::Client;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the repository")
        .to_path_buf()
}

/// The provisioned client's python, or `None` (after a loud message) when the package
/// registry is unreachable. Any other provisioning failure fails the test.
fn vncdotool() -> Option<PathBuf> {
    let out = Command::new(repo().join("tests/vnc-client/provision"))
        .output()
        .expect("run tests/vnc-client/provision");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        Some(75) => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPED: the real VNC client (vncdotool) could not be provisioned: the\n\
                 !!! package registry is unreachable. {}\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
                stderr.trim()
            );
            None
        }
        _ => panic!("provisioning vncdotool failed: {stderr}"),
    }
}

/// `capture.py ADDR OUT.png ARGS...` as a command.
fn capture_cmd(python: &Path, addr: std::net::SocketAddr, out: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("tests/vnc-client/capture.py"))
        .arg(addr.to_string())
        .arg(out)
        .args(args)
        .args(["--timeout", "60"]);
    cmd
}

fn succeeded(what: &str, out: Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rgb(png: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(png)
        .unwrap_or_else(|e| panic!("{}: {e}", png.display()))
        .to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn snapshot(socket: &Path, reader: Box<dyn ModeReader>, out: &Path) -> (u32, u32, Vec<u8>) {
    snapshot_once(socket, reader, out).expect("snapshot");
    rgb(out)
}

fn serve(socket: &Path, reader: Box<dyn ModeReader>) -> VncServer {
    let client = DisplayClient::connect(socket, reader).expect("viewer client");
    let listener = vnc::bind("127.0.0.1:0".parse().unwrap(), false).expect("bind");
    VncServer::start(client, listener, VncConfig::default()).expect("vnc server")
}

/// Eight horizontal colour bars, as the demo's guest paints them into mdpy.
fn paint_colour_bars(fb: &mut [u8], width: usize, height: usize) {
    let bars = [
        0x00ff_ffffu32,
        0x00ff_ff00,
        0x0000_ffff,
        0x0000_ff00,
        0x00ff_00ff,
        0x00ff_0000,
        0x0000_00ff,
        0x0020_2020,
    ];
    for y in 0..height {
        let colour = bars[y * bars.len() / height];
        for px in fb[y * width * 4..(y + 1) * width * 4].chunks_exact_mut(4) {
            px.copy_from_slice(&colour.to_le_bytes());
        }
    }
}

#[test]
fn vncdotool_captures_mdpy_colour_bars_exactly_as_the_snapshot() {
    let Some(python) = vncdotool() else {
        return;
    };
    let h = ParentHarness::new(MdpyDriver::new(4), "vncdo-mdpy");
    let socket = h.socket("xga");
    let guest = Client::new(&socket).expect("guest");
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    paint_colour_bars(&mut fb, 1024, 768);
    let snap = snapshot(&socket, Box::new(ConfigModeReader), &h.dir.join("snap.png"));
    assert_eq!((snap.0, snap.1), (1024, 768));
    let server = serve(&socket, Box::new(ConfigModeReader));
    for (encoding, pixels) in [("raw", "native"), ("zrle", "native"), ("zrle", "rgbx")] {
        let out = h.dir.join(&format!("vnc-{encoding}-{pixels}.png"));
        let args = ["--encoding", encoding, "--pixel-format", pixels];
        succeeded(
            "capture.py",
            capture_cmd(&python, server.local_addr(), &out, &args)
                .output()
                .expect("run capture.py"),
        );
        assert!(
            rgb(&out) == snap,
            "{encoding}/{pixels}: vncdotool's capture differs from the snapshot"
        );
    }
}

#[test]
fn vncdotool_follows_an_mbochs_mode_change_to_the_new_picture() {
    let Some(python) = vncdotool() else {
        return;
    };
    let h = ParentHarness::new(MbochsDriver::new(256), "vncdo-mbochs");
    let socket = h.socket("medium");
    let mut guest = Client::new(&socket).expect("guest");
    set_mode(&mut guest, 1024, 768, 32);
    let xga = Mode::packed(PixelFormat::Xrgb8888, 1024, 768);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &xga);
    let server = serve(&socket, Box::new(DispiModeReader));
    let addr = server.local_addr();

    let first = h.dir.join("vnc-1024x768.png");
    succeeded(
        "capture.py (1024x768)",
        capture_cmd(&python, addr, &first, &[])
            .output()
            .expect("run capture.py"),
    );
    let snap = snapshot(
        &socket,
        Box::new(DispiModeReader),
        &h.dir.join("1024x768.png"),
    );
    assert!(
        rgb(&first) == snap,
        "1024x768: capture differs from the snapshot"
    );
    assert!(snap.2 == expected_rgb(&xga));

    // A viewer connected before the guest changes mode follows it (DesktopSize) and saves
    // the new picture once told it is final.
    let go = h.dir.join("go");
    let after = h.dir.join("vnc-800x600.png");
    let go_arg = go.to_string_lossy().into_owned();
    let follower = capture_cmd(
        &python,
        addr,
        &after,
        &["--size", "800x600", "--after", &go_arg],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start capture.py");
    let mut follower = follower;
    let mut log = BufReader::new(follower.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("first picture") {
        line.clear();
        let n = log.read_line(&mut line).expect("capture.py's stderr");
        assert!(n > 0, "capture.py ended before its first picture");
    }
    assert!(line.contains("1024x768"), "{line}");
    set_mode(&mut guest, 800, 600, 16);
    let svga = Mode::packed(PixelFormat::Rgb565, 800, 600);
    draw_pattern(&mut fb, &svga);
    let snap = snapshot(
        &socket,
        Box::new(DispiModeReader),
        &h.dir.join("800x600.png"),
    );
    assert!(snap.2 == expected_rgb(&svga));
    std::fs::write(&go, b"").expect("tell capture.py to save");
    let mut rest = String::new();
    log.read_to_string(&mut rest).expect("capture.py's stderr");
    assert!(
        follower.wait().expect("wait").success(),
        "capture.py: {rest}"
    );
    assert!(rest.contains("saved 800x600"), "{rest}");
    assert!(
        !rest.contains(" 0 resizes"),
        "no DesktopSize was followed: {rest}"
    );
    assert!(
        rgb(&after) == snap,
        "800x600 after the mode change: capture differs from the snapshot"
    );
}
