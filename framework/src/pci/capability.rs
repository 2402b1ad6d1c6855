//! PCI capabilities a device can put in its capability chain. Each knows its bytes (with the ID
//! and next-pointer bytes left for the chain to fill) and which bits the guest may write.

/// Capability IDs (PCI Local Bus spec, "Capability IDs").
pub const PCI_CAP_ID_PM: u8 = 0x01;
pub const PCI_CAP_ID_MSI: u8 = 0x05;
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
pub const PCI_CAP_ID_EXP: u8 = 0x10;
pub const PCI_CAP_ID_MSIX: u8 = 0x11;

/// MSI message control bits.
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
pub const MSI_CTRL_MMC_SHIFT: u16 = 1;
pub const MSI_CTRL_MME_SHIFT: u16 = 4;
pub const MSI_CTRL_MME_MASK: u16 = 0x7 << MSI_CTRL_MME_SHIFT;
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
pub const MSI_CTRL_PER_VECTOR_MASK: u16 = 1 << 8;

/// MSI-X message control bits.
pub const MSIX_CTRL_TABLE_SIZE_MASK: u16 = 0x07ff;
pub const MSIX_CTRL_FUNCTION_MASK: u16 = 1 << 14;
pub const MSIX_CTRL_ENABLE: u16 = 1 << 15;

/// Power-management control/status: the power state field and "no soft reset".
pub const PM_CTRL_STATE_MASK: u16 = 0x0003;
pub const PM_CTRL_NO_SOFT_RESET: u16 = 1 << 3;
/// PM capabilities register: version 3 (PCI PM 1.2).
pub const PM_CAP_VERSION_1_2: u16 = 0x0003;

/// A capability structure. `bytes()[0]` is the ID and `bytes()[1]` the next pointer, both
/// filled in by the chain; the rest is the body. `write_mask()` has one entry per byte.
pub trait PciCapability {
    /// The capability ID.
    fn id(&self) -> u8;
    /// The whole structure, including the two header bytes.
    fn bytes(&self) -> Vec<u8>;
    /// Bits the guest may change, byte for byte with `bytes()`. Header bytes are ignored.
    fn write_mask(&self) -> Vec<u8>;
}

/// An MSI capability with 1, 2, 4, 8, 16 or 32 vectors.
#[derive(Clone, Copy, Debug)]
pub struct MsiCapability {
    pub vectors: u8,
    pub address_64: bool,
    pub per_vector_mask: bool,
}

impl MsiCapability {
    /// Log2 of the vector count, the "multiple message capable" field.
    fn mmc(&self) -> u16 {
        let v = self.vectors.clamp(1, 32).next_power_of_two();
        v.trailing_zeros() as u16
    }

    /// Offsets of (address high, data, mask, pending) inside the capability.
    pub(crate) fn layout(address_64: bool) -> (Option<usize>, usize, usize, usize) {
        if address_64 {
            (Some(8), 12, 16, 20)
        } else {
            (None, 8, 12, 16)
        }
    }

    fn len(&self) -> usize {
        let (_, data, mask, _) = Self::layout(self.address_64);
        if self.per_vector_mask {
            mask + 8
        } else {
            data + 2
        }
    }
}

impl PciCapability for MsiCapability {
    fn id(&self) -> u8 {
        PCI_CAP_ID_MSI
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0; self.len()];
        let mut ctrl = self.mmc() << MSI_CTRL_MMC_SHIFT;
        if self.address_64 {
            ctrl |= MSI_CTRL_64BIT;
        }
        if self.per_vector_mask {
            ctrl |= MSI_CTRL_PER_VECTOR_MASK;
        }
        b[2..4].copy_from_slice(&ctrl.to_le_bytes());
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        let mut m = vec![0; self.len()];
        let ctrl = MSI_CTRL_ENABLE | MSI_CTRL_MME_MASK;
        m[2..4].copy_from_slice(&ctrl.to_le_bytes());
        // Message address: dword aligned.
        m[4..8].copy_from_slice(&0xffff_fffcu32.to_le_bytes());
        let (hi, data, mask, _) = Self::layout(self.address_64);
        if let Some(hi) = hi {
            m[hi..hi + 4].fill(0xff);
        }
        m[data..data + 2].fill(0xff);
        if self.per_vector_mask {
            let bits = if self.vectors >= 32 {
                u32::MAX
            } else {
                (1u32 << (1u32 << self.mmc())) - 1
            };
            m[mask..mask + 4].copy_from_slice(&bits.to_le_bytes());
        }
        m
    }
}

