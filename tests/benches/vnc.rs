//! The VNC server's costs, printed (never asserted); run with
//! `cargo bench -p mdev-tests --bench vnc`:
//!
//! 1. a full 1920x1080 frame, Raw and ZRLE: bytes and milliseconds per update (the server's
//!    encoding, no socket), for a desktop-like picture and for a text console;
//! 2. one changed text line on that console: the capture's tile diff, then the incremental
//!    update's bytes and milliseconds;
//! 3. frames per second a viewer sees while the "guest" scrolls a 1920x1080 text console as
//!    fbcon does (everything moves up one 16-pixel line, a new line is drawn at the bottom, as
//!    fast as it can): an in-process mbochs, the VNC server attached over vfio-user, a viewer
//!    of the test crate (ZRLE) on loopback, at 30 and 60 captures per second.
//!
//! The real guest's figure (fbcon scrolling in QEMU) is printed by `tests/e2e/devices`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mbochs::{DispiModeReader, MbochsDriver};
use mdev_display::rfb::{Picture, Session, Successor};
use mdev_display::testing::map_framebuffer_rw;
use mdev_display::vnc::{self, VncConfig, VncServer};
use mdev_display::{DisplayClient, Mode, PixelFormat};
use mdev_tests::bochs_guest::set_mode;
use mdev_tests::rfb_client::{RfbClient, DESKTOP_SIZE, ZRLE};
use mdev_tests::ParentHarness;
use vfio_user::Client;

const W: u32 = 1920;
const H: u32 = 1080;
const ROUNDS: u32 = 10;
const RAW: i32 = 0;

fn mode() -> Mode {
    Mode::packed(PixelFormat::Xrgb8888, W, H)
}

/// Draws text line `n` (8x16 "glyphs", about 100 characters) at pixel row `y`.
fn draw_text_line(fb: &mut [u8], stride: usize, y: usize, n: u32) {
    let chars = 60 + (n * 37 % 60) as usize;
    for row in 0..16 {
        let line = &mut fb[(y + row) * stride..(y + row + 1) * stride];
        line.fill(0);
        for c in 0..chars {
            let glyph = (n as usize * 31 + c * 7) % 95;
            for bit in 0..8 {
                let on = row > 2 && row < 14 && (glyph >> (bit % 5) ^ row) & 1 == 1;
                if on {
                    let at = (c * 8 + bit) * 4;
                    line[at..at + 4].copy_from_slice(&[0xaa, 0xaa, 0xaa, 0]);
                }
            }
        }
    }
}

/// A text console: 67 lines of text on black.
fn console() -> Vec<u8> {
    let stride = (W * 4) as usize;
    let mut fb = vec![0u8; stride * H as usize];
    for line in 0..(H / 16) {
        draw_text_line(&mut fb, stride, (line * 16) as usize, line);
    }
    fb
}

fn request(incremental: bool) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
    m.extend_from_slice(&(W as u16).to_be_bytes());
    m.extend_from_slice(&(H as u16).to_be_bytes());
    m
}

