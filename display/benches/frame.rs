//! Frame conversion costs (printed, not asserted): a 1920x1080 XRGB8888 frame to a PNG and
//! to a terminal frame. Target: under 16 ms each. Also what the framebuffer's memory costs:
//! creating a sealed 16 MiB `SharedMemory` (next to the same memfd without seals), and the
//! volatile copy a viewer makes of a 1920x1080x32 frame.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mdev::region::SHARED_MEMORY_SEALS;
use mdev::SharedMemory;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use mdev_display::format::{Frame, Mode, PixelFormat};
use mdev_display::snapshot::encode_png;
use mdev_display::terminal::TerminalRenderer;

const W: u32 = 1920;
const H: u32 = 1080;
const ROUNDS: u32 = 20;
/// Creating memory is cheap: more rounds.
const CREATE_ROUNDS: u32 = 2000;

fn time<F: FnMut()>(f: F) -> Duration {
    time_rounds(ROUNDS, f)
}

fn time_rounds<F: FnMut()>(rounds: u32, mut f: F) -> Duration {
    f();
    let start = Instant::now();
    for _ in 0..rounds {
        f();
    }
    start.elapsed() / rounds
}

/// Sealing's share of a framebuffer's creation, and the copy a viewer makes of each frame.
fn shared_memory_costs(fb: &[u8]) {
    const SIZE: usize = 16 << 20;
    let t_sealed = time_rounds(CREATE_ROUNDS, || {
        std::hint::black_box(SharedMemory::new("bench-fb", SIZE).expect("shared memory"));
    });
    let memfd = |flags: MemFdCreateFlag, seals: Option<SealFlag>| {
        let file = File::from(memfd_create(c"bench-memfd", flags).expect("memfd"));
        file.set_len(SIZE as u64).expect("size");
        if let Some(seals) = seals {
            fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).expect("seal");
        }
    };
    let t_plain = time_rounds(CREATE_ROUNDS, || memfd(MemFdCreateFlag::MFD_CLOEXEC, None));
    let t_seal = time_rounds(CREATE_ROUNDS, || {
        memfd(
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
            Some(SHARED_MEMORY_SEALS),
        )
    });
    println!(
        "SharedMemory::new 16 MiB (memfd, size, seals, mmap): {:>7.1} us; memfd+ftruncate {:.1} us, with seals {:.1} us",
        t_sealed.as_secs_f64() * 1e6,
        t_plain.as_secs_f64() * 1e6,
        t_seal.as_secs_f64() * 1e6,
    );
    let mem = SharedMemory::new("bench-fb", SIZE).expect("shared memory");
    mem.write(0, fb).expect("fill");
    let mut copy = vec![0u8; fb.len()];
    let t_copy = time(|| mem.read(0, &mut copy).expect("copy"));
    println!(
        "1920x1080x32 volatile copy out of shared memory: {:>8.3} ms",
        t_copy.as_secs_f64() * 1e3
    );
}

fn main() {
    let fb = mdev_display::testing::desktop_picture(W, H);
    shared_memory_costs(&fb);
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
