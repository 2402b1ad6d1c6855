//! The RFB (VNC) protocol, version 3.8 (3.7 and 3.3 too), server side and view-only, as pure
//! code: no sockets, no threads, no clocks. [`crate::vnc`] wires it to TCP and to the
//! display.
//!
//! ```text
//!  viewer bytes ──► Session::receive ──► handshake replies, pixel format, encodings, requests
//!                                                                 │
//!  capture (mode + bytes) ──► Picture::successor ──► Picture ──► Session::update
//!       (tiles compared with the last picture;        (per tile: the generation │
//!        each changed tile dated)                      it last changed)         ▼
//!                                   FramebufferUpdate: DesktopSize, or the tiles changed
//!                                   since this viewer's last update, merged into rectangles,
//!                                   Raw or ZRLE, in the viewer's pixel format
//! ```
//!
//! Every viewer is at its own point in the picture history: a [`Session`] remembers the
//! generation of the last picture it folded in and which tiles it still owes its viewer, so
//! a slow viewer skips intermediate pictures and gets only the latest.

pub mod encode;
pub mod message;
pub mod picture;
pub mod pixel;
pub mod session;
pub mod tiles;

pub use message::Rect;
pub use picture::{Picture, Successor};
pub use pixel::RfbPixelFormat;
pub use session::{Encoding, Session, SessionError};
pub use tiles::TileGrid;
