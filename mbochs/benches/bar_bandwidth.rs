//! Client-side write bandwidth into the mmap'd framebuffer BAR of a served mbochs instance,
//! against a plain memcpy of the same size (printed, not asserted; target >= 0.9x).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mbochs::MbochsDriver;
use mdev::parent::{CreateParams, Parent};
use mdev_display::testing::{map_framebuffer_rw, scratch_dir};

/// One 1920x1080x32 frame.
const FRAME: usize = 1920 * 1080 * 4;
const ROUNDS: u32 = 200;

fn bandwidth(mut copy: impl FnMut()) -> f64 {
    for _ in 0..5 {
        copy();
    }
    let start = Instant::now();
    for _ in 0..ROUNDS {
        copy();
    }
    let t: Duration = start.elapsed();
    (FRAME as f64 * f64::from(ROUNDS)) / t.as_secs_f64() / (1 << 30) as f64
}

fn main() {
    let dir = scratch_dir("mbochs-bench");
    let parent = Parent::new(Arc::new(MbochsDriver::new(64)), &dir).expect("parent");
    let info = parent
        .create("large", None, &CreateParams::new())
        .expect("create");
    let client = vfio_user::Client::new(&info.socket).expect("connect");
    let mut bar = map_framebuffer_rw(&client).expect("map BAR0");
    let src: Vec<u8> = (0..FRAME).map(|i| (i * 31) as u8).collect();
    let mut plain = vec![0u8; FRAME];

    let memcpy = bandwidth(|| {
        plain.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut plain);
    });
    let mapped = bandwidth(|| {
        bar[..FRAME].copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut bar);
    });
    println!(
        "1920x1080x32 frame write ({:.1} MiB) x {ROUNDS}:",
        FRAME as f64 / (1 << 20) as f64
    );
    println!("  plain memcpy:          {memcpy:>7.2} GiB/s");
    println!("  mmap'd BAR0 (memfd):   {mapped:>7.2} GiB/s");
    println!(
        "  ratio:                 {:>7.2}x (target >= 0.9x)",
        mapped / memcpy
    );
    drop(bar);
    drop(client);
    parent.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
