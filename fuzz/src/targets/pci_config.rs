//! `pci_config`: a configuration space built from arbitrary BARs, ROM and capabilities, then
//! driven by an arbitrary sequence of guest reads and writes of any width at any offset.
//!
//! Invariants after every write: bytes outside the writable registers (identity, header
//! type, capability pointer, pin, capability IDs and next pointers, absent BARs) never
//! change; every BAR reads back its type bits and an address aligned to its size (so writing
//! all ones reads back the size mask); the ROM keeps its reserved bits clear and its address
//! aligned; command bits the function cannot use stay clear; status bits are only ever
//! cleared by a write, never set; MSI and MSI-X programming stay within what the capability
//! offers. `reset` brings back the space as built.

use arbitrary::{Arbitrary, Result, Unstructured};
use mdev::pci::{
    BarKind, BarSpec, CommandRegister, MsiCapability, PciCapability, PciConfig, PciIdentity,
    PmCapability, StatusRegister, VendorCapability, MSI_ADDRESS_LO, PCI_BASE_ADDRESS_0,
    PCI_CAPABILITY_LIST, PCI_CAP_ID_MSI, PCI_CONFIG_SPACE_SIZE, PCI_NUM_BARS, PCI_ROM_ADDRESS,
    PCI_STATUS,
};

/// A BAR as the input describes it.
#[derive(Arbitrary, Debug)]
struct BarInput {
    index: u8,
    size_log2: u8,
    kind: u8,
    prefetchable: bool,
}

/// A capability as the input describes it.
#[derive(Arbitrary, Debug)]
enum CapInput {
    Msi {
        vectors: u8,
        address_64: bool,
        per_vector_mask: bool,
    },
    Pm,
    Vendor {
        body: Vec<u8>,
    },
}

/// A guest access.
#[derive(Arbitrary, Debug)]
enum Access {
    Read {
        offset: u16,
        len: u8,
    },
    Write {
        offset: u16,
        data: Vec<u8>,
    },
    /// All ones to a BAR dword, as a sizing probe does.
    Size {
        bar: u8,
    },
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    vendor_id: u16,
    device_id: u16,
    class: u8,
    interrupt_pin: u8,
    command: u16,
    status: u16,
    bars: Vec<BarInput>,
    rom_log2: Option<u8>,
    caps: Vec<CapInput>,
    accesses: Vec<Access>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let _ = drive(plan);
}

/// What the space was built with, to check it against.
struct Layout {
    bars: [Option<BarSpec>; PCI_NUM_BARS],
    rom: Option<u32>,
    /// (offset, length) of each capability.
    caps: Vec<(usize, usize)>,
    /// Bytes a write may change.
    writable: [bool; PCI_CONFIG_SPACE_SIZE],
}

fn build(plan: &Plan) -> (PciConfig, Layout) {
    let mut c = PciConfig::new(&PciIdentity {
        vendor_id: plan.vendor_id,
        device_id: plan.device_id,
        subsystem_vendor_id: plan.vendor_id,
        subsystem_id: 1,
        revision: 1,
        class: plan.class,
        subclass: 0,
        prog_if: 0,
        interrupt_pin: plan.interrupt_pin,
        command: CommandRegister::from_bits_retain(plan.command),
        status: StatusRegister::from_bits_retain(plan.status),
    });
    for b in plan.bars.iter().take(8) {
        let kind = match b.kind % 3 {
            0 => BarKind::Io,
            1 => BarKind::Memory32,
            _ => BarKind::Memory64,
        };
        let size = 1u64.checked_shl(u32::from(b.size_log2 % 64)).unwrap_or(0);
        // Refused descriptions (bad index, size, overlap) are the builder's to refuse.
        let _ = c.add_bar(
            usize::from(b.index % 8),
            BarSpec {
                size,
                kind,
                prefetchable: b.prefetchable,
            },
        );
    }
    if let Some(r) = plan.rom_log2 {
        let _ = c.set_rom(1u32.checked_shl(u32::from(r % 32)).unwrap_or(0));
    }
    let mut caps = Vec::new();
    for cap in plan.caps.iter().take(12) {
        let boxed: Box<dyn PciCapability> = match cap {
            CapInput::Msi {
                vectors,
                address_64,
                per_vector_mask,
            } => Box::new(MsiCapability {
                vectors: *vectors,
                address_64: *address_64,
                per_vector_mask: *per_vector_mask,
            }),
            CapInput::Pm => Box::new(PmCapability),
            CapInput::Vendor { body } => Box::new(VendorCapability { body: body.clone() }),
        };
        if let Ok(off) = c.add_capability(boxed.as_ref()) {
            caps.push((usize::from(off), boxed.bytes().len()));
        }
    }
    let bars = std::array::from_fn(|i| c.bar(i));
    let mut writable = [false; PCI_CONFIG_SPACE_SIZE];
    // Command, status (write-1-to-clear), cache line, latency timer, interrupt line.
    for o in [0x04, 0x05, 0x06, 0x07, 0x0c, 0x0d, 0x3c] {
        writable[o] = true;
    }
    for (i, bar) in bars.iter().enumerate() {
        if let Some(bar) = bar {
            let span = if bar.kind == BarKind::Memory64 { 8 } else { 4 };
            let at = PCI_BASE_ADDRESS_0 + 4 * i;
            writable[at..at + span].fill(true);
        }
    }
    let rom = c.rom_size();
    if rom.is_some() {
        writable[PCI_ROM_ADDRESS..PCI_ROM_ADDRESS + 4].fill(true);
    }
    for &(off, len) in &caps {
        writable[off + 2..off + len].fill(true);
    }
    (
        c,
        Layout {
            bars,
            rom,
            caps,
            writable,
        },
    )
}

