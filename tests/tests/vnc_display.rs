//! The VNC server (`view --vnc`) over real sockets: mdpy and mbochs instances served in
//! process, a "guest" drawing through its own mapping of BAR0, the server attached as one more
//! vfio-user client, and viewers that are a minimal RFB client of the test crate (its own Raw
//! and ZRLE decoders). What a viewer shows must equal the snapshot PNG pixel for pixel.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use mbochs::{DispiModeReader, MbochsDriver};
use mdev_display::cli::snapshot_once;
use mdev_display::testing::{draw_pattern, expected_rgb, map_framebuffer_rw};
use mdev_display::vnc::{self, VncConfig, VncServer};
use mdev_display::{DisplayClient, Mode, ModeReader, PixelFormat};
use mdev_tests::bochs_guest::set_mode;
use mdev_tests::rfb_client::{Format, RfbClient, UpdateRect, DESKTOP_SIZE, RAW, ZRLE};
use mdev_tests::{wait_until, ParentHarness};
use mdpy::{ConfigModeReader, MdpyDriver};
use vfio_user::Client;

/// Long enough for any capture to reach a viewer on a loaded machine.
const SOON: Duration = Duration::from_secs(10);

/// A VNC server for the instance on `socket`, on a free loopback port.
fn serve(socket: &Path, reader: Box<dyn ModeReader>, config: VncConfig) -> VncServer {
    let client = DisplayClient::connect(socket, reader).expect("viewer client");
    let listener = vnc::bind("127.0.0.1:0".parse().unwrap(), false).expect("bind");
    VncServer::start(client, listener, config).expect("vnc server")
}

fn snapshot(socket: &Path, reader: Box<dyn ModeReader>, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    snapshot_once(socket, reader, &out).expect("snapshot");
    image::open(&out).expect("decode png").to_rgb8().into_raw()
}

fn viewer(addr: SocketAddr, format: Option<Format>, encoding: i32) -> RfbClient {
    let mut v = RfbClient::connect(addr).expect("connect");
    if let Some(f) = format {
        v.set_pixel_format(f).unwrap();
    }
    v.set_encodings(&[encoding, DESKTOP_SIZE]).unwrap();
    v
}

/// The whole picture, asked for non-incrementally.
fn full_picture(v: &mut RfbClient) -> Vec<u8> {
    v.request(false).unwrap();
    v.expect_update(SOON).expect("a full update");
    v.rgb().to_vec()
}

/// What a viewer in 5-6-5 shows for `rgb`: each channel cut to its top bits, scaled back up.
fn as_rgb565(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks(3)
        .flat_map(|c| {
            let s = |v: u8, bits: u32| {
                let max = (1u32 << bits) - 1;
                ((u32::from(v) >> (8 - bits)) * 255 / max) as u8
            };
            [s(c[0], 5), s(c[1], 6), s(c[2], 5)]
        })
        .collect()
}

#[test]
fn viewers_see_exactly_the_snapshot_in_raw_and_zrle_and_their_own_pixel_format() {
    let h = ParentHarness::new(MdpyDriver::new(4), "vnc-mdpy");
    let socket = h.socket("vga");
    let guest = Client::new(&socket).expect("guest");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let png = snapshot(&socket, Box::new(ConfigModeReader), &h.dir, "vga.png");
    assert_eq!(png, expected_rgb(&mode));
    let server = serve(&socket, Box::new(ConfigModeReader), VncConfig::default());
    let addr = server.local_addr();
    for (format, encoding) in [
        (None, RAW),
        (None, ZRLE),
        (Some(Format::RGBX), ZRLE),
        (Some(Format::XRGB_BE), RAW),
        (Some(Format::XRGB_BE), ZRLE),
    ] {
        let mut v = viewer(addr, format, encoding);
        assert_eq!((v.width, v.height), (640, 480));
        assert!(
            full_picture(&mut v) == png,
            "{format:?} encoding {encoding}: pixels differ from the snapshot"
        );
    }
    let mut v = viewer(addr, Some(Format::RGB565), ZRLE);
    assert!(
        full_picture(&mut v) == as_rgb565(&png),
        "5-6-5 viewer: pixels differ"
    );
}

