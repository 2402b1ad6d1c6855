//! The vfio-user commands, driven by the `vfio_user` crate's client: negotiation, regions,
//! config space, BAR sizing, shared-memory BARs, interrupts, DMA and reset.

use std::os::fd::AsRawFd;

use mdev::device_set::DeviceSets;
use mdev::region::CONFIG_REGION_INDEX;
use mdev::server::DeviceServer;
use mdev::{IrqIndex, SharedMemory};
use mdev_tests::probe_device::{
    serve_probe, MEM_BAR_SIZE, PROBE_DEVICE, PROBE_VENDOR, REG_BAR_SIZE, REG_IRQ_LINE,
};
use mdev_tests::{
    assert_no_event, init_logging, wait_event, wait_until, HookLog, ProbeDevice, ProbeOptions,
    ScratchDir,
};
use vfio_user::Client;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DATA_EVENTFD_TRIGGER: u32 = 0x24;
const DATA_NONE_TRIGGER: u32 = 0x21;
const DATA_NONE_UNMASK: u32 = 0x11;

fn serve(dir: &ScratchDir, log: &HookLog) -> (DeviceServer, std::path::PathBuf) {
    let s = serve_probe(
        &DeviceSets::new(),
        dir,
        "dev",
        log,
        ProbeOptions::default(),
        None,
    );
    (s.server, s.path)
}

fn cfg_read32(c: &mut Client, off: u64) -> u32 {
    let mut v = [0u8; 4];
    c.region_read(CONFIG_REGION_INDEX, off, &mut v).unwrap();
    u32::from_le_bytes(v)
}

