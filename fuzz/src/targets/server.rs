//! `server`: sequences of messages on several interleaved connections, opened and closed
//! abruptly, against a live in-process server of one device: the doorbell example, mtty,
//! mdpy, mbochs, or pci-passthrough on its fake host VFIO. Each run creates the instance
//! through its driver (taking its budget), serves it on a socket, plays the sequence, closes
//! everything and removes the instance.
//!
//! Input: `[device byte][op]...`. The device byte picks the device (`% 5`: doorbell, mtty,
//! mdpy, mbochs, pci-passthrough) and its type (`/ 5`). Each op is one byte, `o`:
//!
//! | `o % 8` | op | followed by |
//! | --- | --- | --- |
//! | 0–4 | send a message on connection `(o >> 3) % live` (one is opened if none is) | fd byte, `u16` length `n` (LE), `n` bytes: header and payload |
//! | 5 | open a connection, send nothing | — |
//! | 6 | open a connection and negotiate VERSION | — |
//! | 7 | close connection `(o >> 3) % live` abruptly | — |
//!
//! The fd byte: bits 0–4 the number of fds sent with the message, bits 5–6 their
//! [`FdKind`]. A header whose size lies within the protocol's bounds is set to the message's
//! real length; one outside them is sent as it is (framing must refuse it).
//!
//! Invariants, after every message and after every sequence:
//! * each reply carries the id and command of the message it answers; a message that asks
//!   for a reply gets exactly one (a posted or non-command message gets none); a message
//!   that breaks framing, or a failed handshake, gets an error reply and then the connection
//!   is closed; the server never closes a negotiated connection otherwise;
//! * accesses reach the device only inside a region that allows them;
//! * `open_device` runs only on a first open and `close_device` only on a last close; after
//!   every connection has closed the open count is 0 and both ran equally often;
//! * the budgets (mtty ports, mdpy devices, mbochs MiB) are back at their start once the
//!   instance is removed; the fake host IOMMU holds no mapping;
//! * no fd is left open in the process, and no thread panicked.

use std::io::{ErrorKind, Read};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mdev::device::DeviceFlags;
use mdev::device_set::{DeviceHandle, DeviceSetKey, DeviceSets};
use mdev::dma::DmaMapping;
use mdev::irq::IrqSpan;
use mdev::parent::{CreateParams, MdevDriver};
use mdev::server::DeviceServer;
use mdev::wire::{self, flags, Command, Header, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_MSG_FDS};
use mdev::{ConnectionId, Device, DeviceError, Interrupts, RegionFlags, RegionInfo, SetContext};
use pci_passthrough::fake::{FakeSpec, FakeVfio};
use pci_passthrough::{ClientTrust, Passthrough, PciAddress};
use uuid::Uuid;
use vm_memory::ByteValued;

use crate::fds::{self, FdKind};

#[allow(dead_code)] // its main() is the example's, not ours
#[path = "../../../framework/examples/doorbell.rs"]
mod doorbell;

/// Connections alive at once.
const MAX_CONNECTIONS: usize = 4;
/// Messages sent per input at most.
const MAX_MESSAGES: usize = 64;
/// How long a reply (or the server noticing a close) may take before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(10);

/// The devices served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// `framework/examples/doorbell.rs`.
    Doorbell,
    /// mtty, type `mtty-1` or `mtty-2`, loopback ports.
    Mtty,
    /// mdpy, type `vga`, `xga` or `hd`.
    Mdpy,
    /// mbochs, type `small`, `medium` or `large`.
    Mbochs,
    /// pci-passthrough on the fake host VFIO.
    Passthrough,
}

impl DeviceKind {
    /// The device and the variant a device byte selects.
    pub fn from_byte(b: u8) -> (Self, u8) {
        let kind = match b % 5 {
            0 => DeviceKind::Doorbell,
            1 => DeviceKind::Mtty,
            2 => DeviceKind::Mdpy,
            3 => DeviceKind::Mbochs,
            _ => DeviceKind::Passthrough,
        };
        (kind, b / 5)
    }

