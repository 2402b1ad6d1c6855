//! Writes corpus seeds: `fuzz-seeds hostile CORPUS` (the hostile tests' messages) and
//! `fuzz-seeds import CORPUS FILE...` (connections recorded with `MDEV_RECORD_DIR`; the
//! device is read from the file name's program part: `mtty_…`, `mdpy_…`, `mbochs_…`,
//! `pci-passthrough_…`, `doorbell_…`). Inputs land in `CORPUS/wire/` and `CORPUS/server/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use mdev_fuzz::seeds::{self, Recorded};
use mdev_fuzz::targets::server::DeviceKind;

fn write(root: &Path, target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn device_of(file: &Path) -> Option<DeviceKind> {
    let name = file.file_name()?.to_string_lossy().into_owned();
    let program = name.split('_').next()?;
    Some(match program {
        "doorbell" => DeviceKind::Doorbell,
        "mtty" => DeviceKind::Mtty,
        "mdpy" => DeviceKind::Mdpy,
        "mbochs" => DeviceKind::Mbochs,
        "pci-passthrough" => DeviceKind::Passthrough,
        _ => return None,
    })
}

/// Most messages of one recording put into one `server` input (QEMU sends thousands; the
/// first ones cover the handshake and the probe, the rest repeats them).
const MESSAGES_PER_SEED: usize = 48;

fn import(root: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    for file in files {
        let Some(device) = device_of(file) else {
            eprintln!("{}: no device in the file name; skipped", file.display());
            continue;
        };
        let messages = seeds::read_recording(&std::fs::read(file)?);
        let stem = file
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        for (i, part) in messages.chunks(MESSAGES_PER_SEED).enumerate().take(4) {
            let mut seq: Vec<Recorded> = Vec::new();
            if i > 0 {
                // Later parts start with the connection's own VERSION.
                seq.extend(messages.first().cloned());
            }
            seq.extend_from_slice(part);
            write(
                root,
                "server",
                &format!("qemu-{stem}-{i}"),
                &seeds::server_input(device, &seq),
            )?;
        }
        // Every distinct command once, alone, for the wire target.
        let mut seen = Vec::new();
        for m in &messages {
            if !seen.contains(&(m.command(), m.fds)) && m.bytes.len() < 4096 {
                seen.push((m.command(), m.fds));
                let name = format!("qemu-{stem}-cmd{}-fds{}", m.command(), m.fds);
                write(
                    root,
                    "wire",
                    &name,
                    &seeds::wire_input(std::slice::from_ref(m)),
                )?;
            }
        }
        println!("{}: {} messages", file.display(), messages.len());
    }
    Ok(())
}

fn hostile(root: &Path) -> std::io::Result<()> {
    for (name, messages) in seeds::hostile() {
        for device in [
            DeviceKind::Doorbell,
            DeviceKind::Mtty,
            DeviceKind::Passthrough,
        ] {
            let input = seeds::server_input(device, &messages);
            write(
                root,
                "server",
                &format!("hostile-{name}-{device:?}").to_lowercase(),
                &input,
            )?;
        }
        write(
            root,
            "wire",
            &format!("hostile-{name}"),
            &seeds::wire_input(&messages),
        )?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.as_slice() {
        [cmd, root] if cmd == "hostile" => hostile(Path::new(root)),
        [cmd, root, files @ ..] if cmd == "import" && !files.is_empty() => import(
            Path::new(root),
            &files.iter().map(PathBuf::from).collect::<Vec<_>>(),
        ),
        _ => {
            eprintln!("usage: fuzz-seeds hostile CORPUS | fuzz-seeds import CORPUS FILE...");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fuzz-seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
