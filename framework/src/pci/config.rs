//! A type-0 PCI configuration space: identity, BARs with sizing, expansion ROM, the command and
//! status registers, the interrupt line/pin and a capability chain.
//!
//! Every byte has a write mask (bits the guest may change) and a write-1-to-clear mask; a write
//! merges through them, so BAR sizing (write all ones, read back the size mask) and read-only
//! bits fall out of the masks rather than special cases.

use bitflags::bitflags;

use super::capability::PciCapability;

/// Size of the conventional configuration space.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;

// Header register offsets.
/// Vendor ID (16-bit).
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID (16-bit).
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register (16-bit).
pub const PCI_COMMAND: usize = 0x04;
/// Status register (16-bit).
pub const PCI_STATUS: usize = 0x06;
/// Revision ID.
pub const PCI_REVISION_ID: usize = 0x08;
/// Programming interface.
pub const PCI_CLASS_PROG: usize = 0x09;
/// Subclass (low byte) and class (high byte).
pub const PCI_CLASS_DEVICE: usize = 0x0a;
/// Cache line size.
pub const PCI_CACHE_LINE_SIZE: usize = 0x0c;
/// Latency timer.
pub const PCI_LATENCY_TIMER: usize = 0x0d;
/// Header type.
pub const PCI_HEADER_TYPE: usize = 0x0e;
/// First BAR; BAR n is at `PCI_BASE_ADDRESS_0 + 4 * n`.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Subsystem vendor ID (16-bit).
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (16-bit).
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM base address (32-bit).
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Offset of the first capability.
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Interrupt line (written by firmware, no effect).
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin (0 none, 1..=4 INTA..INTD).
pub const PCI_INTERRUPT_PIN: usize = 0x3d;
/// First byte available to capabilities.
pub const PCI_CAP_START: usize = 0x40;

// BAR low bits.
/// BAR bit 0: an I/O BAR.
pub const PCI_BAR_IO: u32 = 0x1;
/// Memory BAR type field: 64-bit.
pub const PCI_BAR_MEM_TYPE_64: u32 = 0x4;
/// Memory BAR: prefetchable.
pub const PCI_BAR_MEM_PREFETCH: u32 = 0x8;
/// Expansion ROM address register: decode enable.
pub const PCI_ROM_ENABLE: u32 = 0x1;
const PCI_BAR_MEM_ADDR_MASK: u32 = !0xf;
const PCI_BAR_IO_ADDR_MASK: u32 = !0x3;
const PCI_ROM_ADDR_MASK: u32 = !0x7ff;
/// Smallest expansion ROM (the address register's low 11 bits are not address bits).
pub const PCI_ROM_MIN_SIZE: u32 = 0x800;
/// Highest interrupt pin value (INTD).
pub const PCI_INTERRUPT_PIN_MAX: u8 = 4;
/// Hops followed along a capability chain before it is taken as a loop: more than the
/// (256 - 64) / 4 capabilities that fit.
const MAX_CAP_HOPS: usize = 48;

/// Number of BARs in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;

bitflags! {
    /// The command register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct CommandRegister: u16 {
        /// I/O space decoding.
        const IO = 1 << 0;
        /// Memory space decoding.
        const MEMORY = 1 << 1;
        /// Bus mastering (DMA).
        const BUS_MASTER = 1 << 2;
        /// Special cycles.
        const SPECIAL = 1 << 3;
        /// Memory write and invalidate.
        const MWI = 1 << 4;
        /// VGA palette snooping.
        const VGA_SNOOP = 1 << 5;
        /// Parity error response.
        const PARITY = 1 << 6;
        /// SERR# enable.
        const SERR = 1 << 8;
        /// Fast back-to-back enable.
        const FAST_BACK = 1 << 9;
        /// INTx emulation disable.
        const INTX_DISABLE = 1 << 10;
    }
}

