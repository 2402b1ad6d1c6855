//! The mbochs types: framebuffer memory, the largest mode each scans out, and the mode its
//! EDID prefers.

/// A display resolution in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resolution {
    /// Width.
    pub width: u16,
    /// Height.
    pub height: u16,
}

impl Resolution {
    /// `width` × `height`.
    pub const fn new(width: u16, height: u16) -> Self {
        Resolution { width, height }
    }

    /// True when both sides are at most `max`'s.
    pub fn within(self, max: Resolution) -> bool {
        self.width <= max.width && self.height <= max.height
    }

    /// Bytes a 32-bit-per-pixel picture of this size takes.
    pub fn bytes_at_32bpp(self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * 4
    }
}

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// A type of mbochs device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MbochsType {
    /// Type name (`small`, `medium`, `large`).
    pub name: &'static str,
    /// Framebuffer memory in MiB, taken from the parent's pool.
    pub mbytes: u64,
    /// Largest mode the device scans out; `None` for no limit but the memory (and the 16-bit
    /// registers).
    pub max: Option<Resolution>,
    /// The mode the EDID marks preferred.
    pub preferred: Resolution,
}

/// The largest mode the bochs DISPI interface describes (what GETCAPS reports for a type
/// without its own limit; QEMU's VBE uses the same bounds).
pub const DISPI_MAX_RESOLUTION: Resolution = Resolution::new(16000, 12000);

/// The largest mode the EDID of a type without a resolution limit advertises.
pub const UNLIMITED_EDID_MAX: Resolution = Resolution::new(2560, 1600);

/// Every type, smallest first (memory sizes and limits as in the kernel's mbochs sample).
pub const TYPES: [MbochsType; 3] = [
    MbochsType {
        name: "small",
        mbytes: 4,
        max: Some(Resolution::new(800, 600)),
        preferred: Resolution::new(800, 600),
    },
    MbochsType {
        name: "medium",
        mbytes: 16,
        max: Some(Resolution::new(1920, 1440)),
        preferred: Resolution::new(1024, 768),
    },
    MbochsType {
        name: "large",
        mbytes: 64,
        max: None,
        preferred: Resolution::new(1024, 768),
    },
];

impl MbochsType {
    /// The type called `name`.
    pub fn by_name(name: &str) -> Option<&'static MbochsType> {
        TYPES.iter().find(|t| t.name == name)
    }

    /// The type whose memory is `bytes` (how a viewer recognises a device it attached to).
    pub fn by_memory(bytes: u64) -> Option<&'static MbochsType> {
        TYPES.iter().find(|t| t.memory() == bytes)
    }

    /// Framebuffer memory in bytes.
    pub const fn memory(&self) -> u64 {
        self.mbytes * MIB
    }

    /// The largest mode scanned out, with "no limit" as the DISPI interface's range.
    pub fn max_resolution(&self) -> Resolution {
        self.max.unwrap_or(DISPI_MAX_RESOLUTION)
    }

    /// The largest mode the EDID lists.
    pub fn edid_max(&self) -> Resolution {
        self.max.unwrap_or(UNLIMITED_EDID_MAX)
    }

    /// A line for `types`.
    pub fn description(&self) -> String {
        match self.max {
            Some(m) => format!(
                "bochs-display, {} MiB, up to {}x{}",
                self.mbytes, m.width, m.height
            ),
            None => format!("bochs-display, {} MiB, no resolution limit", self.mbytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preferred_mode_fits_its_type() {
        for t in TYPES {
            assert!(t.preferred.within(t.edid_max()), "{}", t.name);
            assert!(t.edid_max().bytes_at_32bpp() <= t.memory(), "{}", t.name);
            assert!(t.memory().is_power_of_two());
            assert_eq!(
                MbochsType::by_memory(t.memory()).map(|x| x.name),
                Some(t.name)
            );
        }
    }
}
