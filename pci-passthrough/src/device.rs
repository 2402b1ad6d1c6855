//! One host PCI function served as an `mdev::Device`: regions forwarded to the device fd
//! (every BAR trapped by default; mmap-able BARs offered as the fd itself only to clients the
//! operator trusts, see [`ClientTrust`]), interrupts forwarded as eventfds, DMA maps given to
//! the shared IOMMU space, resets under the reset-scope rules.

use std::sync::Arc;

use log::{debug, info, warn};
use mdev::dma::DmaMapping;
use mdev::irq::{IrqSpan, PCI_NUM_IRQS};
use mdev::pci::{CommandRegister, PCI_COMMAND};
use mdev::region::{
    MmapBacking, RegionFlags, RegionInfo, SparseArea, CONFIG_REGION_INDEX, PCI_NUM_REGIONS,
    ROM_REGION_INDEX,
};
use mdev::{ConnectionId, Device, DeviceError, DeviceFlags, Interrupts, SetContext};

use crate::address::PciAddress;
use crate::client_trust::ClientTrust;
use crate::dma::IommuSpace;
use crate::host::{AffectedDevice, HostDevice, HostRegion, HostVfio};
use crate::irq::{host_layout, IrqForwarder};
use crate::reset::{open_reset, plan_device_reset, plan_hot_reset, ResetMethod, ResetState};

/// A host PCI function served over vfio-user.
pub struct PassthroughDevice<V: HostVfio> {
    address: PciAddress,
    host: Arc<V>,
    device: V::Device,
    flr: bool,
    scope: Vec<AffectedDevice>,
    regions: Vec<HostRegion>,
    interrupts: Arc<Interrupts>,
    forwarder: IrqForwarder,
    iommu: Arc<IommuSpace<V>>,
    resets: Arc<ResetState>,
    trust: ClientTrust,
}

impl<V: HostVfio> PassthroughDevice<V> {
    /// Wraps an opened host device. `scope` is its hot reset scope (empty: none), `resets`
    /// the state shared by the scope's devices, `iommu` the process's IOMMU space, `trust`
    /// what its clients receive besides protocol replies.
    pub fn new(
        host: Arc<V>,
        device: V::Device,
        scope: Vec<AffectedDevice>,
        iommu: Arc<IommuSpace<V>>,
        resets: Arc<ResetState>,
        trust: ClientTrust,
    ) -> Self {
        let info = device.info();
        let regions = (0..PCI_NUM_REGIONS.min(info.num_regions))
            .map(|i| device.region_info(i).unwrap_or_default())
            .collect();
        let layout = host_layout(&device);
        let forwarder = IrqForwarder::new(u32::try_from(layout.len()).unwrap_or(PCI_NUM_IRQS));
        // Described; the device fd is opened again by the first client (open_device).
        let mut device = device;
        device.release();
        PassthroughDevice {
            address: device.address(),
            host,
            flr: info.flr,
            scope,
            regions,
            interrupts: Arc::new(Interrupts::with_layout(&layout)),
            forwarder,
            iommu,
            resets,
            trust,
            device,
        }
    }

    /// What this function's clients are trusted with.
    pub fn client_trust(&self) -> ClientTrust {
        self.trust
    }

    /// The BARs the host lets be mapped (whole or in sparse areas). They are offered to
    /// clients for direct mmap only under [`ClientTrust::TrustedClientMmap`].
    pub fn host_mmap_able_bars(&self) -> Vec<u32> {
        (0..ROM_REGION_INDEX)
            .filter(|&i| self.host_mmap_areas(i).is_some())
            .collect()
    }