bitflags! {
    /// The status register.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct StatusRegister: u16 {
        /// INTx asserted.
        const INTERRUPT = 1 << 3;
        /// A capability list is present.
        const CAP_LIST = 1 << 4;
        /// 66 MHz capable.
        const MHZ_66 = 1 << 5;
        /// Fast back-to-back capable.
        const FAST_BACK = 1 << 7;
        /// Master data parity error.
        const MASTER_PARITY = 1 << 8;
        /// Signaled target abort.
        const SIG_TARGET_ABORT = 1 << 11;
        /// Received target abort.
        const REC_TARGET_ABORT = 1 << 12;
        /// Received master abort.
        const REC_MASTER_ABORT = 1 << 13;
        /// Signaled system error.
        const SIG_SYSTEM_ERROR = 1 << 14;
        /// Detected parity error.
        const DETECTED_PARITY = 1 << 15;
    }
}

impl StatusRegister {
    /// Error bits the guest clears by writing 1.
    pub const WRITE_1_TO_CLEAR: StatusRegister = StatusRegister::MASTER_PARITY
        .union(StatusRegister::SIG_TARGET_ABORT)
        .union(StatusRegister::REC_TARGET_ABORT)
        .union(StatusRegister::REC_MASTER_ABORT)
        .union(StatusRegister::SIG_SYSTEM_ERROR)
        .union(StatusRegister::DETECTED_PARITY);
}

/// What a function is: the read-only identity registers and their reset values.
#[derive(Clone, Copy, Debug)]
pub struct PciIdentity {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// 0 for none, 1..=4 for INTA..INTD.
    pub interrupt_pin: u8,
    /// Command register value at reset.
    pub command: CommandRegister,
    /// Status register value at reset (CAP_LIST is set automatically).
    pub status: StatusRegister,
}

impl PciIdentity {
    /// `vendor_id`:`device_id` (the same pair as subsystem IDs), revision 1, class 0xff (a
    /// device that fits no defined class), INTA, command and status clear at reset. Set the
    /// other fields with struct update syntax.
    pub const fn new(vendor_id: u16, device_id: u16) -> Self {
        PciIdentity {
            vendor_id,
            device_id,
            subsystem_vendor_id: vendor_id,
            subsystem_id: device_id,
            revision: 1,
            class: 0xff,
            subclass: 0,
            prog_if: 0,
            interrupt_pin: 1,
            command: CommandRegister::empty(),
            status: StatusRegister::empty(),
        }
    }
}

/// The address-space kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space.
    Io,
    /// 32-bit memory space.
    Memory32,
    /// Uses this BAR and the next one.
    Memory64,
}

/// A BAR a device exposes. `size` is a power of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// Size in bytes, a power of two.
    pub size: u64,
    /// Address-space kind.
    pub kind: BarKind,
    /// Prefetchable (memory BARs only).
    pub prefetchable: bool,
}

impl BarSpec {
    /// A non-prefetchable 32-bit memory BAR of `size` bytes.
    pub const fn memory32(size: u64) -> Self {
        BarSpec {
            size,
            kind: BarKind::Memory32,
            prefetchable: false,
        }
    }

    /// A prefetchable memory BAR of `size` bytes, 64-bit when `wide`.
    pub const fn prefetchable(size: u64, wide: bool) -> Self {
        BarSpec {
            size,
            kind: if wide {
                BarKind::Memory64
            } else {
                BarKind::Memory32
            },
            prefetchable: true,
        }
    }

    /// An I/O BAR of `size` bytes.
    pub const fn io(size: u64) -> Self {
        BarSpec {
            size,
            kind: BarKind::Io,
            prefetchable: false,
        }
    }
}

/// A configuration the device's description breaks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR (or the upper half of a 64-bit one) is past the sixth.
    #[error("BAR index {0} out of range")]
    BarIndex(usize),
    /// The BAR, or the one a 64-bit BAR needs, is taken.
    #[error("BAR {0} is already in use")]
    BarInUse(usize),
    /// The size is not a power of two, or too small or large for the kind.
    #[error("BAR size {0:#x} is not a power of two within the limits of its kind")]
    BarSize(u64),
    /// The ROM size is not a power of two of at least [`PCI_ROM_MIN_SIZE`].
    #[error("ROM size {0:#x} is not a power of two of at least 2 KiB")]
    RomSize(u32),
    /// No room left in the 256 bytes for the capability.
    #[error("capability of {0} bytes does not fit in configuration space")]
    CapabilitySpace(usize),
    /// The capability's bytes and write mask disagree, or it is shorter than its header.
    #[error("capability has a malformed description")]
    CapabilityMalformed,
}

