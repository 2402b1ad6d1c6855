//! Framework benchmarks, printed (never asserted):
//! - a trapped 4-byte REGION_READ / REGION_WRITE round trip through the `vfio_user` client,
//!   next to a raw UNIX-socket ping-pong of the same message sizes, and their ratio
//!   (target: at most 1.3x);
//! - an interrupt round trip (a write raising MSI, the client's eventfd seen, a write lowering
//!   it) with one and with two connections routing the vector: what per-connection delivery
//!   threads cost;
//! - the same round trip with the server's threads under their seccomp filters
//!   (`mdev::confine`, as `serve` runs them by default) against unfiltered, and the ratio;
//! - the cost of one open + close of a device in a set of 1 and in a set of 64 devices
//!   (target: flat).
//!
//! Run with `cargo bench -p mdev-tests --bench framework`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mdev::confine::{self, Policy, SeccompMode};
use mdev::device_set::{DeviceSetKey, DeviceSets};
use mdev::server::DeviceServer;
use mdev::{ConnectionId, OwnerId};
use mdev_tests::probe_device::REG_IRQ_LINE;
use mdev_tests::{HookLog, ProbeDevice, ProbeOptions, ScratchDir};
use vfio_user::Client;

const ITERS: u32 = 20_000;

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n)
}

/// A raw ping-pong: the client sends `req` bytes and waits for `resp` bytes, the peer thread
/// reads `req` and answers `resp`, as a minimal server would.
fn raw_ping_pong(req: usize, resp: usize) -> f64 {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        let mut inb = vec![0u8; req];
        let out = vec![0u8; resp];
        while b.read_exact(&mut inb).is_ok() {
            if b.write_all(&out).is_err() {
                break;
            }
        }
    });
    let out = vec![1u8; req];
    let mut inb = vec![0u8; resp];
    for _ in 0..1000 {
        a.write_all(&out).unwrap();
        a.read_exact(&mut inb).unwrap();
    }
    let start = Instant::now();
    for _ in 0..ITERS {
        a.write_all(&out).unwrap();
        a.read_exact(&mut inb).unwrap();
    }
    let us = per_op(start.elapsed(), ITERS);
    drop(a);
    t.join().unwrap();
    us
}

fn region_round_trips(dir: &ScratchDir) -> (f64, f64) {
    let sets = DeviceSets::new();
    let h = sets.register(
        "bench",
        Box::new(ProbeDevice::new(
            "bench",
            HookLog::default(),
            ProbeOptions::default(),
        )),
        None,
    );
    let path = dir.join(&format!("bench-{}.sock", confine::mode()));
    let _server = DeviceServer::bind(&path, h).unwrap();
    let mut c = Client::new(&path).unwrap();
    let mut buf = [0u8; 4];
    for _ in 0..1000 {
        c.region_read(0, 0x20, &mut buf).unwrap();
    }
    let start = Instant::now();
    for _ in 0..ITERS {
        c.region_read(0, 0x20, &mut buf).unwrap();
    }
    let read = per_op(start.elapsed(), ITERS);
    let start = Instant::now();
    for i in 0..ITERS {
        c.region_write(0, 0x20, &i.to_le_bytes()).unwrap();
    }
    let write = per_op(start.elapsed(), ITERS);
    (read, write)
}

/// An interrupt round trip: a 4-byte write raising the line (MSI), then waiting on the
/// client's eventfd, then a write lowering it. `listeners` connections route the vector
/// (each gets its own delivery thread); the measuring one waits for its own eventfd.
fn interrupt_round_trip(dir: &ScratchDir, listeners: usize) -> f64 {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let sets = DeviceSets::new();
    let h = sets.register(
        "irqbench",
        Box::new(ProbeDevice::new(
            "irqbench",
            HookLog::default(),
            ProbeOptions::default(),
        )),
        None,
    );
    let path = dir.path().join(format!("irq{listeners}.sock"));
    let _server = DeviceServer::bind(&path, h).unwrap();
    // DATA_EVENTFD | ACTION_TRIGGER on MSI vector 0.
    let route = |c: &mut Client, e: &EventFd| c.set_irqs(1, 0x24, 0, 1, &[e.as_raw_fd()]).unwrap();
    let mut others = Vec::new();
    for _ in 1..listeners {
        let mut c = Client::new(&path).unwrap();
        let e = EventFd::new(EFD_NONBLOCK).unwrap();
        route(&mut c, &e);
        others.push((c, e));
    }
    let mut c = Client::new(&path).unwrap();
    let efd = EventFd::new(0).unwrap();
    route(&mut c, &efd);
    let n = ITERS / 4;
    let one = |c: &mut Client| {
        c.region_write(0, REG_IRQ_LINE, &1u32.to_le_bytes())
            .unwrap();
        mdev_tests::wait_event(&efd);
        c.region_write(0, REG_IRQ_LINE, &0u32.to_le_bytes())
            .unwrap();
    };
    for _ in 0..500 {
        one(&mut c);
    }
    let start = Instant::now();
    for _ in 0..n {
        one(&mut c);
    }
    per_op(start.elapsed(), n)
}

