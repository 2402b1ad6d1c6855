//! The server's connection threads and its polling: connections reuse the pool's threads, a
//! polling server answers as a blocking one does, stops polling when its client goes quiet,
//! and does not refuse clients for connections whose clients have gone.

use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mdev::device_set::DeviceSets;
use mdev::wire::{Command, RegionAccessMsg, VersionMsg};
use mdev_tests::probe_device::{serve_probe, ServedProbe};
use mdev_tests::raw_client::RawClient;
use mdev_tests::{init_logging, wait_until, HookLog, ProbeOptions, ScratchDir};
use vfio_user::Client;
use vm_memory::ByteValued;

/// One thread of this process: its name and the CPU time it has used (clock ticks).
struct Task {
    name: String,
    ticks: u64,
}

/// Every thread of this process.
fn tasks() -> Vec<Task> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path();
        let name = std::fs::read_to_string(path.join("comm")).ok()?;
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // The fields after the command name (which is in parentheses and may hold spaces):
        // state is field 3, utime field 14, stime field 15.
        let after = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Task {
            name: name.trim().to_string(),
            ticks: utime + stime,
        })
    })
    .collect()
}

/// CPU time (clock ticks) used so far by the threads of the server of device `name`.
fn server_ticks(name: &str) -> u64 {
    let names = [format!("conn#{name}"), format!("accept-{name}")];
    tasks()
        .iter()
        .filter(|t| names.iter().any(|n| n.starts_with(&t.name)))
        .map(|t| t.ticks)
        .sum()
}

/// A probe device named `name` served from a scratch directory named `dir`; the directory
/// and the device sets live as long as the first two values.
fn probe(dir: &str, name: &str) -> (ScratchDir, DeviceSets, ServedProbe) {
    init_logging();
    let dir = ScratchDir::new(dir);
    let sets = DeviceSets::new();
    let served = serve_probe(
        &sets,
        &dir,
        name,
        &HookLog::default(),
        ProbeOptions::default(),
        None,
    );
    (dir, sets, served)
}

#[test]
fn a_polling_server_stops_polling_when_its_client_goes_quiet() {
    let (_dir, _sets, s) = probe("idle-poll", "idlepoll");
    // A generous bound: a server that kept polling would use a whole CPU second below.
    s.server.set_poll(Duration::from_millis(2));
    assert_eq!(s.server.poll(), Duration::from_millis(2));
    let mut c = Client::new(&s.path).expect("client");
    let mut buf = [0u8; 4];
    for i in 0..2000u32 {
        c.region_write(0, 0x20, &i.to_le_bytes()).expect("write");
        c.region_read(0, 0x20, &mut buf).expect("read");
        assert_eq!(
            u32::from_le_bytes(buf),
            i,
            "a polling server answers in order"
        );
    }
    // The last request's window (2 ms at most) runs out; then the connection blocks. This is
    // a check that polling stops, not a timing of anything: one second of idling must cost
    // (nearly) nothing, where polling on would cost the whole second.
    std::thread::sleep(Duration::from_millis(50));
    let before = server_ticks("idlepoll");
    std::thread::sleep(Duration::from_secs(1));
    let used = server_ticks("idlepoll") - before;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    assert!(
        used * 10 <= hz,
        "the idle server used {used} ticks (of {hz} per second) in one second"
    );
    // Still served after the idle second.
    c.region_read(0, 0x20, &mut buf).expect("read after idling");
    assert_eq!(u32::from_le_bytes(buf), 1999);
}

#[test]
fn one_connection_after_another_reuses_the_pool_threads() {
    let (_dir, _sets, s) = probe("pool-reuse", "poolreuse");
    let pool_threads = || {
        tasks()
            .iter()
            .filter(|t| "conn#poolreuse".starts_with(&t.name))
            .count()
    };
    for _ in 0..50 {
        let c = Client::new(&s.path).expect("client");
        drop(c);
        wait_until("the connection to end", || s.server.connections() == 0);
    }
    let n = pool_threads();
    assert!(
        (1..=5).contains(&n),
        "{n} pool threads after 50 connections one after another"
    );
    assert_eq!(
        s.server
            .stats()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
}

/// Pins the calling thread (and the threads it starts from now on) to the first CPU it may
/// use.
fn pin_to_one_cpu() {
    // SAFETY: an all-zero cpu_set_t is an empty set; the calls get its size and a valid
    // pointer to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut set), 0);
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("a CPU this thread may use");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size, &set), 0);
    }
}

