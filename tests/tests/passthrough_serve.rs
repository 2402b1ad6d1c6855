//! pci-passthrough served through real vfio-user sockets, on the fake host VFIO: two edu-like
//! functions behind one bridge (one reset scope, one IOMMU group, no FLR, a BAR0 the host lets
//! be mapped, an expansion ROM), so one device set.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mdev::irq::SetIrqsFlags;
use mdev::region::{
    RegionFlags, BAR0_REGION_INDEX as BAR0, PCI_NUM_REGIONS, ROM_REGION_INDEX as ROM,
};
use mdev::server::DeviceServer;
use mdev::wire::{
    self, Command, DmaMapMsg, DmaUnmapMsg, Header, RegionInfoMsg, SetIrqsMsg, HEADER_SIZE,
};
use mdev::{DeviceSets, SharedMemory};
use mdev_tests::open_fds::{fds_on, identity};
use mdev_tests::{init_logging, wait_until, RawClient, ScratchDir};
use pci_passthrough::fake::{
    host_writes, hot_resets, Call, FakeSpec, FakeVfio, Op, FAKE_BAR0_SIZE, FAKE_ROM_SIZE,
};
use pci_passthrough::host::HostIrqSet;
use pci_passthrough::{ClientTrust, Passthrough, PciAddress};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The IOMMU group of both functions (and their bridge).
const GROUP: u32 = 7;
/// DMA_MAP / DMA_UNMAP protection bits.
const DMA_READ_WRITE: u32 = 0x3;
const IOVA: u64 = 0x4_0000;
const DMA_SIZE: u64 = 0x4000;

fn addr(dev: u8) -> PciAddress {
    PciAddress::from_devfn(0, 1, dev << 3)
}

struct Edus {
    fake: FakeVfio,
    servers: Vec<DeviceServer>,
    paths: Vec<PathBuf>,
    _dir: ScratchDir,
}

impl Edus {
    /// Both functions served with the default trust.
    fn serve(label: &str) -> Self {
        Self::serve_with(label, ClientTrust::default())
    }

    fn serve_with(label: &str, trust: ClientTrust) -> Self {
        init_logging();
        let dir = ScratchDir::new(label);
        let fake = FakeVfio::new();
        let scope = [addr(1), addr(2)];
        for a in scope {
            fake.add(FakeSpec {
                rom: true,
                bar0_mmap: true, // as vfio-pci reports a real edu's BAR0
                ..FakeSpec::sharing(a, &scope, GROUP)
            });
        }
        let passthrough = Passthrough::new(Arc::new(fake.clone()));
        let sets = DeviceSets::new();
        let mut servers = Vec::new();
        let mut paths = Vec::new();
        for a in scope {
            let (device, key) = passthrough.open_with(a, trust).expect("open");
            let handle = sets.register(&a.to_string(), Box::new(device), key);
            let path = dir.join(&format!("{a}.sock"));
            servers.push(DeviceServer::bind(&path, handle).expect("bind"));
            paths.push(path);
        }
        assert!(Arc::ptr_eq(
            servers[0].handle().set(),
            servers[1].handle().set()
        ));
        Edus {
            fake,
            servers,
            paths,
            _dir: dir,
        }
    }

    fn open_count(&self, i: usize) -> usize {
        self.servers[i].handle().open_count()
    }

    fn hot_resets(&self) -> usize {
        hot_resets(&self.fake.calls()).len()
    }
}

fn reset(c: &mut RawClient) -> Option<u32> {
    c.request(Command::DeviceReset as u16, 0, &[], &[]).errno()
}

/// A connection opened by another process (another owner, as a second QEMU would be): a
/// forked child connects, negotiates and then waits to be killed.
struct ForeignClient {
    pid: libc::pid_t,
}

