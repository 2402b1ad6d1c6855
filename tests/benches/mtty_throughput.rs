//! Throughput through one mtty port, printed (not asserted): THR writes echoed back on RBR
//! in loopback, one REGION_WRITE and one REGION_READ per byte; and guest bytes through the
//! socket console to a host reader. Every byte is checked. Run with
//! `cargo bench -p mdev-tests --bench mtty_throughput`.

#[path = "../tests/mtty_guest/mod.rs"]
mod mtty_guest;

use std::time::Instant;

use mtty::uart::{Ier, LSR, RBR_THR};
use mtty_guest::{harness, init_port, read_exactly, reg, set_reg};
use vfio_user::Client;

fn main() {
    let h = harness(24);
    let console = h.dir.join("bench.sock");
    let info = h.create(
        "mtty-2",
        &[("port1", format!("socket:{}", console.display()))],
    );
    let mut c = Client::new(&info.socket).unwrap();
    init_port(&mut c, 0, Ier::empty());
    init_port(&mut c, 1, Ier::empty());

    const N: usize = 20_000;
    let start = Instant::now();
    for i in 0..N {
        set_reg(&mut c, 0, RBR_THR, i as u8);
        assert_eq!(reg(&mut c, 0, RBR_THR), i as u8);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "mtty loopback THR->RBR: {N} bytes in {secs:.3} s = {:.0} B/s",
        N as f64 / secs
    );

    let mut peer = std::os::unix::net::UnixStream::connect(&console).unwrap();
    mdev_tests::wait_until("attached", || reg(&mut c, 1, 6) & 0x80 != 0);
    let reader = std::thread::spawn(move || read_exactly(&mut peer, N));
    let start = Instant::now();
    for i in 0..N {
        // Wait for room as a driver would (THRE), then write.
        mdev_tests::wait_until("THRE", || reg(&mut c, 1, LSR) & 0x20 != 0);
        set_reg(&mut c, 1, RBR_THR, i as u8);
    }
    let got = reader.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == i as u8),
        "bytes in order"
    );
    println!(
        "mtty socket console guest->host: {N} bytes in {secs:.3} s = {:.0} B/s",
        N as f64 / secs
    );
}
