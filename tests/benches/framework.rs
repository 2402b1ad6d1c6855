//! Framework benchmarks, printed (never asserted):
//! - a trapped 4-byte REGION_READ / REGION_WRITE round trip from a client that sends with one
//!   `write` and reads with one `read` as the ping-pong does, next to a raw UNIX-socket
//!   ping-pong of the same message sizes and the same placement, and their ratio, and next to
//!   a ping-pong whose peer takes messages with `recvmsg` with room for fds as any vfio-user
//!   server must (medians of rounds that alternate the three): client and server on one CPU
//!   and on two, with the server's polling off and on
//!   (`DeviceServer::set_poll`), and the server's CPU time per request;
//!   targets: at most 1.05x the ping-pong on one CPU; across CPUs, polling on at most 0.6x
//!   polling off; no server CPU while idle after the last request;
//! - 1, 8 and 64 clients at once on one device: aggregate requests per second;
//! - connect + VERSION + close next to the raw ping-pong of the same placement (target: at
//!   most 2.7x, libvfio-user's ratio);
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
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mdev::confine::{self, Policy, SeccompMode};
use mdev::device_set::{DeviceSetKey, DeviceSets};
use mdev::server::DeviceServer;
use mdev::wire::{self, Header, HEADER_SIZE};
use mdev::{ConnectionId, OwnerId};
use mdev_tests::probe_device::REG_IRQ_LINE;
use mdev_tests::{HookLog, ProbeDevice, ProbeOptions, ScratchDir};
use vfio_user::Client;
use vm_memory::ByteValued;

const ITERS: u32 = 20_000;

/// Round trips measured for each placement and polling setting.
const PLACED_ITERS: u32 = 10_000;

/// The poll bound the "polling on" figures use (the default of `serve --poll-us`).
const POLL: Duration = Duration::from_micros(mdev::server::DEFAULT_POLL_US);

/// Where the client and the server threads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Both on the first CPU.
    OneCpu,
    /// Server threads on the second CPU, the client on the first.
    TwoCpus,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::OneCpu => "one CPU",
            Placement::TwoCpus => "two CPUs",
        }
    }

    /// The CPUs (of those this process may use) for the server and for the client.
    fn cpus(self, allowed: &[usize]) -> (usize, usize) {
        match (self, allowed) {
            (Placement::TwoCpus, [client, server, ..]) => (*server, *client),
            (_, [cpu, ..]) => (*cpu, *cpu),
            (_, []) => (0, 0),
        }
    }

    /// Starts the server side with `start` on its CPU (every thread it starts, now or later,
    /// inherits that), then moves the calling (client) thread to its own.
    fn place<T>(self, allowed: &[usize], start: impl FnOnce() -> T) -> T {
        let (server, client) = self.cpus(allowed);
        pin(&[server]);
        let t = start();
        pin(&[client]);
        t
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size given, written by the kernel.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(r, 0, "sched_getaffinity");
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, inside the set.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

/// Runs the calling thread (and the threads it starts from now on) on `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: an all-zero cpu_set_t is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `set` is a valid cpu_set_t; CPU_SET ignores nothing out of range as `c`
        // came from the kernel's own affinity mask.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size given; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(r, 0, "sched_setaffinity {cpus:?}");
}

/// CPU time of a clock (`CLOCK_PROCESS_CPUTIME_ID`, `CLOCK_THREAD_CPUTIME_ID`).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec the call writes.
    let r = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(r, 0, "clock_gettime");
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// CPU time used by every thread but the calling one, between `start` and `stop`: what
/// the server's threads spent while this (client) thread ran the loop.
struct OthersCpu {
    process: Duration,
    own: Duration,
}

impl OthersCpu {
    fn start() -> Self {
        OthersCpu {
            process: cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
            own: cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
        }
    }

    fn stop(&self) -> Duration {
        let process = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(self.process);
        let own = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(self.own);
        process.saturating_sub(own)
    }
}

fn per_op(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e6 / f64::from(n)
}

