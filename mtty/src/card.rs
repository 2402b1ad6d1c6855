//! The ports of one card and what moves bytes between their UARTs and their consoles.
//!
//! The card is shared between the device (register accesses, under the device lock) and the
//! console threads (which only ever `kick` it after moving bytes through a bounded channel).
//! Every change ends in [`Card::update_line`]: the card's interrupt line is the OR of its
//! ports' interrupt conditions and drives INTx or MSI through [`Interrupts::update_line`].
//! Lock order: device mutex → card mutex → `Interrupts`.

use std::sync::mpsc::TryRecvError;
use std::sync::mpsc::TrySendError;
use std::sync::{Arc, Mutex, MutexGuard};

use mdev::Interrupts;

use crate::console::{GuestLink, PortKick};
use crate::uart::Uart;

/// Where a port's line goes.
pub enum Line {
    /// Transmitted bytes come straight back into the receive FIFO.
    Loopback,
    /// A console thread at the other end of two channels.
    Console {
        /// The channels.
        link: GuestLink,
        /// A byte taken from `from_host` that did not fit yet.
        held: Option<u8>,
    },
}

/// One port: its UART and its line.
pub struct Port {
    /// The register model.
    pub uart: Uart,
    /// The host side.
    pub line: Line,
}

impl Port {
    /// A port in reset state on `line`.
    pub fn new(line: Line) -> Self {
        let mut uart = Uart::new();
        if matches!(line, Line::Loopback) {
            uart.set_carrier(true);
        }
        Port { uart, line }
    }

    /// Moves bytes as far as they can go without blocking: TX FIFO to the line, the line's
    /// bytes into the RX FIFO. Bytes wait (flow control) while the guest asserts RTS and
    /// its FIFO is full; otherwise a full FIFO overruns, as on a real line.
    pub fn pump(&mut self) {
        match &mut self.line {
            Line::Loopback => {
                while self.uart.rx_space() > 0 {
                    match self.uart.pop_tx() {
                        Some(b) => self.uart.receive(b),
                        None => break,
                    }
                }
                self.uart.set_rx_idle(true);
            }
            Line::Console { link, held } => {
                while let Some(b) = self.uart.peek_tx() {
                    match link.to_host.try_send(b) {
                        Ok(()) | Err(TrySendError::Disconnected(_)) => {
                            self.uart.pop_tx();
                        }
                        Err(TrySendError::Full(_)) => break,
                    }
                }
                if self.uart.line_connected() {
                    loop {
                        if self.uart.rx_space() == 0 && self.uart.ready_to_receive() {
                            break;
                        }
                        let next = held.take().or_else(|| link.from_host.try_recv().ok());
                        match next {
                            Some(b) => self.uart.receive(b),
                            None => break,
                        }
                    }
                }
                if held.is_none() {
                    match link.from_host.try_recv() {
                        Ok(b) => *held = Some(b),
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
                    }
                }
                self.uart.set_rx_idle(held.is_none());
            }
        }
    }
}

/// The ports of a card and its interrupts.
pub struct Card {
    ports: Mutex<Vec<Port>>,
    interrupts: Arc<Interrupts>,
}

impl Card {
    /// A card with `ports`, raising interrupts through `interrupts`.
    pub fn new(ports: Vec<Port>, interrupts: Arc<Interrupts>) -> Self {
        Card {
            ports: Mutex::new(ports),
            interrupts,
        }
    }

    /// The ports, locked. A panic under this lock leaves byte queues consistent.
    pub fn lock(&self) -> MutexGuard<'_, Vec<Port>> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on port `index` (if it exists), pumps it and updates the line.
    pub fn with_port<R>(&self, index: usize, f: impl FnOnce(&mut Uart) -> R) -> Option<R> {
        let mut ports = self.lock();
        let port = ports.get_mut(index)?;
        let r = f(&mut port.uart);
        port.pump();
        self.update_line(&ports);
        Some(r)
    }

    /// Whether any port asks for an interrupt.
    pub fn line(&self) -> bool {
        self.lock().iter().any(|p| p.uart.interrupt_asserted())
    }

