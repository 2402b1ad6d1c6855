//! Hostile clients: malformed messages get an error reply with a real errno and the stream
//! stays in sync, or the connection is closed cleanly (releasing its open); the server never
//! panics and keeps serving everyone else.

use std::os::fd::AsRawFd;

use mdev::device_set::DeviceSets;
use mdev::server::DeviceServer;
use mdev::wire::{
    self, Command, Header, RegionAccessMsg, HEADER_SIZE, MAX_DATA_XFER_SIZE, MAX_MESSAGE_SIZE,
};
use mdev_tests::open_fds::fds_named;
use mdev_tests::probe_device::serve_probe;
use mdev_tests::{init_logging, wait_until, HookLog, ProbeOptions, RawClient, ScratchDir};
use vm_memory::ByteValued;

const EINVAL: u32 = libc::EINVAL as u32;

struct Fixture {
    _dir: ScratchDir,
    server: DeviceServer,
    path: std::path::PathBuf,
    log: HookLog,
}

fn fixture() -> Fixture {
    init_logging();
    let dir = ScratchDir::new("hostile");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let served = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    let (server, path) = (served.server, served.path);
    Fixture {
        _dir: dir,
        server,
        path,
        log,
    }
}

fn access(region: u32, offset: u64, count: u32) -> Vec<u8> {
    RegionAccessMsg {
        offset,
        region,
        count,
    }
    .as_slice()
    .to_vec()
}

/// After a rejected message the same connection still answers correctly.
fn assert_in_sync(c: &mut RawClient) {
    c.write32(0, 0x20, 0x5a5a_5a5a).expect("write after error");
    assert_eq!(c.read32(0, 0x20), Ok(0x5a5a_5a5a), "stream in sync");
}

#[test]
fn bad_region_accesses_get_einval_and_the_stream_stays_in_sync() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let read = Command::RegionRead as u16;
    let write = Command::RegionWrite as u16;
    // Wrong region index.
    assert_eq!(
        c.request(read, 0, &access(99, 0, 4), &[]).errno(),
        Some(EINVAL)
    );
    assert_in_sync(&mut c);
    // An absent region.
    assert_eq!(
        c.request(read, 0, &access(1, 0, 4), &[]).errno(),
        Some(EINVAL)
    );
    // Past the end, and offset + count overflowing.
    assert_eq!(
        c.request(read, 0, &access(0, 4094, 4), &[]).errno(),
        Some(EINVAL)
    );
    assert_eq!(
        c.request(read, 0, &access(0, u64::MAX - 1, 4), &[]).errno(),
        Some(EINVAL)
    );
    // A count far beyond the transfer limit is refused before any allocation.
    assert_eq!(
        c.request(read, 0, &access(0, 0, u32::MAX), &[]).errno(),
        Some(EINVAL)
    );
    assert_eq!(
        c.request(read, 0, &access(2, 0, MAX_DATA_XFER_SIZE + 1), &[])
            .errno(),
        Some(EINVAL)
    );
    assert_in_sync(&mut c);
    // A write to a bad region has its payload consumed: still in sync.
    let mut p = access(42, 0, 8);
    p.extend_from_slice(&[0xaa; 8]);
    assert_eq!(c.request(write, 0, &p, &[]).errno(), Some(EINVAL));
    assert_in_sync(&mut c);
    // A write whose count disagrees with its payload.
    let mut p = access(0, 0, 64);
    p.extend_from_slice(&[0xbb; 8]);
    assert_eq!(c.request(write, 0, &p, &[]).errno(), Some(EINVAL));
    assert_in_sync(&mut c);
    // A payload shorter than the command's struct.
    assert_eq!(c.request(read, 0, &[1, 2, 3], &[]).errno(), Some(EINVAL));
    assert_in_sync(&mut c);
}

