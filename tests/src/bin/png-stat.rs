//! `png-stat FILE [RRGGBB]`: prints a PNG's size, its most common colour and that colour's
//! share of the pixels — how the end-to-end test checks what a guest drew. With a colour
//! argument, also prints that colour's share and exits 1 when it is under half the picture.

use std::collections::HashMap;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: png-stat FILE [RRGGBB]");
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
    let total = u64::from(img.width()) * u64::from(img.height());
    let share = |c: &[u8; 3]| counts.get(c).copied().unwrap_or(0) as f64 / total.max(1) as f64;
    let (top, _) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(c, n)| (*c, *n))
        .unwrap_or(([0; 3], 0));
    let hex = |c: [u8; 3]| format!("{:02x}{:02x}{:02x}", c[0], c[1], c[2]);
    print!(
        "{}x{} dominant={} share={:.3}",
        img.width(),
        img.height(),
        hex(top),
        share(&top)
    );
    let Some(want) = args.get(1) else {
        println!();
        return ExitCode::SUCCESS;
    };
    let parsed = u32::from_str_radix(want, 16).map(|v| [(v >> 16) as u8, (v >> 8) as u8, v as u8]);
    let Ok(want) = parsed else {
        eprintln!("\npng-stat: bad colour '{want}'");
        return ExitCode::from(2);
    };
    let s = share(&want);
    println!(" {}={s:.3}", hex(want));
    if s >= 0.5 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