    /// The device byte selecting this device (variant 0).
    pub fn byte(self) -> u8 {
        match self {
            DeviceKind::Doorbell => 0,
            DeviceKind::Mtty => 1,
            DeviceKind::Mdpy => 2,
            DeviceKind::Mbochs => 3,
            DeviceKind::Passthrough => 4,
        }
    }
}

/// What lives as long as the process: drivers with their budgets, the fake host, a socket
/// directory.
struct World {
    dir: PathBuf,
    sets: DeviceSets,
    mtty: mtty::MttyDriver,
    mdpy: mdpy::MdpyDriver,
    mbochs: mbochs::MbochsDriver,
    fake: FakeVfio,
    passthrough: Mutex<Passthrough<FakeVfio>>,
}

/// The two fake host functions: an edu-like one, and one with FLR, a ROM, a mappable BAR0
/// and four MSI vectors.
fn fake_addresses() -> [PciAddress; 2] {
    [
        PciAddress::from_devfn(0, 1, 1 << 3),
        PciAddress::from_devfn(0, 2, 2 << 3),
    ]
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("mdev-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("socket directory");
        let fake = FakeVfio::new();
        let [plain, rich] = fake_addresses();
        fake.add(FakeSpec::new(plain));
        fake.add(FakeSpec {
            flr: true,
            rom: true,
            bar0_mmap: true,
            msi_vectors: 4,
            group: 2,
            ..FakeSpec::new(rich)
        });
        let passthrough = Mutex::new(Passthrough::new(Arc::new(fake.clone())));
        World {
            dir,
            sets: DeviceSets::new(),
            mtty: mtty::MttyDriver::new(mtty::driver::DEFAULT_MAX_PORTS),
            mdpy: mdpy::MdpyDriver::new(mdpy::driver::DEFAULT_MAX_DEVICES),
            mbochs: mbochs::MbochsDriver::new(mbochs::driver::DEFAULT_MAX_MBYTES),
            fake,
            passthrough,
        }
    })
}

impl World {
    /// Units taken from every budget.
    fn budgets_used(&self) -> [u64; 3] {
        [
            self.mtty.budget().used(),
            self.mdpy.budget().used(),
            self.mbochs.pool().used(),
        ]
    }

    fn create(&self, kind: DeviceKind, variant: u8) -> (Box<dyn Device>, Option<DeviceSetKey>) {
        let from_driver = |driver: &dyn MdevDriver, types: &[&str]| {
            let ty = types[usize::from(variant) % types.len()];
            let made = driver
                .create(ty, Uuid::nil(), &CreateParams::new())
                .unwrap_or_else(|e| panic!("creating {ty}: {e}"));
            (made.device, made.set_key)
        };
        match kind {
            DeviceKind::Doorbell => (Box::new(doorbell::doorbell().expect("doorbell")), None),
            DeviceKind::Mtty => from_driver(&self.mtty, &["mtty-1", "mtty-2"]),
            DeviceKind::Mdpy => from_driver(&self.mdpy, &["vga", "xga", "hd"]),
            DeviceKind::Mbochs => from_driver(&self.mbochs, &["small", "medium", "large"]),
            DeviceKind::Passthrough => {
                let address = fake_addresses()[usize::from(variant) % 2];
                let trust = if variant & 2 != 0 {
                    ClientTrust::TrustedClientMmap
                } else {
                    ClientTrust::ProtocolOnly
                };
                let (device, key) = self
                    .passthrough
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .open_with(address, trust)
                    .expect("fake open");
                (Box::new(device), key)
            }
        }
    }
}

/// How often each lifecycle hook ran.
#[derive(Default)]
struct HookCounts {
    opens: AtomicUsize,
    closes: AtomicUsize,
}

