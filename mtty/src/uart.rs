//! A 16550A UART as a plain state machine: eight byte registers, 16-byte FIFOs, the
//! interrupt identification logic and the modem lines. It does no I/O: transmitted bytes wait
//! in the TX FIFO until the owner takes them ([`Uart::pop_tx`]) and received bytes are handed
//! in with [`Uart::receive`].

use std::collections::VecDeque;

use bitflags::bitflags;

/// Depth of each FIFO.
pub const FIFO_SIZE: usize = 16;
/// Number of register offsets a port decodes.
pub const REGISTER_COUNT: u64 = 8;

/// What a read of an offset the port does not decode returns: the bus floats high.
pub const UNDECODED_READ: u8 = 0xff;
/// Divisor latch low byte at reset: 12, i.e. 9600 baud from the 1.8432 MHz clock.
pub const DLL_RESET: u8 = 0x0c;

/// RBR (read) / THR (write); DLL when LCR.DLAB is set.
pub const RBR_THR: u8 = 0;
/// IER; DLM when LCR.DLAB is set.
pub const IER: u8 = 1;
/// IIR (read) / FCR (write).
pub const IIR_FCR: u8 = 2;
/// Line control.
pub const LCR: u8 = 3;
/// Modem control.
pub const MCR: u8 = 4;
/// Line status.
pub const LSR: u8 = 5;
/// Modem status.
pub const MSR: u8 = 6;
/// Scratch.
pub const SCR: u8 = 7;

bitflags! {
    /// Interrupt enable register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Ier: u8 {
        /// Received data available (and character timeout).
        const RDA = 0x01;
        /// Transmitter holding register empty.
        const THRE = 0x02;
        /// Receiver line status.
        const RLS = 0x04;
        /// Modem status.
        const MSR = 0x08;
    }
}

/// IIR: no interrupt pending.
pub const IIR_NONE: u8 = 0x01;
/// IIR: receiver line status (highest priority).
pub const IIR_RLS: u8 = 0x06;
/// IIR: received data at the trigger level.
pub const IIR_RDA: u8 = 0x04;
/// IIR: character timeout (data below the trigger level, nothing more arriving).
pub const IIR_CTI: u8 = 0x0c;
/// IIR: transmitter holding register empty.
pub const IIR_THRE: u8 = 0x02;
/// IIR: modem status (lowest priority).
pub const IIR_MSR: u8 = 0x00;
/// IIR bits 7:6 set while the FIFOs are enabled.
pub const IIR_FIFO_ENABLED: u8 = 0xc0;

bitflags! {
    /// FIFO control register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Fcr: u8 {
        /// Enable both FIFOs.
        const ENABLE = 0x01;
        /// Clear the receive FIFO.
        const CLEAR_RX = 0x02;
        /// Clear the transmit FIFO.
        const CLEAR_TX = 0x04;
        /// DMA mode select (accepted, no effect).
        const DMA_MODE = 0x08;
        /// Receive trigger level (two bits).
        const TRIGGER = 0xc0;
    }
}

bitflags! {
    /// Line control register (word length, stop bits and parity are stored, not used).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Lcr: u8 {
        /// Word length select.
        const WORD_LENGTH = 0x03;
        /// Two stop bits.
        const STOP = 0x04;
        /// Parity enable, even, stick.
        const PARITY = 0x38;
        /// Break control.
        const BREAK = 0x40;
        /// Divisor latch access.
        const DLAB = 0x80;
    }
}

bitflags! {
    /// Modem control register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Mcr: u8 {
        /// Data terminal ready.
        const DTR = 0x01;
        /// Request to send: the guest is ready to receive (holds host bytes back when full).
        const RTS = 0x02;
        /// Output 1.
        const OUT1 = 0x04;
        /// Output 2.
        const OUT2 = 0x08;
        /// Local loopback.
        const LOOP = 0x10;
    }
}

