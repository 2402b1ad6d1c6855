//! `guest-pci`: pokes PCI functions from inside the end-to-end test guest, the way a driver
//! would, through sysfs (`/sys/bus/pci/devices/BDF/{config,resourceN}`) — busybox has no
//! `setpci` and cannot map a BAR.
//!
//! ```text
//! guest-pci enable BDF                       set I/O, memory and bus-master enable
//! guest-pci fill BDF BAR OFFSET LEN VALUE    write the 32-bit VALUE over LEN bytes of a BAR
//! guest-pci fill-file PATH OFFSET LEN VALUE  the same into a file such as /dev/fb0
//! guest-pci read32 BDF BAR OFFSET            print a BAR dword (hex)
//! guest-pci write32 BDF BAR OFFSET VALUE     write a BAR dword
//! guest-pci con2fb TTY FB                    put console ttyTTY on framebuffer fbFB (fbcon),
//!                                            as the `con2fbmap` tool does; busybox has none
//! guest-pci io-read8 BDF BAR OFFSET          print a byte of an I/O BAR (hex)
//! guest-pci io-write8 BDF BAR OFFSET VALUE   write a byte of an I/O BAR
//! guest-pci bench BDF BAR OFFSET WIDTH N WRITE_VALUE EXPECT
//!                                            time N reads and N writes of a register
//!                                            (`bench.rs`)
//! guest-pci serial-xfer TTY STEP...          timed transfers through a serial port against
//!                                            the host's `serial-peer` (`serial.rs`)
//! ```
//! Numbers take `0x` for hex. Exit status 0 on success, 1 with a message on stderr otherwise.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

mod bench;
mod serial;

/// Offset of the command register and its enable bits.
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_IO: u16 = 0x1;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;

/// `FBIOPUT_CON2FBMAP` (linux/fb.h): map a virtual console to a framebuffer.
const FBIOPUT_CON2FBMAP: libc::c_ulong = 0x4610;

/// `struct fb_con2fbmap` (linux/fb.h).
#[repr(C)]
struct Con2FbMap {
    /// Virtual console, 1 for tty1.
    console: u32,
    /// Framebuffer index.
    framebuffer: u32,
}

/// Granule of a BAR mapping.
const PAGE_SIZE: u64 = 4096;
/// Width of the accesses `fill`, `read32` and `write32` make.
const DWORD: u64 = 4;

type Result<T> = std::result::Result<T, String>;

fn num(s: &str) -> Result<u64> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad number '{s}': {e}"))
}

fn sysfs(bdf: &str, file: &str) -> String {
    format!("/sys/bus/pci/devices/{bdf}/{file}")
}

fn open_rw(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))
}

