//! Interrupt forwarding: the client's eventfds are handed to the host device with
//! `VFIO_DEVICE_SET_IRQS`, so the host kernel signals them directly and an interrupt never
//! passes through this process. Masks and unmasks (INTx) are forwarded as they come.
#![expect(
    clippy::cast_possible_truncation,
    reason = "index positions and vector counts are bounded by VFIO's PCI layout (5 indices, \
              at most 2048 vectors)"
)]

use std::io;
use std::os::fd::RawFd;

use log::debug;
use mdev::irq::{IrqAction, IrqDataKind, IrqIndex, IrqIndexInfo, IrqSpan, PCI_NUM_IRQS};
use mdev::Interrupts;

use crate::host::{HostDevice, HostIrqSet};

/// An eventfd slot with no eventfd, as `SET_IRQS` spells it.
const NO_EVENTFD: RawFd = -1;

/// The interrupt layout of a host device, index by index, for [`Interrupts::with_layout`].
/// An index the host cannot describe is offered with no vector.
pub fn host_layout(device: &impl HostDevice) -> Vec<IrqIndexInfo> {
    let num = device.info().num_irqs.min(PCI_NUM_IRQS);
    (0..num)
        .map(|i| {
            device.irq_info(i).unwrap_or(IrqIndexInfo {
                count: 0,
                flags: mdev::irq::IrqInfoFlags::EVENTFD,
            })
        })
        .collect()
}

/// What the host device was last told, per index.
#[derive(Debug, Default)]
pub struct IrqForwarder {
    /// Eventfds programmed per index (empty: disabled).
    programmed: Vec<Vec<RawFd>>,
}

impl IrqForwarder {
    /// A forwarder for a device with `num_indexes` interrupt indices, all disabled.
    pub fn new(num_indexes: u32) -> Self {
        IrqForwarder {
            programmed: vec![Vec::new(); num_indexes as usize],
        }
    }

    /// Forwards an accepted `SET_IRQS` (`span`, whose eventfds now live in `irqs`).
    ///
    /// A trigger without eventfds on a non-empty range fires vectors, which the framework
    /// did itself (the client's eventfd was already signalled): nothing to forward. A
    /// trigger with eventfds (routing) or with none on an empty range (disabling)
    /// reprograms the index with the eventfds `irqs` now holds (fd numbers can be reused,
    /// so they are not compared).
    pub fn forward(
        &mut self,
        device: &impl HostDevice,
        irqs: &Interrupts,
        span: &IrqSpan,
    ) -> io::Result<()> {
        let pos = span.index as usize;
        if pos >= self.programmed.len() {
            return Ok(());
        }
        match span.action {
            IrqAction::Mask | IrqAction::Unmask => device.set_irqs(&HostIrqSet {
                index: span.index as u32,
                start: span.start,
                count: span.count,
                action: span.action,
                eventfds: None,
            }),
            IrqAction::Trigger => {
                let fires = span.data != IrqDataKind::Eventfds && span.count > 0;
                if fires {
                    return Ok(());
                }
                let fds = irqs.trigger_fds(span.index);
                self.program(device, span.index, &fds)
            }
        }
    }

    fn program(
        &mut self,
        device: &impl HostDevice,
        index: IrqIndex,
        fds: &[Option<RawFd>],
    ) -> io::Result<()> {
        let pos = index as usize;
        let Some(last) = fds.iter().rposition(Option::is_some) else {
            return self.disable(device, index);
        };
        let want: Vec<RawFd> = fds[..=last]
            .iter()
            .map(|f| f.unwrap_or(NO_EVENTFD))
            .collect();
        let resized = !self.programmed[pos].is_empty() && self.programmed[pos].len() != want.len();
        if resized && matches!(index, IrqIndex::Msi | IrqIndex::Msix) {
            // MSI/MSI-X vector counts cannot change while enabled (NORESIZE).
            self.disable(device, index)?;
        }
        device.set_irqs(&HostIrqSet {
            index: index as u32,
            start: 0,
            count: want.len() as u32,
            action: IrqAction::Trigger,
            eventfds: Some(want.clone()),
        })?;
        debug!(
            "{}: irq index {index:?} routed to {} client eventfd(s)",
            device.address(),
            want.len()
        );
        self.programmed[pos] = want;
        Ok(())
    }

