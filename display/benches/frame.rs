//! Frame conversion costs (printed, not asserted): a 1920x1080 XRGB8888 frame to a PNG and
//! to a terminal frame. Target: under 16 ms each.

use std::time::{Duration, Instant};

use mdev_display::format::{Frame, Mode, PixelFormat};
use mdev_display::snapshot::encode_png;
use mdev_display::terminal::TerminalRenderer;

const W: u32 = 1920;
const H: u32 = 1080;
const ROUNDS: u32 = 20;

/// A desktop-like picture: gradients, flat areas and some text-like noise.
fn picture() -> Vec<u8> {
    let mut fb = Vec::with_capacity((W * H * 4) as usize);
    for y in 0..H {
        for x in 0..W {
            let (r, g, b) = if y < 40 {
                (0x30, 0x30, 0x38)
            } else if (x / 8 + y / 16) % 7 == 0 && (x ^ y) & 3 == 0 {
                (0xee, 0xee, 0xee)
            } else {
                ((x * 255 / W) as u8, (y * 255 / H) as u8, 0x80)
            };
            fb.extend_from_slice(&[b, g, r, 0]);
        }
    }
    fb
}

fn time<F: FnMut()>(mut f: F) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..ROUNDS {
        f();
    }
    start.elapsed() / ROUNDS
}

fn main() {
    let fb = picture();
    let frame = Frame::new(Mode::packed(PixelFormat::Xrgb8888, W, H), &fb).expect("fits");
    let mut png = Vec::with_capacity(8 << 20);
    let t_png = time(|| {
        png.clear();
        encode_png(&frame, &mut png).expect("png");
    });
    println!(
        "1920x1080x32 -> PNG:            {:>8.2} ms  ({} KiB)",
        t_png.as_secs_f64() * 1e3,
        png.len() / 1024
    );
    let t_rgb = time(|| {
        std::hint::black_box(frame.to_rgb8());
    });
    println!(
        "  of which XRGB -> RGB8:        {:>8.2} ms",
        t_rgb.as_secs_f64() * 1e3
    );
    for (cols, rows) in [(80u16, 24u16), (240, 67), (400, 120)] {
        let mut out = Vec::with_capacity(4 << 20);
        let t_term = time(|| {
            let mut r = TerminalRenderer::new();
            out.clear();
            r.render(&frame, cols, rows, &mut out).expect("render");
        });
        println!(
            "1920x1080x32 -> terminal {cols}x{rows} (full redraw): {:>8.3} ms  ({} KiB of output)",
            t_term.as_secs_f64() * 1e3,
            out.len() / 1024
        );
    }
    let mut r = TerminalRenderer::new();
    let mut out = Vec::new();
    r.render(&frame, 240, 67, &mut out).expect("render");
    let t_same = time(|| {
        out.clear();
        r.render(&frame, 240, 67, &mut out).expect("render");
    });
    println!(
        "1920x1080x32 -> terminal 240x67 (unchanged frame): {:>8.3} ms",
        t_same.as_secs_f64() * 1e3
    );
}