#[test]
fn incremental_updates_cover_only_the_changed_tiles() {
    let h = ParentHarness::new(MdpyDriver::new(4), "vnc-incremental");
    let socket = h.socket("xga");
    let guest = Client::new(&socket).expect("guest");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 1024, 768);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let server = serve(&socket, Box::new(ConfigModeReader), VncConfig::default());
    let mut v = viewer(server.local_addr(), None, ZRLE);
    let first = full_picture(&mut v);
    assert!(first == expected_rgb(&mode));
    // The guest draws an 8x16 "character" at (200, 100): inside tile (3, 1).
    for y in 100..116 {
        for x in 200..208 {
            let at = (y * 1024 + x) * 4;
            fb[at..at + 4].copy_from_slice(&0x00c0_ffeeu32.to_le_bytes());
        }
    }
    v.request(true).unwrap();
    let update = v.expect_update(SOON).expect("the change arrives");
    assert_eq!(
        update.rects,
        [UpdateRect {
            x: 192,
            y: 64,
            w: 64,
            h: 64,
            encoding: ZRLE
        }]
    );
    let png = snapshot(&socket, Box::new(ConfigModeReader), &h.dir, "char.png");
    assert!(
        v.rgb() == png,
        "the viewer's picture differs from the snapshot"
    );
    // Nothing changes: an incremental request is not answered.
    v.request(true).unwrap();
    assert!(v.next_update(Duration::from_millis(300)).unwrap().is_none());
}

#[test]
fn a_mode_change_reaches_the_viewer_as_desktop_size_then_the_new_picture() {
    let h = ParentHarness::new(MbochsDriver::new(256), "vnc-mbochs");
    let socket = h.socket("medium");
    let mut guest = Client::new(&socket).expect("guest");
    set_mode(&mut guest, 1024, 768, 32);
    let xga = Mode::packed(PixelFormat::Xrgb8888, 1024, 768);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &xga);
    let server = serve(&socket, Box::new(DispiModeReader), VncConfig::default());
    let mut v = viewer(server.local_addr(), None, ZRLE);
    assert!(full_picture(&mut v) == expected_rgb(&xga));
    let mut raw_viewer = viewer(server.local_addr(), None, RAW);
    assert!(full_picture(&mut raw_viewer) == expected_rgb(&xga));

    set_mode(&mut guest, 800, 600, 16);
    let svga = Mode::packed(PixelFormat::Rgb565, 800, 600);
    draw_pattern(&mut fb, &svga);
    let png = snapshot(&socket, Box::new(DispiModeReader), &h.dir, "svga.png");
    assert_eq!(png, expected_rgb(&svga));
    for v in [&mut v, &mut raw_viewer] {
        let mut resized = false;
        let deadline = Instant::now() + SOON;
        while !(v.width == 800 && v.rgb() == png) {
            assert!(Instant::now() < deadline, "the new mode never showed");
            v.request(true).unwrap();
            let update = v.expect_update(SOON).unwrap();
            if update.is_desktop_size() {
                assert_eq!(
                    (update.rects[0].w, update.rects[0].h),
                    (800, 600),
                    "DesktopSize carries the new size"
                );
                resized = true;
            } else {
                assert!(
                    update.rects.iter().all(|r| r.encoding != DESKTOP_SIZE),
                    "DesktopSize comes alone in its update"
                );
            }
        }
        assert!(resized, "no DesktopSize before the new picture");
    }
}