bitflags! {
    /// Line status register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Lsr: u8 {
        /// Data ready.
        const DR = 0x01;
        /// Overrun error.
        const OE = 0x02;
        /// Parity error.
        const PE = 0x04;
        /// Framing error.
        const FE = 0x08;
        /// Break interrupt.
        const BI = 0x10;
        /// Transmitter holding register (TX FIFO) empty.
        const THRE = 0x20;
        /// Transmitter empty.
        const TEMT = 0x40;
        /// Error in the receive FIFO.
        const FIFO_ERROR = 0x80;
    }
}

impl Lsr {
    /// The error bits that raise a line-status interrupt and clear on an LSR read.
    pub const ERRORS: Lsr = Lsr::OE.union(Lsr::PE).union(Lsr::FE).union(Lsr::BI);
}

bitflags! {
    /// Modem status register.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Msr: u8 {
        /// CTS changed.
        const DCTS = 0x01;
        /// DSR changed.
        const DDSR = 0x02;
        /// RI went from on to off.
        const TERI = 0x04;
        /// DCD changed.
        const DDCD = 0x08;
        /// Clear to send.
        const CTS = 0x10;
        /// Data set ready.
        const DSR = 0x20;
        /// Ring indicator.
        const RI = 0x40;
        /// Data carrier detect.
        const DCD = 0x80;
        /// The delta bits.
        const DELTAS = 0x0f;
        /// The line bits.
        const LINES = 0xf0;
    }
}

/// One 16550A port.
#[derive(Debug, Clone)]
pub struct Uart {
    rx: VecDeque<u8>,
    tx: VecDeque<u8>,
    ier: Ier,
    lcr: Lcr,
    mcr: Mcr,
    /// Pending error bits (OE, PE, FE, BI).
    errors: Lsr,
    /// Modem lines driven from outside (the host side's carrier).
    external: Msr,
    /// Delta bits of the MSR.
    deltas: Msr,
    fifo_enabled: bool,
    trigger: usize,
    dll: u8,
    dlm: u8,
    scr: u8,
    thre_pending: bool,
    /// No further received bytes are on their way right now (character timeout may fire).
    rx_idle: bool,
    overruns: u64,
}

impl Default for Uart {
    fn default() -> Self {
        Self::new()
    }
}

impl Uart {
    /// A port in its reset state.
    pub fn new() -> Self {
        Uart {
            rx: VecDeque::with_capacity(FIFO_SIZE),
            tx: VecDeque::with_capacity(FIFO_SIZE),
            ier: Ier::empty(),
            lcr: Lcr::empty(),
            mcr: Mcr::empty(),
            errors: Lsr::empty(),
            external: Msr::empty(),
            deltas: Msr::empty(),
            fifo_enabled: false,
            trigger: 1,
            dll: DLL_RESET,
            dlm: 0,
            scr: 0,
            thre_pending: false,
            rx_idle: true,
            overruns: 0,
        }
    }

    /// Back to the reset state; the externally driven modem lines stay.
    pub fn reset(&mut self) {
        let external = self.external;
        *self = Uart::new();
        self.external = external;
    }

    /// A read of register `offset` (0..8); other offsets read as [`UNDECODED_READ`].
    pub fn read(&mut self, offset: u8) -> u8 {
        let dlab = self.lcr.contains(Lcr::DLAB);
        match offset {
            RBR_THR if dlab => self.dll,
            RBR_THR => self.rx.pop_front().unwrap_or(0),
            IER if dlab => self.dlm,
            IER => self.ier.bits(),
            IIR_FCR => self.read_iir(),
            LCR => self.lcr.bits(),
            MCR => self.mcr.bits(),
            LSR => {
                let lsr = self.lsr();
                self.errors = Lsr::empty();
                lsr.bits()
            }
            MSR => {
                let msr = self.modem_lines() | self.deltas;
                self.deltas = Msr::empty();
                msr.bits()
            }
            SCR => self.scr,
            _ => UNDECODED_READ,
        }
    }

