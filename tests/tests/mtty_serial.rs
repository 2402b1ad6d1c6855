//! mtty through vfio-user: the kernel sample's identity and BARs, loopback echo, receive
//! interrupts on INTx and MSI eventfds, shared port state across connections, hostile access.

mod mtty_guest;

use std::os::fd::AsRawFd;

use mdev::region::CONFIG_REGION_INDEX;
use mdev::wire::{self, Command};
use mdev_tests::{assert_no_event, wait_event, wait_until, RawClient};
use mtty::device::{DEVICE_ID, VENDOR_ID};
use mtty::uart::{Ier, Lsr, IIR_FCR, IIR_RDA, LSR, MCR, RBR_THR, SCR};
use mtty_guest::{drain, harness, init_port, reg, set_reg};
use vfio_user::Client;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DATA_EVENTFD_TRIGGER: u32 = 0x24;
const DATA_NONE_UNMASK: u32 = 0x11;

fn cfg32(c: &mut Client, off: u64) -> u32 {
    let mut b = [0u8; 4];
    c.region_read(CONFIG_REGION_INDEX, off, &mut b).unwrap();
    u32::from_le_bytes(b)
}

#[test]
fn identity_and_one_io_bar_per_port_as_the_kernel_sample() {
    let h = harness(24);
    let mut c = Client::new(&h.socket("mtty-2")).unwrap();
    assert_eq!(
        cfg32(&mut c, 0),
        u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16
    );
    assert_eq!(cfg32(&mut c, 0x2c), 0x3253_4348, "subsystem ids");
    assert_eq!(
        cfg32(&mut c, 8),
        0x0700_0210,
        "class 07/00, prog-if 02, revision 0x10"
    );
    assert_eq!((cfg32(&mut c, 0x3c) >> 8) & 0xff, 1, "interrupt pin A");
    for bar in [0u32, 1] {
        assert_eq!(c.region(bar).unwrap().size, 8);
        let off = 0x10 + 4 * u64::from(bar);
        c.region_write(CONFIG_REGION_INDEX, off, &u32::MAX.to_le_bytes())
            .unwrap();
        assert_eq!(
            cfg32(&mut c, off),
            !7u32 | 1,
            "8-byte I/O BAR sizes with the I/O bit"
        );
    }
    assert_eq!(c.region(2).unwrap().size, 0);
    assert_eq!(c.get_irq_info(0).unwrap().count, 1);
    assert_eq!(c.get_irq_info(1).unwrap().count, 1);
    let one = Client::new(&h.socket("mtty-1")).unwrap();
    assert_eq!(one.region(1).unwrap().size, 0, "mtty-1 has only BAR0");
}

#[test]
fn thr_writes_come_back_on_rbr_in_loopback() {
    let h = harness(24);
    let mut c = Client::new(&h.socket("mtty-2")).unwrap();
    for bar in [0u32, 1] {
        init_port(&mut c, bar, Ier::empty());
        for &b in b"echo!" {
            set_reg(&mut c, bar, RBR_THR, b);
        }
        assert_eq!(drain(&mut c, bar), b"echo!");
        let lsr = Lsr::from_bits_retain(reg(&mut c, bar, LSR));
        assert!(lsr.contains(Lsr::THRE | Lsr::TEMT) && !lsr.contains(Lsr::DR));
    }
}

