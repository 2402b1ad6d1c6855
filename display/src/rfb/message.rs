//! RFB messages on the wire: the client-to-server messages a view-only server reads (decoded
//! from bytes a hostile peer controls: every length is checked before it is trusted) and the
//! server-to-client messages it writes.

use super::pixel::{RfbPixelFormat, PIXEL_FORMAT_LEN};

/// The version string the server sends first.
pub const SERVER_VERSION: &[u8; 12] = b"RFB 003.008\n";

/// Security type None.
pub const SECURITY_NONE: u8 = 1;

/// Encoding numbers (RFB "encoding-type", signed 32-bit).
pub mod encoding {
    /// Pixels as they are.
    pub const RAW: i32 = 0;
    /// zlib-compressed run-length encoded 64×64 tiles.
    pub const ZRLE: i32 = 16;
    /// Pseudo-encoding: the viewer copes with a change of the framebuffer size.
    pub const DESKTOP_SIZE: i32 = -223;
}

/// Longest ClientCutText a viewer may send (its text is read and dropped; view-only).
pub const MAX_CUT_TEXT: u32 = 1 << 20;

/// The longest client message (SetEncodings with 65535 encodings), the bound of what a
/// session buffers.
pub const MAX_CLIENT_MESSAGE: usize = 4 + 4 * u16::MAX as usize;

/// Client message types.
const SET_PIXEL_FORMAT: u8 = 0;
const SET_ENCODINGS: u8 = 2;
const FRAMEBUFFER_UPDATE_REQUEST: u8 = 3;
const KEY_EVENT: u8 = 4;
const POINTER_EVENT: u8 = 5;
const CLIENT_CUT_TEXT: u8 = 6;

/// Server message types.
const FRAMEBUFFER_UPDATE: u8 = 0;

/// A rectangle of the framebuffer, in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl Rect {
    /// A rectangle.
    pub const fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Rect { x, y, w, h }
    }

    /// True when it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// One past the right edge.
    pub fn right(&self) -> u32 {
        self.x.saturating_add(self.w)
    }

    /// One past the bottom edge.
    pub fn bottom(&self) -> u32 {
        self.y.saturating_add(self.h)
    }

    /// The part of `self` inside `other` (empty when they do not meet).
    pub fn intersect(&self, other: &Rect) -> Rect {
        let x = self.x.max(other.x);
        let y = self.y.max(other.y);
        let r = self.right().min(other.right());
        let b = self.bottom().min(other.bottom());
        if r <= x || b <= y {
            return Rect::default();
        }
        Rect::new(x, y, r - x, b - y)
    }

    /// The smallest rectangle holding both (an empty one counts as absent).
    pub fn union(&self, other: &Rect) -> Rect {
        if self.is_empty() {
            return *other;
        }
        if other.is_empty() {
            return *self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        Rect::new(
            x,
            y,
            self.right().max(other.right()) - x,
            self.bottom().max(other.bottom()) - y,
        )
    }

    /// True when `other` lies wholly inside `self`.
    pub fn contains(&self, other: &Rect) -> bool {
        self.intersect(other) == *other
    }
}

/// A decoded client-to-server message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// SetPixelFormat (not yet validated).
    SetPixelFormat(RfbPixelFormat),
    /// SetEncodings: the encodings in the viewer's order of preference.
    SetEncodings(Vec<i32>),
    /// FramebufferUpdateRequest.
    UpdateRequest {
        /// Only changes are wanted.
        incremental: bool,
        /// The area wanted.
        rect: Rect,
    },
    /// KeyEvent (ignored: view-only).
    Key,
    /// PointerEvent (ignored: view-only).
    Pointer,
    /// ClientCutText header: `len` bytes of text follow, to be skipped (view-only).
    CutText {
        /// Bytes of text after the header.
        len: u32,
    },
}

/// Why the bytes a viewer sent are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A message type this server does not know (so it cannot tell where it ends).
    #[error("unknown client message type {0}")]
    UnknownType(u8),
    /// ClientCutText longer than [`MAX_CUT_TEXT`] (or an extended-clipboard length).
    #[error("client cut text of {0} bytes (at most {MAX_CUT_TEXT})")]
    CutTextTooLong(u32),
    /// The greeting is not `RFB xxx.yyy\n`.
    #[error("not an RFB protocol version: {0:?}")]
    BadVersion(String),
}

