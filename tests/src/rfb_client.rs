//! A minimal RFB (VNC) client for the tests and benchmarks of the VNC server, written from
//! the protocol description and independent of the server's code: the 3.8 handshake with
//! security type None, SetPixelFormat, SetEncodings, update requests, and the Raw, ZRLE and
//! DesktopSize decoders into an RGB picture.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress};

/// Encoding numbers.
pub const RAW: i32 = 0;
/// ZRLE.
pub const ZRLE: i32 = 16;
/// The DesktopSize pseudo-encoding.
pub const DESKTOP_SIZE: i32 = -223;

/// A true-colour pixel format as the client asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// 8, 16 or 32.
    pub bpp: u8,
    /// Depth.
    pub depth: u8,
    /// Big-endian pixel values.
    pub big_endian: bool,
    /// Channel maxima (red, green, blue).
    pub max: [u16; 3],
    /// Channel shifts (red, green, blue).
    pub shift: [u8; 3],
}

impl Format {
    /// 32 bits, red in the low byte (what many viewers ask for).
    pub const RGBX: Format = Format {
        bpp: 32,
        depth: 24,
        big_endian: false,
        max: [255; 3],
        shift: [0, 8, 16],
    };
    /// 32 bits big-endian, red high.
    pub const XRGB_BE: Format = Format {
        bpp: 32,
        depth: 24,
        big_endian: true,
        max: [255; 3],
        shift: [16, 8, 0],
    };
    /// 16 bits 5-6-5.
    pub const RGB565: Format = Format {
        bpp: 16,
        depth: 16,
        big_endian: false,
        max: [31, 63, 31],
        shift: [11, 5, 0],
    };

    fn from_wire(b: &[u8]) -> Format {
        let u = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        Format {
            bpp: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            max: [u(4), u(6), u(8)],
            shift: [b[10], b[11], b[12]],
        }
    }

    fn to_wire(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bpp;
        b[1] = self.depth;
        b[2] = u8::from(self.big_endian);
        b[3] = 1;
        for c in 0..3 {
            b[4 + 2 * c..6 + 2 * c].copy_from_slice(&self.max[c].to_be_bytes());
            b[10 + c] = self.shift[c];
        }
        b
    }

    fn bytes(&self) -> usize {
        usize::from(self.bpp / 8)
    }

    /// Bytes of a ZRLE CPIXEL and their offset in the pixel's bytes.
    fn cpixel(&self) -> (usize, usize) {
        if self.bpp == 32 && self.depth <= 24 {
            let mask: u32 = (0..3)
                .map(|c| u32::from(self.max[c]) << self.shift[c])
                .sum();
            if mask >> 24 == 0 {
                return (if self.big_endian { 1 } else { 0 }, 3);
            }
            if mask & 0xff == 0 {
                return (if self.big_endian { 0 } else { 1 }, 3);
            }
        }
        (0, self.bytes())
    }

    /// The colour of a pixel's wire bytes, each channel scaled to 8 bits.
    fn rgb(&self, px: &[u8]) -> [u8; 3] {
        let mut v = 0u32;
        for (i, &b) in px.iter().enumerate() {
            v |= u32::from(b)
                << if self.big_endian {
                    8 * (px.len() - 1 - i)
                } else {
                    8 * i
                };
        }
        std::array::from_fn(|c| {
            let max = u32::from(self.max[c]);
            let raw = (v >> self.shift[c]) & max;
            if max == 255 {
                raw as u8
            } else {
                (raw * 255 / max.max(1)) as u8
            }
        })
    }
}

/// One rectangle of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateRect {
    /// Left.
    pub x: u16,
    /// Top.
    pub y: u16,
    /// Width.
    pub w: u16,
    /// Height.
    pub h: u16,
    /// Encoding (or pseudo-encoding).
    pub encoding: i32,
}

/// A FramebufferUpdate as received.
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// Its rectangles.
    pub rects: Vec<UpdateRect>,
    /// Bytes it took on the wire.
    pub bytes: usize,
}

impl Update {
    /// True when it only announced a new size.
    pub fn is_desktop_size(&self) -> bool {
        self.rects.len() == 1 && self.rects[0].encoding == DESKTOP_SIZE
    }
}

