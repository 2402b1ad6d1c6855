//! mdpy through vfio-user: identity and the read-only mode capability, pixels drawn through
//! the mapped BAR0 and seen in a PNG snapshot, the device budget, and the multi-open rules.

use std::path::Path;

use mdev::parent::{Budget, CreateParams};
use mdev::region::CONFIG_REGION_INDEX;
use mdev::Device;
use mdev_display::cli::{snapshot_every, snapshot_once, Periodic};
use mdev_display::testing::{draw_pattern, expected_rgb, map_framebuffer_rw};
use mdev_display::{DisplayClient, Mode, PixelFormat};
use mdev_tests::wait_until;
use mdev_tests::ParentHarness;
use mdpy::mode::{FORMAT_OFFSET, HEIGHT_OFFSET, MODE_CAPABILITY_OFFSET, WIDTH_OFFSET};
use mdpy::types::MdpyType;
use mdpy::{new_mdpy, ConfigModeReader, MdpyDriver};
use vfio_user::Client;

type Harness = ParentHarness<MdpyDriver>;

/// A parent for the driver with the given budget.
fn harness(budget: u64) -> Harness {
    ParentHarness::new(MdpyDriver::new(budget), "mdpy-test")
}

fn config_u32(c: &mut Client, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(CONFIG_REGION_INDEX, offset, &mut b)
        .expect("config read");
    u32::from_le_bytes(b)
}

fn snapshot(socket: &Path, dir: &Path, name: &str) -> image::RgbImage {
    let out = dir.join(name);
    snapshot_once(socket, Box::new(ConfigModeReader), &out).expect("snapshot");
    image::open(&out).expect("decode png").to_rgb8()
}

#[test]
fn identity_and_mode_capability() {
    let h = harness(4);
    let socket = h.socket("xga");
    let mut c = Client::new(&socket).expect("connect");
    assert_eq!(config_u32(&mut c, 0), 0x000f_1b36);
    assert_eq!(config_u32(&mut c, 0x2c), 0x1100_1af4);
    assert_eq!(config_u32(&mut c, 8) >> 24, 0x03);
    // The capability list starts at 0x40 with a vendor-specific capability.
    let mut ptr = [0u8; 1];
    c.region_read(CONFIG_REGION_INDEX, 0x34, &mut ptr).unwrap();
    assert_eq!(u64::from(ptr[0]), MODE_CAPABILITY_OFFSET);
    let mut cap = [0u8; 3];
    c.region_read(CONFIG_REGION_INDEX, MODE_CAPABILITY_OFFSET, &mut cap)
        .unwrap();
    assert_eq!((cap[0], cap[2]), (0x09, 0x10));
    assert_eq!(config_u32(&mut c, FORMAT_OFFSET), 0x3432_5258);
    assert_eq!(config_u32(&mut c, WIDTH_OFFSET), 1024);
    assert_eq!(config_u32(&mut c, HEIGHT_OFFSET), 768);
    // Read-only: a guest write changes nothing.
    c.region_write(CONFIG_REGION_INDEX, WIDTH_OFFSET, &4096u32.to_le_bytes())
        .unwrap();
    assert_eq!(config_u32(&mut c, WIDTH_OFFSET), 1024);
    // BAR0: w*h*4 rounded up to a power of two, mmap-able.
    let bar0 = c.region(0).expect("bar0");
    assert_eq!(bar0.size, 4 << 20);
    assert!(bar0.file_offset.is_some());
}

#[test]
fn drawing_through_the_mapped_bar_reaches_the_snapshot() {
    let h = harness(4);
    let socket = h.socket("vga");
    let guest = Client::new(&socket).expect("connect");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let img = snapshot(&socket, &h.dir, "vga.png");
    assert_eq!(img.dimensions(), (640, 480));
    assert!(img.into_raw() == expected_rgb(&mode), "pixels differ");
}

#[test]
fn the_device_budget_limits_instances_and_comes_back() {
    let h = harness(2);
    let a = h.parent.create("hd", None, &CreateParams::new()).unwrap();
    let _b = h.parent.create("vga", None, &CreateParams::new()).unwrap();
    let err = h
        .parent
        .create("xga", None, &CreateParams::new())
        .expect_err("budget exhausted");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("all 2 mdpy devices"), "{err}");
    assert_eq!(h.driver.budget().used(), 2);
    assert!(h.parent.types().iter().all(|t| t.available_instances == 0));
    h.parent.remove(a.uuid, false).unwrap();
    assert_eq!(h.driver.budget().used(), 1);
    assert!(h.parent.create("nope", None, &CreateParams::new()).is_err());
    assert_eq!(h.driver.budget().used(), 1);
}

