//! `uart`: the 16550A driven by an arbitrary sequence of register reads and writes, bytes
//! arriving on the line, bytes taken for transmission, carrier changes and resets, checked
//! against a small model of its FIFOs.
//!
//! Invariants after every step: the receive and transmit FIFOs never hold more than their
//! depth (16, or 1 with the FIFOs off) and hand bytes out in order, as the model predicts
//! (RBR reads, overruns counted, transmitted bytes); LSR's DR, THRE and TEMT agree with the
//! FIFOs; an interrupt is pending only for a condition whose IER bit is set, with the
//! highest-priority one in IIR, and `interrupt_asserted` says the same; IIR's FIFO bits
//! follow FCR.

use std::collections::VecDeque;

use arbitrary::{Arbitrary, Unstructured};
use mtty::uart::{
    Ier, Lcr, Lsr, Mcr, Uart, FIFO_SIZE, IER, IIR_CTI, IIR_FCR, IIR_FIFO_ENABLED, IIR_MSR,
    IIR_NONE, IIR_RDA, IIR_RLS, IIR_THRE, LCR, LSR, MCR, RBR_THR,
};

#[derive(Arbitrary, Debug)]
enum Step {
    Read(u8),
    Write(u8, u8),
    Receive(u8),
    PopTx,
    Carrier(bool),
    RxIdle(bool),
    Reset,
}

/// What the model tracks: the FIFO contents and the settings that decide them.
#[derive(Default)]
struct Model {
    rx: VecDeque<u8>,
    tx: VecDeque<u8>,
    fifo: bool,
    dlab: bool,
    lcr: u8,
    mcr: u8,
    ier: u8,
    overruns: u64,
}

impl Model {
    fn capacity(&self) -> usize {
        if self.fifo {
            FIFO_SIZE
        } else {
            1
        }
    }

    fn loopback(&self) -> bool {
        self.mcr & Mcr::LOOP.bits() != 0
    }

    fn receive(&mut self, b: u8) {
        if self.rx.len() < self.capacity() {
            self.rx.push_back(b);
        } else {
            self.overruns += 1;
        }
    }

    fn write(&mut self, off: u8, v: u8) {
        match off {
            RBR_THR if !self.dlab => {
                if self.loopback() {
                    self.receive(v);
                } else if self.tx.len() < self.capacity() {
                    self.tx.push_back(v);
                }
            }
            IER if !self.dlab => self.ier = v & 0x0f,
            IIR_FCR => {
                let enable = v & 1 != 0;
                if enable != self.fifo {
                    self.rx.clear();
                    self.tx.clear();
                }
                self.fifo = enable;
                if v & 2 != 0 {
                    self.rx.clear();
                }
                if v & 4 != 0 {
                    self.tx.clear();
                }
            }
            LCR => {
                self.lcr = v;
                self.dlab = v & Lcr::DLAB.bits() != 0;
            }
            MCR => self.mcr = v & 0x1f,
            _ => {}
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut uart = Uart::new();
    let mut m = Model::default();
    let mut steps = 0;
    while let Ok(step) = Step::arbitrary(&mut u) {
        steps += 1;
        if steps > 4096 || u.is_empty() && matches!(step, Step::Read(0)) {
            break;
        }
        let iir_before = uart.pending_interrupt();
        match step {
            Step::Read(off) => {
                let off = off % 10;
                let v = uart.read(off);
                match off {
                    RBR_THR if !m.dlab => {
                        assert_eq!(
                            v,
                            m.rx.pop_front().unwrap_or(0),
                            "RBR hands out the FIFO in order"
                        )
                    }
                    IER if !m.dlab => assert_eq!(v, m.ier, "IER reads back"),
                    IIR_FCR => {
                        let id = iir_before.unwrap_or(IIR_NONE);
                        let fifo = if m.fifo { IIR_FIFO_ENABLED } else { 0 };
                        assert_eq!(
                            v,
                            id | fifo,
                            "IIR shows the pending interrupt and the FIFO state"
                        );
                    }
                    LCR => assert_eq!(v, m.lcr),
                    MCR => assert_eq!(v, m.mcr),
                    LSR => {
                        let lsr = Lsr::from_bits_retain(v);
                        assert_eq!(lsr.contains(Lsr::DR), !m.rx.is_empty(), "LSR.DR");
                        assert_eq!(lsr.contains(Lsr::THRE), m.tx.is_empty(), "LSR.THRE");
                        assert_eq!(lsr.contains(Lsr::TEMT), m.tx.is_empty(), "LSR.TEMT");
                        assert!(
                            !uart.lsr().intersects(Lsr::ERRORS),
                            "an LSR read clears the error bits"
                        );
                    }
                    8 | 9 => assert_eq!(v, 0xff, "undecoded offsets float high"),
                    _ => {}
                }
            }
            Step::Write(off, v) => {
                let off = off % 10;
                uart.write(off, v);
                m.write(off, v);
            }
            Step::Receive(b) => {
                uart.receive(b);
                m.receive(b);
            }
            Step::PopTx => assert_eq!(uart.pop_tx(), m.tx.pop_front(), "TX FIFO in order"),
            Step::Carrier(on) => uart.set_carrier(on),
            Step::RxIdle(idle) => uart.set_rx_idle(idle),
            Step::Reset => {
                uart.reset();
                m = Model::default();
            }
        }
        check(&uart, &m);
    }
}

fn check(uart: &Uart, m: &Model) {
    assert!(m.rx.len() <= m.capacity() && m.tx.len() <= m.capacity());
    assert_eq!(uart.rx_space(), m.capacity() - m.rx.len(), "RX FIFO count");
    assert_eq!(
        uart.peek_tx(),
        m.tx.front().copied(),
        "next byte to transmit"
    );
    assert_eq!(uart.overruns(), m.overruns, "overruns counted");
    let lsr = uart.lsr();
    assert_eq!(lsr.contains(Lsr::DR), !m.rx.is_empty());
    assert_eq!(lsr.contains(Lsr::THRE | Lsr::TEMT), m.tx.is_empty());
    assert_eq!(uart.line_connected(), !m.loopback());
    let ier = Ier::from_bits_retain(m.ier);
    let pending = uart.pending_interrupt();
    assert_eq!(uart.interrupt_asserted(), pending.is_some());
    match pending {
        None => {}
        Some(IIR_RLS) => {
            assert!(
                ier.contains(Ier::RLS) && lsr.intersects(Lsr::ERRORS),
                "RLS pending"
            )
        }
        Some(IIR_RDA) | Some(IIR_CTI) => {
            assert!(
                ier.contains(Ier::RDA) && !m.rx.is_empty(),
                "RDA/CTI pending"
            )
        }
        Some(IIR_THRE) => assert!(ier.contains(Ier::THRE) && m.tx.is_empty(), "THRE pending"),
        Some(IIR_MSR) => assert!(ier.contains(Ier::MSR), "MSR pending"),
        Some(other) => panic!("IIR id {other:#x}"),
    }
    // Nothing enabled and wanted goes unreported, by priority.
    if ier.contains(Ier::RLS) && lsr.intersects(Lsr::ERRORS) {
        assert_eq!(
            pending,
            Some(IIR_RLS),
            "line status has the highest priority"
        );
    } else if ier.contains(Ier::RDA) && (!m.fifo && !m.rx.is_empty() || m.rx.len() >= FIFO_SIZE) {
        assert_eq!(
            pending,
            Some(IIR_RDA),
            "data at the trigger level is reported"
        );
    }
    assert_eq!(Mcr::from_bits_truncate(m.mcr).bits(), m.mcr);
}