#[test]
fn unknown_and_unsupported_commands_get_enotsup() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let enotsup = Some(libc::ENOTSUP as u32);
    assert_eq!(c.request(99, 0, &[], &[]).errno(), enotsup);
    assert_eq!(
        c.request(Command::DmaRead as u16, 0, &[0; 16], &[]).errno(),
        enotsup
    );
    assert_eq!(
        c.request(Command::DirtyPages as u16, 0, &[0; 16], &[])
            .errno(),
        enotsup
    );
    assert_eq!(
        c.request(Command::DeviceGetRegionIoFds as u16, 0, &[0; 16], &[])
            .errno(),
        enotsup
    );
    assert_eq!(
        c.request(Command::Version as u16, 0, &[0; 4], &[]).errno(),
        Some(EINVAL),
        "VERSION twice"
    );
    assert_in_sync(&mut c);
}

#[test]
fn malformed_version_messages_are_refused_without_a_panic() {
    let f = fixture();
    for caps in [
        &b"{\"capabilities\":{}}"[..],
        b"{nope\0",
        &[0xff, 0xfe, 0x00],
    ] {
        let mut c = RawClient::connect(&f.path);
        assert_eq!(c.version(caps).errno(), Some(EINVAL), "caps {caps:?}");
        assert!(c.closed_by_server());
    }
    // Unknown capability keys are ignored.
    let mut c = RawClient::connect(&f.path);
    assert_eq!(
        c.version(b"{\"capabilities\":{\"twin_socket\":{\"supported\":true}},\"x\":1}\0")
            .errno(),
        None
    );
    drop(c);
    // A first message that is not VERSION.
    let mut c = RawClient::connect(&f.path);
    assert_eq!(
        c.request(Command::RegionRead as u16, 0, &access(0, 0, 4), &[])
            .errno(),
        Some(EINVAL)
    );
    assert!(c.closed_by_server());
    wait_until("no open left", || f.server.handle().open_count() == 0);
}

#[test]
fn sizes_that_break_framing_close_the_connection_and_release_its_open() {
    let f = fixture();
    for size in [0u32, 8, MAX_MESSAGE_SIZE + 1, u32::MAX] {
        let before = f.log.closes("dev");
        let mut c = RawClient::open(&f.path);
        let h = Header {
            message_id: 5,
            command: Command::RegionWrite as u16,
            message_size: size,
            flags: 0,
            error: 0,
        };
        c.send_raw(h.as_slice());
        let r = c.read_reply().expect("an error reply before closing");
        assert_ne!(r.errno(), None);
        assert!(c.closed_by_server(), "size {size}: connection closed");
        wait_until("open released", || f.log.closes("dev") == before + 1);
    }
    assert_in_sync(&mut RawClient::open(&f.path));
}

