//! Recording what clients send, for fuzzing seeds: off by default, and then it costs one
//! branch per message. With `MDEV_RECORD_DIR=DIR` in a server's environment (or
//! [`DeviceServer::record_to`](super::DeviceServer::record_to)), every connection appends each
//! message it receives to its own file `DIR/PROGRAM_DEVICE_pidP_connN.vfu`.
//!
//! The file is a sequence of records, one per message, in the order received:
//!
//! | bytes | what |
//! | --- | --- |
//! | 1 | number of fds that came with the message |
//! | 4 | length `n` of the message (little endian), header included |
//! | `n` | the message as it was on the wire: 16-byte header, then the payload |
//!
//! Records are written as whole messages are received, so a server killed mid-connection
//! leaves every message it had read on disk.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use log::warn;
use vm_memory::ByteValued;

use crate::owner::ConnectionId;
use crate::wire::Message;

/// The environment variable that turns recording on for every server of a process.
pub const RECORD_DIR_ENV: &str = "MDEV_RECORD_DIR";

/// The recording directory named by [`RECORD_DIR_ENV`], if set and not empty.
pub(crate) fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(RECORD_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Where one connection's messages go; `None` when recording is off (or its file could not
/// be created, which is logged once and costs the connection nothing else).
pub(crate) struct Recorder {
    file: Option<File>,
}

impl Recorder {
    /// A recorder for connection `id` of `device`, writing under `dir` when it is set.
    pub(crate) fn open(dir: Option<&Path>, device: &str, id: ConnectionId) -> Self {
        let Some(dir) = dir else {
            return Recorder { file: None };
        };
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect()
        };
        let program = std::env::args_os()
            .next()
            .as_deref()
            .map(Path::new)
            .and_then(Path::file_name)
            .map(|n| clean(&n.to_string_lossy()))
            .unwrap_or_default();
        let conn: String = id
            .to_string()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let name = format!(
            "{program}_{}_pid{}_{conn}.vfu",
            clean(device),
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| warn!("recording to {} failed: {e}", path.display()))
            .ok();
        Recorder { file }
    }

    /// Appends `msg` as received. A failed write stops the recording, not the connection.
    pub(crate) fn message(&mut self, msg: &Message) {
        let Some(file) = &mut self.file else { return };
        let len = msg.header.as_slice().len() + msg.payload.len();
        let fds = u8::try_from(msg.fds.len()).unwrap_or(u8::MAX);
        let mut record = Vec::with_capacity(5 + len);
        record.push(fds);
        record.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        record.extend_from_slice(msg.header.as_slice());
        record.extend_from_slice(&msg.payload);
        if let Err(e) = file.write_all(&record) {
            warn!("recording stopped: {e}");
            self.file = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    #[test]
    fn a_recording_holds_each_message_with_its_fd_count() {
        let dir = std::env::temp_dir().join(format!("mdev-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Recorder::open(Some(&dir), "dev 1:2", ConnectionId(7));
        let msg = Message {
            header: Header {
                message_id: 3,
                command: 9,
                message_size: 20,
                flags: 0,
                error: 0,
            },
            payload: vec![1, 2, 3, 4],
            fds: vec![],
        };
        r.message(&msg);
        r.message(&msg);
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1);
        let bytes = std::fs::read(files[0].as_ref().unwrap().path()).unwrap();
        assert_eq!(bytes.len(), 2 * (5 + 20));
        assert_eq!(&bytes[..5], &[0, 20, 0, 0, 0]);
        assert_eq!(&bytes[5..7], &[3, 0], "the header as sent");
        assert_eq!(&bytes[21..25], &[1, 2, 3, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut off = Recorder::open(None, "dev", ConnectionId(1));
        off.message(&msg);
        assert!(off.file.is_none());
    }
}
