//! One viewer's connection as a state machine without I/O: bytes from the viewer go in
//! ([`Session::receive`]), bytes for the viewer come out ([`Session::output`]), and pictures
//! are offered to it ([`Session::update`]), which answers the viewer's pending update request
//! with the tiles that changed since the picture it was last sent.
//!
//! ```text
//!  "RFB 003.008\n" ─► version ─► security types [None] ─► choice ─► SecurityResult OK
//!                  ─► ClientInit ─► ServerInit (size, pixel format, name) ─► ready:
//!     SetPixelFormat, SetEncodings, FramebufferUpdateRequest  → remembered
//!     KeyEvent, PointerEvent, ClientCutText                   → read and dropped (view-only)
//! ```
//! Versions 3.3 and 3.7 are spoken too (3.3: the server names the security type; 3.7: no
//! SecurityResult after None).

use super::encode::{encode_raw, EncodeError, ZrleEncoder};
use super::message::{
    encoding, parse_client_message, parse_version, write_rect_header, write_server_init,
    write_string, write_update_header, ClientMessage, MessageError, Rect, MAX_CLIENT_MESSAGE,
    SECURITY_NONE, SERVER_VERSION,
};
use super::picture::Picture;
use super::pixel::{PixelConverter, PixelFormatError, RfbPixelFormat};
use super::tiles::TileGrid;

/// Bytes of viewer input taken in at a time (what the session buffers beyond one message).
const INPUT_CHUNK: usize = 64 * 1024;

/// Why a session ended. Output queued before the error (a security failure's reason) is
/// still worth sending.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The viewer sent something that is not an RFB message.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The viewer chose a security type other than None.
    #[error("the viewer chose security type {0}; only None is offered")]
    Security(u8),
    /// The viewer asked for a pixel format the server does not produce.
    #[error("pixel format refused: {0}")]
    PixelFormat(#[from] PixelFormatError),
    /// The display changed size and the viewer did not say it copes (no DesktopSize).
    #[error("the display is now {0}x{1} and the viewer cannot follow a size change (it did not ask for DesktopSize)")]
    CannotResize(u32, u32),
    /// Encoding a rectangle failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// How rectangles are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Raw pixels.
    Raw,
    /// ZRLE.
    Zrle,
}

impl Encoding {
    /// The RFB encoding number.
    pub fn number(self) -> i32 {
        match self {
            Encoding::Raw => encoding::RAW,
            Encoding::Zrle => encoding::ZRLE,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Version,
    Security,
    ClientInit,
    Ready,
}

/// A pending FramebufferUpdateRequest (several merge into one). Its area only adds to what
/// is sent: the answer carries every changed tile of the screen (as QEMU's server does), so
/// a tile is never half sent and no change is forgotten.
#[derive(Clone, Copy, Debug)]
struct Request {
    /// False when any merged request was non-incremental: an answer is due even if nothing
    /// changed.
    incremental: bool,
}

/// The protocol state of one viewer.
pub struct Session {
    name: String,
    phase: Phase,
    minor: u8,
    input: Vec<u8>,
    /// ClientCutText bytes still to drop.
    skip: usize,
    out: Vec<u8>,
    converter: PixelConverter,
    encoding: Encoding,
    desktop_size: bool,
    request: Option<Request>,
    /// The framebuffer size the viewer believes in.
    client_size: (u32, u32),
    grid: TileGrid,
    /// Tiles the viewer has not been sent since they last changed.
    damage: Vec<bool>,
    /// Generation of the last picture folded into `damage`.
    seen: u64,
    zrle: Option<ZrleEncoder>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("phase", &self.phase)
            .field("minor", &self.minor)
            .field("encoding", &self.encoding)
            .field("desktop_size", &self.desktop_size)
            .field("client_size", &self.client_size)
            .field("seen", &self.seen)
            .finish()
    }
}

impl Session {
    /// A session whose output starts with the server's protocol version; `name` is the
    /// desktop name sent in ServerInit.
    pub fn new(name: &str) -> Self {
        Session {
            name: name.to_owned(),
            phase: Phase::Version,
            minor: 8,
            input: Vec::new(),
            skip: 0,
            out: SERVER_VERSION.to_vec(),
            converter: PixelConverter::new(RfbPixelFormat::SERVER),
            encoding: Encoding::Raw,
            desktop_size: false,
            request: None,
            client_size: (0, 0),
            grid: TileGrid::new(0, 0),
            damage: Vec::new(),
            seen: 0,
            zrle: None,
        }
    }

