//! `mtty_line`: one mtty port on a console line (the card between its UART and the two
//! channels a console thread would use), driven by arbitrary guest register accesses through
//! [`Card::access`] (where the card decides when bytes move: bursts held in the TX FIFO,
//! receive refills bounded while the guest drains) interleaved with the host side offering
//! bytes, taking what the guest sent, kicking and flushing the card, and carrier changes.
//!
//! Invariants: nothing panics or blocks; what the host receives is, in order, a subsequence
//! of the bytes the guest wrote to offset 0 (nothing invented, reordered or duplicated); while
//! the guest never set loopback, every RBR read made with data ready returns, in order, a
//! subsequence of the bytes the host offered; the device's interrupt line is asserted exactly
//! when the UART asks for an interrupt.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use arbitrary::{Arbitrary, Unstructured};
use mdev::Interrupts;
use mtty::card::{Card, Line, Port};
use mtty::console::{link, HostLink, PortKick};
use mtty::uart::{Lsr, Mcr, MCR, RBR_THR, REGISTER_COUNT};

#[derive(Arbitrary, Debug)]
enum Step {
    /// A guest access of register `offset % 8`.
    Access { offset: u8, write: bool, value: u8 },
    /// The host offers bytes (as many as the channel takes), then kicks the card.
    Offer(Vec<u8>),
    /// The host takes what the guest sent.
    Take,
    /// The console's idle flush.
    Flush,
    /// The host side attaches or goes away.
    Carrier(bool),
}

/// Checks that `got` appears in `from`, in order, starting at `*at`; advances `*at`.
fn follows(from: &[u8], at: &mut usize, got: &[u8], what: &str) {
    for &b in got {
        match from[*at..].iter().position(|&x| x == b) {
            Some(p) => *at += p + 1,
            None => panic!("{what}: byte {b:#04x} was never sent (or came out of order)"),
        }
    }
}

fn card(irqs: &Arc<Interrupts>) -> (Arc<Card>, HostLink) {
    let mut host = None;
    let card = Arc::new_cyclic(|weak: &Weak<Card>| {
        let weak: Weak<dyn PortKick> = weak.clone();
        let (guest, h) = link(weak, 0, Arc::new(AtomicBool::new(false)));
        host = Some(h);
        Card::new(vec![Port::new(Line::console(guest))], irqs.clone())
    });
    match host {
        Some(host) => (card, host),
        None => unreachable!("Arc::new_cyclic ran the closure"),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(steps) = Vec::<Step>::arbitrary(&mut u) else {
        return;
    };
    let irqs = Arc::new(Interrupts::new(true, 1, 0));
    let (card, host) = card(&irqs);
    let mut written = Vec::new();
    let mut offered = Vec::new();
    let (mut sent_at, mut read_at) = (0, 0);
    let mut looped = false;
    for step in steps.into_iter().take(4096) {
        match step {
            Step::Access {
                offset,
                write,
                value,
            } => {
                let offset = u64::from(offset) % REGISTER_COUNT;
                let reg = u8::try_from(offset).unwrap_or(0);
                if write && offset == u64::from(RBR_THR) {
                    written.push(value);
                }
                if write && offset == u64::from(MCR) && value & Mcr::LOOP.bits() != 0 {
                    looped = true;
                }
                let ready = card.lock()[0].uart.lsr().contains(Lsr::DR);
                let dlab = card.lock()[0].uart.divisor_latch_selected();
                let got = card
                    .access(0, offset, write, |uart| {
                        if write {
                            uart.write(reg, value);
                            None
                        } else {
                            Some(uart.read(reg))
                        }
                    })
                    .flatten();
                if let Some(b) = got {
                    if offset == u64::from(RBR_THR) && ready && !dlab && !looped {
                        follows(&offered, &mut read_at, &[b], "guest RBR");
                    }
                }
            }
            Step::Offer(bytes) => {
                for b in bytes.into_iter().take(64) {
                    if !host.offer(b) {
                        break;
                    }
                    offered.push(b);
                }
                host.kick();
            }
            Step::Take => follows(&written, &mut sent_at, &host.outgoing_now(), "host"),
            Step::Flush => card.flush(0),
            Step::Carrier(on) => card.set_carrier(0, on),
        }
        let asserted = card.lock()[0].uart.interrupt_asserted();
        assert_eq!(irqs.line_asserted(), asserted, "the line follows the UART");
    }
    card.flush(0);
    follows(
        &written,
        &mut sent_at,
        &host.outgoing_now(),
        "host at the end",
    );
}
