//! The mdpy types: one fixed mode each.

use mdev_display::{Mode, PixelFormat};

/// A type of mdpy device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MdpyType {
    /// Type name.
    pub name: &'static str,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Every type.
pub const TYPES: [MdpyType; 3] = [
    MdpyType {
        name: "vga",
        width: 640,
        height: 480,
    },
    MdpyType {
        name: "xga",
        width: 1024,
        height: 768,
    },
    MdpyType {
        name: "hd",
        width: 1920,
        height: 1080,
    },
];

/// The only pixel format mdpy scans out.
pub const FORMAT: PixelFormat = PixelFormat::Xrgb8888;

impl MdpyType {
    /// The type called `name`.
    pub fn by_name(name: &str) -> Option<&'static MdpyType> {
        TYPES.iter().find(|t| t.name == name)
    }

    /// The mode it scans out.
    pub fn mode(&self) -> Mode {
        Mode::packed(FORMAT, self.width, self.height)
    }

    /// A line for `types`.
    pub fn description(&self) -> String {
        format!("simple display {}x{} XRGB8888", self.width, self.height)
    }
}