    /// The parts of BAR `index` the host lets be mapped, when there are any.
    fn host_mmap_areas(&self, index: u32) -> Option<Vec<SparseArea>> {
        let r = self.region(index).ok()?;
        if index >= ROM_REGION_INDEX || !r.flags.contains(RegionFlags::MMAP) {
            return None;
        }
        let areas = match &r.sparse {
            Some(areas) => areas.clone(),
            None => vec![SparseArea {
                offset: 0,
                size: r.size,
            }],
        };
        (!areas.is_empty()).then_some(areas)
    }

    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The host device (for direct access, e.g. a benchmark's baseline).
    pub fn host_device(&self) -> &V::Device {
        &self.device
    }

    /// Where region `index` starts in the host device fd, when it exists.
    pub fn region_offset(&self, index: u32) -> Option<u64> {
        self.region(index).ok().map(|r| r.offset)
    }

    fn region(&self, index: u32) -> Result<&HostRegion, DeviceError> {
        self.regions
            .get(index as usize)
            .filter(|r| r.size > 0)
            .ok_or(DeviceError::InvalidArgument("no such region"))
    }

    /// Where `len` bytes at `offset` of region `index` are in the host device fd; an access
    /// that does not lie wholly inside the region is refused (EINVAL), never forwarded.
    fn host_offset(&self, index: u32, offset: u64, len: usize) -> Result<u64, DeviceError> {
        let r = self.region(index)?;
        let invalid = || DeviceError::InvalidAccess {
            region: index,
            offset,
            len,
        };
        let end = offset.checked_add(len as u64).ok_or_else(invalid)?;
        if end > r.size {
            return Err(invalid());
        }
        r.offset.checked_add(offset).ok_or_else(invalid)
    }

    fn run_reset(&self, method: &ResetMethod) -> Result<(), DeviceError> {
        match method {
            ResetMethod::Function => self.device.reset()?,
            ResetMethod::Hot { groups } => {
                self.host.hot_reset(&self.device, groups)?;
                self.resets.all_reset();
            }
        }
        info!("{}: reset ({method:?})", self.address);
        Ok(())
    }

    /// Clears Bus Master so a closed device stops DMA (as the kernel's disable does).
    fn stop_bus_master(&self) {
        let Ok(config) = self.region(CONFIG_REGION_INDEX) else {
            return;
        };
        let at = config.offset + PCI_COMMAND as u64;
        let mut cmd = [0u8; 2];
        let result = self.device.read(at, &mut cmd).and_then(|()| {
            let value = u16::from_le_bytes(cmd) & !CommandRegister::BUS_MASTER.bits();
            self.device.write(at, &value.to_le_bytes())
        });
        if let Err(e) = result {
            warn!("{}: clearing bus master: {e}", self.address);
        }
    }
}

impl<V: HostVfio> Device for PassthroughDevice<V> {
    fn flags(&self) -> DeviceFlags {
        if self.flr || !self.scope.is_empty() {
            DeviceFlags::PCI | DeviceFlags::RESET
        } else {
            DeviceFlags::PCI
        }
    }

    fn region_info(&self, index: u32) -> RegionInfo {
        let Ok(r) = self.region(index) else {
            return RegionInfo::absent();
        };
        let mut flags = r.flags & (RegionFlags::READ | RegionFlags::WRITE);
        if index == ROM_REGION_INDEX {
            flags.remove(RegionFlags::WRITE);
        }
        // The host device fd leaves this process only when the operator opted in: it carries
        // every device ioctl and outlives the client's connection.
        let areas = self
            .host_mmap_areas(index)
            .filter(|_| self.trust.hands_out_host_fd());
        let mmap = areas.zip(self.device.file()).map(|(areas, file)| {
            flags |= RegionFlags::MMAP;
            MmapBacking {
                file,
                file_offset: r.offset,
                areas,
            }
        });
        RegionInfo {
            size: r.size,
            flags,
            mmap,
        }
    }

    fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        let at = self.host_offset(region, offset, data.len())?;
        self.device.read(at, data)?;
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if region == ROM_REGION_INDEX {
            return Err(DeviceError::InvalidAccess {
                region,
                offset,
                len: data.len(),
            });
        }
        let at = self.host_offset(region, offset, data.len())?;
        self.device.write(at, data)?;
        Ok(())
    }

    fn open_device(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        // The host device fd, released while nobody used the device, is opened again, and
        // the device reset: alone (FLR) or, when this is the set's first open, its scope.
        if let Err(e) = self.device.acquire() {
            warn!("{}: cannot open the host device: {e}", self.address);
            return Err(e.into());
        }
        match open_reset(self.flr, &self.scope, ctx) {
            Some(method) => {
                if let Err(e) = self.run_reset(&method) {
                    warn!("{}: reset on open: {e}", self.address);
                }
            }
            None => debug!("{}: not reset on open (the set is in use)", self.address),
        }
        debug!("{}: opened", self.address);
        Ok(())
    }