/// A device wrapped to count its lifecycle hooks and to check that every access the server
/// lets through lies inside a region that allows it.
struct Checked {
    inner: Box<dyn Device>,
    counts: Arc<HookCounts>,
}

impl Checked {
    fn check_access(&self, region: u32, offset: u64, len: usize, need: RegionFlags) {
        assert!(
            region < self.inner.num_regions(),
            "access to region {region}"
        );
        let info: RegionInfo = self.inner.region_info(region);
        assert!(
            info.flags.contains(need),
            "{need:?} access to region {region}"
        );
        let end = offset.checked_add(len as u64);
        assert!(
            end.is_some_and(|e| e <= info.size),
            "access {offset:#x}+{len} past region {region} ({:#x} bytes)",
            info.size
        );
    }
}

impl Device for Checked {
    fn flags(&self) -> DeviceFlags {
        self.inner.flags()
    }
    fn num_regions(&self) -> u32 {
        self.inner.num_regions()
    }
    fn region_info(&self, index: u32) -> RegionInfo {
        self.inner.region_info(index)
    }
    fn interrupts(&self) -> &Arc<Interrupts> {
        self.inner.interrupts()
    }
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.check_access(region, offset, data.len(), RegionFlags::READ);
        self.inner.read(region, offset, data)
    }
    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check_access(region, offset, data.len(), RegionFlags::WRITE);
        self.inner.write(region, offset, data)
    }
    fn open_device(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        let (opens, closes) = (
            self.counts.opens.load(Ordering::SeqCst),
            self.counts.closes.load(Ordering::SeqCst),
        );
        assert_eq!(opens, closes, "open_device while the device is open");
        let r = self.inner.open_device(ctx);
        if r.is_ok() {
            self.counts.opens.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn close_device(&mut self, ctx: &SetContext) {
        let (opens, closes) = (
            self.counts.opens.load(Ordering::SeqCst),
            self.counts.closes.load(Ordering::SeqCst),
        );
        assert_eq!(opens, closes + 1, "close_device without a matching open");
        self.counts.closes.fetch_add(1, Ordering::SeqCst);
        self.inner.close_device(ctx);
    }
    fn reset(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        self.inner.reset(ctx)
    }
    fn dma_map(&mut self, owner: ConnectionId, map: &DmaMapping) -> Result<(), DeviceError> {
        self.inner.dma_map(owner, map)
    }
    fn dma_unmap(&mut self, owner: ConnectionId, map: &DmaMapping) {
        self.inner.dma_unmap(owner, map)
    }
    fn connection_closed(&mut self, owner: ConnectionId) {
        self.inner.connection_closed(owner)
    }
    fn irqs_changed(&mut self, owner: ConnectionId, span: &IrqSpan) -> Result<(), DeviceError> {
        self.inner.irqs_changed(owner, span)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Where a client connection stands, as the client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// Connected, VERSION not yet accepted.
    Fresh,
    /// Negotiated.
    Open,
}

struct Client {
    sock: UnixStream,
    stage: Stage,
}

/// A reply, or the end of the stream.
enum Answer {
    Reply(Header),
    Closed,
}

impl Client {
    fn connect(path: &std::path::Path) -> Self {
        let sock = UnixStream::connect(path).expect("connect");
        sock.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client {
            sock,
            stage: Stage::Fresh,
        }
    }

    /// The next reply (its payload read and dropped), or the end of the stream.
    fn answer(&mut self) -> Answer {
        let mut h = Header::default();
        match self.sock.read_exact(h.as_mut_slice()) {
            Ok(()) => {}
            Err(e) if closed(&e) => return Answer::Closed,
            Err(e) => panic!("no reply within {PATIENCE:?}: {e}"),
        }
        assert!(
            (HEADER_SIZE..=MAX_MESSAGE_SIZE as usize).contains(&(h.message_size as usize)),
            "reply of size {}",
            h.message_size
        );
        let mut body = vec![0u8; h.message_size as usize - HEADER_SIZE];
        self.sock.read_exact(&mut body).expect("a whole reply");
        assert_eq!(
            h.flags & flags::TYPE_MASK,
            flags::TYPE_REPLY,
            "a reply is typed as one"
        );
        if h.flags & flags::ERROR != 0 {
            assert_ne!(h.error, 0, "an error reply carries an errno");
            assert_eq!(body.len(), 0, "an error reply has no body");
        }
        Answer::Reply(h)
    }

    /// Sends `msg` with `fds` and checks what comes back. Returns false once the connection
    /// is closed.
    fn exchange(&mut self, msg: &[u8], fds: &[RawFd]) -> bool {
        let mut header = Header::default();
        header.as_mut_slice().copy_from_slice(&msg[..HEADER_SIZE]);
        let size = header.message_size;
        let breaks_framing = (size as usize) < HEADER_SIZE
            || size > MAX_MESSAGE_SIZE
            || fds.len() > MAX_MSG_FDS as usize;
        if wire::send(&self.sock, &[msg], fds).is_err() {
            // The server closed first (it may not have seen our close yet): only after a
            // reply it was owed is this wrong, and that was checked when it came.
            return false;
        }
        if breaks_framing {
            match self.answer() {
                Answer::Reply(h) => {
                    assert_ne!(
                        h.flags & flags::ERROR,
                        0,
                        "framing error answered with an error"
                    );
                    assert!(
                        [libc::E2BIG as u32, libc::EINVAL as u32].contains(&h.error),
                        "framing error errno {}",
                        h.error
                    );
                    self.expect_close("after a framing error");
                }
                Answer::Closed => panic!("framing error closed without an error reply"),
            }
            return false;
        }
        let wants_reply = match self.stage {
            // The handshake answers anything, and refuses all but a good VERSION.
            Stage::Fresh => true,
            Stage::Open => {
                header.flags & flags::TYPE_MASK == flags::TYPE_COMMAND
                    && header.flags & flags::NO_REPLY == 0
            }
        };
        if !wants_reply {
            return true;
        }
        let h = match self.answer() {
            Answer::Reply(h) => h,
            Answer::Closed => panic!(
                "{:?} connection closed instead of answering command {} id {}",
                self.stage, header.command, header.message_id
            ),
        };
        assert_eq!(
            h.message_id, header.message_id,
            "reply id matches its request"
        );
        assert_eq!(
            h.command, header.command,
            "reply command matches its request"
        );
        let failed = h.flags & flags::ERROR != 0;
        match self.stage {
            Stage::Fresh if failed => {
                self.expect_close("after a refused handshake");
                false
            }
            Stage::Fresh => {
                assert_eq!(
                    header.command,
                    Command::Version as u16,
                    "only VERSION opens"
                );
                self.stage = Stage::Open;
                true
            }
            Stage::Open => {
                assert_ne!(
                    (header.command, failed),
                    (Command::Version as u16, false),
                    "VERSION accepted twice"
                );
                true
            }
        }
    }

    fn expect_close(&mut self, when: &str) {
        match self.answer() {
            Answer::Closed => {}
            Answer::Reply(h) => panic!("{when}: a stray reply {h:?} instead of the close"),
        }
    }

    /// Ends the connection cleanly: our side shut, then nothing but the end of the stream may
    /// come (a reply here answers a message that wanted none).
    fn finish(mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        self.expect_close("at the end of the sequence");
    }

    fn negotiate(&mut self) -> bool {
        let caps = b"{\"capabilities\":{\"max_msg_fds\":16}}\0";
        let mut msg = Header {
            message_id: 0x7e57,
            command: Command::Version as u16,
            message_size: (HEADER_SIZE + 4 + caps.len()) as u32,
            flags: 0,
            error: 0,
        }
        .as_slice()
        .to_vec();
        msg.extend_from_slice(wire::VersionMsg { major: 0, minor: 1 }.as_slice());
        msg.extend_from_slice(caps);
        self.exchange(&msg, &[])
    }
}

fn closed(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::UnexpectedEof || e.raw_os_error() == Some(libc::ECONNRESET)
}

/// A cursor over the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// The message of a send op: at least a header; a size within bounds is made true.
fn message(raw: &[u8]) -> Vec<u8> {
    let mut msg = raw.to_vec();
    if msg.len() < HEADER_SIZE {
        msg.resize(HEADER_SIZE, 0);
    }
    let mut header = Header::default();
    header.as_mut_slice().copy_from_slice(&msg[..HEADER_SIZE]);
    let size = header.message_size;
    if (HEADER_SIZE as u32..=MAX_MESSAGE_SIZE).contains(&size) {
        header.message_size = msg.len() as u32;
        msg[..HEADER_SIZE].copy_from_slice(header.as_slice());
    }
    msg
}

/// Waits for `cond`, failing after [`PATIENCE`].
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    let mut tries = 0u32;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // The server's threads are usually a few microseconds from done: yield first.
        tries += 1;
        if tries < 200 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input(data);
    let Some(device_byte) = input.byte() else {
        return;
    };
    let (kind, variant) = DeviceKind::from_byte(device_byte);
    let world = world();
    let pool = fds::pool();
    let panics = crate::panics::count();
    let budgets = world.budgets_used();
    let fds_before = fds::open_count();

    let counts = Arc::new(HookCounts::default());
    let (device, key) = world.create(kind, variant);
    let checked = Checked {
        inner: device,
        counts: counts.clone(),
    };
    let handle: Arc<DeviceHandle> = world.sets.register("fuzz", Box::new(checked), key);
    let path = world.dir.join("dev.sock");
    let server = DeviceServer::bind(&path, handle.clone()).expect("bind");

    let mut clients: Vec<Client> = Vec::new();
    let mut sent = 0;
    while let Some(op) = input.byte() {
        let pick = usize::from(op >> 3);
        match op % 8 {
            0..=4 => {
                let fd_byte = input.byte().unwrap_or(0);
                let len =
                    u16::from_le_bytes([input.byte().unwrap_or(0), input.byte().unwrap_or(0)]);
                let msg = message(input.bytes(usize::from(len)));
                if sent == MAX_MESSAGES {
                    break;
                }
                sent += 1;
                if clients.is_empty() {
                    clients.push(Client::connect(&path));
                }
                let kind = FdKind::from_bits(fd_byte >> 5);
                let fds = vec![pool.raw(kind); usize::from(fd_byte & 0x1f)];
                let i = pick % clients.len();
                if !clients[i].exchange(&msg, &fds) {
                    clients.remove(i);
                }
            }
            5 | 6 if clients.len() < MAX_CONNECTIONS => {
                let mut c = Client::connect(&path);
                if op % 8 == 5 || c.negotiate() {
                    clients.push(c);
                }
            }
            7 if !clients.is_empty() => {
                let i = pick % clients.len();
                drop(clients.remove(i));
            }
            _ => {}
        }
    }
    for c in clients {
        c.finish();
    }

    wait_for("every connection to close", || {
        server.connections() == 0 && handle.open_count() == 0
    });
    assert_eq!(
        counts.opens.load(Ordering::SeqCst),
        counts.closes.load(Ordering::SeqCst),
        "close_device ran once per open_device"
    );
    if kind == DeviceKind::Passthrough {
        assert!(
            world.fake.iommu().is_empty(),
            "host IOMMU mappings left: {:?}",
            world.fake.iommu()
        );
        world.fake.clear_calls();
    }
    server.shutdown();
    drop(handle);
    assert_eq!(world.budgets_used(), budgets, "budgets back at their start");
    let fds_after = fds::settle_to(fds_before, PATIENCE);
    assert_eq!(
        fds_after,
        fds_before,
        "fds left open: {:?}",
        fds::describe_open()
    );
    assert_eq!(crate::panics::count(), panics, "a thread panicked");
}