fn open_close_cost(set_size: usize) -> f64 {
    let sets = DeviceSets::new();
    let log = HookLog::default();
    let handles: Vec<_> = (0..set_size)
        .map(|i| {
            let name = format!("d{i}");
            sets.register(
                &name,
                Box::new(ProbeDevice::new(
                    &name,
                    log.clone(),
                    ProbeOptions::default(),
                )),
                Some(DeviceSetKey::from("bus")),
            )
        })
        .collect();
    // Keep the other members open, as a busy set would be.
    for (i, h) in handles.iter().enumerate().skip(1) {
        h.open(ConnectionId(1_000_000 + i as u64), OwnerId(1))
            .unwrap();
    }
    let h = &handles[0];
    let n = 20_000u32;
    let start = Instant::now();
    for i in 0..n {
        let c = ConnectionId(u64::from(i));
        h.open(c, OwnerId(2)).unwrap();
        h.close(c);
    }
    per_op(start.elapsed(), n) * 1000.0
}

fn main() {
    let dir = ScratchDir::new("bench");
    // REGION_READ: 16-byte header + 16-byte access struct out; + 4 data bytes back.
    let raw_read = raw_ping_pong(32, 36);
    // REGION_WRITE: 32 + 4 out; 32 back.
    let raw_write = raw_ping_pong(36, 32);
    let (read, write) = region_round_trips(&dir);
    println!("trapped 4-byte REGION_READ round trip:  {read:7.2} us   raw ping-pong {raw_read:6.2} us   ratio {:.2}x (target <= 1.3x)", read / raw_read);
    println!("trapped 4-byte REGION_WRITE round trip: {write:7.2} us   raw ping-pong {raw_write:6.2} us   ratio {:.2}x (target <= 1.3x)", write / raw_write);
    let irq1 = interrupt_round_trip(&dir, 1);
    let irq2 = interrupt_round_trip(&dir, 2);
    println!("interrupt round trip (raise, eventfd seen, lower), 1 connection routed: {irq1:7.2} us   {:.2}x two trapped writes", irq1 / (2.0 * write));
    println!("interrupt round trip, 2 connections routed (each its own delivery):  {irq2:7.2} us   {:.2}x one connection", irq2 / irq1);
    // The filter's cost: servers started after `configure` confine their listener and
    // connection threads; the client (this thread) stays unfiltered. Rounds alternate
    // unfiltered and filtered servers and the best of each is kept, so that load from
    // elsewhere on the machine does not pass for the filter's cost.
    let mut best = [(f64::MAX, f64::MAX); 2];
    for _ in 0..5 {
        for (slot, mode) in [SeccompMode::Off, SeccompMode::On].into_iter().enumerate() {
            confine::configure(Policy::new(mode)).expect("configure");
            let (read, write) = region_round_trips(&dir);
            best[slot] = (best[slot].0.min(read), best[slot].1.min(write));
        }
    }
    let [(off_read, off_write), (on_read, on_write)] = best;
    println!("trapped REGION_READ,  seccomp filter on vs off (best of 5): {on_read:7.2} us vs {off_read:6.2} us   ratio {:.3}x", on_read / off_read);
    println!("trapped REGION_WRITE, seccomp filter on vs off (best of 5): {on_write:7.2} us vs {off_write:6.2} us   ratio {:.3}x", on_write / off_write);
    let one = open_close_cost(1);
    let many = open_close_cost(64);
    println!("open+close (first/last, hooks run) in a set of  1: {one:8.1} ns");
    println!("open+close (first/last, hooks run) in a set of 64: {many:8.1} ns   ratio {:.2}x (target: flat)", many / one);
}