    fn close_device(&mut self, ctx: &SetContext) {
        self.forwarder.disable_all(&self.device);
        self.stop_bus_master();
        self.resets.set_needs_reset(self.address, true);
        if self.flr {
            match self.device.reset() {
                Ok(()) => self.resets.set_needs_reset(self.address, false),
                Err(e) => warn!("{}: reset on close: {e}", self.address),
            }
        }
        if self.resets.any_needs_reset() {
            match plan_hot_reset(&self.scope, ctx, None) {
                Ok(method) => {
                    if let Err(e) = self.run_reset(&method) {
                        warn!("{}: reset of the idle set failed: {e}", self.address);
                    }
                }
                Err(why) => debug!("{}: set not reset on close: {why}", self.address),
            }
        }
        // Nobody uses the device: its fd goes, and vfio-pci may runtime-suspend it.
        self.device.release();
        debug!("{}: host device fd released", self.address);
    }

    fn reset(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        let method = plan_device_reset(self.flr, &self.scope, ctx, ctx.requester)?;
        self.run_reset(&method)?;
        if let Err(e) = self.forwarder.after_reset(&self.device, &self.interrupts) {
            warn!("{}: re-routing interrupts after reset: {e}", self.address);
        }
        Ok(())
    }

    fn connection_closed(&mut self, owner: ConnectionId) {
        let result = self
            .forwarder
            .withdraw_released(&self.device, &self.interrupts);
        if let Err(e) = result {
            warn!(
                "{}: withdrawing the eventfds of {owner} from the host: {e}",
                self.address
            );
        }
    }

    fn dma_map(&mut self, owner: ConnectionId, map: &DmaMapping) -> Result<(), DeviceError> {
        self.iommu.map(owner, map)
    }

    fn dma_unmap(&mut self, owner: ConnectionId, map: &DmaMapping) {
        self.iommu.unmap(owner, map);
    }

