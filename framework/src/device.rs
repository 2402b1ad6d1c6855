//! The trait an emulated (or passed-through) PCI function implements. A device sees region
//! accesses, lifecycle hooks and interrupt requests; it never sees a socket or a wire struct.

use std::sync::Arc;

use bitflags::bitflags;

use crate::dma::DmaMapping;
use crate::error::DeviceError;
use crate::irq::{Interrupts, IrqSpan};
use crate::owner::ConnectionId;
use crate::region::RegionInfo;
use crate::set_context::SetContext;

bitflags! {
    /// `vfio_device_info.flags`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DeviceFlags: u32 {
        /// The device supports DEVICE_RESET.
        const RESET = 1 << 0;
        /// The device is a PCI function.
        const PCI = 1 << 1;
    }
}

/// A device served over vfio-user.
///
/// Accesses arrive already validated: `region` exists, `offset + data.len()` lies inside the
/// region's size and the region has the flag for the direction. Everything else (which
/// offsets mean something, access widths) is the device's to check; an access the hardware
/// would ignore should be ignored (reads return all-ones or zeros), not turned into an error.
///
/// The lifecycle hooks run with the device set's lock held: `open_device` when the device's
/// open count goes from 0 to 1, `close_device` when it goes from 1 to 0, `reset` on a
/// client's DEVICE_RESET. `ctx` describes every device of the set at that moment.
pub trait Device: Send + 'static {
    /// Device flags reported by DEVICE_GET_INFO.
    fn flags(&self) -> DeviceFlags {
        DeviceFlags::PCI | DeviceFlags::RESET
    }

    /// Number of regions (VFIO PCI devices report 9).
    fn num_regions(&self) -> u32 {
        crate::region::PCI_NUM_REGIONS
    }

    /// What region `index` is; `RegionInfo::absent()` for an unimplemented one.
    fn region_info(&self, index: u32) -> RegionInfo;

    /// The device's interrupts.
    fn interrupts(&self) -> &Arc<Interrupts>;

    /// A read of `data.len()` bytes at `offset` of region `region`.
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;

    /// A write of `data` at `offset` of region `region`.
    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// First open. An error fails the open; the open count stays 0 and the next open calls
    /// this again.
    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// Last close. Device state that must survive between opens (a framebuffer the host
    /// still shows) stays; per-open state goes.
    fn close_device(&mut self, _ctx: &SetContext) {}

    /// A client asked for a device reset.
    fn reset(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        Ok(())
    }

    /// A connection announced a DMA mapping (already recorded in its table).
    fn dma_map(&mut self, _owner: ConnectionId, _map: &DmaMapping) -> Result<(), DeviceError> {
        Ok(())
    }

    /// A connection withdrew a DMA mapping (or closed with it still mapped).
    fn dma_unmap(&mut self, _owner: ConnectionId, _map: &DmaMapping) {}

    /// Connection `owner` closed its open of the device (every close, the last one before
    /// `close_device`). Its eventfds are already gone from `interrupts()`
    /// ([`Interrupts::release`]); a device that handed them on (passthrough) withdraws them
    /// here, leaving every other connection's alone.
    fn connection_closed(&mut self, _owner: ConnectionId) {}

    /// Called after [`Interrupts::apply`] accepted a `SET_IRQS` request (its eventfds now live
    /// in `interrupts()`).
    fn irqs_changed(&mut self, _owner: ConnectionId, _span: &IrqSpan) -> Result<(), DeviceError> {
        Ok(())
    }

    /// A short description for logs and listings.
    fn describe(&self) -> String {
        String::from("device")
    }
}
