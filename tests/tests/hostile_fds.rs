//! Hostile clients and the memory fds the server hands out. mbochs and mdpy are served by
//! their real drivers through a parent, on a socket, in this process; a client takes BAR0's
//! fd from the region info and tries to resize it or seal it against the server. Every such
//! attempt fails, and the server — whose own mapping of that memory answers trapped reads,
//! snapshots and viewers — keeps serving, without leaking an fd. A client that scribbles over
//! the framebuffer through its own mapping changes the picture and nothing else.
//!
//! Without the seals the resizes succeed and the tests fail there; the next trapped read
//! would raise SIGBUS in this process, killing the test binary and every instance with it.

use std::any::Any;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use mbochs::dispi::{
    DispiEnable, INDEX_BANK, INDEX_BPP, INDEX_ENABLE, INDEX_VIRT_HEIGHT, INDEX_VIRT_WIDTH,
    INDEX_XRES, INDEX_X_OFFSET, INDEX_YRES, INDEX_Y_OFFSET,
};
use mbochs::mmio::{DISPI_LEN, DISPI_OFFSET, EDID_OFFSET, EDID_WINDOW, QEXT_LEN, QEXT_SIZE_OFFSET};
use mbochs::{DispiModeReader, MbochsDriver};
use mdev::parent::Parent;
use mdev::region::{BAR0_REGION_INDEX, BAR2_REGION_INDEX, CONFIG_REGION_INDEX};
use mdev_display::cli::snapshot_once;
use mdev_display::testing::map_framebuffer_rw;
use mdev_display::{Frame, Mode, ModeReader, PixelFormat};
use mdev_tests::open_fds::open_fds;
use mdev_tests::{wait_until, ParentHarness};
use mdpy::{ConfigModeReader, MdpyDriver};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use vfio_user::Client;

/// The tests count this process's fds, so they run one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A range of a region that holds device state (registers, config space).
type StateRange = (u32, u64, usize);

/// One display instance served by its real driver, and what the tests need to know of it.
struct Display {
    parent: Arc<Parent>,
    uuid: uuid::Uuid,
    socket: PathBuf,
    dir: PathBuf,
    /// Keeps the parent serving (shut down on drop).
    _harness: Box<dyn Any>,
    reader: fn() -> Box<dyn ModeReader>,
    /// Puts a picture on screen as the guest's driver would; returns its mode.
    scan_out: fn(&mut Client) -> Mode,
    /// Where the device keeps its state.
    state: &'static [StateRange],
}

impl Display {
    fn open_count(&self) -> Option<usize> {
        self.parent.handle(self.uuid).map(|d| d.open_count())
    }

    fn snapshot(&self, name: &str) -> image::RgbImage {
        let out = self.dir.join(name);
        snapshot_once(&self.socket, (self.reader)(), &out).expect("snapshot");
        image::open(&out).expect("decode png").to_rgb8()
    }
}

fn served<D: mdev::parent::MdevDriver + 'static>(
    driver: D,
    type_name: &str,
    reader: fn() -> Box<dyn ModeReader>,
    scan_out: fn(&mut Client) -> Mode,
    state: &'static [StateRange],
) -> Display {
    let h = ParentHarness::new(driver, "hostile-fds");
    let info = h.create(type_name, &[]);
    Display {
        parent: h.parent.clone(),
        uuid: info.uuid,
        socket: info.socket,
        dir: h.dir.path().to_path_buf(),
        _harness: Box::new(h),
        reader,
        scan_out,
        state,
    }
}

const MBOCHS_STATE: &[StateRange] = &[
    (CONFIG_REGION_INDEX, 0, 256),
    (BAR2_REGION_INDEX, EDID_OFFSET, EDID_WINDOW as usize),
    (BAR2_REGION_INDEX, DISPI_OFFSET, DISPI_LEN as usize),
    (BAR2_REGION_INDEX, QEXT_SIZE_OFFSET, QEXT_LEN as usize),
];

