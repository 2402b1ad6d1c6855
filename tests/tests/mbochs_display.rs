//! mbochs through vfio-user: what the Linux `bochs` driver probes, a mode programmed with
//! 16-bit MMIO writes, pixels drawn through the mapped BAR0 and seen in a PNG snapshot, the
//! framebuffer pool, and the multi-open rules.

use std::path::Path;

use mbochs::dispi::{
    DISPI_ID5, INDEX_ID, INDEX_VIDEO_MEMORY_64K, INDEX_VIRT_WIDTH, INDEX_XRES, INDEX_Y_OFFSET,
};
use mbochs::edid::{parse_edid, EDID_BLOCK_LEN};
use mbochs::mmio::{
    DISPI_OFFSET, ENDIAN_LITTLE, MMIO_BAR_SIZE, QEXT_ENDIAN_OFFSET, QEXT_SIZE_OFFSET,
};
use mbochs::types::{MbochsType, Resolution};
use mbochs::{new_mbochs, DispiModeReader, MbochsDriver};
use mdev::parent::{Budget, CreateParams, Parent};
use mdev::region::{BAR2_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev::Device;
use mdev_display::cli::snapshot_once;
use mdev_display::testing::{draw_pattern, expected_rgb, map_framebuffer_rw};
use mdev_display::{DisplayClient, Mode, PixelFormat};
use mdev_tests::bochs_guest::{dispi_read, dispi_write, set_mode};
use mdev_tests::{wait_until, ParentHarness, RawClient};
use vfio_user::Client;

type Harness = ParentHarness<MbochsDriver>;

/// A parent for the driver with the given budget.
fn harness(budget: u64) -> Harness {
    ParentHarness::new(MbochsDriver::new(budget), "mbochs-test")
}

fn snapshot(socket: &Path, dir: &Path, name: &str) -> image::RgbImage {
    let out = dir.join(name);
    snapshot_once(socket, Box::new(DispiModeReader), &out).expect("snapshot");
    image::open(&out).expect("decode png").to_rgb8()
}

#[test]
fn the_linux_driver_finds_a_bochs_display() {
    let h = harness(256);
    let socket = h.socket("medium");
    let mut c = Client::new(&socket).expect("connect");
    let mut id = [0u8; 12];
    c.region_read(CONFIG_REGION_INDEX, 0, &mut id)
        .expect("config");
    assert_eq!(&id[0..4], &[0x34, 0x12, 0x11, 0x11]);
    assert_eq!((id[8], id[10], id[11]), (1, 0x80, 0x03));
    let mut sub = [0u8; 4];
    c.region_read(CONFIG_REGION_INDEX, 0x2c, &mut sub)
        .expect("config");
    assert_eq!(sub, [0xf4, 0x1a, 0x00, 0x11]);
    assert_eq!(dispi_read(&mut c, INDEX_ID) & 0xfff0, 0xb0c0);
    assert_eq!(dispi_read(&mut c, INDEX_ID), DISPI_ID5);
    let mem = u64::from(dispi_read(&mut c, INDEX_VIDEO_MEMORY_64K)) * 64 * 1024;
    assert_eq!(mem, 16 << 20);
    assert_eq!(c.region(0).expect("bar0").size, mem);
    assert_eq!(c.region(2).expect("bar2").size, MMIO_BAR_SIZE);
    let mut word = [0u8; 4];
    c.region_read(BAR2_REGION_INDEX, QEXT_SIZE_OFFSET, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), 8);
    c.region_read(BAR2_REGION_INDEX, QEXT_ENDIAN_OFFSET, &mut word)
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), ENDIAN_LITTLE);
    let mut edid = [0u8; EDID_BLOCK_LEN];
    c.region_read(BAR2_REGION_INDEX, 0, &mut edid)
        .expect("edid");
    let summary = parse_edid(&edid).expect("valid EDID");
    assert_eq!(summary.version, (1, 4));
    assert_eq!(summary.preferred, Resolution::new(1024, 768));
    assert!(summary
        .modes
        .iter()
        .all(|m| m.within(Resolution::new(1920, 1440))));
}

