//! A PCI function as a device author writes it: identity and capabilities in a
//! [`PciConfig`], a table of [`Bar`]s (each trapped or backed by shared memory), and a
//! [`PciFunction`] that answers trapped BAR accesses. [`PciDevice`] turns that into a
//! [`Device`]: it owns config space, derives every region's info (sizes, flags, mmap areas)
//! from the BAR table, serves memory-backed BARs itself, and keeps the status register's
//! interrupt bit in step with the line the function drives.

use std::sync::Arc;

use crate::device::Device;
use crate::device_set::SetContext;
use crate::error::DeviceError;
use crate::irq::Interrupts;
use crate::pci::{BarSpec, ConfigError, PciConfig, PCI_CONFIG_SPACE_SIZE, PCI_NUM_BARS};
use crate::region::{PciRegion, RegionInfo, SharedMemory};

/// What a read of nothing returns: a floating bus.
const FLOATING: u8 = 0xff;

/// What serves the accesses of one BAR.
#[derive(Clone, Debug)]
pub enum BarBacking {
    /// Every access is a message, answered by [`PciFunction::read_bar`] and
    /// [`PciFunction::write_bar`].
    Trapped,
    /// Shared memory clients may map (a framebuffer); a client that does not map it reaches
    /// the same memory through messages, served by the framework.
    Memory(Arc<SharedMemory>),
}

/// One BAR of a function: its PCI shape and what serves it.
#[derive(Clone, Debug)]
pub struct Bar {
    /// BAR number, 0..=5.
    pub index: u8,
    /// Size, kind, prefetchability.
    pub spec: BarSpec,
    /// Trapped or memory.
    pub backing: BarBacking,
}

impl Bar {
    /// A trapped BAR.
    pub fn trapped(index: u8, spec: BarSpec) -> Self {
        Bar {
            index,
            spec,
            backing: BarBacking::Trapped,
        }
    }

    /// A BAR backed by `memory`, which must be `spec.size` bytes long.
    pub fn memory(index: u8, spec: BarSpec, memory: Arc<SharedMemory>) -> Self {
        Bar {
            index,
            spec,
            backing: BarBacking::Memory(memory),
        }
    }
}

/// The interrupts a function offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptLayout {
    /// A legacy INTx line.
    pub intx: bool,
    /// MSI vectors (0 for none).
    pub msi_vectors: u32,
    /// MSI-X vectors (0 for none).
    pub msix_vectors: u32,
}

/// The device-specific part of a PCI function. Accesses arrive validated (inside the BAR);
/// config space, memory BARs and the interrupt status bit are the framework's.
pub trait PciFunction: Send + 'static {
    /// A read of trapped BAR `bar` (0..=5). Unimplemented registers read as all-ones.
    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(FLOATING);
    }

    /// A write to trapped BAR `bar`. Writes to nothing are ignored, as hardware does.
    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}

    /// Config space was written at `offset` (`len` bytes), already applied to `config`.
    fn config_written(&mut self, _offset: u64, _len: usize, _config: &PciConfig) {}

    /// DEVICE_RESET: registers back to their power-on values (config space and the interrupt
    /// line are reset by the framework).
    fn reset(&mut self) {}

    /// First open (see [`Device::open_device`]).
    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Last close (see [`Device::close_device`]).
    fn close_device(&mut self, _ctx: &SetContext) {}

    /// A short description for logs and listings.
    fn describe(&self) -> String;
}

/// A PCI function served by the framework: config space, BAR table, interrupts, and the
/// device's [`PciFunction`].
pub struct PciDevice<F: PciFunction> {
    config: PciConfig,
    bars: [Option<BarBacking>; PCI_NUM_BARS],
    interrupts: Arc<Interrupts>,
    function: F,
}

/// Why a function could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// The BAR table breaks a config-space rule.
    #[error("BAR {index}: {source}")]
    Bar {
        /// The BAR.
        index: u8,
        /// The rule.
        #[source]
        source: ConfigError,
    },
    /// A memory BAR whose memory is not its size.
    #[error("BAR {index}: {len} bytes of memory for a {size}-byte BAR")]
    MemorySize {
        /// The BAR.
        index: u8,
        /// The memory's length.
        len: usize,
        /// The BAR's size.
        size: u64,
    },
    /// Building the function failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