#[test]
fn bad_interrupt_and_dma_requests_are_einval() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let set_irqs = |flags: u32, index: u32, start: u32, count: u32| {
        wire::SetIrqsMsg {
            argsz: 20,
            flags,
            index,
            start,
            count,
        }
        .as_slice()
        .to_vec()
    };
    let cmd = Command::DeviceSetIrqs as u16;
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x3f, 0, 0, 1), &[]).errno(),
        Some(EINVAL),
        "several flags"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x1000, 0, 0, 1), &[]).errno(),
        Some(EINVAL),
        "unknown flag"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x21, 9, 0, 1), &[]).errno(),
        Some(EINVAL),
        "no such index"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x21, 0, 1, 1), &[]).errno(),
        Some(EINVAL),
        "vector past the index"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x21, 1, u32::MAX, 1), &[])
            .errno(),
        Some(EINVAL),
        "start overflows"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x24, 0, 0, 1), &[]).errno(),
        Some(EINVAL),
        "eventfd missing"
    );
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x22, 0, 0, 1), &[]).errno(),
        Some(EINVAL),
        "bool data missing"
    );
    let e1 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let e2 = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let fds = [e1.as_raw_fd(), e2.as_raw_fd()];
    assert_eq!(
        c.request(cmd, 0, &set_irqs(0x24, 0, 0, 1), &fds).errno(),
        Some(EINVAL),
        "two fds, one vector"
    );
    assert_in_sync(&mut c);

    let map = |flags: u32, address: u64, size: u64| {
        wire::DmaMapMsg {
            argsz: 32,
            flags,
            offset: 0,
            address,
            size,
        }
        .as_slice()
        .to_vec()
    };
    let dma = Command::DmaMap as u16;
    assert_eq!(
        c.request(dma, 0, &map(3, 0x1000, 0), &[]).errno(),
        Some(EINVAL),
        "empty"
    );
    assert_eq!(
        c.request(dma, 0, &map(3, u64::MAX - 10, 0x1000), &[])
            .errno(),
        Some(EINVAL),
        "wraps"
    );
    assert_eq!(
        c.request(dma, 0, &map(0x80, 0x1000, 0x1000), &[]).errno(),
        Some(EINVAL),
        "unknown flag"
    );
    assert_eq!(
        c.request(dma, 0, &map(3, 0x1000, 0x1000), &fds).errno(),
        Some(EINVAL),
        "two fds"
    );
    // A map without an fd is recorded; an overlapping one is refused.
    assert_eq!(
        c.request(dma, 0, &map(3, 0xfffc_0000, 0x40000), &[])
            .errno(),
        None
    );
    assert_eq!(
        c.request(dma, 0, &map(3, 0xfffd_0000, 0x1000), &[]).errno(),
        Some(libc::EEXIST as u32)
    );
    let unmap = wire::DmaUnmapMsg {
        argsz: 24,
        flags: 0,
        address: 0xfffc_0000,
        size: 0x1000,
    };
    assert_eq!(
        c.request(Command::DmaUnmap as u16, 0, unmap.as_slice(), &[])
            .errno(),
        Some(EINVAL),
        "splits a map"
    );
    let all = wire::DmaUnmapMsg {
        argsz: 24,
        flags: wire::DMA_UNMAP_ALL,
        address: 0,
        size: 0,
    };
    let r = c.request(Command::DmaUnmap as u16, 0, all.as_slice(), &[]);
    assert_eq!(r.errno(), None);
    assert_eq!(r.payload.len(), 24, "DMA_UNMAP reply echoes the struct");
    assert_in_sync(&mut c);
}

#[test]
fn too_many_fds_close_the_connection() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let efds: Vec<_> = (0..20)
        .map(|_| vmm_sys_util::eventfd::EventFd::new(0).unwrap())
        .collect();
    let fds: Vec<_> = efds.iter().map(|e| e.as_raw_fd()).collect();
    c.send(
        Command::DeviceSetIrqs as u16,
        0,
        wire::SetIrqsMsg {
            argsz: 20,
            flags: 0x24,
            index: 0,
            start: 0,
            count: 20,
        }
        .as_slice(),
        &fds,
    );
    let r = c.read_reply();
    assert!(r.is_none_or(|r| r.errno().is_some()));
    assert!(c.closed_by_server());
    assert_in_sync(&mut RawClient::open(&f.path));
}

#[test]
fn posted_writes_get_no_reply_even_when_they_fail() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let mut p = access(0, 0x30, 4);
    p.extend_from_slice(&7u32.to_le_bytes());
    c.send(Command::RegionWrite as u16, wire::flags::NO_REPLY, &p, &[]);
    let mut bad = access(77, 0, 4);
    bad.extend_from_slice(&[0; 4]);
    c.send(
        Command::RegionWrite as u16,
        wire::flags::NO_REPLY,
        &bad,
        &[],
    );
    // The next reply belongs to this read: nothing was sent for the posted writes.
    assert_eq!(c.read32(0, 0x30), Ok(7));
}

