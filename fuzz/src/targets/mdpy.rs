//! `mdpy`: an mdpy function of each type driven through the device interface as the server
//! drives it for a guest: reads and writes of any width to every region (only those the
//! server lets through: inside a region that allows the direction), and resets.
//!
//! Invariants: the identity registers and the mode capability never change and always
//! decode to the type's mode, which is also the scan-out; BAR0 sizes as the framebuffer; the
//! writable registers are exactly command, status, cache line, latency, interrupt line and
//! BAR0; the framebuffer reads back what was written and survives a reset, which restores
//! config space.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use mdev::parent::Budget;
use mdev::region::{RegionFlags, BAR0_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::Device;
use mdev_display::DisplayModel;
use mdpy::mode::{decode_mode, FORMAT_OFFSET, MODE_FIELDS_LEN};
use mdpy::types::TYPES;
use uuid::Uuid;

#[derive(Arbitrary, Debug)]
enum Step {
    Read {
        region: u8,
        offset: u32,
        len: u8,
    },
    Write {
        region: u8,
        offset: u32,
        data: Vec<u8>,
    },
    SizeBar0,
    Reset,
}

#[derive(Arbitrary, Debug)]
struct Plan {
    ty: u8,
    steps: Vec<Step>,
}

/// Config-space bytes a guest may change.
fn writable(o: usize) -> bool {
    matches!(o, 0x04..=0x07 | 0x0c | 0x0d | 0x3c | 0x10..=0x13)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(plan) = Plan::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let ty = TYPES[usize::from(plan.ty) % TYPES.len()];
    let budget = Budget::new("fuzz mdpy", 1);
    let reservation = budget.take(1).expect("a fresh budget");
    let mut dev = mdpy::new_mdpy(&ty, Uuid::nil(), reservation).expect("mdpy device");
    let mode = ty.mode();
    let bar0 = dev.region_info(BAR0_REGION_INDEX);
    assert!(
        bar0.size >= mode.stride * u64::from(mode.height),
        "framebuffer holds the mode"
    );
    assert!(bar0.size.is_power_of_two());
    let mut config = [0u8; 256];
    dev.read(CONFIG_REGION_INDEX, 0, &mut config)
        .expect("config read");
    let built = config;
    let mut shadow: BTreeMap<u64, u8> = BTreeMap::new();
    for step in plan.steps.iter().take(256) {
        match step {
            Step::Read {
                region,
                offset,
                len,
            } => {
                let mut buf = vec![0u8; usize::from(*len % 9)];
                let region = u32::from(*region % 10);
                if !allowed(
                    &dev,
                    region,
                    u64::from(*offset),
                    buf.len(),
                    RegionFlags::READ,
                ) {
                    continue;
                }
                dev.read(region, u64::from(*offset), &mut buf)
                    .expect("an allowed read");
                if region == BAR0_REGION_INDEX {
                    for (i, b) in buf.iter().enumerate() {
                        let o = u64::from(*offset) + i as u64;
                        assert_eq!(
                            *b,
                            shadow.get(&o).copied().unwrap_or(0),
                            "framebuffer byte {o:#x}"
                        );
                    }
                }
            }
            Step::Write {
                region,
                offset,
                data,
            } => {
                let data = &data[..data.len().min(8)];
                let region = u32::from(*region % 10);
                if !allowed(
                    &dev,
                    region,
                    u64::from(*offset),
                    data.len(),
                    RegionFlags::WRITE,
                ) {
                    continue;
                }
                dev.write(region, u64::from(*offset), data)
                    .expect("an allowed write");
                if region == BAR0_REGION_INDEX {
                    for (i, b) in data.iter().enumerate() {
                        shadow.insert(u64::from(*offset) + i as u64, *b);
                    }
                }
            }
            Step::SizeBar0 => {
                dev.write(CONFIG_REGION_INDEX, 0x10, &[0xff; 4])
                    .expect("BAR0 write");
                let mut v = [0u8; 4];
                dev.read(CONFIG_REGION_INDEX, 0x10, &mut v)
                    .expect("BAR0 read");
                let v = u32::from_le_bytes(v);
                assert_eq!(
                    u64::from(v & !0xf),
                    !(bar0.size - 1) & 0xffff_fff0,
                    "BAR0 sizes as the framebuffer"
                );
            }
            Step::Reset => {
                let ctx = mdev::SetContext {
                    this: mdev::DeviceId(0),
                    requester: None,
                    members: &[],
                };
                dev.reset(&ctx).expect("reset");
                let mut now = [0u8; 256];
                dev.read(CONFIG_REGION_INDEX, 0, &mut now)
                    .expect("config read");
                assert_eq!(now, built, "reset restores config space");
            }
        }
        let mut now = [0u8; 256];
        dev.read(CONFIG_REGION_INDEX, 0, &mut now)
            .expect("config read");
        for o in 0..256 {
            if !writable(o) {
                assert_eq!(now[o], built[o], "read-only config byte {o:#x}");
            }
        }
        let at = FORMAT_OFFSET as usize;
        let fields: [u8; MODE_FIELDS_LEN] =
            now[at..at + MODE_FIELDS_LEN].try_into().expect("12 bytes");
        assert_eq!(decode_mode(&fields), Some(mode), "the mode capability");
        assert_eq!(
            dev.function().model().scanout(),
            Some(mode),
            "the scan-out is the type's mode"
        );
    }
}

/// Whether the server would let this access reach the device.
fn allowed(dev: &dyn Device, region: u32, offset: u64, len: usize, need: RegionFlags) -> bool {
    if region >= dev.num_regions() {
        return false;
    }
    let info = dev.region_info(region);
    info.flags.contains(need)
        && offset
            .checked_add(len as u64)
            .is_some_and(|e| e <= info.size)
}