/// mbochs, medium (16 MiB), 640x480x32 programmed through the DISPI registers.
fn mbochs() -> Display {
    fn scan_out(c: &mut Client) -> Mode {
        let (width, height) = (640u16, 480u16);
        for (index, value) in [
            (INDEX_ENABLE, 0),
            (INDEX_BPP, 32),
            (INDEX_XRES, width),
            (INDEX_YRES, height),
            (INDEX_BANK, 0),
            (INDEX_VIRT_WIDTH, width),
            (INDEX_VIRT_HEIGHT, height),
            (INDEX_X_OFFSET, 0),
            (INDEX_Y_OFFSET, 0),
            (
                INDEX_ENABLE,
                (DispiEnable::ENABLED | DispiEnable::LFB_ENABLED).bits(),
            ),
        ] {
            c.region_write(
                BAR2_REGION_INDEX,
                DISPI_OFFSET + 2 * index as u64,
                &value.to_le_bytes(),
            )
            .expect("dispi write");
        }
        Mode::packed(PixelFormat::Xrgb8888, width.into(), height.into())
    }
    served(
        MbochsDriver::new(256),
        "medium",
        || Box::new(DispiModeReader),
        scan_out,
        MBOCHS_STATE,
    )
}

/// mdpy, vga: its 640x480 XRGB8888 mode is fixed by the type.
fn mdpy() -> Display {
    served(
        MdpyDriver::new(4),
        "vga",
        || Box::new(ConfigModeReader),
        |_| Mode::packed(PixelFormat::Xrgb8888, 640, 480),
        &[(CONFIG_REGION_INDEX, 0, 256)],
    )
}