#[test]
fn closing_one_of_two_connections_keeps_the_framebuffer() {
    let h = harness(4);
    let socket = h.socket("vga");
    let uuid = h.parent.instances()[0].uuid;
    let first = Client::new(&socket).expect("first");
    let second = Client::new(&socket).expect("second");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&second).expect("map");
    draw_pattern(&mut fb, &mode);
    drop(fb);
    second.shutdown().unwrap();
    drop(second);
    wait_until("the server sees the close", || {
        h.parent.handle(uuid).map(|d| d.open_count()) == Some(1)
    });
    // The survivor still draws, and the picture the closed one drew is still there.
    let mut fb = map_framebuffer_rw(&first).expect("map");
    fb[4..8].copy_from_slice(&PixelFormat::Xrgb8888.from_rgb([9, 8, 7]));
    let mut expected = expected_rgb(&mode);
    expected[3..6].copy_from_slice(&[9, 8, 7]);
    let img = snapshot(&socket, &h.dir, "after-close.png");
    assert!(img.into_raw() == expected, "pixels differ after a close");
    assert_eq!(h.driver.budget().used(), 1);
    drop(fb);
    first.shutdown().unwrap();
    drop(first);
    wait_until("the server sees the close", || {
        h.parent.handle(uuid).map(|d| d.open_count()) == Some(0)
    });
    let img = snapshot(&socket, &h.dir, "after-last-close.png");
    assert!(
        img.into_raw() == expected,
        "pixels differ after the last close"
    );
}

#[test]
fn odd_config_accesses_never_panic() {
    let budget = Budget::new("test devices", 1);
    let ty = MdpyType::by_name("vga").unwrap();
    let mut dev = new_mdpy(ty, uuid::Uuid::new_v4(), budget.take(1).unwrap()).unwrap();
    for width in 1..=8u64 {
        for offset in 0..=256 - width {
            let mut buf = vec![0u8; width as usize];
            dev.read(CONFIG_REGION_INDEX, offset, &mut buf)
                .expect("read");
            let junk: Vec<u8> = (0..width).map(|i| (offset + i) as u8 ^ 0x5a).collect();
            dev.write(CONFIG_REGION_INDEX, offset, &junk)
                .expect("write");
        }
    }
    let mut fields = [0u8; 12];
    dev.read(CONFIG_REGION_INDEX, FORMAT_OFFSET, &mut fields)
        .unwrap();
    assert_eq!(&fields[..4], b"XR24");
    assert_eq!(
        u32::from_le_bytes([fields[4], fields[5], fields[6], fields[7]]),
        640
    );
    drop(dev);
    assert_eq!(budget.used(), 0);
}

/// A vga instance whose guest drew the test pattern, and a viewer attached to it.
struct Painted {
    h: Harness,
    uuid: uuid::Uuid,
    mode: Mode,
    _guest: Client,
    fb: memmap2::MmapMut,
    viewer: DisplayClient,
}

fn painted_vga() -> Painted {
    let h = harness(4);
    let socket = h.socket("vga");
    let uuid = h.parent.instances()[0].uuid;
    let guest = Client::new(&socket).expect("connect");
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let viewer = DisplayClient::connect(&socket, Box::new(ConfigModeReader)).expect("viewer");
    Painted {
        h,
        uuid,
        mode,
        _guest: guest,
        fb,
        viewer,
    }
}

#[test]
fn periodic_snapshots_land_in_their_directory() {
    let Painted {
        h,
        uuid,
        mode,
        mut viewer,
        ..
    } = painted_vga();
    let out = h.dir.join("periodic");
    let every = Periodic {
        period: std::time::Duration::ZERO,
        count: Some(3),
        changes_only: false,
    };
    let written = snapshot_every(&mut viewer, &every, &out, uuid).expect("snapshots");
    assert_eq!(written, 3);
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3);
    for (seq, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(&uuid.to_string()), "{name}");
        assert!(name.ends_with(&format!("-{seq:05}.png")), "{name}");
        let img = image::open(f).expect("decode").to_rgb8();
        assert!(
            img.into_raw() == expected_rgb(&mode),
            "{name}: pixels differ"
        );
    }
}

/// With `changes_only`, a picture that did not change between ticks is not written again
/// (what counts as a change is unit-tested with `ChangeFilter` in the display crate).
#[test]
fn periodic_snapshots_can_skip_unchanged_pictures() {
    let Painted {
        h,
        uuid,
        mut fb,
        mut viewer,
        ..
    } = painted_vga();
    let out = h.dir.join("changes");
    let every = Periodic {
        period: std::time::Duration::ZERO,
        count: Some(3),
        changes_only: true,
    };
    assert_eq!(
        snapshot_every(&mut viewer, &every, &out, uuid).unwrap(),
        1,
        "one picture, one file"
    );
    // Another run writes its first picture afresh: the guest's current one.
    fb[0..4].copy_from_slice(&0x00ab_cdefu32.to_le_bytes());
    let out2 = h.dir.join("changes2");
    assert_eq!(snapshot_every(&mut viewer, &every, &out2, uuid).unwrap(), 1);
    let file = std::fs::read_dir(&out2)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img = image::open(file).expect("decode").to_rgb8();
    assert_eq!(img.get_pixel(0, 0).0, [0xab, 0xcd, 0xef]);
}