    /// A write of `value` to register `offset`; writes to read-only or unknown registers are
    /// ignored.
    pub fn write(&mut self, offset: u8, value: u8) {
        let dlab = self.lcr.contains(Lcr::DLAB);
        match offset {
            RBR_THR if dlab => self.dll = value,
            RBR_THR => self.transmit(value),
            IER if dlab => self.dlm = value,
            IER => {
                let new = Ier::from_bits_truncate(value);
                if new.contains(Ier::THRE) && !self.ier.contains(Ier::THRE) && self.tx.is_empty() {
                    self.thre_pending = true;
                }
                self.ier = new;
            }
            IIR_FCR => self.write_fcr(Fcr::from_bits_truncate(value)),
            LCR => self.lcr = Lcr::from_bits_retain(value),
            MCR => {
                let before = self.modem_lines();
                self.mcr = Mcr::from_bits_truncate(value);
                self.note_modem_change(before);
            }
            SCR => self.scr = value,
            // LSR and MSR are read-only (the factory-test writes are not modelled).
            _ => {}
        }
    }

    fn transmit(&mut self, byte: u8) {
        self.thre_pending = false;
        if self.mcr.contains(Mcr::LOOP) {
            self.receive(byte);
            self.thre_pending = true;
        } else if self.tx.len() < self.capacity() {
            self.tx.push_back(byte);
        } else {
            log::debug!("uart: THR written with the TX FIFO full; byte lost");
        }
    }

    fn write_fcr(&mut self, fcr: Fcr) {
        let enable = fcr.contains(Fcr::ENABLE);
        if enable != self.fifo_enabled {
            self.rx.clear();
            self.tx.clear();
            self.thre_pending = true;
        }
        self.fifo_enabled = enable;
        if fcr.contains(Fcr::CLEAR_RX) {
            self.rx.clear();
        }
        if fcr.contains(Fcr::CLEAR_TX) && !self.tx.is_empty() {
            self.tx.clear();
            self.thre_pending = true;
        }
        self.trigger = match (fcr & Fcr::TRIGGER).bits() >> 6 {
            0 => 1,
            1 => 4,
            2 => 8,
            _ => 14,
        };
    }

