//! `wire`: arbitrary bytes, sent with an arbitrary number of fds through a socket in chunks
//! of an arbitrary size, framed by the server's [`MessageReader`] and parsed into typed
//! [`Request`]s; then each message parsed again on its own, with its own fd count.
//!
//! Input: `[fd byte][chunk byte][stream...]`. The fd byte: bits 0–4 the fd count (0–31, more
//! than [`MAX_MSG_FDS`] allowed), bits 5–6 the [`FdKind`], bit 7 sends them with the last
//! chunk instead of the first. The chunk byte: 0 sends the stream in one piece, n sends
//! pieces of n × 16 bytes (fewer, larger ones for a long stream).
//!
//! Invariants: nothing panics; every framed message has the size its header says (within
//! [`MAX_MESSAGE_SIZE`]) and at most [`MAX_MSG_FDS`] fds; every accepted request encodes
//! and parses back to itself; no allocation exceeds [`MAX_MESSAGE_SIZE`]; every fd received
//! is closed once the messages are dropped.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mdev::irq::IrqData;
use mdev::wire::{
    self, Deadlines, Header, Message, MessageReader, Request, WireError, HEADER_SIZE,
    MAX_MESSAGE_SIZE, MAX_MSG_FDS,
};
use vm_memory::ByteValued;

use crate::fds::{self, FdKind};

/// Longest stream sent (it must fit the socket's buffer: there is no reader thread).
const MAX_STREAM: usize = 128 * 1024;
/// Most pieces the stream is sent in.
const MAX_CHUNKS: usize = 64;

/// Runs one input.
pub fn run(data: &[u8]) {
    let [fd_byte, chunk_byte, stream @ ..] = data else {
        return;
    };
    let stream = &stream[..stream.len().min(MAX_STREAM)];
    let fd_count = usize::from(fd_byte & 0x1f);
    let kind = FdKind::from_bits(fd_byte >> 5);
    let fds_last = fd_byte & 0x80 != 0;
    let pool = fds::pool();
    let before = fds::open_count();
    crate::alloc::reset_peak();

    framed(
        stream,
        *chunk_byte,
        &vec![pool.raw(kind); fd_count],
        fds_last,
    );
    single(stream, pool.owned(kind, fd_count));

    let peak = crate::alloc::peak();
    assert!(
        peak <= MAX_MESSAGE_SIZE as usize,
        "an allocation of {peak} bytes, more than the largest message"
    );
    let after = fds::open_count();
    assert_eq!(before, after, "fds left open: {:?}", fds::describe_open());
}

/// The stream through a socket and the server's reader.
fn framed(stream: &[u8], chunk_byte: u8, fds: &[RawFd], fds_last: bool) {
    let (tx, rx) = UnixStream::pair().expect("socketpair");
    // At most MAX_CHUNKS sends: each is a buffer entry of its own in the socket.
    let chunk = if chunk_byte == 0 {
        stream.len().max(1)
    } else {
        (usize::from(chunk_byte) * 16).max(stream.len().div_ceil(MAX_CHUNKS))
    };
    let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
    let with_fds = if fds_last {
        chunks.len().saturating_sub(1)
    } else {
        0
    };
    for (i, c) in chunks.iter().enumerate() {
        let attach: &[RawFd] = if i == with_fds { fds } else { &[] };
        wire::send(&tx, &[c], attach).expect("send into the socket buffer");
    }
    if chunks.is_empty() && !fds.is_empty() {
        // Fds alone cannot travel without a byte.
        (&tx).write_all(&[0]).expect("send");
    }
    drop(tx);
    let mut reader = MessageReader::new();
    let deadlines = Deadlines::idle_then(Duration::from_secs(1));
    let mut fds_seen = 0;
    loop {
        match reader.next(&rx, &deadlines) {
            Ok(msg) => {
                let size = msg.header.message_size as usize;
                assert!((HEADER_SIZE..=MAX_MESSAGE_SIZE as usize).contains(&size));
                assert_eq!(
                    HEADER_SIZE + msg.payload.len(),
                    size,
                    "message as long as it says"
                );
                assert!(msg.fds.len() <= MAX_MSG_FDS as usize);
                fds_seen += msg.fds.len();
                parse_and_round_trip(msg);
            }
            Err(WireError::Closed | WireError::Truncated { .. }) => break,
            Err(WireError::BadSize(s)) => {
                assert!(
                    (s as usize) < HEADER_SIZE || s > MAX_MESSAGE_SIZE,
                    "size {s} refused"
                );
                break;
            }
            Err(WireError::TooManyFds(n)) => {
                assert!(n > MAX_MSG_FDS as usize, "{n} fds refused");
                break;
            }
            Err(e) => panic!("unexpected framing error: {e}"),
        }
    }
    assert!(fds_seen <= fds.len(), "more fds came out than went in");
}

/// The stream's first 16 bytes as a header, the rest its payload, with `fds`.
fn single(stream: &[u8], fds: Vec<File>) {
    let mut header = Header::default();
    let head = stream.len().min(HEADER_SIZE);
    header.as_mut_slice()[..head].copy_from_slice(&stream[..head]);
    let msg = Message {
        header,
        payload: stream.get(HEADER_SIZE..).unwrap_or(&[]).to_vec(),
        fds,
    };
    parse_and_round_trip(msg);
}

fn parse_and_round_trip(msg: Message) {
    let Ok(request) = Request::parse(msg) else {
        return;
    };
    let encoded = request.encode();
    let header = Header {
        message_id: 1,
        command: encoded.command as u16,
        message_size: (HEADER_SIZE + encoded.payload.len()) as u32,
        flags: 0,
        error: 0,
    };
    let again = Message {
        header,
        payload: encoded.payload,
        fds: encoded
            .fds
            .iter()
            .map(|fd| File::from(fd.as_fd().try_clone_to_owned().expect("dup")))
            .collect(),
    };
    match Request::parse(again) {
        Ok(back) => assert_eq!(
            canonical(&request),
            canonical(&back),
            "a request re-encoded parses to itself"
        ),
        Err(e) => panic!("{request:?} re-encoded is refused: {e}"),
    }
}

/// A request as comparable text: fds by count, not by number.
pub fn canonical(r: &Request) -> String {
    match r {
        Request::DmaMap(m) => format!(
            "DmaMap {:?} offset {} address {} size {} fd {}",
            m.prot,
            m.offset,
            m.address,
            m.size,
            m.fd.as_ref().map(|f| f.as_raw_fd() >= 0).is_some()
        ),
        Request::SetIrqs(req) => {
            let data = match &req.data {
                IrqData::None => String::from("none"),
                IrqData::Bool(b) => format!("{b:?}"),
                IrqData::Eventfds(f) => format!("{} eventfds", f.len()),
            };
            format!("SetIrqs {:?} {data}", req.span())
        }
        other => format!("{other:?}"),
    }
}