#[test]
fn received_data_raises_intx_until_read_and_unmasked() {
    let h = harness(24);
    let info = h.create("mtty-1", &[]);
    let irqs = h.parent.handle(info.uuid).unwrap().interrupts().clone();
    let mut c = Client::new(&info.socket).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(0, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    init_port(&mut c, 0, Ier::RDA);
    assert_no_event(&irqs, &efd, "no interrupt before data");
    set_reg(&mut c, 0, RBR_THR, b'x');
    assert_eq!(wait_event(&efd), 1);
    assert_eq!(reg(&mut c, 0, IIR_FCR) & 0x0f, IIR_RDA);
    let status = cfg32(&mut c, 4) >> 16;
    assert_ne!(status & 0x8, 0, "config status shows the line high");
    assert_eq!(drain(&mut c, 0), b"x");
    c.set_irqs(0, DATA_NONE_UNMASK, 0, 1, &[]).unwrap();
    assert_no_event(&irqs, &efd, "line low after the read: nothing on unmask");
    set_reg(&mut c, 0, RBR_THR, b'y');
    assert_eq!(wait_event(&efd), 1, "next byte, next interrupt");
}

#[test]
fn received_data_raises_msi() {
    let h = harness(24);
    let mut c = Client::new(&h.socket("mtty-2")).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(1, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    init_port(&mut c, 1, Ier::RDA);
    set_reg(&mut c, 1, RBR_THR, b'm');
    assert_eq!(wait_event(&efd), 1);
    assert_eq!(drain(&mut c, 1), b"m");
    set_reg(&mut c, 1, RBR_THR, b'n');
    assert_eq!(wait_event(&efd), 1, "a new edge after the line went low");
}

#[test]
fn closing_one_of_two_connections_keeps_port_state_and_data() {
    let h = harness(24);
    let info = h.create("mtty-1", &[]);
    let mut a = Client::new(&info.socket).unwrap();
    let mut b = Client::new(&info.socket).unwrap();
    init_port(&mut a, 0, Ier::RDA);
    set_reg(&mut a, 0, SCR, 0x5a);
    set_reg(&mut a, 0, RBR_THR, b'1');
    assert_eq!(reg(&mut b, 0, SCR), 0x5a, "B sees what A programmed");
    assert_eq!(reg(&mut b, 0, MCR), 0x0b);
    set_reg(&mut b, 0, RBR_THR, b'2');
    drop(b);
    let handle = h.parent.handle(info.uuid).unwrap();
    wait_until("B closed", || handle.open_count() == 1);
    assert_eq!(reg(&mut a, 0, SCR), 0x5a);
    assert_eq!(reg(&mut a, 0, IIR_FCR) & 0x0f, IIR_RDA);
    assert_eq!(
        drain(&mut a, 0),
        b"12",
        "bytes queued by both survive B's close"
    );
}

fn raw_access(c: &mut RawClient, write: bool, region: u32, offset: u64, count: u32) -> Option<u32> {
    let req = wire::RegionAccessMsg {
        offset,
        region,
        count,
    };
    let mut p = req.as_slice().to_vec();
    let cmd = if write {
        p.extend(std::iter::repeat_n(0xa5, count as usize));
        Command::RegionWrite
    } else {
        Command::RegionRead
    };
    c.request(cmd as u16, 0, &p, &[]).errno()
}

#[test]
fn hostile_accesses_are_ignored_or_refused_and_the_port_still_works() {
    let h = harness(24);
    let path = h.socket("mtty-2");
    let mut raw = RawClient::open(&path);
    for region in [0u32, 1] {
        for offset in 0..8u64 {
            for count in [1u32, 2, 4, 8] {
                let fits = offset + u64::from(count) <= 8;
                for write in [false, true] {
                    let e = raw_access(&mut raw, write, region, offset, count);
                    assert_eq!(
                        e.is_none(),
                        fits,
                        "region {region} off {offset} count {count}"
                    );
                }
            }
        }
        assert!(
            raw_access(&mut raw, false, region, u64::MAX, 4).is_some(),
            "offset overflow"
        );
    }
    for region in [2u32, 5, 6, 8, 9, 1000] {
        assert!(
            raw_access(&mut raw, true, region, 0, 1).is_some(),
            "region {region}"
        );
    }
    drop(raw);
    let mut c = Client::new(&path).unwrap();
    init_port(&mut c, 0, Ier::empty());
    set_reg(&mut c, 0, RBR_THR, b'k');
    assert_eq!(drain(&mut c, 0), b"k");
}