/// A connected viewer.
pub struct RfbClient {
    stream: TcpStream,
    /// Framebuffer width.
    pub width: u16,
    /// Framebuffer height.
    pub height: u16,
    /// Desktop name.
    pub name: String,
    /// The server's pixel format (ServerInit).
    pub server_format: Format,
    format: Format,
    /// The picture as RGB8, row-major.
    rgb: Vec<u8>,
    zlib: Decompress,
    /// Bytes read since the last update began.
    counted: usize,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl RfbClient {
    /// Connects and completes the 3.8 handshake (security None, shared).
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.set_nodelay(true)?;
        let mut c = RfbClient {
            stream,
            width: 0,
            height: 0,
            name: String::new(),
            server_format: Format::RGBX,
            format: Format::RGBX,
            rgb: Vec::new(),
            zlib: Decompress::new(true),
            counted: 0,
        };
        let mut version = [0u8; 12];
        c.read_exact(&mut version)?;
        if &version != b"RFB 003.008\n" {
            return Err(bad(format!("server version {version:?}")));
        }
        c.stream.write_all(b"RFB 003.008\n")?;
        let n = c.u8()?;
        let mut types = vec![0u8; usize::from(n)];
        c.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(bad(format!("security types {types:?} without None")));
        }
        c.stream.write_all(&[1])?;
        if c.u32()? != 0 {
            return Err(bad("security result: failed"));
        }
        c.stream.write_all(&[1])?;
        c.width = c.u16()?;
        c.height = c.u16()?;
        let mut pf = [0u8; 16];
        c.read_exact(&mut pf)?;
        c.server_format = Format::from_wire(&pf);
        c.format = c.server_format;
        let len = c.u32()? as usize;
        let mut name = vec![0u8; len];
        c.read_exact(&mut name)?;
        c.name = String::from_utf8_lossy(&name).into_owned();
        c.rgb = vec![0; usize::from(c.width) * usize::from(c.height) * 3];
        Ok(c)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.stream.read_exact(buf)?;
        self.counted += buf.len();
        Ok(())
    }

    fn u8(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn u16(&mut self) -> io::Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Sends SetPixelFormat; later updates come in `format`.
    pub fn set_pixel_format(&mut self, format: Format) -> io::Result<()> {
        let mut m = vec![0u8, 0, 0, 0];
        m.extend_from_slice(&format.to_wire());
        self.stream.write_all(&m)?;
        self.format = format;
        Ok(())
    }

    /// Sends SetEncodings.
    pub fn set_encodings(&mut self, list: &[i32]) -> io::Result<()> {
        let mut m = vec![2u8, 0];
        m.extend_from_slice(&(list.len() as u16).to_be_bytes());
        for e in list {
            m.extend_from_slice(&e.to_be_bytes());
        }
        self.stream.write_all(&m)
    }

    /// Asks for the whole framebuffer (only what changed when `incremental`).
    pub fn request(&mut self, incremental: bool) -> io::Result<()> {
        let mut m = vec![3u8, u8::from(incremental), 0, 0, 0, 0];
        m.extend_from_slice(&self.width.to_be_bytes());
        m.extend_from_slice(&self.height.to_be_bytes());
        self.stream.write_all(&m)
    }

    /// Sends raw bytes (for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next FramebufferUpdate, applied to the picture; `None` when none begins within
    /// `within`. Other server messages are not expected from a view-only server.
    pub fn next_update(&mut self, within: Duration) -> io::Result<Option<Update>> {
        self.stream
            .set_read_timeout(Some(within.max(Duration::from_millis(1))))?;
        let mut kind = [0u8; 1];
        let first = self.stream.read(&mut kind);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))?;
        match first {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        }
        if kind[0] != 0 {
            return Err(bad(format!("server message type {}", kind[0])));
        }
        self.counted = 1;
        self.u8()?;
        let n = self.u16()?;
        let mut update = Update::default();
        for _ in 0..n {
            let r = UpdateRect {
                x: self.u16()?,
                y: self.u16()?,
                w: self.u16()?,
                h: self.u16()?,
                encoding: self.u32()? as i32,
            };
            match r.encoding {
                RAW => self.raw(&r)?,
                ZRLE => self.zrle(&r)?,
                DESKTOP_SIZE => {
                    self.width = r.w;
                    self.height = r.h;
                    self.rgb = vec![0; usize::from(r.w) * usize::from(r.h) * 3];
                }
                other => return Err(bad(format!("encoding {other}"))),
            }
            update.rects.push(r);
        }
        update.bytes = self.counted;
        Ok(Some(update))
    }

    /// Waits (up to `within`) for an update, failing if none comes.
    pub fn expect_update(&mut self, within: Duration) -> io::Result<Update> {
        self.next_update(within)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "no update"))
    }

    /// Requests and reads updates until the picture satisfies `done`, for at most `within`.
    pub fn refresh_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&RfbClient) -> bool,
    ) -> io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            self.request(true)?;
            let left = deadline.saturating_duration_since(Instant::now());
            self.next_update(left)?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "picture never matched",
                ));
            }
        }
    }

    fn put(&mut self, x: usize, y: usize, c: [u8; 3]) -> io::Result<()> {
        if x >= usize::from(self.width) || y >= usize::from(self.height) {
            return Err(bad(format!("pixel ({x}, {y}) outside the framebuffer")));
        }
        let at = (y * usize::from(self.width) + x) * 3;
        self.rgb[at..at + 3].copy_from_slice(&c);
        Ok(())
    }

    fn raw(&mut self, r: &UpdateRect) -> io::Result<()> {
        let bpp = self.format.bytes();
        let mut data = vec![0u8; usize::from(r.w) * usize::from(r.h) * bpp];
        self.read_exact(&mut data)?;
        for (i, px) in data.chunks_exact(bpp).enumerate() {
            let (x, y) = (i % usize::from(r.w), i / usize::from(r.w));
            let c = self.format.rgb(px);
            self.put(usize::from(r.x) + x, usize::from(r.y) + y, c)?;
        }
        Ok(())
    }

    fn zrle(&mut self, r: &UpdateRect) -> io::Result<()> {
        let len = self.u32()? as usize;
        let mut packed = vec![0u8; len];
        self.read_exact(&mut packed)?;
        let mut plain = Vec::with_capacity(len * 8 + 1024);
        let mut used = 0;
        while used < packed.len() {
            plain.reserve(len * 4 + 65536);
            let before = self.zlib.total_in();
            self.zlib
                .decompress_vec(&packed[used..], &mut plain, FlushDecompress::Sync)
                .map_err(|e| bad(format!("zlib: {e}")))?;
            used += (self.zlib.total_in() - before) as usize;
        }
        let (at, cp) = self.format.cpixel();
        let bpp = self.format.bytes();
        let format = self.format;
        let colour = |b: &[u8]| {
            let mut px = [0u8; 4];
            px[at..at + cp].copy_from_slice(b);
            format.rgb(&px[..bpp])
        };
        let mut s = Stream {
            data: &plain,
            at: 0,
        };
        for ty in (0..r.h).step_by(64) {
            for tx in (0..r.w).step_by(64) {
                let (tw, th) = (64.min(r.w - tx) as usize, 64.min(r.h - ty) as usize);
                let mut tile = Vec::with_capacity(tw * th);
                let sub = s.byte()?;
                match sub {
                    0 => {
                        for _ in 0..tw * th {
                            tile.push(colour(s.take(cp)?));
                        }
                    }
                    1 => tile = vec![colour(s.take(cp)?); tw * th],
                    2..=16 => {
                        let palette: Vec<_> = (0..sub)
                            .map(|_| s.take(cp).map(colour))
                            .collect::<io::Result<_>>()?;
                        let bits = if sub == 2 {
                            1
                        } else if sub <= 4 {
                            2
                        } else {
                            4
                        };
                        for _ in 0..th {
                            let row = s.take((tw * bits).div_ceil(8))?;
                            for x in 0..tw {
                                let bit = x * bits;
                                let i = (row[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1);
                                tile.push(
                                    *palette.get(usize::from(i)).ok_or_else(|| bad("index"))?,
                                );
                            }
                        }
                    }
                    128 => {
                        while tile.len() < tw * th {
                            let c = colour(s.take(cp)?);
                            let n = s.run()?;
                            tile.extend(std::iter::repeat_n(c, n));
                        }
                    }
                    130..=255 => {
                        let palette: Vec<_> = (0..sub - 128)
                            .map(|_| s.take(cp).map(colour))
                            .collect::<io::Result<_>>()?;
                        while tile.len() < tw * th {
                            let i = s.byte()?;
                            let c = *palette
                                .get(usize::from(i & 0x7f))
                                .ok_or_else(|| bad("palette index"))?;
                            let n = if i & 0x80 != 0 { s.run()? } else { 1 };
                            tile.extend(std::iter::repeat_n(c, n));
                        }
                    }
                    other => return Err(bad(format!("ZRLE subencoding {other}"))),
                }
                if tile.len() != tw * th {
                    return Err(bad("ZRLE tile overruns"));
                }
                for (i, c) in tile.into_iter().enumerate() {
                    let (x, y) = (
                        usize::from(r.x + tx) + i % tw,
                        usize::from(r.y + ty) + i / tw,
                    );
                    self.put(x, y, c)?;
                }
            }
        }
        if s.at != plain.len() {
            return Err(bad("ZRLE data left over"));
        }
        Ok(())
    }

    /// The picture (RGB8, row-major).
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The socket, for tests that misbehave on purpose.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

struct Stream<'a> {
    data: &'a [u8],
    at: usize,
}

impl Stream<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        let s = self
            .data
            .get(self.at..self.at + n)
            .ok_or_else(|| bad("ZRLE data ends early"))?;
        self.at += n;
        Ok(s)
    }

    fn byte(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn run(&mut self) -> io::Result<usize> {
        let mut n = 1;
        loop {
            let b = self.byte()?;
            n += usize::from(b);
            if b != 255 {
                return Ok(n);
            }
        }
    }
}