impl From<FunctionError> for DeviceError {
    fn from(e: FunctionError) -> Self {
        match e {
            FunctionError::Device(d) => d,
            other => {
                log::error!("invalid PCI function: {other}");
                DeviceError::InvalidArgument("invalid PCI function")
            }
        }
    }
}

impl<F: PciFunction> PciDevice<F> {
    /// Assembles a function: `config` holds its identity and capabilities, `bars` its BAR
    /// table (added to `config` here), `irqs` the interrupts it offers. `build` makes the
    /// device-specific part, given the interrupts it raises.
    pub fn new(
        mut config: PciConfig,
        bars: Vec<Bar>,
        irqs: InterruptLayout,
        build: impl FnOnce(&Arc<Interrupts>) -> Result<F, DeviceError>,
    ) -> Result<Self, FunctionError> {
        let mut backings: [Option<BarBacking>; PCI_NUM_BARS] = Default::default();
        for bar in bars {
            if let BarBacking::Memory(m) = &bar.backing {
                if m.len() as u64 != bar.spec.size {
                    return Err(FunctionError::MemorySize {
                        index: bar.index,
                        len: m.len(),
                        size: bar.spec.size,
                    });
                }
            }
            config
                .add_bar(usize::from(bar.index), bar.spec)
                .map_err(|source| FunctionError::Bar {
                    index: bar.index,
                    source,
                })?;
            if let Some(slot) = backings.get_mut(usize::from(bar.index)) {
                *slot = Some(bar.backing);
            }
        }
        let interrupts = Arc::new(Interrupts::new(
            irqs.intx,
            irqs.msi_vectors,
            irqs.msix_vectors,
        ));
        let function = build(&interrupts)?;
        Ok(PciDevice {
            config,
            bars: backings,
            interrupts,
            function,
        })
    }

    /// The device-specific part.
    pub fn function(&self) -> &F {
        &self.function
    }

    /// The device-specific part, mutably.
    pub fn function_mut(&mut self) -> &mut F {
        &mut self.function
    }

    /// Config space.
    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    fn backing(&self, bar: u8) -> Option<(&BarBacking, BarSpec)> {
        let backing = self.bars.get(usize::from(bar))?.as_ref()?;
        Some((backing, self.config.bar(usize::from(bar))?))
    }
}

impl<F: PciFunction> Device for PciDevice<F> {
    fn region_info(&self, index: u32) -> RegionInfo {
        match PciRegion::from_index(index) {
            Some(PciRegion::Config) => RegionInfo::trapped(PCI_CONFIG_SPACE_SIZE as u64),
            Some(PciRegion::Bar(n)) => match self.backing(n) {
                Some((BarBacking::Trapped, spec)) => RegionInfo::trapped(spec.size),
                Some((BarBacking::Memory(m), _)) => RegionInfo::shared(m),
                None => RegionInfo::absent(),
            },
            _ => RegionInfo::absent(),
        }
    }

