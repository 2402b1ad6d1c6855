//! `guest-pci bench`: times register accesses through a BAR's sysfs resource file, the way a
//! driver's MMIO or port I/O would reach the device (a mapping for a memory BAR, `pread` /
//! `pwrite` of the width for an I/O BAR, which the kernel turns into `in`/`out`).
//!
//! ```text
//! guest-pci bench BDF BAR OFFSET WIDTH N WRITE_VALUE EXPECT
//! ```
//! Reads the register N times, then writes WRITE_VALUE to it N times, then reads it once more:
//! that read must equal EXPECT (`-`: no check, for a register that ignores writes), and so must
//! the first read when EXPECT is not `-` and the register already held it. Prints one line:
//! `read_ns=R write_ns=W value=V` (mean nanoseconds per access).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use crate::{num, open_rw, sysfs, Mapping, Result, PAGE_SIZE};

/// `IORESOURCE_IO` in a sysfs `resource` line's flags.
const IORESOURCE_IO: u64 = 0x100;

/// How a register is reached.
enum Access {
    /// A mapping of the memory BAR and the register's offset in it.
    Memory(Mapping, usize),
    /// The I/O BAR's resource file and the register's offset.
    Io(File, u64),
}

impl Access {
    fn open(bdf: &str, bar: u64, offset: u64, width: usize) -> Result<Access> {
        let resource = std::fs::read_to_string(sysfs(bdf, "resource"))
            .map_err(|e| format!("{bdf}/resource: {e}"))?;
        let line = resource
            .lines()
            .nth(usize::try_from(bar).map_err(|e| e.to_string())?)
            .ok_or_else(|| format!("{bdf}: no BAR {bar}"))?;
        let flags = line
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| format!("{bdf}: bad resource line '{line}'"))
            .and_then(num)?;
        let file = open_rw(&sysfs(bdf, &format!("resource{bar}")))?;
        if flags & IORESOURCE_IO != 0 {
            return Ok(Access::Io(file, offset));
        }
        let base = offset & !(PAGE_SIZE - 1);
        let start = usize::try_from(offset - base).map_err(|e| e.to_string())?;
        let span = usize::try_from(PAGE_SIZE).map_err(|e| e.to_string())?;
        if start + width > span {
            return Err(format!("offset {offset:#x} width {width} crosses a page"));
        }
        Ok(Access::Memory(Mapping::new(&file, base, span)?, start))
    }

    fn read(&self, width: usize) -> Result<u32> {
        match self {
            Access::Memory(m, at) => m.read(*at, width),
            Access::Io(f, off) => {
                let mut b = [0u8; 4];
                match f.read_at(&mut b[..width], *off) {
                    Ok(n) if n == width => Ok(u32::from_le_bytes(b)),
                    Ok(n) => Err(format!("I/O read of {width} at {off:#x}: {n} bytes")),
                    Err(e) => Err(format!("I/O read at {off:#x}: {e}")),
                }
            }
        }
    }

    fn write(&self, width: usize, v: u32) -> Result<()> {
        match self {
            Access::Memory(m, at) => m.write(*at, width, v),
            Access::Io(f, off) => match f.write_at(&v.to_le_bytes()[..width], *off) {
                Ok(n) if n == width => Ok(()),
                Ok(n) => Err(format!("I/O write of {width} at {off:#x}: {n} bytes")),
                Err(e) => Err(format!("I/O write at {off:#x}: {e}")),
            },
        }
    }
}

/// Mean nanoseconds per iteration of `n` runs of `f`.
fn time_each(n: u64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    for _ in 0..n {
        f()?;
    }
    #[expect(
        clippy::cast_precision_loss,
        reason = "a mean for printing; n is a loop count far below 2^52"
    )]
    Ok(t0.elapsed().as_nanos() as f64 / n.max(1) as f64)
}

/// `bench BDF BAR OFFSET WIDTH N WRITE_VALUE EXPECT`.
pub fn run(bdf: &str, args: &[&str]) -> Result<()> {
    let [bar, offset, width, n, value, expect] = args else {
        return Err("usage: guest-pci bench BDF BAR OFFSET WIDTH N WRITE_VALUE EXPECT".into());
    };
    let width = match num(width)? {
        1 => 1,
        2 => 2,
        4 => 4,
        w => return Err(format!("width {w}: 1, 2 or 4")),
    };
    let n = num(n)?;
    let value = u32::try_from(num(value)?).map_err(|e| e.to_string())?;
    let expect = match *expect {
        "-" => None,
        e => Some(u32::try_from(num(e)?).map_err(|e| e.to_string())?),
    };
    let access = Access::open(bdf, num(bar)?, num(offset)?, width)?;
    // A few accesses first: the first ones fault the mapping in.
    for _ in 0..8 {
        access.read(width)?;
    }
    let mut last = 0;
    let read_ns = time_each(n, || {
        last = access.read(width)?;
        Ok(())
    })?;
    let write_ns = time_each(n, || access.write(width, value))?;
    let after = access.read(width)?;
    println!("read_ns={read_ns:.1} write_ns={write_ns:.1} value={after:#x}");
    match expect {
        Some(e) if after != e => Err(format!(
            "{bdf} BAR {bar} {offset}: read {after:#x} after writing, expected {e:#x} \
             (before the writes: {last:#x})"
        )),
        _ => Ok(()),
    }
}