    /// Bytes for the viewer, in order; [`Self::clear_output`] once written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Forgets the output (it was written).
    pub fn clear_output(&mut self) {
        self.out.clear();
    }

    /// True once the handshake is over (ServerInit was queued).
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The encoding rectangles are sent in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The viewer's pixel format.
    pub fn pixel_format(&self) -> &RfbPixelFormat {
        self.converter.format()
    }

    /// True when the viewer asked for the DesktopSize pseudo-encoding.
    pub fn follows_size_changes(&self) -> bool {
        self.desktop_size
    }

    /// Takes bytes the viewer sent. `picture` is the current picture (ServerInit describes
    /// it). Replies of the handshake are queued as output. Any amount of input may be given;
    /// the session buffers at most one incomplete message.
    pub fn receive(&mut self, bytes: &[u8], picture: &Picture) -> Result<(), SessionError> {
        for mut chunk in bytes.chunks(INPUT_CHUNK) {
            let dropped = self.skip.min(chunk.len());
            self.skip -= dropped;
            chunk = &chunk[dropped..];
            self.input.extend_from_slice(chunk);
            let used = self.process(picture)?;
            self.input.drain(..used);
            debug_assert!(self.input.len() <= MAX_CLIENT_MESSAGE);
        }
        Ok(())
    }

    /// Handles the whole messages at the start of `self.input`; returns the bytes used.
    fn process(&mut self, picture: &Picture) -> Result<usize, SessionError> {
        let mut at = 0;
        loop {
            let rest = self.input.len() - at;
            match self.phase {
                Phase::Version => {
                    let Some(v) = self.input.get(at..at + 12) else {
                        return Ok(at);
                    };
                    let mut version = [0u8; 12];
                    version.copy_from_slice(v);
                    self.minor = parse_version(&version)?;
                    at += 12;
                    if self.minor == 3 {
                        self.out
                            .extend_from_slice(&u32::from(SECURITY_NONE).to_be_bytes());
                        self.phase = Phase::ClientInit;
                    } else {
                        self.out.extend_from_slice(&[1, SECURITY_NONE]);
                        self.phase = Phase::Security;
                    }
                }
                Phase::Security => {
                    let Some(&choice) = self.input.get(at) else {
                        return Ok(at);
                    };
                    at += 1;
                    if choice != SECURITY_NONE {
                        if self.minor >= 8 {
                            self.out.extend_from_slice(&1u32.to_be_bytes());
                            write_string(&mut self.out, "only security type None is offered");
                        }
                        return Err(SessionError::Security(choice));
                    }
                    if self.minor >= 8 {
                        self.out.extend_from_slice(&0u32.to_be_bytes());
                    }
                    self.phase = Phase::ClientInit;
                }
                Phase::ClientInit => {
                    if rest == 0 {
                        return Ok(at);
                    }
                    at += 1; // the shared flag: viewers always share
                    self.server_init(picture);
                }
                Phase::Ready => {
                    let Some((msg, len)) = parse_client_message(&self.input[at..])? else {
                        return Ok(at);
                    };
                    at += len;
                    if let ClientMessage::CutText { len } = msg {
                        let len = len as usize;
                        let here = len.min(self.input.len() - at);
                        at += here;
                        self.skip = len - here;
                    } else {
                        self.handle(msg)?;
                    }
                }
            }
        }
    }

    fn server_init(&mut self, picture: &Picture) {
        let (w, h) = (picture.width(), picture.height());
        let side = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        write_server_init(&mut self.out, side(w), side(h), &self.name);
        self.client_size = (w, h);
        self.grid = picture.grid();
        self.damage = vec![true; self.grid.len()];
        self.seen = picture.generation();
        self.phase = Phase::Ready;
    }