    fn interrupts(&self) -> &Arc<Interrupts> {
        &self.interrupts
    }

    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        match PciRegion::from_index(region) {
            Some(PciRegion::Config) => {
                self.config
                    .set_interrupt_status(self.interrupts.line_asserted());
                self.config.read(offset, data);
            }
            Some(PciRegion::Bar(n)) => match self.backing(n) {
                Some((BarBacking::Memory(m), _)) => {
                    if m.read(offset, data).is_err() {
                        data.fill(FLOATING);
                    }
                }
                Some((BarBacking::Trapped, _)) => self.function.read_bar(n, offset, data),
                None => data.fill(FLOATING),
            },
            _ => data.fill(FLOATING),
        }
        Ok(())
    }

    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        match PciRegion::from_index(region) {
            Some(PciRegion::Config) => {
                self.config.write(offset, data);
                self.function
                    .config_written(offset, data.len(), &self.config);
            }
            Some(PciRegion::Bar(n)) => match self.backing(n) {
                Some((BarBacking::Memory(m), _)) if m.write(offset, data).is_err() => {
                    log::debug!(
                        "BAR{n} write of {} bytes at {offset:#x} outside its memory dropped",
                        data.len()
                    );
                }
                Some((BarBacking::Memory(_), _)) => {}
                Some((BarBacking::Trapped, _)) => self.function.write_bar(n, offset, data),
                None => {}
            },
            _ => {}
        }
        Ok(())
    }

    fn open_device(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        self.function.open_device(ctx)
    }

    fn close_device(&mut self, ctx: &SetContext) {
        self.function.close_device(ctx)
    }

    fn reset(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        self.config.reset();
        self.function.reset();
        Ok(())
    }

    fn describe(&self) -> String {
        self.function.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqIndex;
    use crate::pci::{PciIdentity, StatusRegister, PCI_STATUS};
    use crate::region::RegionFlags;

    struct Bell {
        irqs: Arc<Interrupts>,
        value: u32,
    }

    impl PciFunction for Bell {
        fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
            data.copy_from_slice(&self.value.to_le_bytes()[..data.len().min(4)]);
        }
        fn write_bar(&mut self, _bar: u8, _offset: u64, data: &[u8]) {
            self.value = u32::from(data[0]);
            self.irqs.update_line(self.value != 0);
        }
        fn reset(&mut self) {
            self.value = 0;
        }
        fn describe(&self) -> String {
            "bell".into()
        }
    }

    fn device() -> PciDevice<Bell> {
        let mem = Arc::new(SharedMemory::new("fn-test", 8192).unwrap());
        PciDevice::new(
            PciConfig::new(&PciIdentity::new(0x1234, 0x5678)),
            vec![
                Bar::trapped(0, BarSpec::memory32(4096)),
                Bar::memory(2, BarSpec::memory32(8192), mem),
            ],
            InterruptLayout {
                intx: true,
                msi_vectors: 1,
                msix_vectors: 0,
            },
            |irqs| {
                Ok(Bell {
                    irqs: irqs.clone(),
                    value: 0,
                })
            },
        )
        .unwrap()
    }

    #[test]
    fn region_info_is_derived_from_the_bar_table() {
        let d = device();
        let bar0 = d.region_info(0);
        assert_eq!((bar0.size, bar0.mmap.is_none()), (4096, true));
        let bar2 = d.region_info(2);
        assert_eq!(bar2.size, 8192);
        assert!(bar2.flags.contains(RegionFlags::MMAP) && bar2.mmap.is_some());
        assert_eq!(d.region_info(1).size, 0);
        assert_eq!(d.region_info(7).size, 256);
        assert_eq!(d.region_info(6).size, 0, "no ROM");
        assert_eq!(d.interrupts().info(IrqIndex::Msi as u32).unwrap().count, 1);
    }

    #[test]
    fn the_status_bit_follows_the_line_the_function_drives() {
        let mut d = device();
        let status = |d: &mut PciDevice<Bell>| {
            let mut b = [0u8; 2];
            d.read(7, PCI_STATUS as u64, &mut b).unwrap();
            StatusRegister::from_bits_retain(u16::from_le_bytes(b))
        };
        assert!(!status(&mut d).contains(StatusRegister::INTERRUPT));
        d.write(0, 0, &[1]).unwrap();
        assert!(status(&mut d).contains(StatusRegister::INTERRUPT));
        d.write(0, 0, &[0]).unwrap();
        assert!(!status(&mut d).contains(StatusRegister::INTERRUPT));
    }

    #[test]
    fn memory_bars_are_served_by_the_framework_and_odd_regions_float() {
        let mut d = device();
        d.write(2, 100, b"px").unwrap();
        let mut b = [0u8; 2];
        d.read(2, 100, &mut b).unwrap();
        assert_eq!(&b, b"px");
        let mut f = [0u8; 4];
        d.read(5, 0, &mut f).unwrap();
        assert_eq!(f, [0xff; 4]);
        d.read(42, 0, &mut f).unwrap();
        assert_eq!(f, [0xff; 4]);
    }

    #[test]
    fn a_memory_bar_must_be_as_large_as_its_memory() {
        let mem = Arc::new(SharedMemory::new("fn-small", 4096).unwrap());
        let r = PciDevice::new(
            PciConfig::new(&PciIdentity::new(0x1234, 0x5678)),
            vec![Bar::memory(0, BarSpec::memory32(8192), mem)],
            InterruptLayout::default(),
            |irqs| {
                Ok(Bell {
                    irqs: irqs.clone(),
                    value: 0,
                })
            },
        );
        assert!(matches!(r, Err(FunctionError::MemorySize { .. })));
    }
}