    fn irqs_changed(&mut self, _owner: ConnectionId, span: &IrqSpan) -> Result<(), DeviceError> {
        self.forwarder
            .forward(&self.device, &self.interrupts, span)?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("passthrough {}", self.address)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    use std::os::unix::fs::FileExt;

    use mdev::irq::{IrqAction, IrqData, IrqIndex, IrqRequest};
    use mdev::region::BAR0_REGION_INDEX as BAR0;
    use mdev::{DeviceHandle, DeviceSets, OwnerId};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::fake::{
        hot_resets, Call, FakeSpec, FakeVfio, Op, FAKE_BAR0_SIZE, FAKE_CONFIG_SIZE,
        FAKE_REGION_STRIDE, FAKE_ROM_SIZE,
    };
    use crate::host::HostIrqSet;
    use crate::passthrough::Passthrough;

    const A: OwnerId = OwnerId(1);
    const B: OwnerId = OwnerId(2);
    const CONFIG: u32 = CONFIG_REGION_INDEX;
    /// The IOMMU group of the two edus (with their bridge).
    const GROUP: u32 = 7;

    fn addr(dev: u8) -> PciAddress {
        PciAddress::from_devfn(0, 1, dev << 3)
    }

    fn conn() -> ConnectionId {
        ConnectionId::next()
    }

    /// Two edu-like devices behind one bridge (one bus reset scope, one IOMMU group), of
    /// which `served` are served here.
    fn edus(flr: bool, served: &[u8]) -> (FakeVfio, DeviceSets, Vec<Arc<DeviceHandle>>) {
        let fake = FakeVfio::new();
        let scope = [addr(1), addr(2)];
        for a in scope {
            fake.add(FakeSpec {
                flr,
                ..FakeSpec::sharing(a, &scope, GROUP)
            });
        }
        let passthrough = Passthrough::new(Arc::new(fake.clone()));
        let sets = DeviceSets::new();
        let handles = served
            .iter()
            .map(|&d| {
                let (device, key) = passthrough.open(addr(d)).unwrap();
                sets.register(&addr(d).to_string(), Box::new(device), key)
            })
            .collect();
        (fake, sets, handles)
    }

    #[test]
    fn a_hot_reset_is_refused_with_ebusy_while_a_sibling_is_open_by_another_client() {
        let (fake, _sets, h) = edus(false, &[1, 2]);
        h[0].open(conn(), A).unwrap();
        h[1].open(conn(), B).unwrap();
        fake.clear_calls(); // the set's first open reset it
        assert_eq!(h[0].reset(A).unwrap_err().errno(), libc::EBUSY);
        assert_eq!(h[1].reset(B).unwrap_err().errno(), libc::EBUSY);
        assert!(hot_resets(&fake.calls()).is_empty());
    }

    #[test]
    fn a_hot_reset_is_refused_while_another_client_shares_the_requested_device() {
        let (fake, _sets, h) = edus(false, &[1, 2]);
        h[0].open(conn(), A).unwrap();
        h[0].open(conn(), B).unwrap();
        fake.clear_calls(); // the set's first open reset it
        assert_eq!(h[0].reset(A).unwrap_err().errno(), libc::EBUSY);
        assert!(hot_resets(&fake.calls()).is_empty());
    }

    #[test]
    fn a_hot_reset_runs_when_the_requester_holds_every_open_device_of_the_set() {
        let (fake, _sets, h) = edus(false, &[1, 2]);
        h[0].open(conn(), A).unwrap(); // the set's first open: reset
        h[0].reset(A).unwrap(); // the sibling is closed: it allows the reset
        h[1].open(conn(), A).unwrap(); // the set is in use: no reset on open
        h[0].open(conn(), A).unwrap();
        h[1].reset(A).unwrap(); // every open belongs to A
        assert_eq!(
            hot_resets(&fake.calls()),
            [
                &Call::HotReset(addr(1), vec![GROUP]),
                &Call::HotReset(addr(1), vec![GROUP]),
                &Call::HotReset(addr(2), vec![GROUP])
            ]
        );
    }

    #[test]
    fn a_hot_reset_is_refused_when_a_device_of_the_scope_is_not_served_here() {
        let (fake, _sets, h) = edus(false, &[1]);
        let c = conn();
        h[0].open(c, A).unwrap();
        assert_eq!(h[0].reset(A).unwrap_err().errno(), libc::EPERM);
        h[0].close(c);
        assert!(hot_resets(&fake.calls()).is_empty(), "nor on last close");
    }

    #[test]
    fn the_last_close_of_the_whole_set_hot_resets_it_once() {
        let (fake, _sets, h) = edus(false, &[1, 2]);
        let (c1, c2, c3) = (conn(), conn(), conn());
        h[0].open(c1, A).unwrap();
        h[1].open(c2, B).unwrap();
        h[1].open(c3, B).unwrap();
        fake.clear_calls(); // the set's first open reset it
        h[0].close(c1);
        assert!(hot_resets(&fake.calls()).is_empty(), "sibling still open");
        h[1].close(c2);
        assert!(hot_resets(&fake.calls()).is_empty(), "one open left");
        h[1].close(c3);
        assert_eq!(
            hot_resets(&fake.calls()),
            [&Call::HotReset(addr(2), vec![GROUP])]
        );
    }

    #[test]
    fn a_device_with_a_function_reset_resets_alone() {
        let (fake, _sets, h) = edus(true, &[1, 2]);
        let (c1, c2) = (conn(), conn());
        h[0].open(c1, A).unwrap();
        h[1].open(c2, B).unwrap();
        h[0].reset(A).unwrap(); // B's open of the sibling does not matter
        h[0].close(c1); // reset on close too, with the sibling still open
        h[1].close(c2);
        let calls = fake.calls();
        let resets = |a| calls.iter().filter(|c| **c == Call::Reset(a)).count();
        // Each on its first open and its last close; the first also on request.
        assert_eq!(resets(addr(1)), 3);
        assert_eq!(resets(addr(2)), 2);
        assert!(hot_resets(&calls).is_empty(), "function resets sufficed");
    }

    #[test]
    fn host_errors_reach_the_client_with_their_errno() {
        let (fake, _sets, h) = edus(false, &[1, 2]);
        h[0].open(conn(), A).unwrap();
        fake.fail(Op::HotReset, libc::EIO);
        assert_eq!(h[0].reset(A).unwrap_err().errno(), libc::EIO);
        fake.fail(Op::Read, libc::ENXIO);
        let mut b = [0u8; 4];
        let err = h[0].lock().read(BAR0, 0, &mut b).unwrap_err();
        assert_eq!(err.errno(), libc::ENXIO);
    }

    #[test]
    fn region_accesses_pass_through_at_the_region_offset() {
        let (fake, _sets, h) = edus(false, &[1]);
        h[0].open(conn(), A).unwrap();
        fake.clear_calls();
        let mut dev = h[0].lock();
        dev.write(BAR0, 0x10, &0xdead_beef_u32.to_le_bytes())
            .unwrap();
        dev.write(CONFIG, 0x04, &[0x06, 0x00]).unwrap();
        let mut word = [0u8; 4];
        dev.read(BAR0, 0x10, &mut word).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xdead_beef);
        let mut cmd = [0u8; 2];
        dev.read(CONFIG, 0x04, &mut cmd).unwrap();
        assert_eq!(cmd, [0x06, 0x00]);
        let config_base = u64::from(CONFIG) * FAKE_REGION_STRIDE;
        assert_eq!(
            fake.calls(),
            [
                Call::Write {
                    device: addr(1),
                    offset: 0x10,
                    data: 0xdead_beef_u32.to_le_bytes().to_vec()
                },
                Call::Write {
                    device: addr(1),
                    offset: config_base + 0x04,
                    data: vec![0x06, 0x00]
                }
            ]
        );
    }