#[test]
fn a_1024x768x32_mode_snapshots_exactly_what_was_drawn() {
    let h = harness(256);
    let socket = h.socket("medium");
    let mut guest = Client::new(&socket).expect("connect");
    set_mode(&mut guest, 1024, 768, 32);
    let mode = Mode::packed(PixelFormat::Xrgb8888, 1024, 768);
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    draw_pattern(&mut fb, &mode);
    let img = snapshot(&socket, &h.dir, "xga.png");
    assert_eq!(img.dimensions(), (1024, 768));
    assert!(img.into_raw() == expected_rgb(&mode), "pixels differ");
}

#[test]
fn sixteen_and_twenty_four_bit_modes_convert() {
    let h = harness(256);
    let socket = h.socket("small");
    let mut guest = Client::new(&socket).expect("connect");
    let mut fb = map_framebuffer_rw(&guest).expect("map");
    for (bpp, format) in [(16, PixelFormat::Rgb565), (24, PixelFormat::Rgb888)] {
        set_mode(&mut guest, 800, 600, bpp);
        let mode = Mode::packed(format, 800, 600);
        draw_pattern(&mut fb, &mode);
        let img = snapshot(&socket, &h.dir, &format!("bpp{bpp}.png"));
        assert_eq!(img.dimensions(), (800, 600));
        assert!(
            img.into_raw() == expected_rgb(&mode),
            "{bpp} bpp pixels differ"
        );
    }
}

#[test]
fn a_mode_past_the_type_limit_scans_nothing_out() {
    let h = harness(256);
    let socket = h.socket("small");
    let mut guest = Client::new(&socket).expect("connect");
    set_mode(&mut guest, 1024, 768, 32);
    let mut viewer = DisplayClient::connect(&socket, Box::new(DispiModeReader)).expect("viewer");
    assert_eq!(viewer.mode().expect("mode"), None);
    set_mode(&mut guest, 800, 600, 32);
    assert_eq!(
        viewer.mode().expect("mode"),
        Some(Mode::packed(PixelFormat::Xrgb8888, 800, 600))
    );
    // DEVICE_RESET puts the registers back; the mode goes.
    guest.reset().expect("reset");
    assert_eq!(viewer.mode().expect("mode"), None);
}

#[test]
fn the_pool_is_taken_at_create_and_returned_exactly() {
    let h = harness(40);
    let pool = h.driver.pool().clone();
    let a = h
        .parent
        .create("medium", None, &CreateParams::new())
        .unwrap();
    let b = h
        .parent
        .create("medium", None, &CreateParams::new())
        .unwrap();
    assert_eq!(pool.used(), 32);
    let err = h
        .parent
        .create("medium", None, &CreateParams::new())
        .expect_err("pool exhausted");
    assert_eq!(err.errno(), libc::ENOSPC);
    let text = err.to_string();
    assert!(
        text.contains("16 MiB") && text.contains("8 of 40"),
        "{text}"
    );
    assert_eq!(pool.used(), 32);
    let small = h
        .parent
        .create("small", None, &CreateParams::new())
        .unwrap();
    assert_eq!(pool.used(), 36);
    let types = h.parent.types();
    let avail = |n: &str| {
        types
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .available_instances
    };
    assert_eq!((avail("small"), avail("medium"), avail("large")), (1, 0, 0));
    h.parent.remove(a.uuid, false).unwrap();
    assert_eq!(pool.used(), 20);
    h.parent.remove(small.uuid, false).unwrap();
    h.parent.remove(b.uuid, false).unwrap();
    assert_eq!(pool.used(), 0);
}