/// A raw ping-pong: the client sends `req` bytes and waits for `resp` bytes, the peer thread
/// reads `req` and answers `resp`, as a minimal server would.
fn raw_ping_pong(req: usize, resp: usize) -> f64 {
    raw_ping_pong_placed(req, resp, None)
}

/// [`raw_ping_pong`] with the peer and this thread placed as `placement` says.
fn raw_ping_pong_placed(req: usize, resp: usize, placement: Option<(Placement, &[usize])>) -> f64 {
    let start = move || RawPeer::start(req, resp, PeerReceive::Read);
    let mut peer = match placement {
        Some((p, allowed)) => p.place(allowed, start),
        None => start(),
    };
    peer.timed(1000);
    peer.timed(ITERS)
}

/// How a raw ping-pong's peer takes a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerReceive {
    /// `read` of the message's size, as the bare ping-pong does.
    Read,
    /// `recvmsg` with room for fds, as every vfio-user server must (a client hands fds with
    /// its messages), answered with one `send`: the floor of any such server.
    RecvMsg,
}

/// One `recvmsg` on `sock` into `buf` with room for 8 fds: bytes received, 0 at the end or
/// on an error.
///
/// Its peer never sends fds, so the control buffer is never read: this times the receive
/// call a vfio-user server makes, not fd handling (a real server takes the fds, as
/// `mdev::wire` does).
fn recvmsg_with_fds(sock: &UnixStream, buf: &mut [u8]) -> usize {
    use std::os::fd::AsRawFd;
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points to `buf` and `control`, which outlive the call; the kernel
    // writes at most their sizes.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    usize::try_from(n).unwrap_or(0)
}