    fn handle(&mut self, msg: ClientMessage) -> Result<(), SessionError> {
        match msg {
            ClientMessage::SetPixelFormat(pf) => {
                pf.validate()?;
                self.converter = PixelConverter::new(pf);
            }
            ClientMessage::SetEncodings(list) => {
                self.encoding = list
                    .iter()
                    .find_map(|&e| match e {
                        encoding::RAW => Some(Encoding::Raw),
                        encoding::ZRLE => Some(Encoding::Zrle),
                        _ => None,
                    })
                    .unwrap_or(Encoding::Raw);
                self.desktop_size = list.contains(&encoding::DESKTOP_SIZE);
            }
            ClientMessage::UpdateRequest { incremental, rect } => {
                if !incremental {
                    // Everything asked for is sent, changed or not.
                    for i in self.grid.tiles_meeting(&rect) {
                        if let Some(d) = self.damage.get_mut(i) {
                            *d = true;
                        }
                    }
                }
                let incremental = incremental && self.request.is_none_or(|r| r.incremental);
                self.request = Some(Request { incremental });
            }
            ClientMessage::Key | ClientMessage::Pointer | ClientMessage::CutText { .. } => {}
        }
        Ok(())
    }

    /// Folds what changed up to `picture` into the tiles the viewer still needs.
    fn fold(&mut self, picture: &Picture) {
        if picture.grid() != self.grid || picture.reshaped_at() > self.seen {
            self.grid = picture.grid();
            self.damage = vec![true; self.grid.len()];
        } else if picture.generation() > self.seen {
            for (d, &at) in self.damage.iter_mut().zip(picture.changed_at()) {
                *d = *d || at > self.seen;
            }
        }
        self.seen = self.seen.max(picture.generation());
    }

    /// Answers the pending update request from `picture` if there is anything to send: the
    /// tiles that changed since the viewer's last update (plus, for a non-incremental request,
    /// those of the requested area whether they changed or not), or first, when the picture's size differs from what the viewer knows, a
    /// DesktopSize update of its own. Returns whether an update was queued as output.
    pub fn update(&mut self, picture: &Picture) -> Result<bool, SessionError> {
        let Some(request) = self.request.filter(|_| self.phase == Phase::Ready) else {
            return Ok(false);
        };
        self.fold(picture);
        let (w, h) = (picture.width(), picture.height());
        if (w, h) != self.client_size {
            if !self.desktop_size {
                return Err(SessionError::CannotResize(w, h));
            }
            // Alone in its update; the viewer then asks again and gets every tile.
            write_update_header(&mut self.out, 1);
            write_rect_header(
                &mut self.out,
                &Rect::new(0, 0, w, h),
                encoding::DESKTOP_SIZE,
            );
            self.client_size = (w, h);
            self.request = None;
            return Ok(true);
        }
        let Some(frame) = picture.frame() else {
            return Ok(false);
        };
        let mut rects = self.grid.rectangles(&self.damage, &self.grid.screen());
        if rects.is_empty() && request.incremental {
            return Ok(false);
        }
        if rects.len() > usize::from(u16::MAX) {
            rects = vec![self.grid.screen()];
        }
        // At most u16::MAX rectangles, checked just above.
        write_update_header(&mut self.out, u16::try_from(rects.len()).unwrap_or(1));
        for rect in &rects {
            write_rect_header(&mut self.out, rect, self.encoding.number());
            match self.encoding {
                Encoding::Raw => encode_raw(&frame, rect, &self.converter, &mut self.out),
                Encoding::Zrle => self.zrle.get_or_insert_with(ZrleEncoder::new).encode(
                    &frame,
                    rect,
                    &self.converter,
                    &mut self.out,
                )?,
            }
        }
        self.damage.fill(false);
        self.request = None;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Mode, PixelFormat};
    use crate::rfb::picture::Successor;

    fn picture(w: u32, h: u32, fill: u8) -> Picture {
        let mode = Mode::packed(PixelFormat::Xrgb8888, w, h);
        Picture::first(Some(mode), vec![fill; (w * h * 4) as usize])
    }

    fn next(p: &Picture, w: u32, h: u32, bytes: Vec<u8>) -> Picture {
        let mode = Mode::packed(PixelFormat::Xrgb8888, w, h);
        match p.successor(Some(mode), bytes) {
            Successor::Changed(p) => p,
            Successor::Unchanged(_) => panic!("expected a change"),
        }
    }