#[test]
fn a_create_that_fails_after_taking_memory_gives_it_back() {
    let h = harness(64);
    let pool = h.driver.pool().clone();
    // A directory where the socket should go makes serving fail after the driver created
    // the device (and took its megabytes).
    let uuid = uuid::Uuid::new_v4();
    std::fs::create_dir_all(h.parent.socket_path(uuid).join("blocker")).unwrap();
    let err = h.parent.create("large", Some(uuid), &CreateParams::new());
    assert!(err.is_err());
    assert_eq!(pool.used(), 0);
    // Bad type and bad parameters take nothing either.
    assert!(h.parent.create("huge", None, &CreateParams::new()).is_err());
    let mut params = CreateParams::new();
    params.insert("colour".into(), "blue".into());
    assert!(h.parent.create("small", None, &params).is_err());
    assert_eq!(pool.used(), 0);
    assert!(h.parent.create("large", None, &CreateParams::new()).is_ok());
    assert_eq!(pool.used(), 64);
}

#[test]
fn closing_one_of_two_connections_keeps_the_framebuffer_and_the_mode() {
    let h = harness(256);
    let socket = h.socket("medium");
    let mut first = Client::new(&socket).expect("first");
    let second = Client::new(&socket).expect("second");
    set_mode(&mut first, 640, 480, 32);
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut fb = map_framebuffer_rw(&first).expect("map");
    draw_pattern(&mut fb, &mode);
    second.shutdown().expect("close second");
    drop(second);
    // Wait until the server has processed the close (poll the open count, bounded).
    let uuid = h.parent.instances()[0].uuid;
    wait_until("the server sees the close", || {
        h.parent.handle(uuid).map(|d| d.open_count()) == Some(1)
    });
    assert_eq!(h.driver.pool().used(), 16);
    // The remaining connection still drives the device.
    assert_eq!(dispi_read(&mut first, INDEX_XRES), 640);
    fb[0..4].copy_from_slice(&PixelFormat::Xrgb8888.from_rgb([1, 2, 3]));
    let img = snapshot(&socket, &h.dir, "after-close.png");
    let mut expected = expected_rgb(&mode);
    expected[0..3].copy_from_slice(&[1, 2, 3]);
    assert_eq!(img.dimensions(), (640, 480));
    assert!(img.into_raw() == expected, "pixels differ after a close");
    // Even the last close keeps everything for the next client.
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
fn odd_accesses_to_bar2_and_config_never_panic() {
    let ty = MbochsType::by_name("small").unwrap();
    let budget = Budget::new("test MiB", 4);
    let mut dev = new_mbochs(ty, uuid::Uuid::new_v4(), budget.take(4).unwrap()).unwrap();
    for (region, size) in [
        (BAR2_REGION_INDEX, MMIO_BAR_SIZE),
        (CONFIG_REGION_INDEX, 256),
    ] {
        for width in 1..=8u64 {
            for offset in 0..=size - width {
                let mut buf = vec![0u8; width as usize];
                dev.read(region, offset, &mut buf).expect("read");
                let junk: Vec<u8> = (0..width).map(|i| (offset + i) as u8 ^ 0xa5).collect();
                dev.write(region, offset, &junk).expect("write");
            }
        }
    }
    // The identity survived the junk.
    let mut id = [0u8; 4];
    dev.read(CONFIG_REGION_INDEX, 0, &mut id).unwrap();
    assert_eq!(id, [0x34, 0x12, 0x11, 0x11]);
    drop(dev);
    assert_eq!(budget.used(), 0);
}

/// Available instances per type, as `types` lists them.
fn availability(parent: &Parent) -> Vec<(String, u64)> {
    parent
        .types()
        .into_iter()
        .map(|t| (t.name, t.available_instances))
        .collect()
}

#[test]
fn the_pool_returns_to_its_start_after_opens_closes_crashes_and_failures() {
    let h = harness(256);
    let pool = h.driver.pool().clone();
    let start = availability(&h.parent);
    let none = CreateParams::new;
    let a = h.parent.create("medium", None, &none()).unwrap();
    let b = h.parent.create("large", None, &none()).unwrap();
    let c = h.parent.create("small", None, &none()).unwrap();
    assert_eq!(pool.used(), 16 + 64 + 4);

    // Two clients of A: both map and draw; one crashes (closes without a goodbye), and a
    // half-sent message from a third connection dies with its socket.
    let mut guest = Client::new(&a.socket).expect("guest");
    let crasher = Client::new(&a.socket).expect("crasher");
    set_mode(&mut guest, 640, 480, 32);
    let mode = Mode::packed(PixelFormat::Xrgb8888, 640, 480);
    let mut crasher_fb = map_framebuffer_rw(&crasher).expect("map");
    draw_pattern(&mut crasher_fb, &mode);
    let mut partial = RawClient::open(&a.socket);
    partial.send_raw(&[0x01, 0x00, 0x02]);
    drop(partial);
    drop(crasher);
    wait_until("the crashed connections are closed", || {
        h.parent.handle(a.uuid).map(|d| d.open_count()) == Some(1)
    });
    assert_eq!(pool.used(), 16 + 64 + 4);
    // The survivor's view is intact, and the crashed client's mapping still writes the
    // same memory (the memfd outlives the connection).
    crasher_fb[0..4].copy_from_slice(&PixelFormat::Xrgb8888.from_rgb([7, 7, 7]));
    let mut expected = expected_rgb(&mode);
    expected[0..3].copy_from_slice(&[7, 7, 7]);
    let img = snapshot(&a.socket, &h.dir, "after-crash.png");
    assert!(img.into_raw() == expected, "pixels differ after a crash");

    // An open instance is not removed unless forced; forcing disconnects its client,
    // whose mapping stays readable, and gives the megabytes back at once.
    let removed = h.parent.remove(a.uuid, false).expect_err("busy");
    assert_eq!(removed.errno(), libc::EBUSY);
    let mut b_client = Client::new(&b.socket).expect("b");
    let b_fb = map_framebuffer_rw(&b_client).expect("map b");
    h.parent.remove(b.uuid, true).expect("forced remove");
    assert_eq!(pool.used(), 16 + 4);
    assert!(b_client
        .region_read(BAR2_REGION_INDEX, DISPI_OFFSET, &mut [0; 2])
        .is_err());
    assert_eq!(b_fb[0], 0);
    drop(b_fb);
    drop(b_client);

    // Failed creates take nothing: past the pool, unknown type, bad parameter, taken UUID,
    // unusable socket path.
    let err = h
        .parent
        .create("large", None, &none())
        .and_then(|_| h.parent.create("large", None, &none()))
        .and_then(|_| h.parent.create("large", None, &none()))
        .and_then(|_| h.parent.create("large", None, &none()))
        .expect_err("pool exhausted");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(err.to_string().contains("needs 64 MiB"), "{err}");
    let used = pool.used();
    assert_eq!(used, 16 + 4 + 3 * 64);
    assert!(h.parent.create("huge", None, &none()).is_err());
    let mut params = none();
    params.insert("colour".into(), "blue".into());
    assert!(h.parent.create("small", None, &params).is_err());
    assert_eq!(
        h.parent
            .create("small", Some(c.uuid), &none())
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    let blocked = uuid::Uuid::new_v4();
    std::fs::create_dir_all(h.parent.socket_path(blocked).join("x")).unwrap();
    assert!(h.parent.create("small", Some(blocked), &none()).is_err());
    assert_eq!(pool.used(), used);

    // Concurrent creates never oversubscribe: 256 - 212 = 44 MiB leave room for 11 small.
    let made: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..6)
                        .filter_map(|_| h.parent.create("small", None, &none()).ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect()
    });
    assert_eq!(made.len(), 11);
    assert_eq!(pool.used(), 256);

    drop(guest);
    h.parent.shutdown();
    assert_eq!(pool.used(), 0);
    assert_eq!(availability(&h.parent), start);
}