    fn read_iir(&mut self) -> u8 {
        let id = self.pending_interrupt().unwrap_or(IIR_NONE);
        if id == IIR_THRE {
            self.thre_pending = false;
        }
        let fifo = if self.fifo_enabled {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        id | fifo
    }

    /// The line status as a read would return it (without clearing the error bits).
    pub fn lsr(&self) -> Lsr {
        let mut lsr = self.errors;
        if !self.rx.is_empty() {
            lsr |= Lsr::DR;
        }
        if self.tx.is_empty() {
            lsr |= Lsr::THRE | Lsr::TEMT;
        }
        lsr
    }

    /// The modem input lines now: the MCR outputs in loopback mode, else the host side's.
    fn modem_lines(&self) -> Msr {
        if self.mcr.contains(Mcr::LOOP) {
            let mut m = Msr::empty();
            m.set(Msr::CTS, self.mcr.contains(Mcr::RTS));
            m.set(Msr::DSR, self.mcr.contains(Mcr::DTR));
            m.set(Msr::RI, self.mcr.contains(Mcr::OUT1));
            m.set(Msr::DCD, self.mcr.contains(Mcr::OUT2));
            m
        } else {
            self.external
        }
    }

    fn note_modem_change(&mut self, before: Msr) {
        let after = self.modem_lines();
        let changed = before ^ after;
        if changed.contains(Msr::CTS) {
            self.deltas |= Msr::DCTS;
        }
        if changed.contains(Msr::DSR) {
            self.deltas |= Msr::DDSR;
        }
        if changed.contains(Msr::DCD) {
            self.deltas |= Msr::DDCD;
        }
        if before.contains(Msr::RI) && !after.contains(Msr::RI) {
            self.deltas |= Msr::TERI;
        }
    }

    /// The host side attached (`true`: CTS, DSR and DCD on) or went away.
    pub fn set_carrier(&mut self, on: bool) {
        let before = self.modem_lines();
        self.external = if on {
            Msr::CTS | Msr::DSR | Msr::DCD
        } else {
            Msr::empty()
        };
        self.note_modem_change(before);
    }

    fn capacity(&self) -> usize {
        if self.fifo_enabled {
            FIFO_SIZE
        } else {
            1
        }
    }

    /// Whether the transmit FIFO (the holding register with the FIFOs off) is full.
    pub fn tx_full(&self) -> bool {
        self.tx.len() >= self.capacity()
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// How many received bytes raise the received-data interrupt (1 with the FIFOs off).
    pub fn rx_trigger(&self) -> usize {
        if self.fifo_enabled {
            self.trigger
        } else {
            1
        }
    }

    /// Whether LCR.DLAB maps the divisor latch over offsets 0 and 1.
    pub fn divisor_latch_selected(&self) -> bool {
        self.lcr.contains(Lcr::DLAB)
    }

    /// Free places in the receive FIFO (1 deep with the FIFOs off).
    pub fn rx_space(&self) -> usize {
        self.capacity().saturating_sub(self.rx.len())
    }

    /// A byte arrived on the line. With the receive FIFO full it is lost and OE is set, as on
    /// the real part.
    pub fn receive(&mut self, byte: u8) {
        if self.rx_space() == 0 {
            self.errors |= Lsr::OE;
            self.overruns += 1;
        } else {
            self.rx.push_back(byte);
        }
    }

    /// Whether the line is connected to the host side (not in local loopback).
    pub fn line_connected(&self) -> bool {
        !self.mcr.contains(Mcr::LOOP)
    }

    /// Whether the guest asserts RTS: bytes for a full receive FIFO should wait rather than
    /// overrun.
    pub fn ready_to_receive(&self) -> bool {
        self.mcr.contains(Mcr::RTS)
    }

    /// Whether the guest holds the line's bytes back: DTR up (a receiver is there) with RTS
    /// down, which is how RTS/CTS flow control pauses the other end (Linux's driver does it
    /// when its buffers fill, with `crtscts`). With both down (the port closed) nobody
    /// receives, and bytes for a full FIFO overrun.
    pub fn receive_paused(&self) -> bool {
        self.mcr.contains(Mcr::DTR) && !self.mcr.contains(Mcr::RTS)
    }

    /// Tells the port whether more received bytes are on their way; with none, data below
    /// the trigger level raises the character-timeout interrupt (there is no timer).
    pub fn set_rx_idle(&mut self, idle: bool) {
        self.rx_idle = idle;
    }

    /// The next byte to transmit, left in the FIFO.
    pub fn peek_tx(&self) -> Option<u8> {
        self.tx.front().copied()
    }

    /// Takes the next byte to transmit; emptying the FIFO raises THRE.
    pub fn pop_tx(&mut self) -> Option<u8> {
        let b = self.tx.pop_front()?;
        if self.tx.is_empty() {
            self.thre_pending = true;
        }
        Some(b)
    }

    /// Bytes lost to overruns since reset.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// The divisor latch.
    pub fn divisor(&self) -> u16 {
        u16::from_le_bytes([self.dll, self.dlm])
    }

    /// The highest-priority enabled interrupt condition, as its IIR identification.
    pub fn pending_interrupt(&self) -> Option<u8> {
        if self.ier.contains(Ier::RLS) && self.errors.intersects(Lsr::ERRORS) {
            return Some(IIR_RLS);
        }
        if self.ier.contains(Ier::RDA) && !self.rx.is_empty() {
            if !self.fifo_enabled || self.rx.len() >= self.trigger {
                return Some(IIR_RDA);
            }
            if self.rx_idle {
                return Some(IIR_CTI);
            }
        }
        if self.ier.contains(Ier::THRE) && self.thre_pending && self.tx.is_empty() {
            return Some(IIR_THRE);
        }
        if self.ier.contains(Ier::MSR) && !self.deltas.is_empty() {
            return Some(IIR_MSR);
        }
        None
    }

    /// Whether the port asks for an interrupt.
    pub fn interrupt_asserted(&self) -> bool {
        self.pending_interrupt().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_fifo(trigger_bits: u8) -> Uart {
        let mut u = Uart::new();
        u.write(IIR_FCR, Fcr::ENABLE.bits() | trigger_bits);
        u
    }

    #[test]
    fn dlab_switches_offsets_0_and_1_to_the_divisor_latch() {
        let mut u = Uart::new();
        u.write(IER, 0x0f);
        u.write(LCR, Lcr::DLAB.bits() | 0x03);
        u.write(RBR_THR, 0x01);
        u.write(IER, 0x00);
        assert_eq!(u.divisor(), 1);
        assert_eq!(u.read(RBR_THR), 0x01);
        assert_eq!(u.read(IER), 0x00);
        assert_eq!(u.peek_tx(), None, "a DLL write transmits nothing");
        u.write(LCR, 0x03);
        assert_eq!(u.read(IER), 0x0f, "IER kept while the latch was mapped");
        assert_eq!(u.read(LCR), 0x03);
    }

    #[test]
    fn fifo_fills_to_16_then_overruns_and_lsr_read_clears_oe() {
        let mut u = with_fifo(0);
        for b in 0..20u8 {
            u.receive(b);
        }
        assert_eq!(u.rx_space(), 0);
        assert_eq!(u.overruns(), 4);
        let lsr = Lsr::from_bits_retain(u.read(LSR));
        assert!(lsr.contains(Lsr::DR | Lsr::OE));
        assert!(
            !Lsr::from_bits_retain(u.read(LSR)).contains(Lsr::OE),
            "OE clears on read"
        );
        let got: Vec<u8> = (0..16).map(|_| u.read(RBR_THR)).collect();
        assert_eq!(
            got,
            (0..16).collect::<Vec<u8>>(),
            "oldest bytes kept, in order"
        );
        assert!(!Lsr::from_bits_retain(u.read(LSR)).contains(Lsr::DR));
    }

    #[test]
    fn without_fifo_the_holding_register_is_one_byte() {
        let mut u = Uart::new();
        u.receive(1);
        u.receive(2);
        assert_eq!(u.overruns(), 1);
        assert_eq!(u.read(RBR_THR), 1);
        assert_eq!(u.read(IIR_FCR) & IIR_FIFO_ENABLED, 0);
    }

    #[test]
    fn fcr_clears_fifos_and_sets_trigger_levels() {
        let mut u = with_fifo(0x80); // trigger 8
        u.write(IER, Ier::RDA.bits());
        u.set_rx_idle(false);
        for b in 0..7 {
            u.receive(b);
        }
        assert_eq!(
            u.pending_interrupt(),
            None,
            "below the trigger, more coming"
        );
        u.receive(7);
        assert_eq!(u.pending_interrupt(), Some(IIR_RDA));
        u.write(IIR_FCR, (Fcr::ENABLE | Fcr::CLEAR_RX).bits());
        assert_eq!(u.rx_space(), FIFO_SIZE);
        assert_eq!(u.pending_interrupt(), None);
        assert_eq!(u.read(IIR_FCR), IIR_NONE | IIR_FIFO_ENABLED);
    }

    #[test]
    fn character_timeout_when_nothing_more_arrives() {
        let mut u = with_fifo(0xc0); // trigger 14
        u.write(IER, Ier::RDA.bits());
        u.set_rx_idle(false);
        u.receive(b'x');
        assert_eq!(u.pending_interrupt(), None);
        u.set_rx_idle(true);
        assert_eq!(u.read(IIR_FCR) & 0x0f, IIR_CTI);
        u.read(RBR_THR);
        assert_eq!(u.pending_interrupt(), None, "cleared by reading the data");
    }

    #[test]
    fn interrupt_priority_is_rls_rda_thre_msr() {
        let mut u = Uart::new();
        u.write(IER, Ier::all().bits());
        u.set_carrier(true);
        assert_eq!(
            u.pending_interrupt(),
            Some(IIR_THRE),
            "THRE fires on enabling"
        );
        u.receive(1);
        u.receive(2); // overrun
        assert_eq!(u.read(IIR_FCR), IIR_RLS);
        u.read(LSR);
        assert_eq!(u.read(IIR_FCR), IIR_RDA);
        u.read(RBR_THR);
        assert_eq!(u.read(IIR_FCR), IIR_THRE);
        assert_eq!(
            u.read(IIR_FCR),
            IIR_MSR,
            "THRE cleared by the IIR read that showed it"
        );
        let msr = Msr::from_bits_retain(u.read(MSR));
        assert!(msr.contains(Msr::DCD | Msr::DDCD | Msr::CTS | Msr::DCTS));
        assert_eq!(u.read(IIR_FCR), IIR_NONE);
        assert!(!u.interrupt_asserted());
    }

    #[test]
    fn thr_write_clears_thre_until_the_fifo_drains() {
        let mut u = with_fifo(0);
        u.write(IER, Ier::THRE.bits());
        assert!(u.interrupt_asserted());
        u.write(RBR_THR, b'a');
        u.write(RBR_THR, b'b');
        assert!(!u.interrupt_asserted());
        assert!(!u.lsr().intersects(Lsr::THRE | Lsr::TEMT));
        assert_eq!(u.pop_tx(), Some(b'a'));
        assert!(!u.interrupt_asserted());
        assert_eq!(u.pop_tx(), Some(b'b'));
        assert!(u.lsr().contains(Lsr::THRE | Lsr::TEMT));
        assert_eq!(u.read(IIR_FCR) & 0x0f, IIR_THRE);
    }

    #[test]
    fn tx_fifo_full_drops_further_writes() {
        let mut u = with_fifo(0);
        for b in 0..20u8 {
            u.write(RBR_THR, b);
        }
        let sent: Vec<u8> = std::iter::from_fn(|| u.pop_tx()).collect();
        assert_eq!(sent, (0..16).collect::<Vec<u8>>());
    }

    #[test]
    fn mcr_loop_sends_thr_to_rbr_and_outputs_to_modem_inputs() {
        let mut u = with_fifo(0);
        u.set_carrier(true);
        u.read(MSR);
        u.write(MCR, (Mcr::LOOP | Mcr::RTS | Mcr::OUT1).bits());
        let msr = Msr::from_bits_retain(u.read(MSR));
        assert_eq!(msr & Msr::LINES, Msr::CTS | Msr::RI);
        assert!(msr.contains(Msr::DDSR | Msr::DDCD), "DSR and DCD dropped");
        u.write(RBR_THR, 0x5a);
        assert_eq!(u.peek_tx(), None, "nothing reaches the line");
        assert_eq!(u.read(RBR_THR), 0x5a);
        assert!(!u.line_connected());
        u.write(MCR, Mcr::LOOP.bits());
        assert!(Msr::from_bits_retain(u.read(MSR)).contains(Msr::TERI));
    }

    #[test]
    fn scratch_register_holds_a_byte_and_reset_restores_defaults() {
        let mut u = with_fifo(0);
        u.write(SCR, 0xa5);
        assert_eq!(u.read(SCR), 0xa5);
        u.write(IER, 0xff);
        assert_eq!(u.read(IER), 0x0f, "reserved IER bits read as zero");
        u.reset();
        assert_eq!(u.read(SCR), 0);
        assert_eq!(u.read(IER), 0);
        assert_eq!(u.read(IIR_FCR), IIR_NONE);
        assert_eq!(Lsr::from_bits_retain(u.read(LSR)), Lsr::THRE | Lsr::TEMT);
    }

    #[test]
    fn hostile_writes_to_every_offset_never_panic() {
        let mut u = Uart::new();
        for off in 0..=255u8 {
            for v in [0u8, 0x55, 0xaa, 0xff] {
                u.write(off, v);
                let _ = u.read(off);
                let _ = u.pending_interrupt();
            }
        }
        assert_eq!(u.read(8), 0xff, "undefined offsets read as all ones");
    }
}