    fn take(s: &mut Session) -> Vec<u8> {
        let out = s.output().to_vec();
        s.clear_output();
        out
    }

    fn set_encodings(list: &[i32]) -> Vec<u8> {
        let mut m = vec![2, 0];
        m.extend_from_slice(&(list.len() as u16).to_be_bytes());
        for e in list {
            m.extend_from_slice(&e.to_be_bytes());
        }
        m
    }

    fn request(incremental: bool, w: u16, h: u16) -> Vec<u8> {
        let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&w.to_be_bytes());
        m.extend_from_slice(&h.to_be_bytes());
        m
    }

    /// A session through the 3.8 handshake, ServerInit taken.
    fn ready(p: &Picture) -> Session {
        let mut s = Session::new("test");
        assert_eq!(take(&mut s), b"RFB 003.008\n");
        s.receive(b"RFB 003.008\n", p).unwrap();
        assert_eq!(take(&mut s), [1, SECURITY_NONE]);
        s.receive(&[SECURITY_NONE], p).unwrap();
        assert_eq!(take(&mut s), [0, 0, 0, 0]);
        s.receive(&[1], p).unwrap();
        assert!(s.is_ready());
        take(&mut s);
        s
    }

    /// The rectangles of one FramebufferUpdate: (x, y, w, h, encoding, data length).
    fn rects(out: &[u8], bpp: usize) -> Vec<(u16, u16, u16, u16, i32, usize)> {
        assert_eq!(out[0], 0, "a FramebufferUpdate");
        let n = u16::from_be_bytes([out[2], out[3]]);
        let mut at = 4;
        let mut list = Vec::new();
        for _ in 0..n {
            let u = |i: usize| u16::from_be_bytes([out[at + i], out[at + i + 1]]);
            let (x, y, w, h) = (u(0), u(2), u(4), u(6));
            let enc = i32::from_be_bytes(out[at + 8..at + 12].try_into().unwrap());
            at += 12;
            let len = match enc {
                encoding::RAW => usize::from(w) * usize::from(h) * bpp,
                encoding::ZRLE => {
                    4 + u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize
                }
                _ => 0,
            };
            at += len;
            list.push((x, y, w, h, enc, len));
        }
        assert_eq!(at, out.len(), "nothing after the update");
        list
    }

    #[test]
    fn the_3_8_handshake_ends_in_server_init() {
        let p = picture(300, 200, 0);
        let mut s = Session::new("mbochs x");
        take(&mut s);
        s.receive(b"RFB 003.008\n", &p).unwrap();
        s.receive(&[1], &p).unwrap();
        assert_eq!(take(&mut s), [1, 1, 0, 0, 0, 0]);
        s.receive(&[0], &p).unwrap();
        let init = take(&mut s);
        assert_eq!(&init[..4], &[1, 44, 0, 200]);
        assert_eq!(&init[4..20], &RfbPixelFormat::SERVER.to_bytes());
        assert_eq!(&init[20..], b"\0\0\0\x08mbochs x");
    }

    #[test]
    fn older_protocol_versions_are_spoken_too() {
        let p = picture(8, 8, 0);
        let mut s = Session::new("n");
        take(&mut s);
        s.receive(b"RFB 003.003\n", &p).unwrap();
        assert_eq!(take(&mut s), [0, 0, 0, 1], "3.3: the server names the type");
        s.receive(&[1], &p).unwrap();
        assert!(s.is_ready());
        let mut s = Session::new("n");
        take(&mut s);
        s.receive(b"RFB 003.007\n\x01\x01", &p).unwrap();
        let out = take(&mut s);
        assert_eq!(&out[..2], &[1, 1], "3.7: no SecurityResult after None");
        assert_eq!(out.len(), 2 + 24 + 1);
    }

    #[test]
    fn a_security_type_other_than_none_is_refused_with_a_reason() {
        let p = picture(8, 8, 0);
        let mut s = Session::new("n");
        take(&mut s);
        s.receive(b"RFB 003.008\n", &p).unwrap();
        take(&mut s);
        assert!(matches!(
            s.receive(&[2], &p),
            Err(SessionError::Security(2))
        ));
        let out = take(&mut s);
        assert_eq!(&out[..4], &[0, 0, 0, 1]);
        assert!(String::from_utf8_lossy(&out[8..]).contains("None"));
    }