#[test]
fn clients_one_after_another_on_the_servers_cpu_are_not_refused() {
    // Client and server share one CPU, as a probe run again and again on a busy host does.
    // Each client negotiates, asks one thing and goes. A server thread that polled for the
    // next request waits longest for the CPU, so the client runs ahead of the threads that
    // would see its earlier connections end; those must not count against the limit.
    pin_to_one_cpu();
    let (_dir, _sets, s) = probe("pool-probes", "poolprobes");
    s.server
        .set_poll(Duration::from_micros(mdev::server::DEFAULT_POLL_US));
    s.server.set_max_connections(4);
    let n = 2000;
    let mut failed = 0;
    for _ in 0..n {
        let mut c = RawClient::connect(&s.path);
        c.send(Command::Version as u16, 0, &version_payload(), &[]);
        if c.read_reply().is_none_or(|r| r.errno().is_some()) {
            failed += 1;
            continue;
        }
        // struct vfio_device_info: argsz (its own 16 bytes), then flags, regions, irqs.
        let mut info = [0u8; 16];
        info[..4].copy_from_slice(&16u32.to_le_bytes());
        c.send(Command::DeviceGetInfo as u16, 0, &info, &[]);
        if c.read_reply().is_none_or(|r| r.errno().is_some()) {
            failed += 1;
        }
    }
    let refused = s.server.stats().refused.load(Ordering::Relaxed);
    assert_eq!(
        (failed, refused),
        (0, 0),
        "{failed} of {n} clients failed, {refused} refused as over the limit of 4"
    );
    wait_until("every connection to end", || s.server.connections() == 0);
}

#[test]
fn a_client_that_stops_reading_and_shuts_down_its_sending_side_still_holds_its_slot() {
    let (_dir, _sets, s) = probe("pool-halfclosed", "poolhalf");
    s.server.set_max_connections(1);
    let mut a = RawClient::connect(&s.path);
    a.send(Command::Version as u16, 0, &version_payload(), &[]);
    assert!(a.read_reply().is_some_and(|r| r.errno().is_none()));
    // 100 reads of the whole 4 KiB register BAR, whose replies (400 KiB, more than a socket
    // buffer holds) are never read: the serving thread ends up blocked sending them. Then
    // only the sending side goes.
    let read = RegionAccessMsg {
        offset: 0,
        region: 0,
        count: 4096,
    };
    for _ in 0..100 {
        a.send(Command::RegionRead as u16, 0, read.as_slice(), &[]);
    }
    a.sock.shutdown(Shutdown::Write).expect("shutdown");
    // The thread is held by this client still: a second one is over the limit, closed at
    // once (before it could even send VERSION, which would then fail with EPIPE).
    let mut b = RawClient::connect(&s.path);
    assert!(b.read_reply().is_none(), "a second client was taken on");
    assert_eq!(s.server.stats().refused.load(Ordering::Relaxed), 1);
    // Once the first client has gone for good, its slot is free again.
    drop(a);
    wait_until("the first connection to end", || {
        s.server.connections() == 0
    });
    let mut c = RawClient::connect(&s.path);
    c.send(Command::Version as u16, 0, &version_payload(), &[]);
    assert!(c.read_reply().is_some_and(|r| r.errno().is_none()));
}

/// VERSION 0.1 with the capabilities a client sends.
fn version_payload() -> Vec<u8> {
    let v = VersionMsg { major: 0, minor: 1 };
    let mut payload = v.as_slice().to_vec();
    payload.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":8}}\0");
    payload
}
