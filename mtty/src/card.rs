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

use mdev::{Interrupts, IrqIndex};

use crate::console::{GuestLink, PortKick};
use crate::uart::{Uart, IIR_FCR, LSR, RBR_THR};

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
        /// The last move of the TX FIFO to the line stopped at a full channel.
        tx_blocked: bool,
    },
}

impl Line {
    /// A console line on `link`.
    pub fn console(link: GuestLink) -> Self {
        Line::Console {
            link,
            held: None,
            tx_blocked: false,
        }
    }
}

/// What a guest register access is, for when bytes move between the FIFOs and the line.
///
/// Every guest access is a round trip of tens of microseconds between the VMM and this
/// process, and every interrupt the card raises while the guest is at work costs more of them
/// (the VMM unmasks INTx at the guest's next access, and a line still asserted fires again).
/// So the line moves bytes where that costs the guest the fewest accesses and interrupts,
/// showing it only states a 16550A can be in:
/// - transmitted bytes stay in the TX FIFO while the guest fills it (a run of THR writes) and
///   go to the line before its next other access, or when a THR write finds the FIFO full.
///   The FIFO does not empty in the middle of the guest's burst, raising THRE and the
///   interrupt line after every byte, and the console is woken once per burst rather than
///   once per byte; to the guest the FIFO drains after it was filled, and Linux's 8250 driver
///   finds it empty at its next IIR or LSR read;
/// - received bytes arrive while the guest drains the receive FIFO (RBR and LSR reads) only
///   up to one below the trigger level, and at an IIR read up to the trigger level: the
///   driver's LSR/RBR loop finds data for as long as the line has some, and the
///   received-data interrupt, asserted when the guest looks for work, drops at its first
///   read instead of staying up for the whole loop. Any other access, and the console's own
///   moves, fill the FIFO up to 16 (flow control and overruns as ever).
///
/// A guest that leaves the port alone has its transmitted bytes sent, and its receive FIFO
/// filled, by the console's idle flush within [`crate::console::POLL_INTERVAL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A write of the transmit holding register.
    ThrWrite,
    /// A read of RBR or LSR.
    RxDrain,
    /// A read of IIR.
    IirRead,
    /// Any other register access.
    Other,
}

impl Access {
    /// The kind of an access of `offset` (a write when `write`) on a port in `uart`'s state.
    pub fn of(uart: &Uart, offset: u64, write: bool) -> Self {
        let data = offset == u64::from(RBR_THR) && !uart.divisor_latch_selected();
        match (write, offset) {
            (true, _) if data => Access::ThrWrite,
            (false, _) if data => Access::RxDrain,
            (false, o) if o == u64::from(LSR) => Access::RxDrain,
            (false, o) if o == u64::from(IIR_FCR) => Access::IirRead,
            _ => Access::Other,
        }
    }

    /// How many bytes the receive FIFO may hold after the line delivered around this access.
    fn rx_fill_limit(self, uart: &Uart) -> usize {
        let trigger = uart.rx_trigger();
        match self {
            Access::RxDrain if trigger > 1 => trigger - 1,
            Access::IirRead if trigger > 1 => trigger,
            _ => usize::MAX,
        }
    }
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
    /// its FIFO is full, and while it holds DTR with RTS down (paused); with neither (the
    /// port closed) a full FIFO overruns, as on a line nobody listens to.
    pub fn pump(&mut self) {
        self.before(Access::Other);
        self.after(Access::Other);
    }

    /// Moves bytes before a guest access of kind `access`: the TX FIFO goes to the line
    /// unless the guest goes on filling it (see [`Access`]).
    pub fn before(&mut self, access: Access) {
        if access != Access::ThrWrite || self.uart.tx_full() {
            self.send_tx();
        }
        self.fill_rx(access.rx_fill_limit(&self.uart));
    }