#[test]
fn hostile_region_accesses_over_the_wire_fail_cleanly() {
    let h = harness(256);
    let socket = h.socket("small");
    let mut c = Client::new(&socket).expect("connect");
    let fb_len = c.region(0).expect("bar0").size;
    // Straddling the end, past the end, wrapping the offset, regions that do not exist:
    // each refused with EINVAL, and the connection lives on. (The `vfio_user` client does
    // not parse error replies, so these go through the raw client.)
    let mut raw = RawClient::open(&socket);
    let einval = libc::EINVAL as u32;
    assert_eq!(
        raw.read32(BAR2_REGION_INDEX, MMIO_BAR_SIZE - 2),
        Err(einval)
    );
    assert_eq!(
        raw.write32(BAR2_REGION_INDEX, MMIO_BAR_SIZE, 0),
        Err(einval)
    );
    assert_eq!(raw.read32(BAR2_REGION_INDEX, u64::MAX - 1), Err(einval));
    assert_eq!(raw.read32(0, fb_len - 2), Err(einval));
    assert_eq!(raw.write32(CONFIG_REGION_INDEX, 254, 0), Err(einval));
    assert!(raw.read32(1, 0).is_err());
    assert!(raw.read32(42, 0).is_err());
    assert_eq!(
        raw.read32(BAR2_REGION_INDEX, DISPI_OFFSET)
            .map(|v| v as u16),
        Ok(DISPI_ID5)
    );
    drop(raw);
    // Odd widths at odd offsets inside the window are served.
    for (offset, width) in [
        (0x501u64, 1usize),
        (0x503, 3),
        (0x4ff, 2),
        (0x5ff, 8),
        (0x605, 3),
    ] {
        let mut b = vec![0u8; width];
        c.region_read(BAR2_REGION_INDEX, offset, &mut b)
            .expect("odd read");
        c.region_write(BAR2_REGION_INDEX, offset, &b)
            .expect("odd write");
    }
    // Hostile values: a read-only ID and memory size, an absurd mode; nothing scans out,
    // the identity is intact and the connection still works.
    dispi_write(&mut c, INDEX_ID, 0xffff);
    dispi_write(&mut c, INDEX_VIDEO_MEMORY_64K, 0xffff);
    set_mode(&mut c, u16::MAX, u16::MAX, u16::MAX);
    dispi_write(&mut c, INDEX_VIRT_WIDTH, u16::MAX);
    dispi_write(&mut c, INDEX_Y_OFFSET, u16::MAX);
    assert_eq!(dispi_read(&mut c, INDEX_ID), DISPI_ID5);
    assert_eq!(dispi_read(&mut c, INDEX_VIDEO_MEMORY_64K), 64);
    let mut viewer = DisplayClient::connect(&socket, Box::new(DispiModeReader)).expect("viewer");
    assert_eq!(viewer.mode().expect("mode"), None);
    set_mode(&mut c, 800, 600, 32);
    assert_eq!(
        viewer.mode().expect("mode"),
        Some(Mode::packed(PixelFormat::Xrgb8888, 800, 600))
    );
}