    #[test]
    fn input_split_anywhere_gives_the_same_answers() {
        let p = picture(130, 70, 7);
        let mut all = b"RFB 003.008\n\x01\x01".to_vec();
        all.extend(set_encodings(&[encoding::ZRLE, encoding::DESKTOP_SIZE]));
        all.extend([6, 0, 0, 0, 0, 0, 0, 5]);
        all.extend(b"hello");
        all.extend([4, 1, 0, 0, 0, 0, 0, 0x41, 5, 0, 0, 1, 0, 1]);
        all.extend(request(false, 130, 70));
        let mut whole = Session::new("n");
        whole.receive(&all, &p).unwrap();
        assert!(whole.update(&p).unwrap());
        for cut in [1, 3, 12, 13, 15, 20, 30, 34, 36, 41, all.len() - 1] {
            let mut s = Session::new("n");
            s.receive(&all[..cut], &p).unwrap();
            s.receive(&all[cut..], &p).unwrap();
            assert!(s.update(&p).unwrap(), "cut at {cut}");
            assert_eq!(s.output(), whole.output(), "cut at {cut}");
        }
        let mut bytewise = Session::new("n");
        for b in &all {
            bytewise.receive(std::slice::from_ref(b), &p).unwrap();
        }
        assert!(bytewise.update(&p).unwrap());
        assert_eq!(bytewise.output(), whole.output());
        assert_eq!(whole.encoding(), Encoding::Zrle);
        assert!(whole.follows_size_changes());
    }

    #[test]
    fn malformed_input_ends_the_session_without_a_panic() {
        let p = picture(64, 64, 0);
        let cases: [&[u8]; 7] = [
            b"HTTP/1.1 200",
            b"RFB 002.000\n",
            b"RFB 003.008\n\x01\x01\x07",
            b"RFB 003.008\n\x01\x01\x06\0\0\0\xff\xff\xff\xff",
            b"RFB 003.008\n\x01\x01\x00\0\0\0\x18\x18\0\x01\0\xff\0\xff\0\xff\x10\x08\0\0\0\0",
            b"RFB 003.008\n\x01\x01\x00\0\0\0\x20\x18\0\0\0\xff\0\xff\0\xff\x10\x08\0\0\0\0",
            b"RFB 003.008\n\x01\x01\x00\0\0\0\x20\x18\0\x01\0\xfe\0\xff\0\xff\x10\x08\0\0\0\0",
        ];
        for bad in cases {
            let mut s = Session::new("n");
            assert!(
                s.receive(bad, &p).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Pseudo-random bytes after a handshake: an error or more input wanted, never a panic,
        // and never more buffered than the longest message.
        let mut seed = 0x1234_5678_u32;
        for _ in 0..200 {
            let mut s = ready(&p);
            let junk: Vec<u8> = (0..512)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8 % 8
                })
                .collect();
            if s.receive(&junk, &p).is_ok() {
                let _ = s.update(&p);
            }
            assert!(s.input.len() <= MAX_CLIENT_MESSAGE);
        }
    }

