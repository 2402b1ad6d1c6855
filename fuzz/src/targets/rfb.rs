//! `rfb`: what a VNC viewer sends, as arbitrary bytes, read by the RFB client-message parser
//! ([`parse_client_message`]) message after message, and fed in chunks to a whole server
//! [`Session`] (handshake, messages, ClientCutText skipped) that answers update requests
//! from a small picture, which changes size halfway.
//!
//! Input: `[chunk byte][stream...]`. The chunk byte: 0 gives the session the stream in one
//! piece, n in pieces of n bytes.
//!
//! Invariants: nothing panics; every parsed message took at least one byte and no more than
//! it was given, re-encodes to as many bytes and parses back to itself from them, and any
//! shorter prefix of it asks for more bytes; an unknown type or an overlong ClientCutText is
//! refused only when it is one; the parser never allocates more than the longest client
//! message ([`MAX_CLIENT_MESSAGE`]); a session's output per round stays within one
//! handshake plus one update of the picture.

use mdev_display::rfb::message::{
    parse_client_message, ClientMessage, MessageError, MAX_CLIENT_MESSAGE, MAX_CUT_TEXT,
};
use mdev_display::rfb::{Picture, Session, Successor};
use mdev_display::{Mode, PixelFormat};

/// Longest stream used.
const MAX_STREAM: usize = 256 * 1024;
/// The pictures the session shows: before and after the size change.
const FIRST: (u32, u32) = (64, 48);
const SECOND: (u32, u32) = (40, 70);
/// Most a session may queue in one round: the handshake's replies (with the desktop name)
/// and one update of the larger picture at 32 bits a pixel, with generous room for headers
/// and ZRLE's worst case.
const MAX_ROUND_OUTPUT: usize = 64 * 1024;

/// Runs one input.
pub fn run(data: &[u8]) {
    let [chunk_byte, stream @ ..] = data else {
        return;
    };
    let stream = &stream[..stream.len().min(MAX_STREAM)];
    parse_all(stream);
    serve(stream, usize::from(*chunk_byte));
}

/// The canonical bytes of `msg` (padding zero, flags 0 or 1, ignored fields zero).
fn encode(msg: &ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    match msg {
        ClientMessage::SetPixelFormat(pf) => {
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&pf.to_bytes());
        }
        ClientMessage::SetEncodings(list) => {
            let count = u16::try_from(list.len()).expect("at most 65535 encodings parsed");
            out.extend_from_slice(&[2, 0]);
            out.extend_from_slice(&count.to_be_bytes());
            for e in list {
                out.extend_from_slice(&e.to_be_bytes());
            }
        }
        ClientMessage::UpdateRequest { incremental, rect } => {
            out.extend_from_slice(&[3, u8::from(*incremental)]);
            for v in [rect.x, rect.y, rect.w, rect.h] {
                let v = u16::try_from(v).expect("request coordinates are 16-bit");
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        ClientMessage::Key => out.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]),
        ClientMessage::Pointer => out.extend_from_slice(&[5, 0, 0, 0, 0, 0]),
        ClientMessage::CutText { len } => {
            out.extend_from_slice(&[6, 0, 0, 0]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out
}

/// The stream as a sequence of client messages, each checked.
fn parse_all(stream: &[u8]) {
    crate::alloc::reset_peak();
    let mut rest = stream;
    loop {
        match parse_client_message(rest) {
            Ok(None) => break,
            Ok(Some((msg, used))) => {
                assert!(
                    (1..=rest.len()).contains(&used),
                    "{msg:?} took {used} of {} bytes",
                    rest.len()
                );
                let bytes = encode(&msg);
                assert_eq!(bytes.len(), used, "{msg:?} re-encodes to another length");
                assert_eq!(
                    parse_client_message(&bytes),
                    Ok(Some((msg.clone(), used))),
                    "{msg:?} does not parse back from {bytes:?}"
                );
                assert_eq!(
                    parse_client_message(&rest[..used - 1]),
                    Ok(None),
                    "{msg:?} parsed without its last byte"
                );
                // ClientCutText's text follows its header and is skipped.
                let text = match msg {
                    ClientMessage::CutText { len } => usize::try_from(len).unwrap_or(usize::MAX),
                    _ => 0,
                };
                rest = &rest[used..];
                rest = &rest[text.min(rest.len())..];
            }
            Err(MessageError::UnknownType(t)) => {
                assert_eq!(Some(&t), rest.first());
                assert!(!(0..=6).contains(&t) || t == 1, "type {t} refused");
                break;
            }
            Err(MessageError::CutTextTooLong(len)) => {
                assert_eq!(rest.first(), Some(&6));
                assert!(len > MAX_CUT_TEXT, "cut text of {len} bytes refused");
                break;
            }
            Err(e @ MessageError::BadVersion(_)) => panic!("the message parser said {e}"),
        }
    }
    let peak = crate::alloc::peak();
    assert!(
        peak <= MAX_CLIENT_MESSAGE,
        "the parser allocated {peak} bytes, more than the longest message"
    );
}

/// A picture of `size` whose pixels depend on `seed`.
fn picture_bytes(size: (u32, u32), seed: u8) -> (Mode, Vec<u8>) {
    let mode = Mode::packed(PixelFormat::Xrgb8888, size.0, size.1);
    let len = usize::try_from(size.0 * size.1 * 4).expect("a small picture");
    let bytes = (0..len)
        .map(|i| (i % 251) as u8 ^ seed)
        .collect::<Vec<u8>>();
    (mode, bytes)
}

/// The stream fed to a session in pieces of `chunk` bytes (0: at once), an update asked for
/// after each piece; the picture changes size halfway.
fn serve(stream: &[u8], chunk: usize) {
    let (mode, bytes) = picture_bytes(FIRST, 0);
    let mut picture = Picture::first(Some(mode), bytes);
    let mut session = Session::new("fuzz");
    let pieces: Vec<&[u8]> = if chunk == 0 {
        vec![stream]
    } else {
        stream.chunks(chunk).collect()
    };
    let halfway = pieces.len() / 2;
    for (i, piece) in pieces.iter().enumerate() {
        if i == halfway && i > 0 {
            let (mode, bytes) = picture_bytes(SECOND, 0x5a);
            if let Successor::Changed(next) = picture.successor(Some(mode), bytes) {
                picture = next;
            }
        }
        let received = session.receive(piece, &picture);
        let updated = received.is_ok().then(|| session.update(&picture));
        let out = session.output().len();
        assert!(
            out <= MAX_ROUND_OUTPUT,
            "a round queued {out} bytes for the viewer"
        );
        session.clear_output();
        if !matches!(updated, Some(Ok(_))) {
            break;
        }
    }
}