/// The peer thread of a raw ping-pong (started on the calling thread's CPUs), and the
/// client's end.
struct RawPeer {
    sock: UnixStream,
    out: Vec<u8>,
    inb: Vec<u8>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RawPeer {
    fn start(req: usize, resp: usize, receive: PeerReceive) -> Self {
        let (a, mut b) = UnixStream::pair().unwrap();
        let thread = std::thread::spawn(move || {
            let mut inb = vec![0u8; req.max(4096)];
            let out = vec![0u8; resp];
            loop {
                let got = match receive {
                    PeerReceive::Read => b.read_exact(&mut inb[..req]).map_or(0, |()| req),
                    PeerReceive::RecvMsg => recvmsg_with_fds(&b, &mut inb),
                };
                if got == 0 || b.write_all(&out).is_err() {
                    break;
                }
            }
        });
        RawPeer {
            sock: a,
            out: vec![1u8; req],
            inb: vec![0u8; resp],
            thread: Some(thread),
        }
    }

    /// `n` round trips: microseconds per round trip.
    fn timed(&mut self, n: u32) -> f64 {
        let start = Instant::now();
        for _ in 0..n {
            self.sock.write_all(&self.out).unwrap();
            self.sock.read_exact(&mut self.inb).unwrap();
        }
        per_op(start.elapsed(), n)
    }
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

/// The device the placed, concurrent and connect benchmarks serve.
fn probe_server(path: &Path, name: &str, poll: Duration) -> (DeviceSets, DeviceServer) {
    let sets = DeviceSets::new();
    let h = sets.register(
        name,
        Box::new(ProbeDevice::new(
            name,
            HookLog::default(),
            ProbeOptions::default(),
        )),
        None,
    );
    let server = DeviceServer::bind(path, h).unwrap();
    server.set_poll(poll);
    (sets, server)
}

/// A client that, like the raw ping-pong, sends each request with one `write` and takes its
/// reply with one `read`: what is timed is the server, not a client library's reads (the
/// `vfio_user` crate's client reads a REGION_READ reply's header and data separately).
struct LeanClient {
    sock: UnixStream,
    buf: [u8; 256],
}

impl LeanClient {
    /// Connects and negotiates the version.
    fn open(path: &Path) -> Self {
        let mut c = LeanClient {
            sock: UnixStream::connect(path).unwrap(),
            buf: [0; 256],
        };
        c.sock.write_all(&version_message()).unwrap();
        read_reply(&mut c.sock, &mut c.buf);
        c
    }

    /// Sends `msg`, reads its reply (with one `read` when it is there whole).
    fn round_trip(&mut self, msg: &[u8]) {
        self.sock.write_all(msg).unwrap();
        read_reply(&mut self.sock, &mut self.buf);
    }
}

/// Reads one whole reply into `buf` (reading whatever has come, as often as it takes), checks
/// it is no error reply, and returns its size.
fn read_reply(sock: &mut UnixStream, buf: &mut [u8]) -> usize {
    let mut got = 0;
    loop {
        let n = sock.read(&mut buf[got..]).unwrap();
        assert!(n > 0, "the server closed the connection");
        got += n;
        if got < HEADER_SIZE {
            continue;
        }
        let h = Header::from_slice(&buf[..HEADER_SIZE]).copied().unwrap();
        if got >= h.message_size as usize {
            assert_eq!(h.flags & wire::flags::ERROR, 0, "the request failed");
            return got;
        }
    }
}

/// A 4-byte REGION_READ (32 bytes; the reply 36) or REGION_WRITE (36; the reply 32) of
/// register 0x20 of region 0.
fn region_access(write: bool) -> Vec<u8> {
    let (command, size) = if write {
        (wire::Command::RegionWrite, 36u32)
    } else {
        (wire::Command::RegionRead, 32)
    };
    let h = Header {
        message_id: 7,
        command: command as u16,
        message_size: size,
        flags: 0,
        error: 0,
    };
    let mut msg = h.as_slice().to_vec();
    msg.extend_from_slice(&0x20u64.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.extend_from_slice(&4u32.to_le_bytes());
    if write {
        msg.extend_from_slice(&1u32.to_le_bytes());
    }
    msg
}

/// Rounds the placed round trips are measured in, each ours right after the ping-pongs':
/// the figures are medians over rounds, so a drift of this VM's speed between them hits all
/// alike.
const PLACED_ROUNDS: u32 = 9;

/// One placed round trip: medians over [`PLACED_ROUNDS`] of ours (wall time and the server's
/// CPU time per request, microseconds), of the raw ping-pong's and of the fd-capable
/// ping-pong's ([`PeerReceive::RecvMsg`]), and of our ratios to them.
#[derive(Clone, Copy, Debug)]
struct Trip {
    us: f64,
    server_cpu_us: f64,
    raw_us: f64,
    ratio: f64,
    fd_us: f64,
    fd_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One round of one direction: ours (wall, server CPU), the raw ping-pong's, the fd-capable
/// ping-pong's, microseconds per round trip.
#[derive(Clone, Copy, Debug)]
struct Round {
    us: f64,
    cpu: f64,
    raw: f64,
    fd: f64,
}

impl Trip {
    fn of(rounds: &[Round]) -> Self {
        let m = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
        Trip {
            us: m(&|r| r.us),
            server_cpu_us: m(&|r| r.cpu),
            raw_us: m(&|r| r.raw),
            ratio: m(&|r| r.us / r.raw),
            fd_us: m(&|r| r.fd),
            fd_ratio: m(&|r| r.us / r.fd),
        }
    }
}

/// Trapped 4-byte read and write round trips with the server's threads and this one placed
/// as `placement` says and the server polling up to `poll`, in rounds alternating with a raw
/// and an fd-capable ping-pong of the same sizes and placement; then, with `idle` set, the
/// server's CPU time over `idle` after the last request.
fn placed_round_trips(
    dir: &ScratchDir,
    (placement, allowed): (Placement, &[usize]),
    poll: Duration,
    idle: Option<Duration>,
) -> (Trip, Trip, Option<Duration>) {
    let path = dir.join(&format!("placed-{}.sock", poll.as_micros()));
    let (_sets, server, mut peers) = placement.place(allowed, || {
        let (sets, server) = probe_server(&path, "placed", poll);
        let peers = [(32, 36), (36, 32)].map(|(req, resp)| {
            [PeerReceive::Read, PeerReceive::RecvMsg].map(|how| RawPeer::start(req, resp, how))
        });
        (sets, server, peers)
    });
    let mut c = LeanClient::open(&path);
    let msgs = [region_access(false), region_access(true)];
    for _ in 0..1000 {
        c.round_trip(&msgs[0]);
    }
    for peer in peers.iter_mut().flatten() {
        peer.timed(1000);
    }
    let n = PLACED_ITERS / PLACED_ROUNDS;
    let mut rounds = [Vec::new(), Vec::new()];
    for _ in 0..PLACED_ROUNDS {
        for ((msg, [raw, fd]), rounds) in msgs.iter().zip(&mut peers).zip(&mut rounds) {
            let raw = raw.timed(n);
            let fd = fd.timed(n);
            let cpu = OthersCpu::start();
            let start = Instant::now();
            for _ in 0..n {
                c.round_trip(msg);
            }
            rounds.push(Round {
                us: per_op(start.elapsed(), n),
                // The peers' own CPU time is not the server's: taken from our loop only.
                cpu: per_op(cpu.stop(), n),
                raw,
                fd,
            });
        }
    }
    let [read, write] = rounds.map(|r| Trip::of(&r));
    let idle_cpu = idle.map(|d| {
        // The last request's poll window (at most `poll`) runs out first.
        std::thread::sleep(poll + Duration::from_millis(10));
        let cpu = OthersCpu::start();
        std::thread::sleep(d);
        cpu.stop()
    });
    drop(c);
    drop(peers);
    server.shutdown();
    pin(allowed);
    (read, write, idle_cpu)
}

/// `clients` clients at once, each on its own connection and thread, doing trapped 4-byte
/// reads: requests per second over all of them.
fn concurrent_clients(dir: &ScratchDir, clients: usize, poll: Duration) -> f64 {
    let path = dir.join(&format!("many-{clients}-{}.sock", poll.as_micros()));
    let (_sets, server) = probe_server(&path, "many", poll);
    let each = (40_000 / clients).max(300);
    let go = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = Client::new(&path).unwrap();
            let go = go.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4];
                go.wait();
                for _ in 0..each {
                    c.region_read(0, 0x20, &mut buf).unwrap();
                }
            })
        })
        .collect();
    go.wait();
    let start = Instant::now();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    server.shutdown();
    (clients * each) as f64 / secs
}

