//! `png-stat FILE [CHECK ...]`: describes a PNG (size, most common colour and its share,
//! number of distinct colours) and evaluates checks — how the end-to-end test judges what a
//! guest drew. Exit status 1 when a check fails, 2 on bad usage or an unreadable file.
//!
//! Checks:
//! - `size=WxH`            the picture is W by H pixels;
//! - `at=X,Y=RRGGBB`       pixel (X, Y) has that colour;
//! - `share=RRGGBB>=F`     at least fraction F of the pixels have that colour;
//! - `colours>=N`          at least N distinct colours (text on a background is 2 or more);
//! - `other=RRGGBB>=F`     at least fraction F of the pixels differ from that colour;
//! - `crc32=HHHHHHHH`      the CRC-32 (IEEE, as zlib's and busybox's `crc32`) of the picture
//!   as XRGB8888 memory (bytes B, G, R, 0 per pixel, rows top to bottom, no padding) — what a
//!   guest gets from `crc32 < /dev/fbN` on a framebuffer of that mode whose X bytes are zero.
//! - `same=OTHER.png`      OTHER has the same size and every pixel the same colour.

use std::collections::HashMap;
use std::process::ExitCode;

use image::RgbImage;

struct Stats {
    img: RgbImage,
    counts: HashMap<[u8; 3], u64>,
}

impl Stats {
    fn total(&self) -> f64 {
        (u64::from(self.img.width()) * u64::from(self.img.height())).max(1) as f64
    }

    fn share(&self, c: &[u8; 3]) -> f64 {
        self.counts.get(c).copied().unwrap_or(0) as f64 / self.total()
    }
}

fn colour(s: &str) -> Result<[u8; 3], String> {
    let v = u32::from_str_radix(s, 16).map_err(|_| format!("bad colour '{s}'"))?;
    if s.len() != 6 {
        return Err(format!("bad colour '{s}' (RRGGBB)"));
    }
    Ok([(v >> 16) as u8, (v >> 8) as u8, v as u8])
}

fn hex(c: [u8; 3]) -> String {
    format!("{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// CRC-32 of the picture laid out as XRGB8888 memory with zero X bytes.
fn xrgb_crc32(img: &RgbImage) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for row in img.rows() {
        let line: Vec<u8> = row.flat_map(|p| [p.0[2], p.0[1], p.0[0], 0]).collect();
        crc.update(&line);
    }
    crc.finalize()
}

fn fraction(s: &str) -> Result<f64, String> {
    s.parse().map_err(|_| format!("bad fraction '{s}'"))
}

/// Evaluates one check: Ok(None) passed, Ok(Some(why)) failed, Err on a malformed check.
fn check(st: &Stats, c: &str) -> Result<Option<String>, String> {
    let (key, val) = c.split_once('=').ok_or(format!("bad check '{c}'"))?;
    let fail = |ok: bool, why: String| if ok { None } else { Some(why) };
    match key {
        "size" => {
            let got = format!("{}x{}", st.img.width(), st.img.height());
            Ok(fail(got == val, format!("size is {got}, want {val}")))
        }
        "at" => {
            let (xy, want) = val.split_once('=').ok_or(format!("bad check '{c}'"))?;
            let (x, y) = xy.split_once(',').ok_or(format!("bad point '{xy}'"))?;
            let x: u32 = x.parse().map_err(|_| format!("bad x '{x}'"))?;
            let y: u32 = y.parse().map_err(|_| format!("bad y '{y}'"))?;
            let want = colour(want)?;
            let Some(p) = st.img.get_pixel_checked(x, y) else {
                return Ok(Some(format!("({x},{y}) is outside the picture")));
            };
            Ok(fail(
                p.0 == want,
                format!("({x},{y}) is {}, want {}", hex(p.0), hex(want)),
            ))
        }
        "share" | "other" => {
            let (col, min) = val.split_once(">=").ok_or(format!("bad check '{c}'"))?;
            let (col, min) = (colour(col)?, fraction(min)?);
            let s = if key == "share" {
                st.share(&col)
            } else {
                1.0 - st.share(&col)
            };
            Ok(fail(
                s >= min,
                format!("{key} of {} is {s:.4}, want >= {min}", hex(col)),
            ))
        }
        "colours>" => {
            let min: usize = val.parse().map_err(|_| format!("bad count '{val}'"))?;
            let n = st.counts.len();
            Ok(fail(
                n >= min,
                format!("{n} distinct colours, want >= {min}"),
            ))
        }
        "crc32" => {
            let want = u32::from_str_radix(val, 16).map_err(|_| format!("bad crc32 '{val}'"))?;
            let got = xrgb_crc32(&st.img);
            Ok(fail(
                got == want,
                format!("XRGB8888 crc32 is {got:08x}, want {want:08x}"),
            ))
        }
        "same" => {
            let other = image::open(val)
                .map_err(|e| format!("{val}: {e}"))?
                .to_rgb8();
            if other.dimensions() != st.img.dimensions() {
                return Ok(Some(format!(
                    "{val} is {}x{}, this is {}x{}",
                    other.width(),
                    other.height(),
                    st.img.width(),
                    st.img.height()
                )));
            }
            let differ = st
                .img
                .enumerate_pixels()
                .filter(|(x, y, p)| other.get_pixel(*x, *y) != *p)
                .map(|(x, y, _)| (x, y));
            let (count, first) = differ.fold((0u64, None), |(n, f), xy| (n + 1, f.or(Some(xy))));
            Ok(first.map(|(x, y)| {
                format!(
                    "{count} pixels differ from {val}, the first at ({x},{y}): {} here, {} there",
                    hex(st.img.get_pixel(x, y).0),
                    hex(other.get_pixel(x, y).0)
                )
            }))
        }
        _ => Err(format!("unknown check '{c}'")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, checks)) = args.split_first() else {
        eprintln!("usage: png-stat FILE [size=WxH] [at=X,Y=RRGGBB] [share=RRGGBB>=F] [colours>=N] [other=RRGGBB>=F] [crc32=HHHHHHHH] [same=OTHER.png]");
        return ExitCode::from(2);
    };
    let img = match image::open(path) {
        Ok(i) => i.to_rgb8(),
        Err(e) => {
            eprintln!("png-stat: {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut counts: HashMap<[u8; 3], u64> = HashMap::new();
    for p in img.pixels() {
        *counts.entry(p.0).or_default() += 1;
    }
    let st = Stats { img, counts };
    let top = st
        .counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, _)| *c)
        .unwrap_or([0; 3]);
    println!(
        "{}x{} dominant={} share={:.4} colours={}",
        st.img.width(),
        st.img.height(),
        hex(top),
        st.share(&top),
        st.counts.len()
    );
    let mut failed = false;
    for c in checks {
        match check(&st, c) {
            Ok(None) => {}
            Ok(Some(why)) => {
                eprintln!("png-stat: {path}: check {c} failed: {why}");
                failed = true;
            }
            Err(e) => {
                eprintln!("png-stat: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