    /// Drives the interrupt from the ports' state.
    pub fn update_line(&self, ports: &[Port]) {
        let asserted = ports.iter().any(|p| p.uart.interrupt_asserted());
        self.interrupts.update_line(asserted);
    }

    /// Every port back to reset state.
    pub fn reset(&self) {
        let mut ports = self.lock();
        for p in ports.iter_mut() {
            p.uart.reset();
            p.pump();
        }
        self.update_line(&ports);
    }
}

impl PortKick for Card {
    fn kick(&self, port: usize) {
        let _ = self.with_port(port, |_| ());
    }

    fn set_carrier(&self, port: usize, on: bool) {
        let _ = self.with_port(port, |u| u.set_carrier(on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::link;
    use crate::uart::{Fcr, Ier, Lsr, Mcr, IIR_FCR, IIR_RDA, LSR, MCR, RBR_THR};
    use std::sync::atomic::AtomicBool;
    use std::sync::Weak;

    fn console_card() -> (Arc<Card>, crate::console::HostLink) {
        let irqs = Arc::new(Interrupts::new(true, 1, 0));
        let mut host = None;
        let card = Arc::new_cyclic(|weak: &Weak<Card>| {
            let weak: Weak<dyn PortKick> = weak.clone();
            let (guest, h) = link(weak, 0, Arc::new(AtomicBool::new(false)));
            host = Some(h);
            Card::new(
                vec![Port::new(Line::Console {
                    link: guest,
                    held: None,
                })],
                irqs,
            )
        });
        (card, host.unwrap())
    }

    #[test]
    fn loopback_line_echoes_and_holds_tx_while_rx_is_full() {
        let card = Card::new(
            vec![Port::new(Line::Loopback)],
            Arc::new(Interrupts::new(true, 1, 0)),
        );
        card.with_port(0, |u| u.write(IIR_FCR, Fcr::ENABLE.bits()));
        for b in 0..20u8 {
            card.with_port(0, |u| u.write(RBR_THR, b));
        }
        let lsr = card.with_port(0, |u| u.read(LSR)).unwrap();
        assert_eq!(lsr & Lsr::OE.bits(), 0, "flow control, no overrun");
        assert_eq!(
            lsr & Lsr::THRE.bits(),
            0,
            "4 bytes still wait in the TX FIFO"
        );
        let got: Vec<u8> = (0..20)
            .map(|_| card.with_port(0, |u| u.read(RBR_THR)).unwrap())
            .collect();
        assert_eq!(got, (0..20).collect::<Vec<u8>>());
    }

    #[test]
    fn console_bytes_wait_while_rts_and_overrun_without_it() {
        let (card, host) = console_card();
        card.with_port(0, |u| {
            u.write(IIR_FCR, Fcr::ENABLE.bits());
            u.write(MCR, (Mcr::RTS | Mcr::DTR).bits());
            u.write(crate::uart::IER, Ier::RDA.bits());
        });
        assert!(host.deliver(&[7u8; 20]));
        let (lsr, iir) = card
            .with_port(0, |u| (u.read(LSR), u.read(IIR_FCR)))
            .unwrap();
        assert_eq!(lsr & Lsr::OE.bits(), 0);
        assert_eq!(iir & 0x0f, IIR_RDA);
        for _ in 0..20 {
            assert_eq!(card.with_port(0, |u| u.read(RBR_THR)), Some(7));
        }
        card.with_port(0, |u| u.write(MCR, 0));
        assert!(host.deliver(&[1u8; 20]));
        let lsr = card.with_port(0, |u| u.read(LSR)).unwrap();
        assert_ne!(lsr & Lsr::OE.bits(), 0, "no RTS: a full FIFO overruns");
    }

    #[test]
    fn transmitted_bytes_reach_the_console() {
        let (card, host) = console_card();
        card.with_port(0, |u| u.write(RBR_THR, b'z'));
        match host.next_outgoing() {
            crate::console::Outgoing::Bytes(b) => assert_eq!(b, b"z"),
            _ => panic!("no byte"),
        }
    }
}