/// A periodic snapshot viewer routes the device request interrupt: removing the instance
/// asks it to let go, it stops by itself, and the removal completes without force.
#[test]
fn a_periodic_viewer_asked_to_let_go_stops_and_the_removal_completes() {
    use mdev_display::cli::{snapshot_every, Periodic};
    let h = harness(64);
    let info = h.create("small", &[]);
    let out = mdev_tests::ScratchDir::new("viewer-req");
    let mut viewer =
        DisplayClient::connect(&info.socket, Box::new(DispiModeReader)).expect("viewer");
    let dir = out.path().to_path_buf();
    let uuid = info.uuid;
    let viewing = std::thread::spawn(move || {
        let every = Periodic {
            period: std::time::Duration::from_millis(100),
            count: None,
            changes_only: false,
        };
        snapshot_every(&mut viewer, &every, &dir, uuid)
    });
    let handle = h.parent.handle(uuid).expect("instance");
    wait_until("the viewer holds the instance", || handle.open_count() == 1);
    drop(handle);
    let t = std::time::Instant::now();
    h.parent
        .remove_within(uuid, false, std::time::Duration::from_secs(20))
        .expect("removed once the viewer let go");
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    viewing.join().unwrap().expect("the viewer ended cleanly");
    assert!(h.parent.instances().is_empty());
    assert_eq!(h.driver.pool().free(), 64);
}