/// BAR0's file as a client receives it with the region info.
fn bar0_file(c: &Client) -> (&File, u64) {
    let region = c.region(BAR0_REGION_INDEX).expect("BAR0");
    let backing = region.file_offset.as_ref().expect("BAR0 comes with an fd");
    (backing.file(), region.size)
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A trapped BAR0 access: the server reads and writes through its own mapping.
fn trapped_round_trip(c: &mut Client, offset: u64, bytes: &[u8; 4]) {
    c.region_write(BAR0_REGION_INDEX, offset, bytes)
        .expect("trapped BAR0 write");
    let mut back = [0u8; 4];
    c.region_read(BAR0_REGION_INDEX, offset, &mut back)
        .expect("trapped BAR0 read");
    assert_eq!(&back, bytes, "trapped BAR0 read at {offset:#x}");
}

fn a_client_cannot_resize_or_seal_the_framebuffer_and_the_server_keeps_serving(d: Display) {
    let fds_before = open_fds();
    let mut hostile = Client::new(&d.socket).expect("connect");
    let (file, size) = bar0_file(&hostile);
    let file = file.try_clone().expect("dup");
    assert_eq!(file.metadata().expect("fstat").len(), size);

    assert_eq!(errno(file.set_len(0)), Some(libc::EPERM), "ftruncate(0)");
    assert_eq!(errno(file.set_len(size / 2)), Some(libc::EPERM), "shrink");
    assert_eq!(errno(file.set_len(size * 2)), Some(libc::EPERM), "grow");
    assert_eq!(
        errno(file.write_all_at(b"past the end", size)),
        Some(libc::EPERM),
        "grow by writing past the end"
    );
    for seal in [SealFlag::F_SEAL_WRITE, SealFlag::F_SEAL_FUTURE_WRITE] {
        assert_eq!(
            fcntl(file.as_raw_fd(), FcntlArg::F_ADD_SEALS(seal)),
            Err(Errno::EPERM),
            "F_ADD_SEALS({seal:?})"
        );
    }
    assert_eq!(file.metadata().expect("fstat").len(), size);

    // The server's own mapping still answers, up to the last byte.
    trapped_round_trip(&mut hostile, 0, b"head");
    trapped_round_trip(&mut hostile, size - 4, b"tail");
    // So does a second client, and a snapshot through the viewer.
    let mut second = Client::new(&d.socket).expect("a second client");
    trapped_round_trip(&mut second, size / 2, b"mid!");
    let mode = (d.scan_out)(&mut second);
    let img = d.snapshot("after-hostile-resizes.png");
    assert_eq!(img.dimensions(), (mode.width, mode.height));
    // The hostile client's writes through the fd still land (no write seal).
    file.write_all_at(&[0x10, 0x20, 0x30, 0], 0)
        .expect("a client still writes the framebuffer");
    assert_eq!(
        d.snapshot("written-by-fd.png").get_pixel(0, 0).0,
        [0x30, 0x20, 0x10]
    );

    drop(file);
    for c in [hostile, second] {
        c.shutdown().expect("shutdown");
    }
    wait_until("the server sees both closes", || d.open_count() == Some(0));
    wait_until("the server holds no more fds than before", || {
        open_fds() == fds_before
    });
}

#[test]
fn a_client_cannot_resize_or_seal_the_mbochs_framebuffer_and_the_server_keeps_serving() {
    let _serial = one_at_a_time();
    a_client_cannot_resize_or_seal_the_framebuffer_and_the_server_keeps_serving(mbochs());
}

#[test]
fn a_client_cannot_resize_or_seal_the_mdpy_framebuffer_and_the_server_keeps_serving() {
    let _serial = one_at_a_time();
    a_client_cannot_resize_or_seal_the_framebuffer_and_the_server_keeps_serving(mdpy());
}

/// Everything the device keeps outside its framebuffer.
fn device_state(c: &mut Client, state: &[StateRange]) -> Vec<Vec<u8>> {
    state
        .iter()
        .map(|&(region, offset, len)| {
            let mut bytes = vec![0u8; len];
            c.region_read(region, offset, &mut bytes)
                .expect("state read");
            bytes
        })
        .collect()
}

/// Deterministic noise (xorshift64).
fn scribble(bytes: &mut [u8]) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn scribbling_over_the_mapped_framebuffer_changes_only_the_picture(d: Display) {
    let mut guest = Client::new(&d.socket).expect("connect");
    let mode = (d.scan_out)(&mut guest);
    let state_before = device_state(&mut guest, d.state);
    let mut fb = map_framebuffer_rw(&guest).expect("map BAR0");
    scribble(&mut fb);
    let drawn: Vec<u8> = fb.to_vec();
    drop(fb);

    let expected = Frame::new(mode, &drawn).expect("mode fits").to_rgb8();
    let img = d.snapshot("scribbled.png");
    assert_eq!(img.dimensions(), (mode.width, mode.height));
    assert!(
        img.into_raw() == expected,
        "the snapshot shows the scribble"
    );
    assert_eq!(device_state(&mut guest, d.state), state_before);
    // Alive, and its trapped reads see the same bytes.
    let last = drawn.len() as u64 - 8;
    let mut back = [0u8; 8];
    guest
        .region_read(BAR0_REGION_INDEX, last, &mut back)
        .expect("trapped BAR0 read");
    assert_eq!(&back[..], &drawn[last as usize..]);
    // The snapshot's connection is closed; the server sees its end on its own thread.
    mdev_tests::wait_until("only the guest holds the device", || {
        d.open_count() == Some(1)
    });
}

#[test]
fn scribbling_over_the_mapped_mbochs_framebuffer_changes_only_the_picture() {
    let _serial = one_at_a_time();
    scribbling_over_the_mapped_framebuffer_changes_only_the_picture(mbochs());
}

#[test]
fn scribbling_over_the_mapped_mdpy_framebuffer_changes_only_the_picture() {
    let _serial = one_at_a_time();
    scribbling_over_the_mapped_framebuffer_changes_only_the_picture(mdpy());
}

/// The snapshot path on its own: a viewer of an instance a hostile client tried to shrink
/// maps and reads the whole framebuffer.
#[test]
fn a_viewer_reads_every_byte_of_a_framebuffer_a_client_tried_to_shrink() {
    let _serial = one_at_a_time();
    let d = mdpy();
    let hostile = Client::new(&d.socket).expect("connect");
    let (file, size) = bar0_file(&hostile);
    assert_eq!(errno(file.set_len(0)), Some(libc::EPERM));
    file.write_all_at(b"end", size - 3).expect("write");
    let viewer =
        mdev_display::DisplayClient::connect(&d.socket, (d.reader)()).expect("viewer maps BAR0");
    let mut end = [0u8; 3];
    viewer
        .read_framebuffer(size - 3, &mut end)
        .expect("read the last bytes");
    assert_eq!(&end, b"end");
    assert!(viewer.read_framebuffer(size - 2, &mut end).is_err());
}
