//! Shared by the mtty integration tests: a parent serving mtty instances in a scratch
//! directory, and a port driven over vfio-user the way a guest's 8250 driver programs it.

#![allow(dead_code)]

use std::time::Duration;

use mtty::uart::{Fcr, Ier, Lsr, Mcr, IER, IIR_FCR, LCR, LSR, MCR, RBR_THR};
use mtty::MttyDriver;
use vfio_user::Client;

/// A parent with an mtty driver.
/// A parent serving the mtty driver.
pub type Harness = mdev_tests::ParentHarness<MttyDriver>;

/// A parent whose instances share `max_ports` ports.
pub fn harness(max_ports: u64) -> Harness {
    mdev_tests::ParentHarness::new(MttyDriver::new(max_ports), "mtty")
}

/// Reads one register of port `bar`.
pub fn reg(c: &mut Client, bar: u32, off: u8) -> u8 {
    let mut b = [0u8; 1];
    c.region_read(bar, u64::from(off), &mut b)
        .expect("register read");
    b[0]
}

/// Writes one register of port `bar`.
pub fn set_reg(c: &mut Client, bar: u32, off: u8, v: u8) {
    c.region_write(bar, u64::from(off), &[v])
        .expect("register write");
}

/// What the 8250 driver does on open: 115200 8N1, FIFOs on (trigger 1), DTR/RTS/OUT2, and
/// the given interrupts enabled.
pub fn init_port(c: &mut Client, bar: u32, ier: Ier) {
    set_reg(c, bar, LCR, 0x80);
    set_reg(c, bar, RBR_THR, 1);
    set_reg(c, bar, IER, 0);
    set_reg(c, bar, LCR, 0x03);
    set_reg(
        c,
        bar,
        IIR_FCR,
        (Fcr::ENABLE | Fcr::CLEAR_RX | Fcr::CLEAR_TX).bits(),
    );
    set_reg(c, bar, MCR, (Mcr::DTR | Mcr::RTS | Mcr::OUT2).bits());
    set_reg(c, bar, IER, ier.bits());
}

/// Reads every byte the receive FIFO holds now.
pub fn drain(c: &mut Client, bar: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while reg(c, bar, LSR) & Lsr::DR.bits() != 0 {
        out.push(reg(c, bar, RBR_THR));
    }
    out
}

/// Reads from a stream until `want` bytes arrived (10 s read timeout per read).
pub fn read_exactly(s: &mut std::os::unix::net::UnixStream, want: usize) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = vec![0u8; want];
    s.read_exact(&mut got).expect("bytes from the port");
    got
}
