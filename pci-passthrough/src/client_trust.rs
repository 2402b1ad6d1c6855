//! What a client of a passthrough device is trusted with.
//!
//! The host VFIO device fd is the whole device: whoever holds it can reset it
//! (`VFIO_DEVICE_RESET`), route its interrupts (`VFIO_DEVICE_SET_IRQS`), read and write every
//! region including config space, and keeps all of that after its vfio-user connection is
//! gone. So by default no client ever receives it: every BAR is trapped and each access goes
//! through the server, where the device set's reset rules and the per-connection interrupt
//! and DMA bookkeeping apply. An operator who trusts the VMM can opt in to hand it the fd for
//! direct BAR mmap.

use std::fmt;

/// What every client of one served function receives besides protocol replies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientTrust {
    /// The default: nothing but protocol replies. No host fd is ever attached to a reply;
    /// BARs the host would let be mapped are served trapped (no MMAP flag, no fd), their
    /// reads and writes forwarded to the host by the server.
    #[default]
    ProtocolOnly,
    /// Operator opt-in (`serve --trusted-client-mmap`): the region info of each BAR the host
    /// allows to be mapped carries the host VFIO device fd, so the client maps the BAR
    /// directly. With it the client gets every ioctl of the device fd and keeps it after its
    /// connection closes.
    TrustedClientMmap,
}

impl ClientTrust {
    /// Whether mmap-able BARs are handed out as the host device fd.
    pub fn hands_out_host_fd(self) -> bool {
        self == ClientTrust::TrustedClientMmap
    }
}

impl fmt::Display for ClientTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientTrust::ProtocolOnly => "protocol-only (default)",
            ClientTrust::TrustedClientMmap => "trusted-client-mmap (opt-in)",
        })
    }
}
