//! Errors a device returns to the framework; each maps to the errno a client sees.

use std::io;

/// An error from a device operation. Every variant carries the errno the client receives in
/// the error reply.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The access (region, offset, length) is not one the device accepts.
    #[error("invalid access to region {region} at {offset:#x}, {len} bytes")]
    InvalidAccess {
        /// Region index.
        region: u32,
        /// Offset into the region.
        offset: u64,
        /// Access length in bytes.
        len: usize,
    },
    /// A request argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The device does not implement this operation.
    #[error("operation not supported: {0}")]
    NotSupported(&'static str),
    /// The device or its set is in use and the operation would disturb another user.
    #[error("device busy: {0}")]
    Busy(&'static str),
    /// A resource budget is exhausted.
    #[error("no space: {0}")]
    NoSpace(String),
    /// The device is being removed and accepts no new open.
    #[error("device is being removed")]
    Gone,
    /// A device hook panicked; the request failed as if the hook had returned an error.
    #[error("{0} panicked")]
    Panicked(&'static str),
    /// An OS-level failure.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl DeviceError {
    /// The errno a client receives for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::InvalidAccess { .. } | DeviceError::InvalidArgument(_) => libc::EINVAL,
            DeviceError::NotSupported(_) => libc::ENOTSUP,
            DeviceError::Busy(_) => libc::EBUSY,
            DeviceError::NoSpace(_) => libc::ENOSPC,
            DeviceError::Gone => libc::ENODEV,
            DeviceError::Panicked(_) => libc::EIO,
            DeviceError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_a_real_errno() {
        let io = DeviceError::Io(io::Error::from_raw_os_error(libc::ENOMEM));
        assert_eq!(io.errno(), libc::ENOMEM);
        assert_eq!(DeviceError::Busy("x").errno(), libc::EBUSY);
        assert_eq!(DeviceError::NotSupported("x").errno(), libc::ENOTSUP);
        let bad = DeviceError::InvalidAccess {
            region: 0,
            offset: 0,
            len: 3,
        };
        assert_eq!(bad.errno(), libc::EINVAL);
        let other = DeviceError::Io(io::Error::other("no errno"));
        assert_eq!(other.errno(), libc::EIO);
    }
}