    /// Moves bytes after a guest access of kind `access` (a read may have made room in the
    /// receive FIFO).
    pub fn after(&mut self, access: Access) {
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
            Line::Console { .. } => self.fill_rx(access.rx_fill_limit(&self.uart)),
        }
    }

    /// The console moved bytes: refill the receive FIFO, and send what the TX FIFO holds if
    /// a full channel held it back (`flush`: send it in any case).
    pub fn host_moved(&mut self, flush: bool) {
        let blocked = matches!(
            self.line,
            Line::Console {
                tx_blocked: true,
                ..
            }
        );
        if flush || blocked {
            self.send_tx();
        }
        self.after(Access::Other);
    }

    /// TX FIFO to the console, as far as the channel takes it.
    fn send_tx(&mut self) {
        let Line::Console {
            link, tx_blocked, ..
        } = &mut self.line
        else {
            return;
        };
        *tx_blocked = false;
        while let Some(b) = self.uart.peek_tx() {
            match link.to_host.try_send(b) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {
                    self.uart.pop_tx();
                }
                Err(TrySendError::Full(_)) => {
                    *tx_blocked = true;
                    break;
                }
            }
        }
    }

    /// The console's bytes into the RX FIFO until it holds `limit`, as far as flow control
    /// lets them.
    fn fill_rx(&mut self, limit: usize) {
        let Line::Console { link, held, .. } = &mut self.line else {
            return;
        };
        if self.uart.line_connected() {
            loop {
                if self.uart.receive_paused() {
                    break;
                }
                if self.uart.rx_space() == 0 && self.uart.ready_to_receive() {
                    break;
                }
                if self.uart.rx_len() >= limit {
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

    /// Runs the guest's access `f` of register `offset` (a write when `write`) on port
    /// `index` (if it exists), moving bytes around it as [`Access`] says, and updates the
    /// line.
    pub fn access<R>(
        &self,
        index: usize,
        offset: u64,
        write: bool,
        f: impl FnOnce(&mut Uart) -> R,
    ) -> Option<R> {
        let mut ports = self.lock();
        let port = ports.get_mut(index)?;
        let kind = Access::of(&port.uart, offset, write);
        port.before(kind);
        let r = f(&mut port.uart);
        port.after(kind);
        self.update_line(&ports);
        Some(r)
    }

    fn host_moved(&self, index: usize, flush: bool) {
        let mut ports = self.lock();
        if let Some(port) = ports.get_mut(index) {
            port.host_moved(flush);
            self.update_line(&ports);
        }
    }

    /// How many interrupts the card delivered on `index` (to every connection together).
    pub fn interrupts_delivered(&self, index: IrqIndex) -> u64 {
        self.interrupts.delivered(index)
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
        self.host_moved(port, false);
    }

    fn flush(&self, port: usize) {
        self.host_moved(port, true);
    }

    fn set_carrier(&self, port: usize, on: bool) {
        let _ = self.with_port(port, |u| u.set_carrier(on));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::link;
    use crate::uart::{
        Fcr, Ier, Lsr, Mcr, FIFO_SIZE, IIR_FCR, IIR_RDA, IIR_THRE, LSR, MCR, RBR_THR,
    };
    use std::sync::atomic::AtomicBool;
    use std::sync::Weak;

    fn console_card() -> (Arc<Card>, crate::console::HostLink) {
        let irqs = Arc::new(Interrupts::new(true, 1, 0));
        let mut host = None;
        let card = Arc::new_cyclic(|weak: &Weak<Card>| {
            let weak: Weak<dyn PortKick> = weak.clone();
            let (guest, h) = link(weak, 0, Arc::new(AtomicBool::new(false)));
            host = Some(h);
            Card::new(vec![Port::new(Line::console(guest))], irqs)
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

    /// Writes `bytes` to port 0's THR as guest accesses, checking the interrupt line stays
    /// down and THRE clear throughout.
    fn guest_burst(card: &Card, bytes: &[u8]) {
        for &b in bytes {
            card.access(0, u64::from(RBR_THR), true, |u| u.write(RBR_THR, b));
            assert!(!card.line(), "no interrupt in the middle of a burst");
            let lsr = card.lock()[0].uart.lsr();
            assert!(!lsr.contains(Lsr::THRE), "the FIFO holds the burst");
        }
    }

    fn outgoing(host: &crate::console::HostLink) -> Vec<u8> {
        match host.next_outgoing() {
            crate::console::Outgoing::Bytes(b) => b,
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_burst_stays_in_the_tx_fifo_until_the_guest_reads_a_register() {
        let (card, host) = console_card();
        card.with_port(0, |u| {
            u.write(IIR_FCR, Fcr::ENABLE.bits());
            u.write(crate::uart::IER, Ier::THRE.bits());
            u.read(IIR_FCR); // takes the THRE that enabling raised
        });
        assert!(!card.line());
        guest_burst(&card, b"0123456789abcdef");
        let iir = card.access(0, u64::from(IIR_FCR), false, |u| u.read(IIR_FCR));
        assert_eq!(
            iir.map(|i| i & 0x0f),
            Some(IIR_THRE),
            "drained before the IIR read, which shows THRE (and so clears it)"
        );
        assert!(
            !card.line(),
            "the THRE the read showed is gone: no interrupt"
        );
        assert_eq!(
            outgoing(&host),
            b"0123456789abcdef",
            "one batch for the console"
        );
    }

    #[test]
    fn a_thr_write_to_a_full_fifo_sends_the_fifo_first_and_loses_nothing() {
        let (card, host) = console_card();
        card.with_port(0, |u| u.write(IIR_FCR, Fcr::ENABLE.bits()));
        let data: Vec<u8> = (0..40).collect();
        for &b in &data {
            card.access(0, u64::from(RBR_THR), true, |u| u.write(RBR_THR, b));
        }
        card.access(0, u64::from(LSR), false, |u| u.read(LSR));
        let mut got = Vec::new();
        while got.len() < data.len() {
            let more = outgoing(&host);
            assert!(!more.is_empty(), "bytes missing: have {got:?}");
            got.extend(more);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn bytes_left_in_the_tx_fifo_go_out_on_the_consoles_idle_flush() {
        let (card, host) = console_card();
        card.with_port(0, |u| u.write(IIR_FCR, Fcr::ENABLE.bits()));
        guest_burst(&card, b"abc");
        // The guest touches nothing more: the console's idle wait sends them.
        let mut got = outgoing(&host);
        if got.is_empty() {
            got = outgoing(&host);
        }
        assert_eq!(got, b"abc");
        assert!(card.lock()[0].uart.lsr().contains(Lsr::THRE | Lsr::TEMT));
    }

    #[test]
    fn offset_0_with_dlab_set_is_the_divisor_latch_not_a_burst() {
        let mut u = Uart::new();
        assert_eq!(Access::of(&u, 0, true), Access::ThrWrite);
        assert_eq!(Access::of(&u, 0, false), Access::RxDrain);
        assert_eq!(Access::of(&u, 5, false), Access::RxDrain);
        assert_eq!(Access::of(&u, 2, false), Access::IirRead);
        assert_eq!(Access::of(&u, 2, true), Access::Other, "an FCR write");
        assert_eq!(Access::of(&u, 7, true), Access::Other);
        u.write(crate::uart::LCR, crate::uart::Lcr::DLAB.bits());
        assert_eq!(Access::of(&u, 0, true), Access::Other);
        assert_eq!(Access::of(&u, 0, false), Access::Other);
    }

    #[test]
    fn while_the_guest_drains_received_bytes_its_interrupt_drops_and_every_byte_arrives() {
        let (card, host) = console_card();
        card.with_port(0, |u| {
            u.write(IIR_FCR, Fcr::ENABLE.bits() | 0x80); // trigger level 8
            u.write(MCR, (Mcr::RTS | Mcr::DTR).bits());
            u.write(crate::uart::IER, Ier::RDA.bits());
        });
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert!(host.deliver(&data));
        assert!(card.line(), "the console's delivery raises the interrupt");
        // What Linux's 8250 driver does: IIR, then LSR and RBR until DR clears.
        let iir = card.access(0, u64::from(IIR_FCR), false, |u| u.read(IIR_FCR));
        assert_eq!(iir.map(|i| i & 0x0f), Some(IIR_RDA));
        let mut got = Vec::new();
        loop {
            let lsr = card.access(0, u64::from(LSR), false, |u| u.read(LSR));
            let lsr = Lsr::from_bits_retain(lsr.unwrap_or(0));
            assert!(!lsr.contains(Lsr::OE), "no overrun while RTS is up");
            if !lsr.contains(Lsr::DR) {
                break;
            }
            got.extend(card.access(0, u64::from(RBR_THR), false, |u| u.read(RBR_THR)));
            // (The last bytes, nothing more coming, raise the character timeout.)
            if got.len() >= FIFO_SIZE && got.len() + FIFO_SIZE < data.len() {
                assert!(!card.line(), "no interrupt while the guest drains");
            }
        }
        assert_eq!(got, data, "every byte, in order");
        assert!(!card.line());
        // The next look for work finds the line's next bytes at the trigger level.
        assert!(host.deliver(&data[..100]));
        let iir = card.access(0, u64::from(IIR_FCR), false, |u| u.read(IIR_FCR));
        assert_eq!(iir.map(|i| i & 0x0f), Some(IIR_RDA));
    }

    #[test]
    fn rts_down_with_dtr_up_pauses_the_line_and_nothing_is_lost() {
        let (card, host) = console_card();
        card.with_port(0, |u| {
            u.write(IIR_FCR, Fcr::ENABLE.bits());
            u.write(MCR, (Mcr::RTS | Mcr::DTR).bits());
        });
        let data: Vec<u8> = (0..200).collect();
        assert!(host.deliver(&data));
        // The driver throttles (crtscts): RTS down, DTR up; it still drains the FIFO.
        card.with_port(0, |u| u.write(MCR, Mcr::DTR.bits()));
        let mut got = Vec::new();
        for _ in 0..3 {
            while let Some(b) = card.with_port(0, |u| {
                (Lsr::from_bits_retain(u.read(LSR)).contains(Lsr::DR)).then(|| u.read(RBR_THR))
            }) {
                match b {
                    Some(b) => got.push(b),
                    None => break,
                }
            }
            // Accesses while paused bring nothing in, and overrun nothing.
            let lsr = card.with_port(0, |u| u.read(LSR)).unwrap_or(0);
            assert_eq!(
                lsr & (Lsr::DR | Lsr::OE).bits(),
                0,
                "paused: no data, no overrun"
            );
        }
        assert_eq!(got, data[..FIFO_SIZE], "what was in the FIFO");
        // Unthrottled: the rest follows, in order.
        card.with_port(0, |u| u.write(MCR, (Mcr::RTS | Mcr::DTR).bits()));
        while let Some(Some(b)) = card.with_port(0, |u| {
            (Lsr::from_bits_retain(u.read(LSR)).contains(Lsr::DR)).then(|| u.read(RBR_THR))
        }) {
            got.push(b);
        }
        assert_eq!(got, data);
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