/// A VERSION message as QEMU sends it (the capabilities JSON included).
fn version_message() -> Vec<u8> {
    let caps = b"{\"capabilities\":{\"max_msg_fds\":16,\"max_data_xfer_size\":1048576}}\0";
    let v = wire::VersionMsg { major: 0, minor: 1 };
    let h = Header {
        message_id: 1,
        command: wire::Command::Version as u16,
        message_size: u32::try_from(HEADER_SIZE + v.as_slice().len() + caps.len()).unwrap(),
        flags: 0,
        error: 0,
    };
    let mut msg = h.as_slice().to_vec();
    msg.extend_from_slice(v.as_slice());
    msg.extend_from_slice(caps);
    msg
}

/// Connect, VERSION, its reply, close: microseconds each, with every thread on one CPU; and
/// the size of the reply.
fn connect_cost(dir: &ScratchDir, allowed: &[usize], msg: &[u8], poll: Duration) -> (f64, usize) {
    let path = dir.join(&format!("connect-{}.sock", poll.as_micros()));
    let (_sets, server) = Placement::OneCpu.place(allowed, || probe_server(&path, "connect", poll));
    let mut buf = vec![0u8; 4096];
    let one = |buf: &mut [u8]| {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(msg).unwrap();
        read_reply(&mut s, buf)
    };
    let mut reply = 0;
    for _ in 0..300 {
        reply = one(&mut buf);
    }
    let n = 3000;
    let start = Instant::now();
    for _ in 0..n {
        one(&mut buf);
    }
    let us = per_op(start.elapsed(), n);
    server.shutdown();
    pin(allowed);
    (us, reply)
}