    #[test]
    fn accesses_outside_every_region_are_refused_with_einval() {
        let (fake, _sets, h) = edus(false, &[1]);
        h[0].open(conn(), A).unwrap();
        fake.clear_calls();
        let mut dev = h[0].lock();
        let mut word = [0u8; 4];
        let hostile = [
            (BAR0, FAKE_BAR0_SIZE - 2), // straddles the end
            (BAR0, FAKE_BAR0_SIZE),
            (BAR0, u64::MAX - 1), // offset + len overflows
            (CONFIG, FAKE_CONFIG_SIZE),
            (2, 0),                // absent BAR
            (ROM_REGION_INDEX, 0), // absent ROM
            (PCI_NUM_REGIONS, 0),
            (u32::MAX, 0),
        ];
        for (region, offset) in hostile {
            let r = dev.read(region, offset, &mut word);
            assert_eq!(
                r.unwrap_err().errno(),
                libc::EINVAL,
                "read {region}+{offset:#x}"
            );
            let w = dev.write(region, offset, &word);
            assert_eq!(
                w.unwrap_err().errno(),
                libc::EINVAL,
                "write {region}+{offset:#x}"
            );
        }
        assert!(fake.calls().is_empty(), "nothing reached the host");
    }

    /// A device whose BAR0 the host lets be mapped, with a ROM, opened with `trust`.
    fn mmap_able(trust: ClientTrust) -> (FakeVfio, PassthroughDevice<FakeVfio>) {
        let fake = FakeVfio::new();
        fake.add(FakeSpec {
            bar0_mmap: true,
            rom: true,
            ..FakeSpec::new(addr(3))
        });
        let (mut dev, _) = Passthrough::new(Arc::new(fake.clone()))
            .open_with(addr(3), trust)
            .unwrap();
        // A client's first open: the host device fd is open again.
        let members = [mdev::MemberState::new(
            mdev::DeviceId(1),
            &addr(3).to_string(),
        )];
        let ctx = SetContext {
            this: members[0].id,
            requester: Some(A),
            members: &members,
        };
        dev.open_device(&ctx).unwrap();
        (fake, dev)
    }

    /// (device, inode) of an open file.
    fn identity(file: &File) -> (u64, u64) {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().unwrap();
        (meta.dev(), meta.ino())
    }

    #[test]
    fn by_default_no_region_info_carries_an_mmap_backing_even_for_a_bar_the_host_lets_map() {
        let (_fake, dev) = mmap_able(ClientTrust::default());
        assert_eq!(dev.client_trust(), ClientTrust::ProtocolOnly);
        assert_eq!(dev.host_mmap_able_bars(), [BAR0], "the host would allow it");
        for index in 0..PCI_NUM_REGIONS + 2 {
            let info = dev.region_info(index);
            assert!(info.mmap.is_none(), "region {index} carries the host fd");
            assert!(
                !info.flags.contains(RegionFlags::MMAP),
                "region {index} advertises mmap"
            );
        }
        let bar0 = dev.region_info(BAR0);
        assert_eq!(bar0.size, FAKE_BAR0_SIZE, "BAR0 is still served");
        assert_eq!(
            bar0.flags,
            RegionFlags::READ | RegionFlags::WRITE,
            "trapped"
        );
    }