impl ForeignClient {
    fn open(path: &Path) -> Self {
        // Everything the child needs is prepared here: after fork it only makes system calls.
        let caps = b"{\"capabilities\":{\"max_msg_fds\":8}}\0";
        let version = wire::VersionMsg { major: 0, minor: 1 };
        let header = Header {
            message_id: 1,
            command: Command::Version as u16,
            message_size: (HEADER_SIZE + version.as_slice().len() + caps.len()) as u32,
            flags: 0,
            error: 0,
        };
        let mut request = header.as_slice().to_vec();
        request.extend_from_slice(version.as_slice());
        request.extend_from_slice(caps);
        let path = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_bytes_with_nul();
        assert!(bytes.len() <= sun.sun_path.len(), "socket path too long");
        for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let mut ready = [0 as libc::c_int; 2];
        // SAFETY: `ready` has room for the two fds pipe() writes.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: the child runs only async-signal-safe system calls on memory prepared
        // above, then _exit()s or is killed; it never returns into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: the child's own copies of the buffers above; raw syscalls only.
            unsafe {
                let status: u8 = 'negotiate: {
                    let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                    if fd < 0
                        || libc::connect(fd, (&sun as *const libc::sockaddr_un).cast(), len) != 0
                    {
                        break 'negotiate b'c';
                    }
                    let n = libc::write(fd, request.as_ptr().cast(), request.len());
                    if n != request.len() as isize {
                        break 'negotiate b'w';
                    }
                    let mut reply = [0u8; HEADER_SIZE];
                    let mut got = 0;
                    while got < HEADER_SIZE {
                        let n = libc::read(fd, reply[got..].as_mut_ptr().cast(), HEADER_SIZE - got);
                        if n <= 0 {
                            break 'negotiate b'r';
                        }
                        got += n as usize;
                    }
                    // The reply's flags word (bytes 8..12) must not carry ERROR.
                    if reply[8] & (wire::flags::ERROR as u8) != 0 {
                        break 'negotiate b'e';
                    }
                    b'1'
                };
                libc::write(ready[1], (&status as *const u8).cast(), 1);
                loop {
                    libc::pause();
                }
            }
        }
        // SAFETY: our copy of the write end; the read end is read below and closed.
        unsafe { libc::close(ready[1]) };
        let mut status = 0u8;
        // SAFETY: reads one byte into `status`.
        let n = unsafe { libc::read(ready[0], (&mut status as *mut u8).cast(), 1) };
        // SAFETY: our fd, closed once.
        unsafe { libc::close(ready[0]) };
        let child = ForeignClient { pid };
        assert_eq!(
            (n, status),
            (1, b'1'),
            "the foreign client could not open the device"
        );
        child
    }
}

