//! PCI addresses (`DDDD:BB:DD.F`), as sysfs and VFIO name host functions.

use std::fmt;
use std::str::FromStr;

/// Highest PCI device number on a bus.
const MAX_DEVICE: u8 = 0x1f;
/// Highest function number of a device.
const MAX_FUNCTION: u8 = 7;
/// Bits of `devfn` that hold the function number.
const DEVFN_FUNCTION_BITS: u8 = 3;

/// The address of one PCI function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment (domain).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0–31).
    pub device: u8,
    /// Function number (0–7).
    pub function: u8,
}

impl PciAddress {
    /// The address of `devfn` on `domain:bus` (as `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`
    /// reports it).
    pub fn from_devfn(domain: u16, bus: u8, devfn: u8) -> Self {
        PciAddress {
            domain,
            bus,
            device: devfn >> DEVFN_FUNCTION_BITS,
            function: devfn & MAX_FUNCTION,
        }
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Why a string is not a PCI address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a PCI address (DDDD:BB:DD.F or BB:DD.F)")]
pub struct BadPciAddress(pub String);

impl FromStr for PciAddress {
    type Err = BadPciAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadPciAddress(s.to_string());
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, dev] => (*d, *b, *dev),
            [b, dev] => ("0", *b, *dev),
            _ => return Err(bad()),
        };
        let hex8 = |t: &str| u8::from_str_radix(t, 16).map_err(|_| bad());
        let addr = PciAddress {
            domain: u16::from_str_radix(domain, 16).map_err(|_| bad())?,
            bus: hex8(bus)?,
            device: hex8(device)?,
            function: hex8(function)?,
        };
        if addr.device > MAX_DEVICE || addr.function > MAX_FUNCTION {
            return Err(bad());
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms_and_prints_the_full_one() {
        let a: PciAddress = "0000:01:02.0".parse().unwrap();
        assert_eq!(a, PciAddress::from_devfn(0, 1, 2 << 3));
        assert_eq!("01:02.0".parse::<PciAddress>().unwrap(), a);
        assert_eq!(a.to_string(), "0000:01:02.0");
    }

    #[test]
    fn rejects_out_of_range_parts() {
        for s in ["0000:01:20.0", "0000:01:02.8", "01.0", "x:01:02.0", ""] {
            assert!(s.parse::<PciAddress>().is_err(), "{s}");
        }
    }
}