    #[test]
    fn with_trusted_client_mmap_the_mmap_able_bar_carries_the_host_device_fd_and_nothing_else_does()
    {
        let (fake, dev) = mmap_able(ClientTrust::TrustedClientMmap);
        let bar0 = dev.region_info(BAR0);
        assert!(bar0.flags.contains(RegionFlags::MMAP));
        let mmap = bar0.mmap.expect("mmap backing");
        let host = fake.device_file(addr(3)).expect("device open");
        assert_eq!(
            identity(&mmap.file),
            identity(&host),
            "the client gets the host VFIO device fd itself"
        );
        assert_eq!(mmap.file_offset, 0);
        assert_eq!(
            mmap.areas,
            [SparseArea {
                offset: 0,
                size: FAKE_BAR0_SIZE
            }]
        );
        for index in (1..PCI_NUM_REGIONS).filter(|&i| i != BAR0) {
            let info = dev.region_info(index);
            assert!(info.mmap.is_none(), "region {index} carries the host fd");
            assert!(!info.flags.contains(RegionFlags::MMAP), "region {index}");
        }
    }

    #[test]
    fn trusted_client_mmap_does_not_make_a_bar_the_host_traps_mappable() {
        let fake = FakeVfio::new();
        fake.add(FakeSpec::new(addr(3))); // BAR0 not mmap-able on the host
        let (dev, _) = Passthrough::new(Arc::new(fake))
            .open_with(addr(3), ClientTrust::TrustedClientMmap)
            .unwrap();
        assert!(dev.host_mmap_able_bars().is_empty());
        let bar0 = dev.region_info(BAR0);
        assert!(bar0.mmap.is_none() && !bar0.flags.contains(RegionFlags::MMAP));
    }

    #[test]
    fn the_last_close_stops_bus_mastering() {
        let (fake, _sets, h) = edus(false, &[1]);
        let c = conn();
        h[0].open(c, A).unwrap();
        h[0].lock().write(CONFIG, 0x04, &[0x06, 0x00]).unwrap();
        h[0].close(c);
        let config_base = u64::from(CONFIG) * FAKE_REGION_STRIDE;
        let last_command_write = fake.calls().into_iter().rev().find_map(|c| match c {
            Call::Write { offset, data, .. } if offset == config_base + 0x04 => Some(data),
            _ => None,
        });
        assert_eq!(last_command_write, Some(vec![0x02, 0x00]));
    }

    /// An owned copy of an eventfd, as the framework keeps what a client sent.
    fn file_of(efd: &EventFd) -> File {
        // SAFETY: `efd` is open for the duration of this borrow; the copy is a new fd.
        let fd = unsafe { BorrowedFd::borrow_raw(efd.as_raw_fd()) };
        File::from(fd.try_clone_to_owned().unwrap())
    }

    fn set_irqs(h: &DeviceHandle, c: ConnectionId, req: IrqRequest) {
        let span = req.span();
        h.interrupts().apply(c, req).unwrap();
        h.lock().irqs_changed(c, &span).unwrap();
    }

    #[test]
    fn client_eventfds_are_handed_to_the_host_device_and_withdrawn() {
        let (fake, _sets, h) = edus(false, &[1]);
        let c = conn();
        h[0].open(c, A).unwrap();
        let client = EventFd::new(EFD_NONBLOCK).unwrap();
        let msi = |data, count| IrqRequest {
            index: IrqIndex::Msi,
            start: 0,
            count,
            action: IrqAction::Trigger,
            data,
        };
        set_irqs(&h[0], c, msi(IrqData::Eventfds(vec![file_of(&client)]), 1));
        let calls = fake.calls();
        let Some(Call::SetIrqs(dev, set)) = calls.last() else {
            panic!("no SET_IRQS reached the host: {calls:?}");
        };
        assert_eq!(*dev, addr(1));
        assert_eq!((set.index, set.start, set.count), (1, 0, 1));
        let host_fd = set.eventfds.as_ref().unwrap()[0];
        // The host kernel signals the fd it was given: the client's eventfd fires.
        // SAFETY: `Interrupts` keeps the forwarded fd open while it is routed.
        let host_side = unsafe { BorrowedFd::borrow_raw(host_fd) };
        let mut host_side = File::from(host_side.try_clone_to_owned().unwrap());
        host_side.write_all(&1u64.to_ne_bytes()).unwrap();
        assert_eq!(client.read().unwrap(), 1);

        set_irqs(&h[0], c, msi(IrqData::None, 0));
        let disable = HostIrqSet {
            index: 1,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            eventfds: None,
        };
        assert_eq!(fake.calls().last(), Some(&Call::SetIrqs(addr(1), disable)));
    }