impl From<ConfigError> for crate::DeviceError {
    fn from(e: ConfigError) -> Self {
        log::error!("invalid PCI configuration: {e}");
        crate::DeviceError::InvalidArgument("invalid PCI configuration")
    }
}

/// The low and high halves of `v`.
fn split_u64(v: u64) -> [u32; 2] {
    let b = v.to_le_bytes();
    [
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    ]
}

/// An emulated configuration space.
#[derive(Clone, Debug)]
pub struct PciConfig {
    bytes: [u8; PCI_CONFIG_SPACE_SIZE],
    write_mask: [u8; PCI_CONFIG_SPACE_SIZE],
    w1c_mask: [u8; PCI_CONFIG_SPACE_SIZE],
    /// Reset contents (identity, BAR type bits, capability defaults).
    initial: [u8; PCI_CONFIG_SPACE_SIZE],
    bars: [Option<BarSpec>; PCI_NUM_BARS],
    rom_size: Option<u32>,
    /// Offset of the last capability in the chain, and the next free offset.
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfig {
    /// A configuration space with `id` and no BARs or capabilities.
    pub fn new(id: &PciIdentity) -> Self {
        let mut c = PciConfig {
            bytes: [0; PCI_CONFIG_SPACE_SIZE],
            write_mask: [0; PCI_CONFIG_SPACE_SIZE],
            w1c_mask: [0; PCI_CONFIG_SPACE_SIZE],
            initial: [0; PCI_CONFIG_SPACE_SIZE],
            bars: [None; PCI_NUM_BARS],
            rom_size: None,
            last_cap: None,
            next_cap: PCI_CAP_START,
        };
        c.put16(PCI_VENDOR_ID, id.vendor_id);
        c.put16(PCI_DEVICE_ID, id.device_id);
        c.put16(PCI_COMMAND, id.command.bits());
        c.put16(PCI_STATUS, id.status.bits());
        c.bytes[PCI_REVISION_ID] = id.revision;
        c.bytes[PCI_CLASS_PROG] = id.prog_if;
        c.bytes[PCI_CLASS_DEVICE] = id.subclass;
        c.bytes[PCI_CLASS_DEVICE + 1] = id.class;
        c.put16(PCI_SUBSYSTEM_VENDOR_ID, id.subsystem_vendor_id);
        c.put16(PCI_SUBSYSTEM_ID, id.subsystem_id);
        c.bytes[PCI_INTERRUPT_PIN] = id.interrupt_pin.min(PCI_INTERRUPT_PIN_MAX);

        let command = CommandRegister::BUS_MASTER
            | CommandRegister::PARITY
            | CommandRegister::SERR
            | CommandRegister::INTX_DISABLE;
        c.mask16(PCI_COMMAND, command.bits());
        c.w1c_mask[PCI_STATUS..PCI_STATUS + 2]
            .copy_from_slice(&StatusRegister::WRITE_1_TO_CLEAR.bits().to_le_bytes());
        c.write_mask[PCI_CACHE_LINE_SIZE] = u8::MAX;
        c.write_mask[PCI_LATENCY_TIMER] = u8::MAX;
        c.write_mask[PCI_INTERRUPT_LINE] = u8::MAX;
        c.initial = c.bytes;
        c
    }

    /// Exposes BAR `index` as `bar`. A 64-bit BAR also takes `index + 1`.
    pub fn add_bar(&mut self, index: usize, bar: BarSpec) -> Result<&mut Self, ConfigError> {
        let span = if bar.kind == BarKind::Memory64 { 2 } else { 1 };
        if index + span > PCI_NUM_BARS {
            return Err(ConfigError::BarIndex(index));
        }
        if (index..index + span).any(|i| self.bars[i].is_some() || self.is_upper_half(i)) {
            return Err(ConfigError::BarInUse(index));
        }
        let ok = bar.size.is_power_of_two()
            && match bar.kind {
                BarKind::Io => (4..=256).contains(&bar.size),
                BarKind::Memory32 => (16..=1 << 31).contains(&bar.size),
                BarKind::Memory64 => bar.size >= 16,
            };
        if !ok {
            return Err(ConfigError::BarSize(bar.size));
        }
        let off = PCI_BASE_ADDRESS_0 + index * 4;
        let (low_bits, addr_mask) = match bar.kind {
            BarKind::Io => (PCI_BAR_IO, PCI_BAR_IO_ADDR_MASK),
            BarKind::Memory32 | BarKind::Memory64 => {
                let mut b = if bar.kind == BarKind::Memory64 {
                    PCI_BAR_MEM_TYPE_64
                } else {
                    0
                };
                if bar.prefetchable {
                    b |= PCI_BAR_MEM_PREFETCH;
                }
                (b, PCI_BAR_MEM_ADDR_MASK)
            }
        };
        let size_mask = !(bar.size - 1);
        self.put32(off, low_bits);
        let [lo, hi] = split_u64(size_mask);
        self.mask32(off, lo & addr_mask);
        if bar.kind == BarKind::Memory64 {
            self.mask32(off + 4, hi);
        }
        self.bars[index] = Some(bar);
        let enable = match bar.kind {
            BarKind::Io => CommandRegister::IO,
            _ => CommandRegister::MEMORY,
        };
        self.mask16(
            PCI_COMMAND,
            self.read16(&self.write_mask, PCI_COMMAND) | enable.bits(),
        );
        self.initial = self.bytes;
        Ok(self)
    }

    /// Exposes an expansion ROM of `size` bytes.
    pub fn set_rom(&mut self, size: u32) -> Result<&mut Self, ConfigError> {
        if !size.is_power_of_two() || size < PCI_ROM_MIN_SIZE {
            return Err(ConfigError::RomSize(size));
        }
        self.mask32(
            PCI_ROM_ADDRESS,
            (!(size - 1) & PCI_ROM_ADDR_MASK) | PCI_ROM_ENABLE,
        );
        self.mask16(
            PCI_COMMAND,
            self.read16(&self.write_mask, PCI_COMMAND) | CommandRegister::MEMORY.bits(),
        );
        self.rom_size = Some(size);
        Ok(self)
    }

    /// Appends `cap` to the capability chain; returns its offset.
    pub fn add_capability(&mut self, cap: &dyn PciCapability) -> Result<u8, ConfigError> {
        let bytes = cap.bytes();
        let mask = cap.write_mask();
        if bytes.len() < 2 || mask.len() != bytes.len() {
            return Err(ConfigError::CapabilityMalformed);
        }
        let off = self.next_cap;
        let end = off + bytes.len();
        if end > PCI_CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpace(bytes.len()));
        }
        self.bytes[off..end].copy_from_slice(&bytes);
        self.bytes[off] = cap.id();
        self.bytes[off + 1] = 0;
        self.write_mask[off + 2..end].copy_from_slice(&mask[2..]);
        // `end` <= 256 was checked above, so the offset fits a byte.
        let pointer = u8::try_from(off).map_err(|_| ConfigError::CapabilitySpace(bytes.len()))?;
        match self.last_cap {
            Some(last) => self.bytes[last + 1] = pointer,
            None => self.bytes[PCI_CAPABILITY_LIST] = pointer,
        }
        let status = self.read16(&self.bytes, PCI_STATUS) | StatusRegister::CAP_LIST.bits();
        self.put16(PCI_STATUS, status);
        self.last_cap = Some(off);
        self.next_cap = (end + 3) & !3;
        self.initial = self.bytes;
        Ok(pointer)
    }

    /// Reads `data.len()` bytes at `offset`; bytes beyond the space read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = Self::index(offset, i).map_or(0, |o| self.bytes[o]);
        }
    }

    /// Writes `data` at `offset` through the write and write-1-to-clear masks; bytes beyond
    /// the space and read-only bits are ignored, as hardware does.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = Self::index(offset, i) else {
                continue;
            };
            let m = self.write_mask[o];
            let old = self.bytes[o] & !(v & self.w1c_mask[o]);
            self.bytes[o] = (old & !m) | (v & m);
        }
    }

    fn index(offset: u64, i: usize) -> Option<usize> {
        let o = offset.checked_add(i as u64)?;
        usize::try_from(o)
            .ok()
            .filter(|o| *o < PCI_CONFIG_SPACE_SIZE)
    }

    /// The whole space.
    pub fn as_bytes(&self) -> &[u8; PCI_CONFIG_SPACE_SIZE] {
        &self.bytes
    }

    /// Back to reset values: BARs unprogrammed, command as at creation, capabilities disabled.
    pub fn reset(&mut self) {
        self.bytes = self.initial;
    }

    /// The command register.
    pub fn command(&self) -> CommandRegister {
        CommandRegister::from_bits_retain(self.read16(&self.bytes, PCI_COMMAND))
    }

    /// The status register.
    pub fn status(&self) -> StatusRegister {
        StatusRegister::from_bits_retain(self.read16(&self.bytes, PCI_STATUS))
    }

    /// Sets or clears the status register's interrupt bit (the INTx line level).
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let mut s = self.status();
        s.set(StatusRegister::INTERRUPT, asserted);
        self.put16(PCI_STATUS, s.bits());
    }

    /// The description of BAR `index`, if exposed.
    pub fn bar(&self, index: usize) -> Option<BarSpec> {
        self.bars.get(index).copied().flatten()
    }

    /// The size of the expansion ROM, if any.
    pub fn rom_size(&self) -> Option<u32> {
        self.rom_size
    }

    /// The address the guest programmed into BAR `index` (0 when unprogrammed or absent).
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(bar) = self.bar(index) else { return 0 };
        let off = PCI_BASE_ADDRESS_0 + index * 4;
        let low = self.read32(off);
        match bar.kind {
            BarKind::Io => u64::from(low & PCI_BAR_IO_ADDR_MASK),
            BarKind::Memory32 => u64::from(low & PCI_BAR_MEM_ADDR_MASK),
            BarKind::Memory64 => {
                (u64::from(self.read32(off + 4)) << 32) | u64::from(low & PCI_BAR_MEM_ADDR_MASK)
            }
        }
    }

    /// Offset of the first capability with `id`.
    pub fn capability_offset(&self, id: u8) -> Option<usize> {
        let mut off = self.bytes[PCI_CAPABILITY_LIST] as usize;
        let mut hops = 0;
        while (PCI_CAP_START..PCI_CONFIG_SPACE_SIZE - 1).contains(&off) && hops < MAX_CAP_HOPS {
            if self.bytes[off] == id {
                return Some(off);
            }
            off = self.bytes[off + 1] as usize;
            hops += 1;
        }
        None
    }

    fn is_upper_half(&self, index: usize) -> bool {
        index > 0
            && matches!(
                self.bars[index - 1],
                Some(BarSpec {
                    kind: BarKind::Memory64,
                    ..
                })
            )
    }

    fn read16(&self, space: &[u8; PCI_CONFIG_SPACE_SIZE], off: usize) -> u16 {
        u16::from_le_bytes([space[off], space[off + 1]])
    }

    fn read32(&self, off: usize) -> u32 {
        let b = &self.bytes;
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask16(&mut self, off: usize, v: u16) {
        self.write_mask[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn mask32(&mut self, off: usize, v: u32) {
        self.write_mask[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{
        MsiCapability, VendorCapability, MSI_CTRL_ENABLE, MSI_CTRL_MME_MASK, MSI_CTRL_MME_SHIFT,
        PCI_CAP_ID_MSI, PCI_CAP_ID_VNDR,
    };

    fn ident() -> PciIdentity {
        PciIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1234,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 7,
            revision: 2,
            class: 0x03,
            subclass: 0x80,
            prog_if: 0,
            interrupt_pin: 1,
            command: CommandRegister::empty(),
            status: StatusRegister::empty(),
        }
    }

    fn r32(c: &PciConfig, off: u64) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(c: &mut PciConfig, off: u64, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identity_registers_are_read_only() {
        let mut c = PciConfig::new(&ident());
        assert_eq!(r32(&c, 0), 0x1234_1af4);
        w32(&mut c, 0, 0xffff_ffff);
        assert_eq!(r32(&c, 0), 0x1234_1af4);
        assert_eq!(r32(&c, 8), 0x0380_0002);
        assert_eq!(c.as_bytes()[PCI_INTERRUPT_PIN], 1);
    }

    #[test]
    fn memory_bar_sizes_and_programs() {
        let mut c = PciConfig::new(&ident());
        c.add_bar(
            0,
            BarSpec {
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
        )
        .unwrap();
        w32(&mut c, 0x10, 0xffff_ffff);
        assert_eq!(r32(&c, 0x10), 0xffff_f000);
        w32(&mut c, 0x10, 0xfebf_1234);
        assert_eq!(r32(&c, 0x10), 0xfebf_1000);
        assert_eq!(c.bar_address(0), 0xfebf_1000);
    }

    #[test]
    fn bar64_sizes_across_both_dwords() {
        let mut c = PciConfig::new(&ident());
        c.add_bar(
            2,
            BarSpec {
                size: 1 << 33,
                kind: BarKind::Memory64,
                prefetchable: true,
            },
        )
        .unwrap();
        assert_eq!(
            r32(&c, 0x18) & 0xf,
            PCI_BAR_MEM_TYPE_64 | PCI_BAR_MEM_PREFETCH
        );
        w32(&mut c, 0x18, 0xffff_ffff);
        w32(&mut c, 0x1c, 0xffff_ffff);
        assert_eq!(r32(&c, 0x18), 0x0000_000c);
        assert_eq!(r32(&c, 0x1c), 0xffff_fffe);
        w32(&mut c, 0x18, 0);
        w32(&mut c, 0x1c, 0x4);
        assert_eq!(c.bar_address(2), 0x4_0000_0000);
        let io = BarSpec {
            size: 16,
            kind: BarKind::Io,
            prefetchable: false,
        };
        assert!(matches!(c.add_bar(3, io), Err(ConfigError::BarInUse(3))));
    }

    #[test]
    fn io_bar_keeps_its_type_bit() {
        let mut c = PciConfig::new(&ident());
        c.add_bar(
            4,
            BarSpec {
                size: 16,
                kind: BarKind::Io,
                prefetchable: false,
            },
        )
        .unwrap();
        w32(&mut c, 0x20, 0xffff_ffff);
        assert_eq!(r32(&c, 0x20), 0xffff_fff1);
    }

    #[test]
    fn absent_bars_read_zero_even_after_sizing() {
        let mut c = PciConfig::new(&ident());
        w32(&mut c, 0x14, 0xffff_ffff);
        assert_eq!(r32(&c, 0x14), 0);
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut c = PciConfig::new(&ident());
        let bar = |size, kind| BarSpec {
            size,
            kind,
            prefetchable: false,
        };
        assert!(c.add_bar(0, bar(0x1001, BarKind::Memory32)).is_err());
        assert!(c.add_bar(0, bar(512, BarKind::Io)).is_err());
        assert!(c.add_bar(5, bar(0x1000, BarKind::Memory64)).is_err());
        assert!(c.add_bar(6, bar(0x1000, BarKind::Memory32)).is_err());
    }

    #[test]
    fn command_register_masks_enable_bits_by_bar_kind() {
        let mut c = PciConfig::new(&ident());
        c.add_bar(
            0,
            BarSpec {
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
        )
        .unwrap();
        c.write(PCI_COMMAND as u64, &0xffffu16.to_le_bytes());
        let cmd = c.command();
        assert!(cmd.contains(CommandRegister::MEMORY | CommandRegister::BUS_MASTER));
        assert!(
            !cmd.contains(CommandRegister::IO),
            "no I/O BAR, so I/O enable is hardwired 0"
        );
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = PciConfig::new(&PciIdentity {
            status: StatusRegister::DETECTED_PARITY | StatusRegister::SIG_TARGET_ABORT,
            ..ident()
        });
        c.write(
            PCI_STATUS as u64,
            &StatusRegister::DETECTED_PARITY.bits().to_le_bytes(),
        );
        assert_eq!(c.status(), StatusRegister::SIG_TARGET_ABORT);
        c.set_interrupt_status(true);
        c.write(PCI_STATUS as u64, &0xffffu16.to_le_bytes());
        assert_eq!(
            c.status(),
            StatusRegister::INTERRUPT,
            "interrupt status is read-only"
        );
    }

    #[test]
    fn capabilities_chain_and_msi_programming() {
        let mut c = PciConfig::new(&ident());
        let v = c
            .add_capability(&VendorCapability {
                body: vec![0xaa; 5],
            })
            .unwrap();
        let m = c
            .add_capability(&MsiCapability {
                vectors: 4,
                address_64: true,
                per_vector_mask: true,
            })
            .unwrap();
        assert_eq!(v as usize, PCI_CAP_START);
        assert_eq!(m % 4, 0);
        assert_eq!(c.as_bytes()[PCI_CAPABILITY_LIST], v);
        assert_eq!(c.as_bytes()[v as usize + 1], m);
        assert!(c.status().contains(StatusRegister::CAP_LIST));
        assert_eq!(c.capability_offset(PCI_CAP_ID_VNDR), Some(v as usize));

        let m = m as u64;
        c.write(
            m + 2,
            &(MSI_CTRL_ENABLE | (2 << MSI_CTRL_MME_SHIFT)).to_le_bytes(),
        );
        w32(&mut c, m + 4, 0xfee0_0003);
        w32(&mut c, m + 8, 0x1);
        c.write(m + 12, &0x4041u16.to_le_bytes());
        w32(&mut c, m + 16, 0xffff_ffff);
        let ctrl = u16::from_le_bytes([c.as_bytes()[m as usize + 2], c.as_bytes()[m as usize + 3]]);
        assert_ne!(ctrl & MSI_CTRL_ENABLE, 0);
        assert_eq!((ctrl & MSI_CTRL_MME_MASK) >> MSI_CTRL_MME_SHIFT, 2);
        assert_eq!(r32(&c, m + 4), 0xfee0_0000, "the address is dword aligned");
        assert_eq!(r32(&c, m + 8), 0x1);
        assert_eq!(r32(&c, m + 12) & 0xffff, 0x4041);
        assert_eq!(
            r32(&c, m + 16),
            0xf,
            "only the 4 implemented vectors have mask bits"
        );
        c.write(m, &[0xff, 0xff]);
        assert_eq!(
            c.as_bytes()[m as usize],
            PCI_CAP_ID_MSI,
            "header is read-only"
        );
    }

    #[test]
    fn reset_restores_everything_the_guest_changed() {
        let mut c = PciConfig::new(&ident());
        c.add_bar(
            0,
            BarSpec {
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
        )
        .unwrap();
        c.add_capability(&MsiCapability {
            vectors: 1,
            address_64: false,
            per_vector_mask: false,
        })
        .unwrap();
        let before = *c.as_bytes();
        w32(&mut c, 0x10, 0xfe00_0000);
        c.write(PCI_COMMAND as u64, &[0x06, 0]);
        c.write(PCI_CAP_START as u64 + 2, &[1]);
        assert_ne!(*c.as_bytes(), before);
        c.reset();
        assert_eq!(*c.as_bytes(), before);
    }

    #[test]
    fn out_of_range_accesses_are_harmless() {
        let mut c = PciConfig::new(&ident());
        let mut b = [0xau8; 8];
        c.read(252, &mut b);
        assert_eq!(&b[4..], &[0, 0, 0, 0]);
        c.write(u64::MAX - 1, &[1, 2, 3]);
        c.write(300, &[1]);
        assert_eq!(r32(&c, 0), 0x1234_1af4);
    }

    #[test]
    fn rom_bar_sizes_with_enable_bit() {
        let mut c = PciConfig::new(&ident());
        c.set_rom(0x10000).unwrap();
        w32(&mut c, PCI_ROM_ADDRESS as u64, 0xffff_ffff);
        assert_eq!(r32(&c, PCI_ROM_ADDRESS as u64), 0xffff_0001);
        assert!(c.set_rom(0x100).is_err());
    }
}
