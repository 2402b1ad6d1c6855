//! mtty consoles: a port on a UNIX socket round-trips bytes both ways with a real socket
//! client, raises its receive interrupt, survives reconnecting, and counts an overrun for
//! bytes the guest is not ready to take.

mod mtty_guest;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use mdev_tests::{wait_event, wait_until};
use mtty::uart::{Ier, Lsr, Msr, LSR, MCR, MSR, RBR_THR};
use mtty_guest::{drain, harness, init_port, read_exactly, reg, set_reg};
use vfio_user::Client;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DATA_EVENTFD_TRIGGER: u32 = 0x24;
const DATA_NONE_UNMASK: u32 = 0x11;

fn carrier(c: &mut Client, bar: u32) -> bool {
    reg(c, bar, MSR) & Msr::DCD.bits() != 0
}

#[test]
fn socket_console_round_trips_bytes_and_interrupts_on_receive() {
    let h = harness(24);
    let console = h.dir.join("port1.sock");
    let info = h.create(
        "mtty-2",
        &[("port1", format!("socket:{}", console.display()))],
    );
    let mut c = Client::new(&info.socket).unwrap();
    let efd = EventFd::new(EFD_NONBLOCK).unwrap();
    c.set_irqs(0, DATA_EVENTFD_TRIGGER, 0, 1, &[efd.as_raw_fd()])
        .unwrap();
    init_port(&mut c, 1, Ier::RDA);
    assert!(!carrier(&mut c, 1), "nobody attached yet");

    let mut peer = UnixStream::connect(&console).unwrap();
    wait_until("client attached (DCD)", || carrier(&mut c, 1));
    peer.write_all(b"hello guest").unwrap();
    let mut got = Vec::new();
    while got.len() < 11 {
        wait_event(&efd);
        got.extend(drain(&mut c, 1));
        c.set_irqs(0, DATA_NONE_UNMASK, 0, 1, &[]).unwrap();
    }
    assert_eq!(got, b"hello guest");

    for &b in b"hello host" {
        set_reg(&mut c, 1, RBR_THR, b);
    }
    assert_eq!(read_exactly(&mut peer, 10), b"hello host");
    assert!(drain(&mut c, 0).is_empty(), "port 0 (loopback) untouched");

    drop(peer);
    wait_until("client detached", || !carrier(&mut c, 1));
    let mut again = UnixStream::connect(&console).unwrap();
    wait_until("client reattached", || carrier(&mut c, 1));
    set_reg(&mut c, 1, RBR_THR, b'!');
    assert_eq!(read_exactly(&mut again, 1), b"!");
}

#[test]
fn bytes_the_guest_is_not_ready_for_overrun_and_with_rts_they_wait() {
    let h = harness(24);
    let console = h.dir.join("port0.sock");
    let info = h.create(
        "mtty-1",
        &[("port0", format!("socket:{}", console.display()))],
    );
    let mut c = Client::new(&info.socket).unwrap();
    init_port(&mut c, 0, Ier::empty());
    set_reg(&mut c, 0, MCR, 0); // port closed by the guest: no RTS
    let mut peer = UnixStream::connect(&console).unwrap();
    wait_until("client attached", || carrier(&mut c, 0));
    peer.write_all(&[b'a'; 40]).unwrap();
    wait_until("overrun", || reg(&mut c, 0, LSR) & Lsr::OE.bits() != 0);
    assert_eq!(
        drain(&mut c, 0).len(),
        16,
        "one FIFO's worth kept, the rest lost"
    );

    set_reg(&mut c, 0, MCR, 0x03); // DTR | RTS: the guest holds the sender back instead
    let sent: Vec<u8> = (0..200u8).collect();
    peer.write_all(&sent).unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        wait_until("next byte", || {
            let lsr = reg(&mut c, 0, LSR);
            assert_eq!(lsr & Lsr::OE.bits(), 0, "no overrun while RTS is asserted");
            lsr & Lsr::DR.bits() != 0
        });
        got.push(reg(&mut c, 0, RBR_THR));
    }
    assert_eq!(got, sent);
}

#[test]
fn guest_bytes_with_nobody_attached_are_dropped_without_stalling() {
    let h = harness(24);
    let console = h.dir.join("idle.sock");
    let info = h.create(
        "mtty-1",
        &[("port0", format!("socket:{}", console.display()))],
    );
    let mut c = Client::new(&info.socket).unwrap();
    init_port(&mut c, 0, Ier::empty());
    // Far more than every buffer between the UART and a socket: all accepted, none blocks.
    for i in 0..20_000u32 {
        set_reg(&mut c, 0, RBR_THR, i as u8);
    }
    wait_until("TX drained", || reg(&mut c, 0, LSR) & Lsr::TEMT.bits() != 0);
}