#[test]
fn garbage_from_one_client_never_disturbs_another() {
    let f = fixture();
    let mut good = RawClient::open(&f.path);
    good.write32(0, 0x40, 1234).unwrap();
    for i in 0..50u32 {
        let mut bad = RawClient::open(&f.path);
        let mut junk = vec![0u8; 64];
        for (j, b) in junk.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31).wrapping_add(j as u32 * 17)) as u8;
        }
        // Keep the declared size sane half the time so some junk is parsed as commands.
        if i % 2 == 0 {
            junk[4..8].copy_from_slice(&(HEADER_SIZE as u32 + 48).to_le_bytes());
        }
        bad.send_raw(&junk);
    }
    assert_eq!(good.read32(0, 0x40), Ok(1234));
    wait_until("junk connections closed", || {
        f.server.handle().open_count() == 1
    });
}

/// QEMU asks for a region's info with a bare `vfio_region_info` first and rejects a reply that
/// flags capabilities its buffer cannot hold; the server must answer with the size it needs and
/// no CAPS flag, then give the sparse-mmap capability on the retry.
#[test]
fn region_info_with_a_small_buffer_asks_for_a_retry() {
    let f = fixture();
    let mut c = RawClient::open(&f.path);
    let head = std::mem::size_of::<wire::RegionInfoMsg>() as u32;
    let ask = |argsz| wire::RegionInfoMsg {
        argsz,
        index: 2,
        ..Default::default()
    };
    let r = c.request(
        Command::DeviceGetRegionInfo as u16,
        0,
        ask(head).as_slice(),
        &[],
    );
    assert_eq!(r.errno(), None);
    let first = *wire::RegionInfoMsg::from_slice(&r.payload[..head as usize]).unwrap();
    assert!(
        first.argsz > head,
        "the reply says how much room the capability needs"
    );
    assert_eq!(
        first.flags & mdev::region::RegionFlags::CAPS.bits(),
        0,
        "no CAPS flag without room for them"
    );
    assert_eq!(first.cap_offset, 0);

    let r = c.request(
        Command::DeviceGetRegionInfo as u16,
        0,
        ask(first.argsz).as_slice(),
        &[],
    );
    let full = *wire::RegionInfoMsg::from_slice(&r.payload[..head as usize]).unwrap();
    assert_ne!(full.flags & mdev::region::RegionFlags::CAPS.bits(), 0);
    assert_eq!(full.cap_offset, head);
    assert_eq!(r.payload.len() as u32, full.argsz);
    assert_in_sync(&mut c);
}

/// A small deterministic generator (xorshift64*), so a failing sequence can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small values, sometimes values near the edges of the type.
    fn edgy(&mut self, small: u64) -> u64 {
        match self.below(8) {
            0 => u64::MAX - self.below(16),
            1 => u64::from(u32::MAX) - self.below(16),
            2 => self.next(),
            _ => self.below(small),
        }
    }
}

/// One random message: a known command with a plausible but random fixed part most of the
/// time, random bytes otherwise; random flags now and then.
fn random_message(rng: &mut Rng) -> (u16, u32, Vec<u8>) {
    let command = if rng.below(10) == 0 {
        rng.below(40) as u16
    } else {
        2 + rng.below(13) as u16
    };
    let mut payload = Vec::new();
    match command {
        9 | 10 => {
            let count = rng.edgy(64) as u32;
            let req = RegionAccessMsg {
                offset: rng.edgy(0x1_0000),
                region: rng.edgy(10) as u32,
                count,
            };
            payload.extend_from_slice(req.as_slice());
            if command == 10 && rng.below(4) != 0 {
                payload.resize(payload.len() + (count as usize).min(4096), 0xa5);
            }
        }
        5 | 7 | 8 => {
            let words = [
                24u32,
                rng.below(64) as u32,
                rng.edgy(12) as u32,
                rng.edgy(4) as u32,
                rng.edgy(4) as u32,
            ];
            for w in words {
                payload.extend_from_slice(&w.to_le_bytes());
            }
        }
        _ => {}
    }
    let limit = if rng.below(20) == 0 { 4096 } else { 24 };
    let extra = rng.below(limit);
    for _ in 0..extra {
        payload.push(rng.next() as u8);
    }
    let flags = match rng.below(16) {
        0 => wire::flags::NO_REPLY,
        1 => rng.next() as u32 & !wire::flags::TYPE_MASK,
        _ => 0,
    };
    (command, flags, payload)
}

