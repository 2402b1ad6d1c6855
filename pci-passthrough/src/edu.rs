//! Register map of QEMU's `edu` educational PCI device (BAR0, 1 MiB of MMIO), used by the
//! guest-side test client and the tests. Facts from QEMU's `hw/misc/edu.c`.

/// PCI vendor id of `edu`.
pub const EDU_VENDOR_ID: u16 = 0x1234;
/// PCI device id of `edu`.
pub const EDU_DEVICE_ID: u16 = 0x11e8;
/// Identification register: reads [`EDU_IDENT_VALUE`].
pub const EDU_IDENT: u64 = 0x00;
/// Value of the identification register (major 1, minor 0, `0xed`).
pub const EDU_IDENT_VALUE: u32 = 0x0100_00ed;
/// Liveness check: reads back the bitwise inverse of what was written.
pub const EDU_LIVENESS: u64 = 0x04;
/// Factorial: write n, read n! once [`EDU_STATUS_COMPUTING`] clears.
pub const EDU_FACTORIAL: u64 = 0x08;
/// Status register.
pub const EDU_STATUS: u64 = 0x20;
/// Status: a factorial is being computed.
pub const EDU_STATUS_COMPUTING: u32 = 0x01;
/// Status: raise an interrupt when a factorial is done.
pub const EDU_STATUS_IRQ_FACT: u32 = 0x80;
/// Interrupt status (reasons raised and not yet acknowledged).
pub const EDU_IRQ_STATUS: u64 = 0x24;
/// Interrupt raise: ORs the value into the interrupt status and interrupts.
pub const EDU_IRQ_RAISE: u64 = 0x60;
/// Interrupt acknowledge: clears the written bits of the interrupt status.
pub const EDU_IRQ_ACK: u64 = 0x64;
/// Interrupt status bit of a finished factorial.
pub const EDU_IRQ_FACT: u32 = 0x001;
/// Interrupt status bit of a finished DMA.
pub const EDU_IRQ_DMA: u32 = 0x100;
/// DMA source address (8 bytes).
pub const EDU_DMA_SRC: u64 = 0x80;
/// DMA destination address (8 bytes).
pub const EDU_DMA_DST: u64 = 0x88;
/// DMA byte count (8 bytes).
pub const EDU_DMA_COUNT: u64 = 0x90;
/// DMA command (8 bytes).
pub const EDU_DMA_CMD: u64 = 0x98;
/// DMA command: start (cleared by the device when the transfer is done).
pub const EDU_DMA_CMD_START: u64 = 0x1;
/// DMA command: direction device buffer → RAM (clear: RAM → device buffer).
pub const EDU_DMA_CMD_TO_RAM: u64 = 0x2;
/// DMA command: raise [`EDU_IRQ_DMA`] when done.
pub const EDU_DMA_CMD_IRQ: u64 = 0x4;
/// The device's DMA buffer, in its own address space.
pub const EDU_DMA_BUFFER: u64 = 0x40000;
/// Size of the DMA buffer.
pub const EDU_DMA_BUFFER_SIZE: u64 = 4096;
/// Addresses the device can reach by default (`dma_mask`: 28 bits).
pub const EDU_DMA_MASK: u64 = (1 << 28) - 1;