/// A shared read/write mapping of `len` bytes of `file` at `offset` (page aligned).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(file: &File, offset: u64, len: usize) -> Result<Mapping> {
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel checks the range
        // and we only touch it through this struct, inside `len`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write32(&self, at: usize, v: u32) {
        assert!(at.is_multiple_of(4) && at + 4 <= self.len);
        // SAFETY: in bounds and aligned (checked above); volatile because this is device memory.
        unsafe { std::ptr::write_volatile(self.ptr.add(at).cast::<u32>(), v) }
    }

    fn read32(&self, at: usize) -> u32 {
        assert!(at.is_multiple_of(4) && at + 4 <= self.len);
        // SAFETY: as in `write32`.
        unsafe { std::ptr::read_volatile(self.ptr.add(at).cast::<u32>()) }
    }

    /// One naturally aligned access of `width` (1, 2 or 4) bytes at `at`, as one load.
    fn read(&self, at: usize, width: usize) -> Result<u32> {
        self.check(at, width)?;
        // SAFETY: in bounds and naturally aligned (checked just above); volatile because this
        // is device memory, so the access keeps its width.
        let v = unsafe {
            let p = self.ptr.add(at);
            match width {
                1 => u32::from(std::ptr::read_volatile(p)),
                2 => u32::from(std::ptr::read_volatile(p.cast::<u16>())),
                _ => std::ptr::read_volatile(p.cast::<u32>()),
            }
        };
        Ok(v)
    }

    /// One naturally aligned store of the low `width` (1, 2 or 4) bytes of `v` at `at`.
    fn write(&self, at: usize, width: usize, v: u32) -> Result<()> {
        self.check(at, width)?;
        let b = v.to_le_bytes();
        // SAFETY: as in `read`.
        unsafe {
            let p = self.ptr.add(at);
            match width {
                1 => std::ptr::write_volatile(p, b[0]),
                2 => std::ptr::write_volatile(p.cast::<u16>(), u16::from_le_bytes([b[0], b[1]])),
                _ => std::ptr::write_volatile(p.cast::<u32>(), v),
            }
        }
        Ok(())
    }

    fn check(&self, at: usize, width: usize) -> Result<()> {
        if matches!(width, 1 | 2 | 4) && at.is_multiple_of(width) && at + width <= self.len {
            Ok(())
        } else {
            Err(format!(
                "access of {width} bytes at {at:#x} not aligned or outside the mapping"
            ))
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Maps the page-aligned window of BAR `bar` that covers `offset..offset+len`.
/// OFFSET must be a dword multiple (the accesses are dwords); the window covers LEN rounded
/// up to whole dwords.
fn map_bar(bdf: &str, bar: u64, offset: u64, len: u64) -> Result<(Mapping, usize)> {
    if !offset.is_multiple_of(DWORD) {
        return Err(format!("offset {offset:#x} is not a multiple of {DWORD}"));
    }
    let file = open_rw(&sysfs(bdf, &format!("resource{bar}")))?;
    let base = offset & !(PAGE_SIZE - 1);
    let span = len
        .checked_next_multiple_of(DWORD)
        .and_then(|len| (offset - base).checked_add(len))
        .and_then(|end| end.div_ceil(PAGE_SIZE).checked_mul(PAGE_SIZE))
        .and_then(|span| usize::try_from(span).ok())
        .ok_or_else(|| format!("length {len:#x} too large"))?;
    Ok((Mapping::new(&file, base, span)?, (offset - base) as usize))
}

fn enable(bdf: &str) -> Result<()> {
    let mut f = open_rw(&sysfs(bdf, "config"))?;
    let mut b = [0u8; 2];
    f.seek(SeekFrom::Start(PCI_COMMAND))
        .and_then(|_| f.read_exact(&mut b))
        .map_err(|e| e.to_string())?;
    let cmd = u16::from_le_bytes(b) | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    f.seek(SeekFrom::Start(PCI_COMMAND))
        .and_then(|_| f.write_all(&cmd.to_le_bytes()))
        .map_err(|e| e.to_string())
}

/// Maps console ttyTTY to fbFB through fbcon's ioctl on /dev/fbFB.
fn con2fb(tty: u32, fb: u32) -> Result<()> {
    let path = format!("/dev/fb{fb}");
    let f = open_rw(&path)?;
    let map = Con2FbMap {
        console: tty,
        framebuffer: fb,
    };
    // SAFETY: `f` is an open framebuffer device we hold for the call; the ioctl only reads a
    // `struct fb_con2fbmap`, which `map` is (same layout, repr(C)) and outlives the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FBIOPUT_CON2FBMAP, &map as *const Con2FbMap) };
    if rc < 0 {
        return Err(format!(
            "{path}: FBIOPUT_CON2FBMAP tty{tty}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One byte of I/O BAR `bar` at `offset`, through its sysfs resource file (the kernel does
/// an `inb`/`outb` for a 1-byte access; I/O BARs cannot be mapped).
fn io_byte(bdf: &str, bar: &str, offset: &str, write: Option<u8>) -> Result<u8> {
    let path = sysfs(bdf, &format!("resource{}", num(bar)?));
    let file = open_rw(&path)?;
    let offset = num(offset)?;
    let mut b = [write.unwrap_or(0)];
    let r = match write {
        Some(_) => file.write_at(&b, offset),
        None => file.read_at(&mut b, offset),
    };
    match r {
        Ok(1) => Ok(b[0]),
        Ok(n) => Err(format!("{path}: {n} bytes at {offset:#x}")),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn fill_mapping(m: &Mapping, start: usize, len: u64, value: u32) {
    for i in (0..len as usize).step_by(DWORD as usize) {
        m.write32(start + i, value);
    }
}

fn run(args: &[String]) -> Result<()> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["enable", bdf] => enable(bdf),
        ["fill", bdf, bar, off, len, val] => {
            let (len, val) = (num(len)?, num(val)? as u32);
            let (m, start) = map_bar(bdf, num(bar)?, num(off)?, len)?;
            fill_mapping(&m, start, len, val);
            Ok(())
        }
        ["fill-file", path, off, len, val] => {
            let (off, len, val) = (num(off)?, num(len)?, num(val)? as u32);
            let mut f = open_rw(path)?;
            let buf: Vec<u8> = (0..len / DWORD).flat_map(|_| val.to_le_bytes()).collect();
            f.seek(SeekFrom::Start(off))
                .and_then(|_| f.write_all(&buf))
                .map_err(|e| format!("{path}: {e}"))
        }
        ["read32", bdf, bar, off] => {
            let (m, start) = map_bar(bdf, num(bar)?, num(off)?, DWORD)?;
            println!("{:#010x}", m.read32(start));
            Ok(())
        }
        ["write32", bdf, bar, off, val] => {
            let (m, start) = map_bar(bdf, num(bar)?, num(off)?, DWORD)?;
            m.write32(start, num(val)? as u32);
            Ok(())
        }
        ["con2fb", tty, fb] => con2fb(num(tty)? as u32, num(fb)? as u32),
        ["io-read8", bdf, bar, off] => {
            println!("{:#04x}", io_byte(bdf, bar, off, None)?);
            Ok(())
        }
        ["io-write8", bdf, bar, off, val] => {
            let v = u8::try_from(num(val)?).map_err(|e| e.to_string())?;
            io_byte(bdf, bar, off, Some(v)).map(|_| ())
        }
        ["bench", bdf, rest @ ..] => bench::run(bdf, rest),
        ["serial-xfer", tty, steps @ ..] => serial::run(tty, steps),
        _ => Err(
            "usage: guest-pci enable|fill|fill-file|read32|write32|con2fb|io-read8|io-write8|\
             bench|serial-xfer ... (see source)"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guest-pci: {e}");
            ExitCode::FAILURE
        }
    }
}