    #[test]
    fn cut_text_is_skipped_and_its_length_bounded() {
        let p = picture(64, 64, 0);
        let mut s = ready(&p);
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&(300_000u32).to_be_bytes());
        s.receive(&m, &p).unwrap();
        s.receive(&vec![b'x'; 200_000], &p).unwrap();
        assert!(s.input.is_empty(), "cut text is dropped, not buffered");
        let mut rest = vec![b'y'; 100_000];
        rest.extend(request(false, 64, 64));
        s.receive(&rest, &p).unwrap();
        assert!(s.update(&p).unwrap(), "the request after the text is seen");
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&(super::super::message::MAX_CUT_TEXT + 1).to_be_bytes());
        assert!(matches!(
            s.receive(&m, &p),
            Err(SessionError::Message(MessageError::CutTextTooLong(_)))
        ));
    }

    #[test]
    fn incremental_updates_carry_only_changed_tiles() {
        let (w, h) = (300, 200);
        let p1 = picture(w, h, 0x20);
        let mut s = ready(&p1);
        s.receive(&request(false, 300, 200), &p1).unwrap();
        assert!(s.update(&p1).unwrap());
        assert_eq!(
            rects(&take(&mut s), 4),
            [(0, 0, 300, 200, 0, 300 * 200 * 4)]
        );
        s.receive(&request(true, 300, 200), &p1).unwrap();
        assert!(
            !s.update(&p1).unwrap(),
            "nothing changed: the request waits"
        );
        assert!(s.output().is_empty());
        // One pixel in tile (2, 1) changes; another picture with no change follows.
        let mut bytes = vec![0x20; (w * h * 4) as usize];
        bytes[((100 * w + 150) * 4) as usize] = 0x21;
        let p2 = next(&p1, w, h, bytes.clone());
        bytes[((199 * w + 299) * 4) as usize] = 0x22;
        let p3 = next(&p2, w, h, bytes);
        assert!(s.update(&p3).unwrap());
        let got = rects(&take(&mut s), 4);
        assert_eq!(
            got,
            [
                (128, 64, 64, 64, 0, 64 * 64 * 4),
                (256, 192, 44, 8, 0, 44 * 8 * 4)
            ]
        );
        s.receive(&request(true, 300, 200), &p3).unwrap();
        assert!(!s.update(&p3).unwrap());
        // A non-incremental request is answered at once, with what it asked for.
        s.receive(&request(false, 10, 10), &p3).unwrap();
        assert!(s.update(&p3).unwrap());
        assert_eq!(rects(&take(&mut s), 4), [(0, 0, 64, 64, 0, 64 * 64 * 4)]);
    }

    #[test]
    fn a_size_change_is_a_desktop_size_update_then_every_tile() {
        let p1 = picture(300, 200, 1);
        let mut s = ready(&p1);
        s.receive(
            &set_encodings(&[encoding::ZRLE, encoding::DESKTOP_SIZE]),
            &p1,
        )
        .unwrap();
        s.receive(&request(true, 300, 200), &p1).unwrap();
        assert!(s.update(&p1).unwrap(), "the first update has every tile");
        take(&mut s);
        s.receive(&request(true, 300, 200), &p1).unwrap();
        let p2 = next(&p1, 100, 50, vec![1; 100 * 50 * 4]);
        assert!(s.update(&p2).unwrap());
        assert_eq!(
            rects(&take(&mut s), 4),
            [(0, 0, 100, 50, encoding::DESKTOP_SIZE, 0)]
        );
        assert!(
            !s.update(&p2).unwrap(),
            "the DesktopSize answered the request"
        );
        s.receive(&request(true, 300, 200), &p2).unwrap();
        assert!(s.update(&p2).unwrap());
        let got = rects(&take(&mut s), 4);
        assert_eq!(got.len(), 1);
        let (x, y, w, h, enc, _) = got[0];
        assert_eq!((x, y, w, h, enc), (0, 0, 100, 50, encoding::ZRLE));
        // A viewer that never asked for DesktopSize cannot follow.
        let mut old = ready(&p1);
        old.receive(&request(true, 300, 200), &p1).unwrap();
        assert!(matches!(
            old.update(&p2),
            Err(SessionError::CannotResize(100, 50))
        ));
    }

    #[test]
    fn the_viewers_pixel_format_is_honoured() {
        let mode = Mode::packed(PixelFormat::Xrgb8888, 2, 1);
        let bytes = [0x56, 0x34, 0x12, 0xee, 0xff, 0xff, 0xff, 0xee].to_vec();
        let p = Picture::first(Some(mode), bytes);
        let mut s = ready(&p);
        let rgb565_be = RfbPixelFormat {
            big_endian: true,
            ..RfbPixelFormat::RGB565
        };
        let mut m = vec![0, 0, 0, 0];
        m.extend_from_slice(&rgb565_be.to_bytes());
        m.extend(request(false, 2, 1));
        s.receive(&m, &p).unwrap();
        assert_eq!(s.pixel_format(), &rgb565_be);
        assert!(s.update(&p).unwrap());
        let out = take(&mut s);
        // 0x123456 -> r 2, g 13, b 10 -> 0x11aa, big-endian; white -> 0xffff.
        assert_eq!(&out[16..], &[0x11, 0xaa, 0xff, 0xff]);
    }
}
