//! `vfu-peek SOCKET REGION:OFFSET:WIDTH...`: reads device registers as one more (passive)
//! vfio-user client: it negotiates, reads each register (WIDTH 1, 2 or 4 bytes,
//! little-endian) and prints its value as `0x…`, one per line. It routes no interrupt and maps
//! no memory, so it never stands in the way of a VMM's reset. Numbers take `0x` for hex.
//!
//! Exit status 0 when every read succeeded; 3 when the server refused the connection at
//! VERSION (the errno is printed: ENODEV while the device is being removed); 1 otherwise.

use std::path::Path;
use std::process::ExitCode;

use mdev::wire::{Command, RegionAccessMsg};
use mdev_tests::RawClient;
use vm_memory::ByteValued;

fn num(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("bad number '{s}': {e}"))
}

/// Parses `REGION:OFFSET:WIDTH`.
fn register(spec: &str) -> Result<(u32, u64, usize), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [region, offset, width] = parts[..] else {
        return Err(format!("'{spec}' is not REGION:OFFSET:WIDTH"));
    };
    let width = num(width)? as usize;
    if ![1, 2, 4].contains(&width) {
        return Err(format!("width {width} is not 1, 2 or 4"));
    }
    let region = u32::try_from(num(region)?).map_err(|e| e.to_string())?;
    Ok((region, num(offset)?, width))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((path, specs)) = args.split_first() else {
        eprintln!("usage: vfu-peek SOCKET REGION:OFFSET:WIDTH...");
        return ExitCode::from(2);
    };
    let registers = match specs
        .iter()
        .map(|s| register(s))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vfu-peek: {e}");
            return ExitCode::from(2);
        }
    };
    if !Path::new(path).exists() {
        eprintln!("vfu-peek: {path}: no such socket");
        return ExitCode::FAILURE;
    }
    let mut client = RawClient::connect(Path::new(path));
    if let Some(errno) = client.version(b"{}\0").errno() {
        println!("refused: errno {errno}");
        return ExitCode::from(3);
    }
    for (region, offset, width) in registers {
        let req = RegionAccessMsg {
            offset,
            region,
            count: width as u32,
        };
        let r = client.request(Command::RegionRead as u16, 0, req.as_slice(), &[]);
        if let Some(errno) = r.errno() {
            eprintln!("vfu-peek: read {region}:{offset:#x}: errno {errno}");
            return ExitCode::FAILURE;
        }
        let Some(bytes) = r.payload.get(16..16 + width) else {
            eprintln!("vfu-peek: short reply to {region}:{offset:#x}");
            return ExitCode::FAILURE;
        };
        let mut le = [0u8; 8];
        le[..width].copy_from_slice(bytes);
        println!("{:#0w$x}", u64::from_le_bytes(le), w = 2 + 2 * width);
    }
    ExitCode::SUCCESS
}