/// Decodes the message at the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the message and how many bytes it took (for ClientCutText: the header only).
pub fn parse_client_message(buf: &[u8]) -> Result<Option<(ClientMessage, usize)>, MessageError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let need = |len: usize| buf.len() >= len;
    let msg = match kind {
        SET_PIXEL_FORMAT => {
            const LEN: usize = 4 + PIXEL_FORMAT_LEN;
            if !need(LEN) {
                return Ok(None);
            }
            let mut pf = [0u8; PIXEL_FORMAT_LEN];
            pf.copy_from_slice(&buf[4..LEN]);
            (
                ClientMessage::SetPixelFormat(RfbPixelFormat::from_bytes(&pf)),
                LEN,
            )
        }
        SET_ENCODINGS => {
            if !need(4) {
                return Ok(None);
            }
            let count = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
            let len = 4 + 4 * count;
            if !need(len) {
                return Ok(None);
            }
            let list = buf[4..len]
                .chunks_exact(4)
                .map(|e| i32::from_be_bytes([e[0], e[1], e[2], e[3]]))
                .collect();
            (ClientMessage::SetEncodings(list), len)
        }
        FRAMEBUFFER_UPDATE_REQUEST => {
            if !need(10) {
                return Ok(None);
            }
            let u16_at = |i: usize| u32::from(u16::from_be_bytes([buf[i], buf[i + 1]]));
            let rect = Rect::new(u16_at(2), u16_at(4), u16_at(6), u16_at(8));
            let incremental = buf[1] != 0;
            (ClientMessage::UpdateRequest { incremental, rect }, 10)
        }
        KEY_EVENT => {
            if !need(8) {
                return Ok(None);
            }
            (ClientMessage::Key, 8)
        }
        POINTER_EVENT => {
            if !need(6) {
                return Ok(None);
            }
            (ClientMessage::Pointer, 6)
        }
        CLIENT_CUT_TEXT => {
            if !need(8) {
                return Ok(None);
            }
            let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if len > MAX_CUT_TEXT {
                return Err(MessageError::CutTextTooLong(len));
            }
            (ClientMessage::CutText { len }, 8)
        }
        other => return Err(MessageError::UnknownType(other)),
    };
    Ok(Some(msg))
}

/// Decodes a ProtocolVersion (`RFB xxx.yyy\n`, 12 bytes) to the minor version the server
/// will speak: 8 for 3.8 and later, 7 for 3.7, and 3 (the base protocol) for anything older.
pub fn parse_version(b: &[u8; 12]) -> Result<u8, MessageError> {
    let bad = || MessageError::BadVersion(String::from_utf8_lossy(b).into_owned());
    let digits = |s: &[u8]| -> Option<u32> {
        s.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
        return Err(bad());
    }
    let major = digits(&b[4..7]).ok_or_else(bad)?;
    let minor = digits(&b[8..11]).ok_or_else(bad)?;
    Ok(match (major, minor) {
        (0..=2, _) => return Err(bad()),
        (3, 0..=6) => 3,
        (3, 7) => 7,
        _ => 8,
    })
}

/// Appends a big-endian u16.
fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends ServerInit: the framebuffer size, the server's pixel format and the desktop name.
pub fn write_server_init(out: &mut Vec<u8>, width: u16, height: u16, name: &str) {
    put_u16(out, width);
    put_u16(out, height);
    out.extend_from_slice(&RfbPixelFormat::SERVER.to_bytes());
    write_string(out, name);
}

/// Appends a u32 length and the string's bytes.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len as usize]);
}

/// Appends a FramebufferUpdate header announcing `rects` rectangles.
pub fn write_update_header(out: &mut Vec<u8>, rects: u16) {
    out.extend_from_slice(&[FRAMEBUFFER_UPDATE, 0]);
    put_u16(out, rects);
}