/// Rounds of the connect figures (each one connects 3300 times to each of its four).
const CONNECT_ROUNDS: usize = 5;

/// Tells the raw connect servers' sockets apart.
static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// The floor of a connection on this kernel: a minimal server takes a connection, reads `req`
/// bytes, answers `resp` and reads the close; the client is the same as [`connect_cost`]'s.
/// `threads` threads wait in `accept`: one is a server that serves a single client at a time;
/// a server that takes a second client while it serves one needs two, and then the thread
/// woken for the next client is not the one still reading the last one's close. Microseconds
/// each, every thread on one CPU.
fn raw_connect_cost(
    dir: &ScratchDir,
    allowed: &[usize],
    req: usize,
    resp: usize,
    threads: usize,
) -> f64 {
    let path = dir.join(&format!(
        "raw-connect-{}.sock",
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let listener = Arc::new(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let servers: Vec<_> = (0..threads)
        .map(|_| {
            let listener = listener.clone();
            Placement::OneCpu.place(allowed, || {
                std::thread::spawn(move || {
                    let mut inb = vec![0u8; req];
                    let out = vec![0u8; resp];
                    let mut rest = [0u8; 1];
                    while let Ok((mut s, _)) = listener.accept() {
                        if s.read_exact(&mut inb).is_err() {
                            return;
                        }
                        let _ = s.write_all(&out);
                        let _ = s.read(&mut rest);
                    }
                })
            })
        })
        .collect();
    let mut inb = vec![0u8; resp];
    let out = vec![1u8; req];
    let one = |inb: &mut [u8]| {
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&out).unwrap();
        s.read_exact(inb).unwrap();
    };
    for _ in 0..300 {
        one(&mut inb);
    }
    let n = 3000;
    let start = Instant::now();
    for _ in 0..n {
        one(&mut inb);
    }
    let us = per_op(start.elapsed(), n);
    // An empty request ends a server thread's loop: one for each.
    for _ in &servers {
        drop(UnixStream::connect(&path).unwrap());
    }
    for server in servers {
        server.join().unwrap();
    }
    pin(allowed);
    us
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

/// The trapped round trips, by placement and polling, each next to the raw ping-pong of the
/// same placement, and the targets of issue #14.
fn placed_figures(dir: &ScratchDir, allowed: &[usize]) {
    if allowed.len() < 2 {
        println!("(one CPU available: the two-CPU placement runs on one)");
    }
    let mut off_split = None;
    for placement in [Placement::OneCpu, Placement::TwoCpus] {
        for poll in [Duration::ZERO, POLL] {
            let idle = (!poll.is_zero() && placement == Placement::OneCpu)
                .then_some(Duration::from_secs(1));
            let (read, write, idle_cpu) = placed_round_trips(dir, (placement, allowed), poll, idle);
            let label = if poll.is_zero() {
                "polling off".to_string()
            } else {
                format!("polling <= {} us", poll.as_micros())
            };
            for (what, t) in [("READ ", read), ("WRITE", write)] {
                let target = match (placement, poll.is_zero(), off_split) {
                    (Placement::OneCpu, _, _) => " (target <= 1.05x)".to_string(),
                    (Placement::TwoCpus, false, Some((r, w))) => {
                        let off: f64 = if what == "READ " { r } else { w };
                        format!("; {:.2}x polling off (target <= 0.6x)", t.us / off)
                    }
                    _ => String::new(),
                };
                println!(
                    "trapped 4-byte REGION_{what} {:>8}, {label:<17}: {:7.2} us   raw ping-pong {:6.2} us   ratio {:.2}x{target}   fd-capable ping-pong {:6.2} us   ratio {:.2}x   server CPU {:6.2} us/op",
                    placement.name(),
                    t.us,
                    t.raw_us,
                    t.ratio,
                    t.fd_us,
                    t.fd_ratio,
                    t.server_cpu_us,
                );
            }
            if placement == Placement::TwoCpus && poll.is_zero() {
                off_split = Some((read.us, write.us));
            }
            if let Some(cpu) = idle_cpu {
                println!(
                    "server CPU while idle for 1 s after the last request's poll window ({label}): {} us (target 0)",
                    cpu.as_micros()
                );
            }
        }
    }
}

/// Whether `section` is to run: all do unless `MDEV_BENCH_ONLY` lists some (comma-separated:
/// placed, concurrent, connect, classic).
fn wanted(section: &str) -> bool {
    std::env::var("MDEV_BENCH_ONLY").map_or(true, |v| v.split(',').any(|s| s == section))
}

fn main() {
    mdev_tests::init_logging();
    let dir = ScratchDir::new("bench");
    let allowed = allowed_cpus();
    if wanted("placed") {
        placed_figures(&dir, &allowed);
    }
    if wanted("concurrent") {
        concurrent_figures(&dir);
    }
    if wanted("connect") {
        let version = version_message();
        for poll in [Duration::ZERO, POLL] {
            // Rounds alternate ours with the ping-pong and the floors, so that a drift of the
            // machine's speed hits all four alike; medians are printed.
            let (mut ours, mut raw, mut one, mut two) = (vec![], vec![], vec![], vec![]);
            let mut reply = 0;
            for _ in 0..CONNECT_ROUNDS {
                let (c, r) = connect_cost(&dir, &allowed, &version, poll);
                ours.push(c);
                reply = r;
                raw.push(raw_ping_pong_placed(
                    version.len(),
                    reply,
                    Some((Placement::OneCpu, &allowed)),
                ));
                pin(&allowed);
                one.push(raw_connect_cost(&dir, &allowed, version.len(), reply, 1));
                two.push(raw_connect_cost(&dir, &allowed, version.len(), reply, 2));
            }
            let (connect, raw_connect) = (median(ours), median(raw));
            let (floor, floor2) = (median(one), median(two));
            println!("connect + VERSION + close (one CPU, polling {:>2} us, medians of {CONNECT_ROUNDS} rounds): {connect:7.2} us   raw ping-pong {raw_connect:6.2} us ({} bytes out, {reply} back)   ratio {:.2}x (target <= 2.7x, libvfio-user's)   a minimal accept/answer/close server {floor:6.2} us ({:.2}x the ping-pong; ours {:.2}x it)   the same with two threads in accept {floor2:6.2} us ({:.2}x; ours {:.2}x it)", poll.as_micros(), version.len(), connect / raw_connect, floor / raw_connect, connect / floor, floor2 / raw_connect, connect / floor2);
        }
    }
    if wanted("classic") {
        classic_figures(&dir);
    }
}

/// 1, 8 and 64 clients at once, polling off and on.
fn concurrent_figures(dir: &ScratchDir) {
    for poll in [Duration::ZERO, POLL] {
        let rates: Vec<String> = [1, 8, 64]
            .into_iter()
            .map(|n| format!("{n} -> {:8.0}", concurrent_clients(dir, n, poll)))
            .collect();
        println!(
            "trapped reads/s, clients at once on one device (polling {} us): {}",
            poll.as_micros(),
            rates.join("   ")
        );
    }
}

/// The unplaced round trips, interrupts, seccomp's cost and open+close.
fn classic_figures(dir: &ScratchDir) {
    // REGION_READ: 16-byte header + 16-byte access struct out; + 4 data bytes back.
    let raw_read = raw_ping_pong(32, 36);
    // REGION_WRITE: 32 + 4 out; 32 back.
    let raw_write = raw_ping_pong(36, 32);
    let (read, write) = region_round_trips(dir);
    println!("trapped 4-byte REGION_READ round trip:  {read:7.2} us   raw ping-pong {raw_read:6.2} us   ratio {:.2}x (target <= 1.3x)", read / raw_read);
    println!("trapped 4-byte REGION_WRITE round trip: {write:7.2} us   raw ping-pong {raw_write:6.2} us   ratio {:.2}x (target <= 1.3x)", write / raw_write);
    let irq1 = interrupt_round_trip(dir, 1);
    let irq2 = interrupt_round_trip(dir, 2);
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
            let (read, write) = region_round_trips(dir);
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
