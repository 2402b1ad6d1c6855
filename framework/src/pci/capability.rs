//! PCI capabilities a device can put in its capability chain. Each knows its bytes (with the ID
//! and next-pointer bytes left for the chain to fill) and which bits the guest may write.

// Capability IDs (PCI Local Bus spec, "Capability IDs").
/// Capability ID: power management.
pub const PCI_CAP_ID_PM: u8 = 0x01;
/// Capability ID: MSI.
pub const PCI_CAP_ID_MSI: u8 = 0x05;
/// Capability ID: vendor specific.
pub const PCI_CAP_ID_VNDR: u8 = 0x09;
/// Capability ID: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;

/// Offset of the 16-bit control register (MSI) or capabilities register (PM) inside
/// a capability, right after the ID and next-pointer bytes.
pub const PCI_CAP_CONTROL: usize = 2;

// MSI message control bits.
/// MSI control: MSI enable.
pub const MSI_CTRL_ENABLE: u16 = 1 << 0;
/// MSI control: shift of the "multiple message capable" field.
pub const MSI_CTRL_MMC_SHIFT: u16 = 1;
/// MSI control: shift of the "multiple message enable" field.
pub const MSI_CTRL_MME_SHIFT: u16 = 4;
/// MSI control: the "multiple message enable" field.
pub const MSI_CTRL_MME_MASK: u16 = 0x7 << MSI_CTRL_MME_SHIFT;
/// MSI control: 64-bit message address capable.
pub const MSI_CTRL_64BIT: u16 = 1 << 7;
/// MSI control: per-vector masking capable.
pub const MSI_CTRL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Offset of the MSI message address (low dword) inside the capability.
pub const MSI_ADDRESS_LO: usize = 4;
/// Writable bits of the MSI message address low dword: it is dword aligned.
pub const MSI_ADDRESS_LO_MASK: u32 = !0x3;
/// Largest MSI vector count.
pub const MSI_MAX_VECTORS: u8 = 32;

// Power-management registers.
/// Offset of the PM control/status register inside the capability.
pub const PM_CTRL: usize = 4;
/// PM control/status: the power state field.
pub const PM_CTRL_STATE_MASK: u16 = 0x0003;
/// PM control/status: "no soft reset" (state kept across D3hot to D0).
pub const PM_CTRL_NO_SOFT_RESET: u16 = 1 << 3;
/// PM capabilities register: version 3 (PCI PM 1.2).
pub const PM_CAP_VERSION_1_2: u16 = 0x0003;
/// Size of the PM capability.
pub const PM_CAP_LEN: usize = 8;

/// Offset of the length byte of a vendor-specific capability.
pub const VNDR_LEN: usize = 2;
/// Bytes before a vendor-specific capability's body: ID, next pointer, length.
pub const VNDR_HEADER_LEN: usize = 3;

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

/// Writes `v` little-endian at `at` of `b`.
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `at` of `b`.
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// An MSI capability with 1, 2, 4, 8, 16 or 32 vectors.
#[derive(Clone, Copy, Debug)]
pub struct MsiCapability {
    /// Vectors offered; rounded up to a power of two, clamped to 1..=32.
    pub vectors: u8,
    /// Whether the message address is 64-bit.
    pub address_64: bool,
    /// Whether the capability has per-vector mask and pending bits.
    pub per_vector_mask: bool,
}

impl MsiCapability {
    /// Log2 of the vector count, the "multiple message capable" field.
    fn mmc(&self) -> u16 {
        let v = self.vectors.clamp(1, MSI_MAX_VECTORS).next_power_of_two();
        u16::try_from(v.trailing_zeros()).unwrap_or(0)
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
            // Mask and pending dwords.
            mask + 8
        } else {
            // The 16-bit message data.
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
        put16(&mut b, PCI_CAP_CONTROL, ctrl);
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        let mut m = vec![0; self.len()];
        put16(&mut m, PCI_CAP_CONTROL, MSI_CTRL_ENABLE | MSI_CTRL_MME_MASK);
        put32(&mut m, MSI_ADDRESS_LO, MSI_ADDRESS_LO_MASK);
        let (hi, data, mask, _) = Self::layout(self.address_64);
        if let Some(hi) = hi {
            put32(&mut m, hi, u32::MAX);
        }
        put16(&mut m, data, u16::MAX);
        if self.per_vector_mask {
            // One bit per vector the capability advertises (a power of two, at most 32).
            let bits = 1u32
                .checked_shl(1u32 << self.mmc())
                .map_or(u32::MAX, |b| b - 1);
            put32(&mut m, mask, bits);
        }
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
        let mut b = vec![0; PM_CAP_LEN];
        put16(&mut b, PCI_CAP_CONTROL, PM_CAP_VERSION_1_2);
        put16(&mut b, PM_CTRL, PM_CTRL_NO_SOFT_RESET);
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        let mut m = vec![0; PM_CAP_LEN];
        put16(&mut m, PM_CTRL, PM_CTRL_STATE_MASK);
        m
    }
}

/// A vendor-specific capability: ID, next, length, then `body`, all read-only.
#[derive(Clone, Debug)]
pub struct VendorCapability {
    /// The bytes after the 3-byte header; cut so the whole capability fits 255 bytes.
    pub body: Vec<u8>,
}

impl VendorCapability {
    /// Length of the whole capability, header included (the length byte caps it at 255).
    fn len(&self) -> usize {
        (VNDR_HEADER_LEN + self.body.len()).min(u8::MAX as usize)
    }
}

impl PciCapability for VendorCapability {
    fn id(&self) -> u8 {
        PCI_CAP_ID_VNDR
    }

    fn bytes(&self) -> Vec<u8> {
        let len = self.len();
        let mut b = vec![0; len];
        b[VNDR_LEN] = u8::try_from(len).unwrap_or(u8::MAX);
        b[VNDR_HEADER_LEN..].copy_from_slice(&self.body[..len - VNDR_HEADER_LEN]);
        b
    }

    fn write_mask(&self) -> Vec<u8> {
        vec![0; self.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_with_17_to_32_vectors_has_all_32_mask_bits_writable() {
        for vectors in 17..=MSI_MAX_VECTORS {
            let cap = MsiCapability {
                vectors,
                address_64: false,
                per_vector_mask: true,
            };
            let (_, _, mask, _) = MsiCapability::layout(false);
            assert_eq!(
                &cap.write_mask()[mask..mask + 4],
                &[0xff; 4],
                "{vectors} vectors"
            );
        }
        let three = MsiCapability {
            vectors: 3,
            address_64: true,
            per_vector_mask: true,
        };
        let (_, _, mask, _) = MsiCapability::layout(true);
        assert_eq!(&three.write_mask()[mask..mask + 4], &[0x0f, 0, 0, 0]);
    }

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
}
