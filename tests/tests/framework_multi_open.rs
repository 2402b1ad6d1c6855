//! The multi-open regression suite: many concurrent connections to one device, device sets
//! serializing their hooks, failures unwinding, clients dying mid-message.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use mdev::device_set::DeviceSets;
use mdev::IrqIndex;
use mdev_tests::probe_device::{serve_probe, ServedProbe, REG_IRQ_LINE};
use mdev_tests::{
    init_logging, wait_event, wait_until, HookEvent, HookLog, ProbeDevice, ProbeOptions, RawClient,
    Rendezvous, ScratchDir,
};
use vfio_user::Client;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn concurrent_opens_call_open_device_once(n: usize) {
    init_logging();
    let dir = ScratchDir::new("multi");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let s = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    let barrier = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (path, b) = (s.path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let client = Client::new(&path).expect("client");
                b.wait(); // all connected
                b.wait(); // main has checked
                drop(client);
            })
        })
        .collect();
    barrier.wait();
    assert_eq!(s.handle().open_count(), n);
    assert_eq!(
        log.opens("dev"),
        1,
        "open_device exactly once for {n} connections"
    );
    assert_eq!(log.closes("dev"), 0);
    barrier.wait();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("all connections closed", || s.handle().open_count() == 0);
    assert_eq!(log.opens("dev"), 1);
    assert_eq!(
        log.closes("dev"),
        1,
        "close_device exactly once, at the last close"
    );
}

#[test]
fn two_concurrent_connections_open_the_device_once() {
    concurrent_opens_call_open_device_once(2);
}

#[test]
fn sixteen_concurrent_connections_open_the_device_once() {
    concurrent_opens_call_open_device_once(16);
}

#[test]
fn closing_one_of_two_connections_keeps_device_state() {
    init_logging();
    let dir = ScratchDir::new("keep");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let s = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    let mut a = Client::new(&s.path).unwrap();
    a.region_write(0, 0x10, &0xfeed_f00du32.to_le_bytes())
        .unwrap();
    let mut b = Client::new(&s.path).unwrap();
    drop(a);
    wait_until("first connection closed", || s.handle().open_count() == 1);
    let mut v = [0u8; 4];
    b.region_read(0, 0x10, &mut v).unwrap();
    assert_eq!(
        u32::from_le_bytes(v),
        0xfeed_f00d,
        "register kept for the remaining connection"
    );
    b.region_read(0, 0, &mut v).unwrap();
    assert_eq!(
        u32::from_le_bytes(v),
        1,
        "device was opened once and never re-opened"
    );
    assert_eq!(
        log.closes("dev"),
        0,
        "no close_device while a connection remains"
    );
    drop(b);
    wait_until("last connection closed", || s.handle().open_count() == 0);
    assert_eq!(log.closes("dev"), 1);
}