    fn disable(&mut self, device: &impl HostDevice, index: IrqIndex) -> io::Result<()> {
        let pos = index as usize;
        if self.programmed[pos].is_empty() {
            return Ok(());
        }
        device.set_irqs(&HostIrqSet {
            index: index as u32,
            start: 0,
            count: 0,
            action: IrqAction::Trigger,
            eventfds: None,
        })?;
        self.programmed[pos].clear();
        debug!("{}: irq index {index:?} disabled", device.address());
        Ok(())
    }

    /// A connection closed and [`Interrupts::release`] dropped exactly the routes it had
    /// made: every vector the host was given that connection's eventfd for is handed to the
    /// eventfd `irqs` now holds for it (another connection's earlier route), or gets "no
    /// eventfd" (-1); an index left with no eventfd at all is disabled. Vectors whose
    /// eventfd did not change are not touched. (The closed connection's eventfds were open
    /// alongside the ones still held, so their fd numbers differ.)
    pub fn withdraw_released(
        &mut self,
        device: &impl HostDevice,
        irqs: &Interrupts,
    ) -> io::Result<()> {
        for pos in 0..self.programmed.len() {
            let Some(index) = IrqIndex::from_u32(pos as u32) else {
                continue;
            };
            if self.programmed[pos].is_empty() {
                continue;
            }
            let now = irqs.trigger_fds(index);
            let held = |v: usize| now.get(v).copied().flatten();
            if !(0..now.len()).any(|v| held(v).is_some()) {
                self.disable(device, index)?;
                continue;
            }
            let changed: Vec<(usize, RawFd)> = (0..self.programmed[pos].len())
                .map(|v| (v, held(v).unwrap_or(NO_EVENTFD)))
                .filter(|&(v, fd)| self.programmed[pos][v] != fd)
                .collect();
            for (v, fd) in changed {
                device.set_irqs(&HostIrqSet {
                    index: index as u32,
                    start: v as u32,
                    count: 1,
                    action: IrqAction::Trigger,
                    eventfds: Some(vec![fd]),
                })?;
                self.programmed[pos][v] = fd;
                debug!(
                    "{}: irq index {index:?} vector {v} {} (its connection closed)",
                    device.address(),
                    if fd == NO_EVENTFD {
                        "withdrawn"
                    } else {
                        "handed back to an earlier connection's eventfd"
                    }
                );
            }
        }
        Ok(())
    }

    /// After a device reset: the host kernel keeps the eventfds it was given across a reset,
    /// but the device's interrupt state restarts (the framework unmasks INTx and keeps every
    /// routed eventfd). The host is brought to exactly that: everything it was given is
    /// disabled, the record cleared, and the eventfds `irqs` still holds routed afresh.
    pub fn after_reset(&mut self, device: &impl HostDevice, irqs: &Interrupts) -> io::Result<()> {
        self.disable_all(device);
        for pos in 0..self.programmed.len() {
            let Some(index) = IrqIndex::from_u32(pos as u32) else {
                continue;
            };
            let fds = irqs.trigger_fds(index);
            if fds.iter().any(Option::is_some) {
                self.program(device, index, &fds)?;
            }
        }
        Ok(())
    }

    /// Disables every index the host was given eventfds for (the client's eventfds are
    /// going away). Errors are logged: the device is being closed anyway.
    pub fn disable_all(&mut self, device: &impl HostDevice) {
        for i in 0..self.programmed.len() {
            if let Some(index) = IrqIndex::from_u32(i as u32) {
                if let Err(e) = self.disable(device, index) {
                    log::warn!("{}: disabling irq index {index:?}: {e}", device.address());
                    self.programmed[i].clear();
                }
            }
        }
    }
}