impl Drop for ForeignClient {
    fn drop(&mut self) {
        // SAFETY: `pid` is our child; it is killed and reaped exactly once.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn two_connections_share_one_device_and_the_set_resets_after_the_last() {
    let edus = Edus::serve("pt-multi");
    let mut c1 = RawClient::open(&edus.paths[0]);
    let mut c2 = RawClient::open(&edus.paths[0]);
    assert_eq!(edus.open_count(0), 2);
    assert_eq!(edus.hot_resets(), 1, "the set's first open reset it");
    c1.write32(BAR0, 0x10, 0x1234_5678).unwrap();
    assert_eq!(
        c2.read32(BAR0, 0x10),
        Ok(0x1234_5678),
        "one device behind both"
    );
    drop(c1);
    wait_until("first connection closed", || edus.open_count(0) == 1);
    assert_eq!(edus.hot_resets(), 1, "still open by the second connection");
    assert_eq!(c2.read32(BAR0, 0x10), Ok(0x1234_5678));
    drop(c2);
    wait_until("last connection closed", || edus.open_count(0) == 0);
    assert_eq!(edus.hot_resets(), 2, "the idle set is reset once");
}

#[test]
fn a_reset_is_refused_while_the_sibling_is_open_in_another_process() {
    let edus = Edus::serve("pt-reset");
    let foreign = ForeignClient::open(&edus.paths[1]);
    assert_eq!(edus.open_count(1), 1);
    assert_eq!(edus.hot_resets(), 1, "the set's first open reset it");
    let mut c = RawClient::open(&edus.paths[0]);
    assert_eq!(reset(&mut c), Some(libc::EBUSY as u32));
    assert_eq!(
        edus.hot_resets(),
        1,
        "nor did the sibling's open, nor the refusal"
    );
    drop(foreign);
    wait_until("foreign client gone", || edus.open_count(1) == 0);
    assert_eq!(
        edus.hot_resets(),
        1,
        "the set is not idle: no reset on that close"
    );
    assert_eq!(reset(&mut c), None);
    // Holding the sibling ourselves does not stand in the way either.
    let _sibling = RawClient::open(&edus.paths[1]);
    assert_eq!(reset(&mut c), None);
    let calls = edus.fake.calls();
    assert_eq!(
        hot_resets(&calls),
        [
            &Call::HotReset(addr(2), vec![GROUP]),
            &Call::HotReset(addr(1), vec![GROUP]),
            &Call::HotReset(addr(1), vec![GROUP])
        ]
    );
}

fn dma_map(c: &mut RawClient, iova: u64, fd: Option<&SharedMemory>) -> Option<u32> {
    let msg = DmaMapMsg {
        argsz: std::mem::size_of::<DmaMapMsg>() as u32,
        flags: DMA_READ_WRITE,
        offset: 0,
        address: iova,
        size: DMA_SIZE,
    };
    let fds: Vec<_> = fd.iter().map(|m| m.file().as_raw_fd()).collect();
    c.request(Command::DmaMap as u16, 0, msg.as_slice(), &fds)
        .errno()
}

#[test]
fn dma_maps_with_an_fd_reach_the_iommu_and_are_undone_by_unmap_and_disconnect() {
    let edus = Edus::serve("pt-dma");
    let ram = SharedMemory::new("client-ram", 2 * DMA_SIZE as usize).unwrap();
    let mut c = RawClient::open(&edus.paths[0]);
    assert_eq!(dma_map(&mut c, IOVA, Some(&ram)), None);
    assert_eq!(
        dma_map(&mut c, 2 * IOVA, None),
        None,
        "fd-less maps are accepted"
    );
    let only_first = BTreeMap::from([(IOVA, DMA_SIZE)]);
    assert_eq!(edus.fake.iommu(), only_first);
    // The same memory through the sibling (same client): one shared IOMMU window.
    let mut s = RawClient::open(&edus.paths[1]);
    assert_eq!(dma_map(&mut s, IOVA, Some(&ram)), None);
    assert_eq!(edus.fake.iommu(), only_first);
    let unmap = DmaUnmapMsg {
        argsz: std::mem::size_of::<DmaUnmapMsg>() as u32,
        flags: 0,
        address: IOVA,
        size: DMA_SIZE,
    };
    let r = c.request(Command::DmaUnmap as u16, 0, unmap.as_slice(), &[]);
    assert_eq!(r.errno(), None);
    assert_eq!(edus.fake.iommu(), only_first, "still used by the sibling");
    assert_eq!(dma_map(&mut c, 3 * IOVA, Some(&ram)), None);
    assert_eq!(edus.fake.iommu().len(), 2);
    drop(c);
    drop(s);
    wait_until("all closed", || {
        edus.open_count(0) + edus.open_count(1) == 0
    });
    assert!(edus.fake.iommu().is_empty(), "{:?}", edus.fake.iommu());
}

#[test]
fn set_irqs_hands_the_client_eventfd_to_the_host() {
    let edus = Edus::serve("pt-irq");
    let mut c = RawClient::open(&edus.paths[0]);
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    let msi = SetIrqsMsg {
        argsz: std::mem::size_of::<SetIrqsMsg>() as u32,
        flags: (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits(),
        index: 1,
        start: 0,
        count: 1,
    };
    let r = c.request(
        Command::DeviceSetIrqs as u16,
        0,
        msi.as_slice(),
        &[efd.as_raw_fd()],
    );
    assert_eq!(r.errno(), None);
    let calls = edus.fake.calls();
    let Some(Call::SetIrqs(
        _,
        HostIrqSet {
            index: 1,
            count: 1,
            eventfds: Some(fds),
            ..
        },
    )) = calls.last()
    else {
        panic!("MSI eventfd not forwarded: {calls:?}");
    };
    // What the host kernel would signal is the client's own eventfd.
    // SAFETY: the server keeps the forwarded fd open while the connection routes it.
    let host_side = unsafe { BorrowedFd::borrow_raw(fds[0]) };
    let mut host_side = std::fs::File::from(host_side.try_clone_to_owned().unwrap());
    host_side.write_all(&1u64.to_ne_bytes()).unwrap();
    assert_eq!(efd.read().unwrap(), 1);
}

#[test]
fn hostile_accesses_outside_the_regions_get_einval() {
    let edus = Edus::serve("pt-hostile");
    let mut c = RawClient::open(&edus.paths[0]);
    let einval = Err(libc::EINVAL as u32);
    assert_eq!(c.read32(BAR0, FAKE_BAR0_SIZE - 2), einval);
    assert_eq!(c.read32(BAR0, u64::MAX - 1), einval);
    assert_eq!(c.read32(2, 0), einval, "absent BAR");
    assert_eq!(c.read32(8, 0), einval, "absent VGA region");
    assert_eq!(c.read32(42, 0), einval);
    assert_eq!(c.read32(BAR0, 0), Ok(0), "the connection survives");
    assert_eq!(host_writes(&edus.fake.calls()), 0);
}

fn set_msi(c: &mut RawClient, efd: Option<&EventFd>) -> Option<u32> {
    let data = if efd.is_some() {
        SetIrqsFlags::DATA_EVENTFD
    } else {
        SetIrqsFlags::DATA_NONE
    };
    let msg = SetIrqsMsg {
        argsz: std::mem::size_of::<SetIrqsMsg>() as u32,
        flags: (data | SetIrqsFlags::ACTION_TRIGGER).bits(),
        index: 1,
        start: 0,
        count: u32::from(efd.is_some()),
    };
    let fds: Vec<_> = efd.iter().map(|e| e.as_raw_fd()).collect();
    c.request(Command::DeviceSetIrqs as u16, 0, msg.as_slice(), &fds)
        .errno()
}

fn host_msi_disables(fake: &FakeVfio) -> usize {
    fake.calls()
        .iter()
        .filter(|c| {
            matches!(
                c,
                Call::SetIrqs(
                    _,
                    HostIrqSet {
                        index: 1,
                        count: 0,
                        eventfds: None,
                        ..
                    }
                )
            )
        })
        .count()
}

#[test]
fn a_closing_connection_takes_its_eventfd_off_the_host_while_another_stays_open() {
    let edus = Edus::serve("pt-irq-close");
    let mut routing = RawClient::open(&edus.paths[0]);
    let mut other = RawClient::open(&edus.paths[0]);
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    assert_eq!(set_msi(&mut routing, Some(&efd)), None);
    assert_eq!(host_msi_disables(&edus.fake), 0);
    drop(routing);
    wait_until("routing connection closed", || edus.open_count(0) == 1);
    assert_eq!(
        host_msi_disables(&edus.fake),
        1,
        "the host no longer signals the closed connection's eventfd: {:?}",
        edus.fake.calls()
    );
    // The device keeps serving the other connection, which can route its own.
    let mine = EventFd::new(EFD_NONBLOCK).unwrap();
    assert_eq!(set_msi(&mut other, Some(&mine)), None);
    assert_eq!(set_msi(&mut other, None), None);
    assert_eq!(host_msi_disables(&edus.fake), 2);
}

#[test]
fn a_client_write_to_the_rom_is_refused_and_the_rom_is_readable() {
    let edus = Edus::serve("pt-rom");
    let mut c = RawClient::open(&edus.paths[0]);
    let einval = Err(libc::EINVAL as u32);
    for offset in [0, 0x100, FAKE_ROM_SIZE - 4] {
        assert_eq!(c.write32(ROM, offset, 0xdead_beef), einval, "{offset:#x}");
    }
    assert_eq!(c.read32(ROM, 0), Ok(0), "the ROM still reads (unchanged)");
    assert_eq!(c.read32(ROM, FAKE_ROM_SIZE - 4), Ok(0));
    assert_eq!(
        host_writes(&edus.fake.calls()),
        0,
        "no ROM write reached the host"
    );
}

/// DEVICE_GET_REGION_INFO for `index` with room for capabilities: the reply, its fixed part
/// (when it is not an error) and every fd that came with it.
fn region_info(c: &mut RawClient, index: u32) -> (Option<RegionInfoMsg>, Vec<File>) {
    let head = std::mem::size_of::<RegionInfoMsg>();
    let req = RegionInfoMsg {
        argsz: (head + 256) as u32,
        index,
        ..RegionInfoMsg::default()
    };
    let (reply, fds) =
        c.request_receiving_fds(Command::DeviceGetRegionInfo as u16, 0, req.as_slice());
    let info = reply
        .errno()
        .is_none()
        .then(|| *RegionInfoMsg::from_slice(&reply.payload[..head]).expect("region info"));
    (info, fds.into_iter().map(File::from).collect())
}

#[test]
fn a_default_client_receives_no_fd_with_any_region_info_and_still_reads_and_writes_bar0() {
    let edus = Edus::serve("pt-no-fd");
    let mut c = RawClient::open(&edus.paths[0]);
    let mut received = 0;
    // Every region VFIO PCI has, and two past the end (refused, with nothing attached).
    for index in 0..PCI_NUM_REGIONS + 2 {
        let (info, fds) = region_info(&mut c, index);
        received += fds.len();
        let flags = info.map_or(0, |i| i.flags);
        assert_eq!(
            flags & RegionFlags::MMAP.bits(),
            0,
            "region {index} advertises mmap"
        );
    }
    assert_eq!(
        received, 0,
        "SCM_RIGHTS fds received with region info replies"
    );
    let bar0 = region_info(&mut c, BAR0).0.expect("BAR0 info");
    assert_eq!(bar0.size, FAKE_BAR0_SIZE);
    assert_eq!(
        bar0.flags,
        (RegionFlags::READ | RegionFlags::WRITE).bits(),
        "BAR0 is trapped"
    );

    // BAR0 still works, each access forwarded to the host by the server.
    c.write32(BAR0, 0x10, 0xcafe_f00d).unwrap();
    assert_eq!(c.read32(BAR0, 0x10), Ok(0xcafe_f00d));
    assert!(edus.fake.calls().contains(&Call::Write {
        device: addr(1),
        offset: 0x10,
        data: 0xcafe_f00d_u32.to_le_bytes().to_vec(),
    }));
    let host = edus.fake.device_file(addr(1)).expect("device open");
    let mut word = [0u8; 4];
    host.read_exact_at(&mut word, 0x10).unwrap();
    assert_eq!(
        u32::from_le_bytes(word),
        0xcafe_f00d,
        "the host device has it"
    );
}

#[test]
fn a_default_client_holds_no_handle_on_the_device_after_it_disconnects() {
    let edus = Edus::serve("pt-no-handle");
    let device = identity(&edus.fake.device_memory(addr(1)).expect("device memory"));
    let servers_own = fds_on(device);
    assert_eq!(
        servers_own, 1,
        "only the fake kernel's memory: the idle server holds no device fd"
    );
    let mut c = RawClient::open(&edus.paths[0]);
    // Everything the client was ever handed, kept past its connection.
    let handed: Vec<File> = (0..PCI_NUM_REGIONS)
        .flat_map(|index| region_info(&mut c, index).1)
        .collect();
    assert_eq!(c.read32(BAR0, 0), Ok(0));
    drop(c);
    wait_until("the client's connection closed", || edus.open_count(0) == 0);
    assert_eq!(
        fds_on(device),
        servers_own,
        "nothing on the client's side still refers to the device"
    );
    assert!(
        handed.is_empty(),
        "{} fds handed to the client",
        handed.len()
    );
}

/// The opt-in grant, documented: with `--trusted-client-mmap` the region info of the BAR the
/// host lets be mapped carries the host VFIO device fd itself, and it stays with the client
/// after its connection closes (with a real device: every ioctl of it too).
#[test]
fn a_trusted_client_mmap_client_is_handed_the_host_device_fd_and_keeps_it_after_disconnecting() {
    let edus = Edus::serve_with("pt-trusted", ClientTrust::TrustedClientMmap);
    let device = identity(&edus.fake.device_memory(addr(1)).expect("device memory"));
    // The device is idle: the server holds no device fd of it.
    assert!(!edus.fake.device_open(addr(1)));
    let servers_own = fds_on(device);
    let mut c = RawClient::open(&edus.paths[0]);
    let mut granted = Vec::new();
    for index in 0..PCI_NUM_REGIONS {
        let (info, fds) = region_info(&mut c, index);
        let flags = info.map_or(0, |i| i.flags);
        if index == BAR0 {
            assert_eq!(fds.len(), 1, "one fd with BAR0's region info");
            assert_ne!(flags & RegionFlags::MMAP.bits(), 0, "BAR0 advertises mmap");
            assert_eq!(
                info.map(|i| i.offset),
                Some(0),
                "BAR0 at offset 0 of the fd"
            );
        } else {
            assert!(fds.is_empty(), "region {index} came with an fd");
            assert_eq!(flags & RegionFlags::MMAP.bits(), 0, "region {index}");
        }
        granted.extend(fds);
    }
    let [fd] = <[File; 1]>::try_from(granted).expect("one fd in all");
    assert_eq!(identity(&fd), device, "it is the host VFIO device fd");
    drop(c);
    wait_until("the client's connection closed", || edus.open_count(0) == 0);
    assert!(
        !edus.fake.device_open(addr(1)),
        "the server released its device fd"
    );
    assert_eq!(
        fds_on(device),
        servers_own + 1,
        "the client keeps its handle on the device, valid, not dangling"
    );
    // The departed client still drives the device, unseen by the server.
    let writes_seen = host_writes(&edus.fake.calls());
    fd.write_all_at(&0x0bad_cafe_u32.to_le_bytes(), 0x20)
        .unwrap();
    assert_eq!(host_writes(&edus.fake.calls()), writes_seen);
    let mut next = RawClient::open(&edus.paths[0]);
    assert_eq!(next.read32(BAR0, 0x20), Ok(0x0bad_cafe));
}

/// vfio-pci's open/close: the host device fd is opened (and the function reset) when a
/// client first opens the function, and released when its last client closes, so an idle
/// function is not held (the kernel may runtime-suspend it). The set's first open hot resets
/// the scope; a sibling's open while the set is in use does not.
#[test]
fn the_host_device_fd_is_open_only_while_a_client_holds_the_function() {
    let edus = Edus::serve("pt-host-fd");
    let (a, b) = (addr(1), addr(2));
    assert!(
        !edus.fake.device_open(a) && !edus.fake.device_open(b),
        "idle: released"
    );
    let opens_at_start = (edus.fake.device_fd_opens(a), edus.fake.device_fd_opens(b));

    let mut first = RawClient::open(&edus.paths[0]);
    assert!(edus.fake.device_open(a) && !edus.fake.device_open(b));
    assert_eq!(
        hot_resets(&edus.fake.calls()),
        [&Call::HotReset(a, vec![GROUP])],
        "the set's first open resets it"
    );
    let mut second = RawClient::open(&edus.paths[1]);
    let again = RawClient::open(&edus.paths[0]);
    assert!(edus.fake.device_open(b));
    assert_eq!(edus.hot_resets(), 1, "no reset under a client of the set");
    assert_eq!(
        (edus.fake.device_fd_opens(a), edus.fake.device_fd_opens(b)),
        (opens_at_start.0 + 1, opens_at_start.1 + 1),
        "one device fd open per first open"
    );
    assert!(first.read32(BAR0, 0).is_ok() && second.read32(BAR0, 0).is_ok());

    drop(first);
    wait_until("one of two clients of a closed", || edus.open_count(0) == 1);
    assert!(edus.fake.device_open(a), "still held by its other client");
    drop(again);
    wait_until("a closed", || edus.open_count(0) == 0);
    assert!(!edus.fake.device_open(a) && edus.fake.device_open(b));
    drop(second);
    wait_until("b closed", || edus.open_count(1) == 0);
    assert!(!edus.fake.device_open(b), "the last close releases the fd");
    assert_eq!(
        edus.hot_resets(),
        2,
        "the idle set was reset on its last close"
    );

    // A fresh client finds the device served as before (the fd is opened again).
    let mut later = RawClient::open(&edus.paths[1]);
    assert!(later.read32(BAR0, 0).is_ok());
    assert!(edus.fake.device_open(b));
}

/// A host device that cannot be opened again fails the client's open (its VERSION gets the
/// errno) and leaves nothing open; the next open, once the host allows it, works.
#[test]
fn a_host_device_that_cannot_be_opened_fails_the_open_and_leaves_it_closed() {
    let edus = Edus::serve("pt-open-fails");
    edus.fake.fail(Op::Acquire, libc::EBUSY);
    let mut c = RawClient::connect(&edus.paths[0]);
    let r = c.version(b"{}\0");
    assert_eq!(r.errno(), Some(libc::EBUSY as u32));
    assert_eq!(edus.open_count(0), 0);
    assert!(!edus.fake.device_open(addr(1)));
    edus.fake.succeed(Op::Acquire);
    let mut c = RawClient::open(&edus.paths[0]);
    assert!(c.read32(BAR0, 0).is_ok());
}