#[test]
fn two_viewers_at_once_and_one_that_never_reads_stalls_neither() {
    let h = ParentHarness::new(MdpyDriver::new(4), "vnc-stall");
    let socket = h.socket("hd");
    let guest = Client::new(&socket).expect("guest");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 1920, 1080);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let config = VncConfig {
        write_timeout: Duration::from_secs(8),
        ..VncConfig::default()
    };
    let server = serve(&socket, Box::new(ConfigModeReader), config);
    let addr = server.local_addr();
    // The stuck viewer asks for the whole 8 MB picture, raw, many times, and reads nothing.
    let mut stuck = RfbClient::connect(addr).expect("stuck viewer");
    stuck.set_encodings(&[RAW]).unwrap();
    for _ in 0..20 {
        stuck.request(false).unwrap();
    }
    let mut a = viewer(addr, None, ZRLE);
    let mut b = viewer(addr, Some(Format::RGBX), RAW);
    assert!(full_picture(&mut a) == expected_rgb(&mode));
    assert!(full_picture(&mut b) == expected_rgb(&mode));
    for round in 0..5u32 {
        let colour = 0x0010_2030 * (round + 1);
        for px in fb[..1920 * 4 * 16].chunks_exact_mut(4) {
            px.copy_from_slice(&colour.to_le_bytes());
        }
        let want = [(colour >> 16) as u8, (colour >> 8) as u8, colour as u8];
        for v in [&mut a, &mut b] {
            v.refresh_until(SOON, |v| {
                v.rgb()[..3] == want && v.rgb()[1919 * 3..1920 * 3] == want
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
    }
    assert_eq!(
        server.viewers(),
        3,
        "the stuck viewer was still connected (blocked) all along"
    );
    // The stuck viewer is dropped once its socket stays full for the write timeout.
    wait_until("the stuck viewer is dropped", || server.viewers() == 2);
    drop(stuck);
    // And the others go on.
    fb[0..4].copy_from_slice(&0x0001_0203u32.to_le_bytes());
    a.refresh_until(SOON, |v| v.rgb()[..3] == [1, 2, 3])
        .unwrap();
}

/// True when the server closes `s` within `within` (reading and dropping what it sends).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn hostile_viewers_are_dropped_and_the_viewer_limit_holds() {
    let h = ParentHarness::new(MdpyDriver::new(4), "vnc-hostile");
    let socket = h.socket("vga");
    let config = VncConfig {
        max_viewers: 3,
        handshake_timeout: Duration::from_secs(1),
        ..VncConfig::default()
    };
    let server = serve(&socket, Box::new(ConfigModeReader), config);
    let addr = server.local_addr();
    let mut http = TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut http, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_within(&mut http, SOON), "a non-RFB peer is dropped");
    let mut silent = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut silent, SOON),
        "a peer that never finishes the handshake is dropped"
    );
    let mut paster = RfbClient::connect(addr).unwrap();
    paster
        .send_raw(&[6, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff])
        .unwrap();
    assert!(
        closed_within(&mut paster.stream().try_clone().unwrap(), SOON),
        "a 2 GiB paste is refused"
    );
    let mut unknown = RfbClient::connect(addr).unwrap();
    unknown.send_raw(&[250, 0, 0, 0]).unwrap();
    assert!(closed_within(
        &mut unknown.stream().try_clone().unwrap(),
        SOON
    ));
    wait_until("the hostile viewers are gone", || server.viewers() == 0);
    // Three viewers fit; a fourth is closed at once; after one leaves, another fits again.
    let mut three: Vec<_> = (0..3).map(|_| viewer(addr, None, ZRLE)).collect();
    wait_until("three viewers", || server.viewers() == 3);
    let mut fourth = TcpStream::connect(addr).unwrap();
    assert!(closed_within(&mut fourth, SOON), "over the limit");
    three.pop();
    wait_until("one viewer left", || server.viewers() == 2);
    let mut again = viewer(addr, None, RAW);
    assert_eq!(full_picture(&mut again).len(), 640 * 480 * 3);
    for v in &mut three {
        assert_eq!(full_picture(v).len(), 640 * 480 * 3);
    }
}

#[test]
fn stopping_the_vnc_server_disconnects_viewers_and_leaves_the_guest_alone() {
    let h = ParentHarness::new(MdpyDriver::new(4), "vnc-stop");
    let socket = h.socket("vga");
    let uuid = h.parent.instances()[0].uuid;
    let guest = Client::new(&socket).expect("guest");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let server = serve(&socket, Box::new(ConfigModeReader), VncConfig::default());
    let mut v = viewer(server.local_addr(), None, ZRLE);
    full_picture(&mut v);
    assert_eq!(h.parent.handle(uuid).map(|d| d.open_count()), Some(2));
    server.shutdown();
    assert!(closed_within(&mut v.stream().try_clone().unwrap(), SOON));
    wait_until("the server's vfio-user connection closes", || {
        h.parent.handle(uuid).map(|d| d.open_count()) == Some(1)
    });
    let png = snapshot(&socket, Box::new(ConfigModeReader), &h.dir, "after.png");
    assert!(png == expected_rgb(&mode), "the guest's picture is intact");
}

/// `view --vnc` holds its instance through a viewer client that routes the device request
/// interrupt: removing the instance asks it to let go, the VNC server stops by itself (its
/// viewers see the end of the stream), and the removal completes without force. Also when no
/// VNC viewer is connected (the poller is idle then).
#[test]
fn removing_the_instance_stops_the_vnc_server_and_the_removal_completes() {
    for with_viewer in [true, false] {
        let h = ParentHarness::new(MbochsDriver::new(64), "vnc-release");
        let info = h.create("small", &[]);
        let server = serve(
            &info.socket,
            Box::new(DispiModeReader),
            VncConfig::default(),
        );
        let mut v = with_viewer.then(|| {
            let mut v = viewer(server.local_addr(), None, RAW);
            full_picture(&mut v);
            v
        });
        let handle = h.parent.handle(info.uuid).expect("instance");
        assert_eq!(handle.open_count(), 1, "the VNC server holds the instance");
        drop(handle);
        let t = Instant::now();
        h.parent
            .remove_within(info.uuid, false, Duration::from_secs(20))
            .expect("removed once the VNC server let go");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "with_viewer {with_viewer}"
        );
        server.wait().expect("the VNC server ended cleanly");
        if let Some(v) = v.as_mut() {
            let mut rest = Vec::new();
            let _ = v.stream().try_clone().unwrap().read_to_end(&mut rest);
            let mut one = [0u8; 1];
            assert_eq!(
                v.stream().try_clone().unwrap().read(&mut one).unwrap_or(0),
                0
            );
        }
        assert!(h.parent.instances().is_empty());
        assert_eq!(h.driver.pool().free(), 64);
    }
}