#[test]
fn a_client_enumerates_regions_and_reads_identity() {
    init_logging();
    let dir = ScratchDir::new("enum");
    let (_s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    assert_eq!(c.region(0).unwrap().size, REG_BAR_SIZE);
    assert_eq!(c.region(1).unwrap().size, 0, "unimplemented BAR has size 0");
    assert_eq!(c.region(CONFIG_REGION_INDEX).unwrap().size, 256);
    let bar2 = c.region(2).unwrap();
    assert_eq!(bar2.size, MEM_BAR_SIZE);
    assert!(bar2.file_offset.is_some(), "shared BAR comes with its fd");
    assert_eq!(bar2.sparse_areas.len(), 1);
    assert_eq!(bar2.sparse_areas[0].size, MEM_BAR_SIZE);
    let id = cfg_read32(&mut c, 0);
    assert_eq!(id, u32::from(PROBE_VENDOR) | u32::from(PROBE_DEVICE) << 16);
    let intx = c.get_irq_info(0).unwrap();
    assert_eq!(intx.count, 1);
    let msi = c.get_irq_info(1).unwrap();
    assert_eq!(msi.count, 1);
    assert_eq!(c.get_irq_info(2).unwrap().count, 0);
}

#[test]
fn bar_sizing_through_config_space() {
    init_logging();
    let dir = ScratchDir::new("sizing");
    let (_s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    // BAR0 (32-bit), then BAR2's low and high dwords (64-bit); BAR1 is absent.
    for (bar, expect) in [
        (0u64, !(REG_BAR_SIZE as u32 - 1)),
        (8, !(MEM_BAR_SIZE as u32 - 1) | 0xc),
        (12, 0xffff_ffff),
    ] {
        let off = 0x10 + bar;
        c.region_write(CONFIG_REGION_INDEX, off, &u32::MAX.to_le_bytes())
            .unwrap();
        let v = cfg_read32(&mut c, off);
        match bar {
            0 => assert_eq!(v, expect, "32-bit memory BAR size mask"),
            8 => assert_eq!(v, expect, "64-bit prefetchable BAR low half"),
            _ => assert_eq!(v, expect, "64-bit BAR high half: size below 4 GiB"),
        }
    }
    c.region_write(CONFIG_REGION_INDEX, 0x14, &u32::MAX.to_le_bytes())
        .unwrap();
    assert_eq!(cfg_read32(&mut c, 0x14), 0, "an absent BAR sizes to zero");
    c.region_write(CONFIG_REGION_INDEX, 0x20, &u32::MAX.to_le_bytes())
        .unwrap();
    assert_eq!(
        cfg_read32(&mut c, 0x20),
        !(16u32 - 1) | 1,
        "I/O BAR size mask with the I/O bit"
    );
    c.region_write(CONFIG_REGION_INDEX, 0x10, &0xfebf_0000u32.to_le_bytes())
        .unwrap();
    assert_eq!(cfg_read32(&mut c, 0x10), 0xfebf_0000);
}

#[test]
fn a_shared_bar_written_through_the_mapping_reads_back_through_messages() {
    init_logging();
    let dir = ScratchDir::new("mmap");
    let (_s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    let region = c.region(2).unwrap();
    let fo = region.file_offset.as_ref().unwrap();
    let file = fo.file().try_clone().unwrap();
    let mapped = SharedMemory::from_sealed_file(file, MEM_BAR_SIZE as usize).unwrap();
    mapped.write(0x1234, b"through the mapping").unwrap();
    let mut back = [0u8; 19];
    c.region_read(2, 0x1234, &mut back).unwrap();
    assert_eq!(&back, b"through the mapping");
    c.region_write(2, 0x8000, b"by message").unwrap();
    let mut seen = [0u8; 10];
    mapped.read(0x8000, &mut seen).unwrap();
    assert_eq!(&seen, b"by message");
}

#[test]
fn intx_is_delivered_automasked_and_redelivered_on_unmask() {
    init_logging();
    let dir = ScratchDir::new("intx");
    let (s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(0, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    c.region_write(0, REG_IRQ_LINE, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(wait_event(&efd), 1);
    assert!(s.handle().interrupts().intx_masked());
    let status = cfg_read32(&mut c, 4) >> 16;
    assert_ne!(
        status & 0x8,
        0,
        "interrupt status bit set while the line is high"
    );
    c.set_irqs(0, DATA_NONE_UNMASK, 0, 1, &[]).unwrap();
    assert_eq!(
        wait_event(&efd),
        1,
        "line still high: delivered again on unmask"
    );
    c.region_write(0, REG_IRQ_LINE, &0u32.to_le_bytes())
        .unwrap();
    c.set_irqs(0, DATA_NONE_UNMASK, 0, 1, &[]).unwrap();
    assert_no_event(s.handle().interrupts(), &efd, "line low: nothing more");
    c.set_irqs(0, DATA_NONE_TRIGGER, 0, 0, &[]).unwrap();
    assert_eq!(
        s.handle().interrupts().active(),
        None,
        "count 0 + DATA_NONE disables the index"
    );
}

#[test]
fn msi_is_delivered_on_its_eventfd() {
    init_logging();
    let dir = ScratchDir::new("msi");
    let (s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(1, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    c.region_write(0, REG_IRQ_LINE, &1u32.to_le_bytes())
        .unwrap();
    assert_eq!(wait_event(&efd), 1);
    assert_eq!(s.handle().interrupts().delivered(IrqIndex::Msi), 1);
}

#[test]
fn dma_maps_with_and_without_fd_are_recorded_and_released() {
    init_logging();
    let dir = ScratchDir::new("dma");
    let (s, path) = serve(&dir, &HookLog::default());
    let mut c = Client::new(&path).unwrap();
    let guest = SharedMemory::new("guest-ram", 1 << 20).unwrap();
    c.dma_map(0, 0x1000_0000, 1 << 20, guest.file().as_raw_fd())
        .unwrap();
    c.dma_unmap(0x1000_0000, 1 << 20).unwrap();
    c.reset().unwrap();
    drop(c);
    wait_until("closed", || s.handle().open_count() == 0);
}

#[test]
fn the_socket_is_private_and_a_live_one_is_not_stolen() {
    use std::os::unix::fs::PermissionsExt;
    init_logging();
    let dir = ScratchDir::new("perm");
    let (s, path) = serve(&dir, &HookLog::default());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let sets = DeviceSets::new();
    let h = sets.register(
        "other",
        Box::new(ProbeDevice::new(
            "other",
            HookLog::default(),
            ProbeOptions::default(),
        )),
        None,
    );
    let err = DeviceServer::bind(&path, h.clone()).err().expect("in use");
    assert_eq!(err.errno(), libc::EADDRINUSE);
    drop(s);
    // A stale socket file (no server behind it) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let again = DeviceServer::bind(&path, h).expect("stale socket replaced");
    drop(again);
}