/// Thousands of random messages from a few clients: every one that asks for a reply gets one
/// (an error or a success) or the connection is closed cleanly — never a hang, never a panic;
/// afterwards the device serves a well-behaved client and every open has been released.
/// Counts panics on every thread of this test binary (server connection threads included),
/// except those the probe device raises on purpose for the panicking-hooks test that may run
/// at the same time.
fn count_panics() -> &'static std::sync::atomic::AtomicUsize {
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The probe's hooks panic on purpose in another test of this binary.
            let asked = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|m| m.contains("panics as asked"));
            if !asked {
                PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    &PANICS
}

#[test]
fn random_messages_never_hang_panic_or_leak_an_open() {
    let panics = count_panics();
    let before = panics.load(std::sync::atomic::Ordering::SeqCst);
    let f = fixture();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut c = RawClient::open(&f.path);
    let (mut replies, mut errors, mut closes) = (0, 0, 0);
    for i in 0..4000 {
        let (command, flags, payload) = random_message(&mut rng);
        if command == Command::DeviceReset as u16
            || command == Command::Version as u16 && i % 2 == 0
        {
            continue; // a reset per message would only slow the run down; VERSION is covered above
        }
        c.send(command, flags, &payload, &[]);
        let wants_reply = flags & (wire::flags::NO_REPLY | wire::flags::TYPE_MASK) == 0;
        if !wants_reply {
            continue;
        }
        match c.next_reply() {
            Ok(Some(r)) => {
                replies += 1;
                if r.errno().is_some() {
                    errors += 1;
                }
            }
            Ok(None) => {
                closes += 1;
                c = RawClient::open(&f.path);
            }
            Err(e) => panic!(
                "message {i} (command {command}, flags {flags:#x}, {} bytes): {e}",
                payload.len()
            ),
        }
    }
    assert!(
        replies > 1000 && errors > 100,
        "the run exercised the server ({replies} replies, {errors} errors)"
    );
    assert_in_sync(&mut c);
    assert_in_sync(&mut RawClient::open(&f.path));
    drop(c);
    wait_until("every open released", || {
        f.server.handle().open_count() == 0
    });
    assert_eq!(
        f.log.opens("dev"),
        f.log.closes("dev"),
        "{closes} connections closed by the server"
    );
    let after = panics.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        after, before,
        "a thread panicked while serving random messages"
    );
}