/// A session past the handshake, using `encoding`, its output cleared.
fn session(p: &Picture, encoding: i32) -> Session {
    let mut s = Session::new("bench");
    let mut m = b"RFB 003.008\n\x01\x01".to_vec();
    m.extend_from_slice(&[2, 0, 0, 2]);
    m.extend_from_slice(&encoding.to_be_bytes());
    m.extend_from_slice(&DESKTOP_SIZE.to_be_bytes());
    s.receive(&m, p).expect("handshake");
    s.clear_output();
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn full_frames() {
    for (what, bytes) in [
        ("desktop", mdev_display::testing::desktop_picture(W, H)),
        ("text console", console()),
    ] {
        let p = Picture::first(Some(mode()), bytes);
        for (name, enc) in [("Raw", RAW), ("ZRLE", ZRLE)] {
            let mut s = session(&p, enc);
            let mut sent = 0;
            let mut total = Duration::ZERO;
            for _ in 0..ROUNDS {
                s.receive(&request(false), &p).expect("request");
                let t = Instant::now();
                s.update(&p).expect("update");
                total += t.elapsed();
                sent = s.output().len();
                s.clear_output();
            }
            println!(
                "full 1920x1080 frame, {what:12}, {name:4}: {:>9} bytes ({:>6.1} KiB), {:>7.2} ms per update",
                sent,
                sent as f64 / 1024.0,
                ms(total / ROUNDS)
            );
        }
    }
}

fn one_text_line() {
    let base = console();
    let mut changed = base.clone();
    // A new line of text in the middle of the screen.
    draw_text_line(&mut changed, (W * 4) as usize, 512, 999);
    let mut diff = Duration::ZERO;
    for _ in 0..ROUNDS {
        let p1 = Picture::first(Some(mode()), base.clone());
        let bytes = changed.clone();
        let t = Instant::now();
        let next = p1.successor(Some(mode()), bytes);
        diff += t.elapsed();
        std::hint::black_box(next);
    }
    let p1 = Picture::first(Some(mode()), base.clone());
    let mut same = Duration::ZERO;
    for _ in 0..ROUNDS {
        let bytes = base.clone();
        let t = Instant::now();
        let next = p1.successor(Some(mode()), bytes);
        same += t.elapsed();
        std::hint::black_box(next);
    }
    let same = same / ROUNDS;
    println!(
        "capture diff of a 1920x1080 frame (64x64 tiles): {:.2} ms with one text line changed, {:.2} ms unchanged",
        ms(diff / ROUNDS),
        ms(same)
    );
    for (name, enc) in [("Raw", RAW), ("ZRLE", ZRLE)] {
        let mut total = Duration::ZERO;
        let mut sent = 0;
        let mut rects = 0;
        for _ in 0..ROUNDS {
            let p1 = Picture::first(Some(mode()), base.clone());
            let Successor::Changed(p2) = p1.successor(Some(mode()), changed.clone()) else {
                panic!("the line changed nothing");
            };
            let mut s = session(&p1, enc);
            s.receive(&request(false), &p1).expect("request");
            s.update(&p1).expect("first update");
            s.clear_output();
            s.receive(&request(true), &p1).expect("request");
            let t = Instant::now();
            s.update(&p2).expect("update");
            total += t.elapsed();
            sent = s.output().len();
            rects = u16::from_be_bytes([s.output()[2], s.output()[3]]);
        }
        println!(
            "one changed text line (1920x1080 console), {name:4}: {sent:>6} bytes in {rects} rectangle(s), {:.3} ms per update",
            ms(total / ROUNDS)
        );
    }
}

fn scrolling(fps: u32) {
    let h = ParentHarness::new(MbochsDriver::new(256), "bench-vnc");
    let socket = h.socket("large");
    let mut guest = Client::new(&socket).expect("guest");
    set_mode(&mut guest, W as u16, H as u16, 32);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    let screen = (W * H * 4) as usize;
    fb[..screen].copy_from_slice(&console());
    let client = DisplayClient::connect(&socket, Box::new(DispiModeReader)).expect("viewer");
    let listener = vnc::bind("127.0.0.1:0".parse().unwrap(), false).expect("bind");
    let config = VncConfig {
        fps,
        ..VncConfig::default()
    };
    let server = VncServer::start(client, listener, config).expect("server");
    let mut v = RfbClient::connect(server.local_addr()).expect("viewer");
    v.set_encodings(&[ZRLE, DESKTOP_SIZE]).unwrap();
    v.request(false).unwrap();
    v.expect_update(Duration::from_secs(10)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let scroller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let stride = (W * 4) as usize;
            let mut lines = 0u32;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                fb.copy_within(16 * stride..screen, 0);
                draw_text_line(&mut fb, stride, H as usize - 16, lines);
                lines += 1;
            }
            (lines, start.elapsed())
        })
    };
    let window = Duration::from_secs(3);
    let start = Instant::now();
    let (mut updates, mut bytes) = (0u32, 0usize);
    while start.elapsed() < window {
        v.request(true).unwrap();
        if let Some(u) = v.next_update(window).unwrap() {
            updates += 1;
            bytes += u.bytes;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (lines, spent) = scroller.join().expect("scroller");
    println!(
        "1920x1080 console scrolling ({:.0} lines/s) at --vnc-fps {fps:>3}: the viewer sees {:.1} updates/s, {:.0} KiB per update (ZRLE)",
        f64::from(lines) / spent.as_secs_f64(),
        f64::from(updates) / secs,
        bytes as f64 / 1024.0 / f64::from(updates.max(1))
    );
}

fn main() {
    full_frames();
    one_text_line();
    for fps in [30, 60] {
        scrolling(fps);
    }
}