fn read32(c: &PciConfig, off: usize) -> u32 {
    let mut b = [0u8; 4];
    c.read(off as u64, &mut b);
    u32::from_le_bytes(b)
}

fn drive(plan: Plan) -> Result<()> {
    let (mut c, layout) = build(&plan);
    let built = *c.as_bytes();
    check(&c, &layout, &built, &built);
    for access in plan.accesses.iter().take(256) {
        let before = *c.as_bytes();
        match access {
            Access::Read { offset, len } => {
                let mut buf = vec![0xa5u8; usize::from(*len % 9)];
                c.read(u64::from(*offset), &mut buf);
                for (i, b) in buf.iter().enumerate() {
                    let o = usize::from(*offset) + i;
                    assert_eq!(
                        *b,
                        before.get(o).copied().unwrap_or(0),
                        "read of byte {o:#x}"
                    );
                }
            }
            Access::Write { offset, data } => {
                c.write(u64::from(*offset), &data[..data.len().min(8)]);
            }
            Access::Size { bar } => {
                let at = PCI_BASE_ADDRESS_0 + 4 * usize::from(bar % 7);
                c.write(at as u64, &u32::MAX.to_le_bytes());
                if let Some(spec) = layout.bars.get(usize::from(bar % 7)).copied().flatten() {
                    let v = read32(&c, at);
                    let low = match spec.kind {
                        BarKind::Io => 0x3,
                        _ => 0xf,
                    };
                    let size_mask = !(spec.size - 1) as u32;
                    assert_eq!(v & !low, size_mask & !low, "BAR sizing reads back the size");
                }
            }
            Access::Reset => {
                c.reset();
                assert_eq!(*c.as_bytes(), built, "reset restores the space as built");
                // Status bits come back as built: the status rule is against guest writes.
                check(&c, &layout, &built, &built);
                continue;
            }
        }
        check(&c, &layout, &before, &built);
    }
    Ok(())
}

fn check(c: &PciConfig, layout: &Layout, before: &[u8; 256], built: &[u8; 256]) {
    let now = c.as_bytes();
    for o in 0..PCI_CONFIG_SPACE_SIZE {
        if !layout.writable[o] {
            assert_eq!(now[o], built[o], "read-only byte {o:#x} changed");
        }
    }
    assert_eq!(now[PCI_CAPABILITY_LIST], built[PCI_CAPABILITY_LIST]);
    for (i, bar) in layout.bars.iter().enumerate() {
        let v = read32(c, PCI_BASE_ADDRESS_0 + 4 * i);
        let Some(bar) = bar else {
            let upper =
                i > 0 && matches!(layout.bars[i - 1], Some(b) if b.kind == BarKind::Memory64);
            if !upper {
                assert_eq!(v, 0, "absent BAR {i} reads 0");
            }
            continue;
        };
        let (type_bits, low) = match bar.kind {
            BarKind::Io => (0x1, 0x3),
            BarKind::Memory32 => (if bar.prefetchable { 0x8 } else { 0 }, 0xf),
            BarKind::Memory64 => (0x4 | if bar.prefetchable { 0x8 } else { 0 }, 0xf),
        };
        assert_eq!(v & low, type_bits, "BAR {i} keeps its type bits");
        let addr = if bar.kind == BarKind::Memory64 {
            u64::from(v & !low) | (u64::from(read32(c, PCI_BASE_ADDRESS_0 + 4 * i + 4)) << 32)
        } else {
            u64::from(v & !low)
        };
        assert_eq!(
            addr & (bar.size - 1),
            0,
            "BAR {i} address aligned to its size"
        );
        assert_eq!(c.bar_address(i), addr);
    }
    let rom = read32(c, PCI_ROM_ADDRESS);
    match layout.rom {
        Some(size) => {
            assert_eq!(rom & 0x7fe, 0, "ROM reserved bits");
            assert_eq!(
                rom & !0x7ff & (size - 1),
                0,
                "ROM address aligned to its size"
            );
        }
        None => assert_eq!(rom, 0, "no ROM reads 0"),
    }
    let has_io = layout.bars.iter().flatten().any(|b| b.kind == BarKind::Io);
    let has_mem =
        layout.rom.is_some() || layout.bars.iter().flatten().any(|b| b.kind != BarKind::Io);
    let cmd = c.command();
    let was = CommandRegister::from_bits_retain(u16::from_le_bytes([built[4], built[5]]));
    if !has_io && !was.contains(CommandRegister::IO) {
        assert!(
            !cmd.contains(CommandRegister::IO),
            "I/O enable without an I/O BAR"
        );
    }
    if !has_mem && !was.contains(CommandRegister::MEMORY) {
        assert!(
            !cmd.contains(CommandRegister::MEMORY),
            "memory enable without a memory BAR"
        );
    }
    let status_before = u16::from_le_bytes([before[PCI_STATUS], before[PCI_STATUS + 1]]);
    let status = c.status().bits();
    assert_eq!(status & !status_before, 0, "a write set a status bit");
    if let Some(msi) = c.capability_offset(PCI_CAP_ID_MSI) {
        assert_eq!(
            now[msi + MSI_ADDRESS_LO] & 0x3,
            0,
            "MSI address is dword aligned"
        );
    }
    for &(off, _) in &layout.caps {
        assert_eq!(now[off], built[off], "capability ID");
        assert_eq!(now[off + 1], built[off + 1], "capability next pointer");
    }
}