/// Appends a rectangle header (`rect` must lie within 16-bit coordinates).
pub fn write_rect_header(out: &mut Vec<u8>, rect: &Rect, encoding: i32) {
    for v in [rect.x, rect.y, rect.w, rect.h] {
        put_u16(out, u16::try_from(v).unwrap_or(u16::MAX));
    }
    out.extend_from_slice(&encoding.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_waits_for_its_last_byte() {
        let mut encodings = vec![SET_ENCODINGS, 0, 0, 2];
        encodings.extend_from_slice(&16i32.to_be_bytes());
        encodings.extend_from_slice(&(-223i32).to_be_bytes());
        let mut pf = vec![SET_PIXEL_FORMAT, 0, 0, 0];
        pf.extend_from_slice(&RfbPixelFormat::SERVER.to_bytes());
        let whole: [(Vec<u8>, ClientMessage); 6] = [
            (pf, ClientMessage::SetPixelFormat(RfbPixelFormat::SERVER)),
            (encodings, ClientMessage::SetEncodings(vec![16, -223])),
            (
                vec![3, 1, 0, 1, 0, 2, 0x07, 0x80, 0x04, 0x38],
                ClientMessage::UpdateRequest {
                    incremental: true,
                    rect: Rect::new(1, 2, 1920, 1080),
                },
            ),
            (vec![4, 1, 0, 0, 0, 0, 0xff, 0x0d], ClientMessage::Key),
            (vec![5, 0, 0, 10, 0, 20], ClientMessage::Pointer),
            (
                vec![6, 0, 0, 0, 0, 0, 0, 3],
                ClientMessage::CutText { len: 3 },
            ),
        ];
        for (bytes, msg) in whole {
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_client_message(&bytes[..cut]),
                    Ok(None),
                    "{msg:?} at {cut}"
                );
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[3, 0]);
            assert_eq!(parse_client_message(&longer), Ok(Some((msg, bytes.len()))));
        }
    }

    #[test]
    fn hostile_lengths_and_types_are_refused_without_allocating() {
        assert_eq!(
            parse_client_message(&[6, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Err(MessageError::CutTextTooLong(u32::MAX))
        );
        assert_eq!(
            parse_client_message(&[6, 0, 0, 0, 0, 0x10, 0, 1]),
            Err(MessageError::CutTextTooLong(MAX_CUT_TEXT + 1))
        );
        for kind in [1u8, 7, 150, 248, 250, 251, 255] {
            assert_eq!(
                parse_client_message(&[kind, 0, 0, 0]),
                Err(MessageError::UnknownType(kind))
            );
        }
        // 65535 encodings announced, four bytes given: wait, do not allocate for them.
        assert_eq!(
            parse_client_message(&[2, 0, 0xff, 0xff, 0, 0, 0, 0]),
            Ok(None)
        );
    }

    #[test]
    fn versions_map_to_what_the_server_speaks() {
        let v = |s: &[u8; 12]| parse_version(s);
        assert_eq!(v(b"RFB 003.008\n"), Ok(8));
        assert_eq!(v(b"RFB 003.007\n"), Ok(7));
        assert_eq!(v(b"RFB 003.003\n"), Ok(3));
        assert_eq!(v(b"RFB 003.005\n"), Ok(3));
        assert_eq!(v(b"RFB 003.889\n"), Ok(8));
        assert_eq!(v(b"RFB 004.001\n"), Ok(8));
        for bad in [
            b"RFB 002.008\n",
            b"RFB 003.008 ",
            b"RFC 003.008\n",
            b"RFB 0x3.008\n",
            b"GET / HTTP/1",
            b"RFB 003-008\n",
        ] {
            assert!(v(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn rectangles_clip_and_merge() {
        let screen = Rect::new(0, 0, 800, 600);
        assert_eq!(
            Rect::new(700, 500, 200, 200).intersect(&screen),
            Rect::new(700, 500, 100, 100)
        );
        assert!(Rect::new(800, 0, 10, 10).intersect(&screen).is_empty());
        assert!(Rect::new(0, 0, 0, 10).intersect(&screen).is_empty());
        let far = Rect::new(u32::MAX - 1, 0, 10, 10);
        assert!(far.intersect(&screen).is_empty());
        assert_eq!(
            Rect::new(0, 0, 10, 10).union(&Rect::new(20, 5, 10, 10)),
            Rect::new(0, 0, 30, 15)
        );
        assert_eq!(Rect::default().union(&screen), screen);
        assert!(screen.contains(&Rect::new(10, 10, 790, 590)));
        assert!(!screen.contains(&Rect::new(10, 10, 791, 590)));
    }

    #[test]
    fn server_init_carries_size_format_and_name() {
        let mut out = Vec::new();
        write_server_init(&mut out, 1024, 768, "mdpy");
        assert_eq!(&out[..4], &[4, 0, 3, 0]);
        assert_eq!(&out[4..20], &RfbPixelFormat::SERVER.to_bytes());
        assert_eq!(&out[20..24], &[0, 0, 0, 4]);
        assert_eq!(&out[24..], b"mdpy");
    }
}