/// An MSI-X capability; the table and PBA live in BARs the device serves itself.
#[derive(Clone, Copy, Debug)]
pub struct MsixCapability {
    pub table_size: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl PciCapability for MsixCapability {
    fn id(&self) -> u8 {
        PCI_CAP_ID_MSIX
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0; 12];
        let ctrl = self.table_size.saturating_sub(1) & MSIX_CTRL_TABLE_SIZE_MASK;
        b[2..4].copy_from_slice(&ctrl.to_le_bytes());
        let table = (self.table_offset & !0x7) | u32::from(self.table_bar & 0x7);
        b[4..8].copy_from_slice(&table.to_le_bytes());
        let pba = (self.pba_offset & !0x7) | u32::from(self.pba_bar & 0x7);
        b[8..12].copy_from_slice(&pba.to_le_bytes());
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        let mut m = vec![0; 12];
        let ctrl = MSIX_CTRL_ENABLE | MSIX_CTRL_FUNCTION_MASK;
        m[2..4].copy_from_slice(&ctrl.to_le_bytes());
        m
    }
}

/// A power-management capability: D0/D3hot with "no soft reset".
#[derive(Clone, Copy, Debug, Default)]
pub struct PmCapability;

impl PciCapability for PmCapability {
    fn id(&self) -> u8 {
        PCI_CAP_ID_PM
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0; 8];
        b[2..4].copy_from_slice(&PM_CAP_VERSION_1_2.to_le_bytes());
        b[4..6].copy_from_slice(&PM_CTRL_NO_SOFT_RESET.to_le_bytes());
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        let mut m = vec![0; 8];
        m[4..6].copy_from_slice(&PM_CTRL_STATE_MASK.to_le_bytes());
        m
    }
}

/// A vendor-specific capability: ID, next, length, then `body`, all read-only.
#[derive(Clone, Debug)]
pub struct VendorCapability {
    pub body: Vec<u8>,
}

impl PciCapability for VendorCapability {
    fn id(&self) -> u8 {
        PCI_CAP_ID_VNDR
    }

    fn bytes(&self) -> Vec<u8> {
        let len = (3 + self.body.len()).min(u8::MAX as usize);
        let mut b = vec![0; len];
        b[2] = len as u8;
        b[3..].copy_from_slice(&self.body[..len - 3]);
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        vec![0; (3 + self.body.len()).min(u8::MAX as usize)]
    }
}

/// The guest-programmed state of an MSI capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiState {
    pub enabled: bool,
    /// Vectors the guest enabled (1 << MME).
    pub vectors: u32,
    pub address: u64,
    pub data: u16,
    /// Per-vector mask bits (0 when the capability has none).
    pub mask: u32,
}

impl MsiState {
    /// Whether vector `v` is masked.
    pub fn masked(&self, v: u32) -> bool {
        v < 32 && self.mask & (1 << v) != 0
    }
}

/// The guest-programmed state of an MSI-X capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixState {
    pub enabled: bool,
    pub function_masked: bool,
    pub table_size: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_lengths_follow_the_spec() {
        let c = |a, m| MsiCapability {
            vectors: 1,
            address_64: a,
            per_vector_mask: m,
        };
        assert_eq!(c(false, false).bytes().len(), 10);
        assert_eq!(c(true, false).bytes().len(), 14);
        assert_eq!(c(false, true).bytes().len(), 20);
        assert_eq!(c(true, true).bytes().len(), 24);
    }

    #[test]
    fn msi_advertises_vector_count_and_64bit() {
        let c = MsiCapability {
            vectors: 4,
            address_64: true,
            per_vector_mask: false,
        };
        let ctrl = u16::from_le_bytes([c.bytes()[2], c.bytes()[3]]);
        assert_eq!((ctrl >> MSI_CTRL_MMC_SHIFT) & 0x7, 2);
        assert_ne!(ctrl & MSI_CTRL_64BIT, 0);
    }

    #[test]
    fn vendor_capability_carries_its_length() {
        let c = VendorCapability {
            body: vec![1, 2, 3],
        };
        assert_eq!(c.bytes(), vec![0, 0, 6, 1, 2, 3]);
    }

    #[test]
    fn msix_encodes_table_size_minus_one_and_bir() {
        let c = MsixCapability {
            table_size: 8,
            table_bar: 1,
            table_offset: 0x1000,
            pba_bar: 1,
            pba_offset: 0x2000,
        };
        let b = c.bytes();
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 7);
        assert_eq!(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), 0x1001);
    }
}