    #[test]
    fn intx_unmask_is_forwarded_and_close_disables_routed_interrupts() {
        let (fake, _sets, h) = edus(false, &[1]);
        let c = conn();
        h[0].open(c, A).unwrap();
        let client = EventFd::new(EFD_NONBLOCK).unwrap();
        let intx = |action, data| IrqRequest {
            index: IrqIndex::Intx,
            start: 0,
            count: 1,
            action,
            data,
        };
        set_irqs(
            &h[0],
            c,
            intx(
                IrqAction::Trigger,
                IrqData::Eventfds(vec![file_of(&client)]),
            ),
        );
        set_irqs(&h[0], c, intx(IrqAction::Unmask, IrqData::None));
        let unmask = HostIrqSet {
            index: 0,
            start: 0,
            count: 1,
            action: IrqAction::Unmask,
            eventfds: None,
        };
        assert_eq!(fake.calls().last(), Some(&Call::SetIrqs(addr(1), unmask)));
        h[0].close(c);
        let disabled = fake.calls().into_iter().any(|call| {
            matches!(
                call,
                Call::SetIrqs(
                    _,
                    HostIrqSet {
                        index: 0,
                        count: 0,
                        eventfds: None,
                        ..
                    }
                )
            )
        });
        assert!(disabled, "{:?}", fake.calls());
    }

    /// One device alone in its set, as `spec` describes it.
    fn single(spec: FakeSpec) -> (FakeVfio, DeviceSets, Arc<DeviceHandle>) {
        let fake = FakeVfio::new();
        let address = spec.address;
        fake.add(spec);
        let (device, key) = Passthrough::new(Arc::new(fake.clone()))
            .open(address)
            .unwrap();
        let sets = DeviceSets::new();
        let handle = sets.register(&address.to_string(), Box::new(device), key);
        (fake, sets, handle)
    }

    fn msi_fds(start: u32, fds: &[&EventFd]) -> IrqRequest {
        IrqRequest {
            index: IrqIndex::Msi,
            start,
            count: fds.len() as u32,
            action: IrqAction::Trigger,
            data: IrqData::Eventfds(fds.iter().map(|e| file_of(e)).collect()),
        }
    }

    fn msi_disable() -> IrqRequest {
        IrqRequest {
            index: IrqIndex::Msi,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            data: IrqData::None,
        }
    }

    fn host_disable(index: u32) -> HostIrqSet {
        HostIrqSet {
            index,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            eventfds: None,
        }
    }