/// A client opening connection after connection cannot make the server spawn threads without
/// bound: past the limit a new connection is closed at once, the open ones keep working, and
/// room frees up as connections close.
#[test]
fn connections_past_the_limit_are_refused_and_the_rest_keep_working() {
    let f = fixture();
    f.server.set_max_connections(4);
    let mut open: Vec<RawClient> = (0..4).map(|_| RawClient::open(&f.path)).collect();
    let mut extra = RawClient::connect(&f.path);
    assert!(extra.closed_by_server(), "the fifth connection is closed");
    assert_eq!(
        f.server
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for c in &mut open {
        assert_in_sync(c);
    }
    open.pop();
    wait_until("a slot frees up", || f.server.connections() == 3);
    let mut again = RawClient::open(&f.path);
    assert_in_sync(&mut again);
    drop((open, again));
    wait_until("every open released", || {
        f.server.handle().open_count() == 0
    });
}

#[test]
fn fds_past_the_limit_on_any_command_get_an_error_and_leave_no_fd_behind() {
    let f = fixture();
    let name = "fd-flood";
    let memfd = std::fs::File::from(
        nix::sys::memfd::memfd_create(c"fd-flood", nix::sys::memfd::MemFdCreateFlag::empty())
            .unwrap(),
    );
    let flood = vec![memfd.as_raw_fd(); wire::MAX_MSG_FDS as usize + 8];
    let dma = wire::DmaMapMsg {
        argsz: 32,
        flags: 3,
        offset: 0,
        address: 0x10_0000,
        size: 0x1000,
    };
    let info = wire::DeviceInfoMsg {
        argsz: 16,
        ..Default::default()
    };
    let version = {
        let mut v = wire::VersionMsg { major: 0, minor: 1 }.as_slice().to_vec();
        v.extend_from_slice(b"{}\0");
        v
    };
    let cases: [(&str, Command, Vec<u8>); 3] = [
        ("VERSION", Command::Version, version),
        (
            "DEVICE_GET_INFO",
            Command::DeviceGetInfo,
            info.as_slice().to_vec(),
        ),
        ("DMA_MAP", Command::DmaMap, dma.as_slice().to_vec()),
    ];
    for (what, cmd, payload) in cases {
        for _ in 0..10 {
            let mut c = if cmd == Command::Version {
                RawClient::connect(&f.path)
            } else {
                RawClient::open(&f.path)
            };
            c.send(cmd as u16, 0, &payload, &flood);
            let r = c.read_reply();
            assert!(
                r.as_ref().is_some_and(|r| r.errno().is_some()),
                "{what}: an error reply, got {:?}",
                r.map(|r| r.header)
            );
            assert!(c.closed_by_server(), "{what}: the stream cannot be trusted");
        }
        wait_until("every flooded fd closed by the server", || {
            fds_named(name) == 1
        });
    }
    wait_until("every open released", || {
        f.server.handle().open_count() == 0
    });
    assert_in_sync(&mut RawClient::open(&f.path));
}

#[test]
fn an_interrupt_eventfd_made_blocking_and_full_stalls_no_other_client() {
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
    let f = fixture();
    let mut hostile = RawClient::open(&f.path);
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let set_intx = wire::SetIrqsMsg {
        argsz: 20,
        flags: 0x24,
        index: 0,
        start: 0,
        count: 1,
    };
    let r = hostile.request(
        Command::DeviceSetIrqs as u16,
        0,
        set_intx.as_slice(),
        &[efd.as_raw_fd()],
    );
    assert_eq!(r.errno(), None);
    // The client clears O_NONBLOCK on the file description it shares with the server and
    // fills the counter: a write to it now blocks.
    // SAFETY: fcntl on an fd `efd` owns; no memory is touched.
    unsafe {
        let fl = libc::fcntl(efd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(efd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    efd.write(u64::MAX - 1).unwrap();
    // Another client, also routing INTx, raises the line again and again.
    let mut other = RawClient::open(&f.path);
    let mine = EventFd::new(EFD_NONBLOCK).unwrap();
    let r = other.request(
        Command::DeviceSetIrqs as u16,
        0,
        set_intx.as_slice(),
        &[mine.as_raw_fd()],
    );
    assert_eq!(r.errno(), None);
    let unmask = wire::SetIrqsMsg {
        flags: 0x11, // DATA_NONE | ACTION_UNMASK
        ..set_intx
    };
    for _ in 0..20 {
        other
            .write32(0, mdev_tests::probe_device::REG_IRQ_LINE, 1)
            .unwrap();
        assert_eq!(mdev_tests::wait_event(&mine), 1, "its interrupt arrives");
        other
            .write32(0, mdev_tests::probe_device::REG_IRQ_LINE, 0)
            .unwrap();
        let r = other.request(Command::DeviceSetIrqs as u16, 0, unmask.as_slice(), &[]);
        assert_eq!(r.errno(), None);
    }
    // Every kind of request still answers, for everyone.
    let info = wire::DeviceInfoMsg {
        argsz: 16,
        ..Default::default()
    };
    assert_eq!(
        other
            .request(Command::DeviceGetInfo as u16, 0, info.as_slice(), &[])
            .errno(),
        None
    );
    assert_in_sync(&mut other);
    assert_in_sync(&mut hostile);
    // The hostile client leaves (its eventfd still full and blocking): nothing stays stuck.
    drop(hostile);
    wait_until("hostile connection released", || {
        f.server.handle().open_count() == 1
    });
    other
        .write32(0, mdev_tests::probe_device::REG_IRQ_LINE, 1)
        .unwrap();
    assert_eq!(mdev_tests::wait_event(&mine), 1);
    assert_in_sync(&mut RawClient::open(&f.path));
}

#[test]
fn stalled_half_messages_are_closed_after_the_bound_and_free_their_slots() {
    let f = fixture();
    f.server
        .set_message_timeout(std::time::Duration::from_millis(300));
    let mut idle = RawClient::open(&f.path);
    let stalled: Vec<RawClient> = (0..63)
        .map(|i| {
            let mut c = RawClient::connect(&f.path);
            match i % 3 {
                // Half a VERSION header.
                0 => c.send_raw(&[0u8; HEADER_SIZE / 2]),
                // A VERSION header announcing a payload that never comes.
                1 => c.send_raw(
                    Header {
                        command: Command::Version as u16,
                        message_size: 64,
                        ..Default::default()
                    }
                    .as_slice(),
                ),
                // Nothing at all.
                _ => {}
            }
            c
        })
        .collect();
    wait_until("all 64 connections accepted", || {
        f.server.connections() == 64
    });
    // Negotiated clients may idle between messages as long as they like, and one that
    // starts a message and stalls is closed: all 63 stalled slots come free.
    wait_until("stalled connections closed", || f.server.connections() == 1);
    assert_in_sync(&mut idle);
    let mut late = RawClient::open(&f.path);
    let r = late.request(
        Command::DeviceGetInfo as u16,
        0,
        wire::DeviceInfoMsg {
            argsz: 16,
            ..Default::default()
        }
        .as_slice(),
        &[],
    );
    assert_eq!(r.errno(), None);
    // A client that stalls halfway through a later message is closed too.
    idle.send_raw(&[0u8; 5]);
    assert!(idle.closed_by_server());
    drop(stalled);
    wait_until("every open released", || {
        f.server.handle().open_count() == 1
    });
}

#[test]
fn panicking_open_and_close_hooks_cost_one_client_and_leak_no_slot() {
    init_logging();
    let dir = ScratchDir::new("hookpanic");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let opts = ProbeOptions::default();
    let served = serve_probe(&sets, &dir, "dev", &log, opts.clone(), None);
    let (server, path) = (served.server, served.path);
    server.set_max_connections(64);
    // A panicking open_device fails that client's VERSION with EIO.
    opts.panic_opens
        .store(3, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..3 {
        let mut c = RawClient::connect(&path);
        assert_eq!(c.version(b"{}\0").errno(), Some(libc::EIO as u32));
    }
    wait_until("failed opens released their slots", || {
        server.connections() == 0
    });
    assert_eq!(server.handle().open_count(), 0);
    // A panicking close_device still releases the open and the slot.
    opts.panic_closes
        .store(1, std::sync::atomic::Ordering::Relaxed);
    drop(RawClient::open(&path));
    wait_until("panicked close released", || {
        server.connections() == 0 && server.handle().open_count() == 0
    });
    // Every slot is still there: 64 clients at once all get in and work.
    let mut all: Vec<RawClient> = (0..64).map(|_| RawClient::open(&path)).collect();
    assert_eq!(server.handle().open_count(), 64);
    for c in &mut all {
        assert_in_sync(c);
    }
    drop(all);
    wait_until("all closed", || server.handle().open_count() == 0);
    assert_eq!(
        log.opens("dev"),
        log.closes("dev") + 1,
        "one close panicked"
    );
}