#[test]
fn a_connection_closing_drops_only_its_own_eventfds() {
    init_logging();
    let dir = ScratchDir::new("irqown");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let s = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    let mut a = Client::new(&s.path).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    use std::os::fd::AsRawFd;
    a.set_irqs(IrqIndex::Intx as u32, 0x24, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    let b = Client::new(&s.path).unwrap();
    drop(b);
    wait_until("second connection closed", || s.handle().open_count() == 1);
    assert_eq!(
        s.handle().interrupts().active(),
        Some(IrqIndex::Intx),
        "A's eventfd survives B's close"
    );
    a.region_write(0, REG_IRQ_LINE, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(wait_event(&efd), 1, "A still receives its interrupt");
    drop(a);
    wait_until("closed", || s.handle().open_count() == 0);
    assert_eq!(
        s.handle().interrupts().active(),
        None,
        "A's eventfds dropped with A"
    );
}

#[test]
fn a_failing_open_device_leaves_the_count_at_zero_and_the_next_open_succeeds() {
    init_logging();
    let dir = ScratchDir::new("failopen");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let opts = ProbeOptions::default();
    opts.fail_opens.store(1, Ordering::Release);
    let s = serve_probe(&sets, &dir, "dev", &log, opts, None);
    let mut raw = RawClient::connect(&s.path);
    let r = raw.version(b"{}\0");
    assert_eq!(
        r.errno(),
        Some(libc::EIO as u32),
        "the open fails with open_device's error"
    );
    assert!(raw.closed_by_server());
    assert_eq!(s.handle().open_count(), 0);
    assert_eq!(log.opens("dev"), 0);
    assert_eq!(
        log.closes("dev"),
        0,
        "no close_device for an open that failed"
    );
    let c = Client::new(&s.path).expect("second open succeeds");
    assert_eq!(log.opens("dev"), 1);
    drop(c);
    wait_until("closed", || s.handle().open_count() == 0);
    assert_eq!(log.closes("dev"), 1);
}

#[test]
fn hooks_of_one_set_serialize() {
    init_logging();
    let dir = ScratchDir::new("serial");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let opts = ProbeOptions {
        hook_time: Some(Duration::from_millis(20)),
        ..Default::default()
    };
    let served: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| serve_probe(&sets, &dir, n, &log, opts.clone(), Some("bus0")))
        .collect();
    assert_eq!(served[0].handle().set().len(), 3, "one set of three");
    for _round in 0..3 {
        let threads: Vec<_> = served
            .iter()
            .map(|s| {
                let p = s.path.clone();
                std::thread::spawn(move || drop(Client::new(&p).unwrap()))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for s in &served {
            wait_until("closed", || s.handle().open_count() == 0);
        }
    }
    let ev = log.events();
    assert_eq!(ev.len(), 3 * 3 * 4);
    for pair in ev.chunks(2) {
        match (&pair[0], &pair[1]) {
            (HookEvent::OpenStart(a), HookEvent::OpenEnd(b))
            | (HookEvent::CloseStart(a), HookEvent::CloseEnd(b)) => {
                assert_eq!(a, b, "a hook of another device ran inside this one: {ev:?}")
            }
            other => panic!("hooks interleaved: {other:?} in {ev:?}"),
        }
    }
}

#[test]
fn hooks_of_different_sets_run_concurrently() {
    init_logging();
    let dir = ScratchDir::new("parallel");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let meet = Rendezvous::new(2);
    let opts = ProbeOptions {
        rendezvous: Some(meet.clone()),
        ..Default::default()
    };
    let a = serve_probe(&sets, &dir, "a", &log, opts.clone(), Some("bus1"));
    let b = serve_probe(&sets, &dir, "b", &log, opts, None);
    let (pa, pb) = (a.path.clone(), b.path.clone());
    let ta = std::thread::spawn(move || Client::new(&pa).unwrap());
    let tb = std::thread::spawn(move || Client::new(&pb).unwrap());
    let (ca, cb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(
        meet.met(),
        2,
        "both open_device hooks were running at the same time"
    );
    drop((ca, cb));
}

#[test]
fn open_close_storms_across_sets_end_consistent() {
    init_logging();
    let dir = ScratchDir::new("storm");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let served: Vec<_> = (0..6)
        .map(|i| {
            let key = format!("set{}", i % 3);
            serve_probe(
                &sets,
                &dir,
                &format!("d{i}"),
                &log,
                ProbeOptions::default(),
                Some(key.as_str()),
            )
        })
        .collect();
    let paths: Vec<_> = served.iter().map(|s| s.path.clone()).collect();
    std::thread::scope(|scope| {
        for t in 0..8usize {
            let paths = &paths;
            scope.spawn(move || {
                for i in 0..25usize {
                    let p = &paths[(t * 7 + i * 3) % paths.len()];
                    let c = Client::new(p).unwrap();
                    if i % 5 == 0 {
                        // Sometimes hold two at once.
                        let c2 = Client::new(&paths[(t + i) % paths.len()]).unwrap();
                        drop(c2);
                    }
                    drop(c);
                }
            });
        }
    });
    for (i, s) in served.iter().enumerate() {
        wait_until("storm settled", || s.handle().open_count() == 0);
        let name = format!("d{i}");
        assert_eq!(
            log.opens(&name),
            log.closes(&name),
            "{name}: every open_device has its close_device"
        );
        assert!(log.opens(&name) >= 1);
    }
}

#[test]
fn a_client_killed_mid_message_still_ends_in_close_device() {
    init_logging();
    let dir = ScratchDir::new("killed");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let s = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    // Partial header.
    let mut c = RawClient::open(&s.path);
    c.send_raw(&[9, 0, 9, 0, 40, 0]);
    drop(c);
    wait_until("closed after partial header", || log.closes("dev") == 1);
    // Partial payload.
    let mut c = RawClient::open(&s.path);
    let h = mdev::wire::Header {
        message_id: 1,
        command: 10,
        message_size: 16 + 16 + 64,
        flags: 0,
        error: 0,
    };
    use vm_memory::ByteValued;
    c.send_raw(h.as_slice());
    c.send_raw(&[0u8; 20]);
    drop(c);
    wait_until("closed after partial payload", || log.closes("dev") == 2);
    assert_eq!(log.opens("dev"), 2);
    assert_eq!(s.handle().open_count(), 0);
}

#[test]
fn shutting_the_server_down_closes_every_connection() {
    init_logging();
    let dir = ScratchDir::new("shutdown");
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let s = serve_probe(&sets, &dir, "dev", &log, ProbeOptions::default(), None);
    let clients: Vec<_> = (0..4).map(|_| Client::new(&s.path).unwrap()).collect();
    let path = s.path.clone();
    let ServedProbe { server, .. } = s;
    server.shutdown();
    assert_eq!(log.closes("dev"), 1);
    assert!(!path.exists(), "socket file removed");
    drop(clients);
}

#[test]
fn a_set_lives_as_long_as_its_devices() {
    let log = HookLog::default();
    let sets = DeviceSets::new();
    let a = sets.register(
        "a",
        Box::new(ProbeDevice::new("a", log.clone(), ProbeOptions::default())),
        Some("k".into()),
    );
    let b = sets.register(
        "b",
        Box::new(ProbeDevice::new("b", log.clone(), ProbeOptions::default())),
        Some("k".into()),
    );
    assert!(Arc::ptr_eq(a.set(), b.set()));
    assert_eq!(sets.keyed_sets(), 1);
    drop(a);
    assert_eq!(b.set().len(), 1);
    drop(b);
    assert_eq!(sets.keyed_sets(), 0, "set freed with its last device");
    let c = sets.register(
        "c",
        Box::new(ProbeDevice::new("c", log, ProbeOptions::default())),
        None,
    );
    assert!(c.set().key().is_none(), "no key: a singleton set");
}

/// A connection that ended on its own leaves the server's list (and closes its socket, which
/// is when its client sees the end of the stream) before its thread has let go of the
/// device; `shutdown` must still return only once no thread holds it, or a removed instance
/// gives its budget back some time later (found by the `server` fuzz target).
#[test]
fn shutdown_returns_only_once_no_connection_thread_holds_the_device() {
    use std::io::Read;
    init_logging();
    let dir = ScratchDir::new("shutdown-holds");
    let sets = DeviceSets::new();
    for i in 0..300 {
        let s = serve_probe(
            &sets,
            &dir,
            "dev",
            &HookLog::default(),
            ProbeOptions::default(),
            None,
        );
        let mut c = RawClient::open(&s.path);
        c.sock.shutdown(std::net::Shutdown::Write).unwrap();
        // Returns as the server's thread closes the connection: the moment to race it.
        assert_eq!(c.sock.read(&mut [0u8; 1]).unwrap(), 0);
        let handle = s.handle().clone();
        s.server.shutdown();
        assert_eq!(
            Arc::strong_count(&handle),
            1,
            "round {i}: a connection thread still holds the device after shutdown"
        );
    }
}