    fn set_irqs_calls(calls: &[Call]) -> Vec<&HostIrqSet> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::SetIrqs(_, set) => Some(set),
                _ => None,
            })
            .collect()
    }

    /// Writes the eventfd the host kernel was given, as the kernel would signal it.
    fn host_signal(fd: RawFd) {
        // SAFETY: `Interrupts` keeps the forwarded fd open while it is routed.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut f = File::from(fd.try_clone_to_owned().unwrap());
        f.write_all(&1u64.to_ne_bytes()).unwrap();
    }

    #[test]
    fn closing_one_of_two_connections_withdraws_only_the_vectors_it_supplied() {
        let (fake, _sets, h) = single(FakeSpec {
            msi_vectors: 2,
            ..FakeSpec::new(addr(3))
        });
        let (c1, c2) = (conn(), conn());
        h.open(c1, A).unwrap();
        h.open(c2, B).unwrap();
        let efd1 = EventFd::new(EFD_NONBLOCK).unwrap();
        let efd2 = EventFd::new(EFD_NONBLOCK).unwrap();
        set_irqs(&h, c1, msi_fds(0, &[&efd1]));
        set_irqs(&h, c2, msi_fds(1, &[&efd2]));
        let calls = fake.calls();
        let routed = (*set_irqs_calls(&calls).last().unwrap()).clone();
        assert_eq!((routed.index, routed.start, routed.count), (1, 0, 2));
        let host_fd2 = routed.eventfds.unwrap()[1];

        fake.clear_calls();
        h.close(c1);
        let withdraw_vector_0 = HostIrqSet {
            index: 1,
            start: 0,
            count: 1,
            action: IrqAction::Trigger,
            eventfds: Some(vec![-1]),
        };
        assert_eq!(
            fake.calls(),
            [Call::SetIrqs(addr(3), withdraw_vector_0)],
            "exactly the closed connection's vector, nothing else"
        );
        host_signal(host_fd2);
        assert_eq!(
            efd2.read().unwrap(),
            1,
            "the other connection still receives"
        );

        fake.clear_calls();
        h.close(c2);
        assert_eq!(set_irqs_calls(&fake.calls()), [&host_disable(1)]);
    }

    #[test]
    fn the_host_stops_signalling_a_closed_connection_while_another_keeps_the_device_open() {
        let (fake, _sets, h) = single(FakeSpec::new(addr(3)));
        let (c1, c2, c3) = (conn(), conn(), conn());
        h.open(c1, A).unwrap();
        h.open(c2, B).unwrap();
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        set_irqs(&h, c1, msi_fds(0, &[&efd]));
        fake.clear_calls();
        h.close(c2); // it supplied no eventfd: the host routing stays
        assert!(
            set_irqs_calls(&fake.calls()).is_empty(),
            "{:?}",
            fake.calls()
        );
        h.open(c3, B).unwrap();
        h.close(c1);
        assert_eq!(h.open_count(), 1);
        assert_eq!(set_irqs_calls(&fake.calls()), [&host_disable(1)]);
        fake.clear_calls();
        h.close(c3);
        assert!(
            set_irqs_calls(&fake.calls()).is_empty(),
            "nothing left to disable on the last close"
        );
    }

    #[test]
    fn a_reset_reroutes_the_kept_eventfds_from_a_clean_host_state() {
        let (fake, _sets, h) = edus(true, &[1]);
        let c = conn();
        h[0].open(c, A).unwrap();
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        set_irqs(&h[0], c, msi_fds(0, &[&efd]));
        fake.clear_calls();
        h[0].reset(A).unwrap();
        let calls = fake.calls();
        let [Call::Reset(dev), Call::SetIrqs(_, disable), Call::SetIrqs(_, rerouted)] =
            calls.as_slice()
        else {
            panic!("reset, then disable and re-route expected: {calls:?}");
        };
        assert_eq!(*dev, addr(1));
        assert_eq!(*disable, host_disable(1));
        assert_eq!((rerouted.index, rerouted.start, rerouted.count), (1, 0, 1));
        host_signal(rerouted.eventfds.as_ref().unwrap()[0]);
        assert_eq!(
            efd.read().unwrap(),
            1,
            "the client's eventfd is still routed"
        );

        // The record matches the host: the client's disable reaches it once, and a reset
        // with nothing routed touches no interrupt.
        fake.clear_calls();
        set_irqs(&h[0], c, msi_disable());
        h[0].reset(A).unwrap();
        assert_eq!(
            fake.calls(),
            [
                Call::SetIrqs(addr(1), host_disable(1)),
                Call::Reset(addr(1))
            ]
        );
    }

    #[test]
    fn the_rom_is_read_only_whatever_the_client_tries() {
        let (fake, _sets, h) = single(FakeSpec {
            rom: true,
            ..FakeSpec::new(addr(3))
        });
        h.open(conn(), A).unwrap();
        let file = fake.device_file(addr(3)).expect("device open");
        let base = u64::from(ROM_REGION_INDEX) * FAKE_REGION_STRIDE;
        file.write_all_at(&[0x55, 0xaa], base).unwrap();
        fake.clear_calls();
        let mut dev = h.lock();
        let rom = dev.region_info(ROM_REGION_INDEX);
        assert_eq!(rom.size, FAKE_ROM_SIZE);
        assert_eq!(rom.flags, RegionFlags::READ, "no WRITE, no MMAP");
        assert!(rom.mmap.is_none());
        for (offset, len) in [(0, 2), (0, 4), (FAKE_ROM_SIZE - 4, 4)] {
            let err = dev
                .write(ROM_REGION_INDEX, offset, &vec![0; len])
                .unwrap_err();
            assert_eq!(err.errno(), libc::EINVAL, "write at {offset:#x}");
        }
        let mut signature = [0u8; 2];
        dev.read(ROM_REGION_INDEX, 0, &mut signature).unwrap();
        assert_eq!(signature, [0x55, 0xaa], "the ROM is unchanged and readable");
        assert!(fake.calls().is_empty(), "no write reached the host");
    }
}
