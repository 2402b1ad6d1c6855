//! Receiving messages: `recvmsg` with fd passing, bounds on how long a begun message may take,
//! and the server's buffered [`MessageReader`] (one receive for each message, or fewer).
//!
//! How fds travel on a UNIX stream socket decides how they are matched to messages: the
//! kernel ends a `recvmsg` right after the data of a `sendmsg` that carried fds, so the fds a
//! receive returns belong to the message its last byte is part of. A client that sends each
//! message with one `sendmsg` (QEMU does) gets exactly its fds back; one that packs several
//! messages into one `sendmsg` sees its fds on the last of them (and an error reply where
//! they were missing) — never a crash, a leak or a desynchronised stream.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vm_memory::ByteValued;

use super::{Header, Message, WireError, HEADER_SIZE, MAX_MESSAGE_SIZE, MAX_MSG_FDS};

/// Most fds the kernel passes with one `sendmsg` (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// Space for the control message of one `recvmsg`: room for every fd a peer can attach, so
/// that a message with more than [`MAX_MSG_FDS`] is received whole, refused, and its fds
/// closed. Should the control data still be cut (`MSG_CTRUNC`), the fds that fitted are
/// installed in this process all the same and are closed too.
const CMSG_SPACE: usize = 16 + SCM_MAX_FD * std::mem::size_of::<RawFd>() + 4;

/// Aligned storage for a control message.
#[repr(C, align(8))]
struct CmsgBuffer([u8; CMSG_SPACE]);

/// What one `recvmsg` delivered.
struct Received {
    /// Bytes read into the buffer (0 at end of stream).
    bytes: usize,
    /// The control message was cut: the peer sent more fds than [`MAX_MSG_FDS`].
    truncated: bool,
}

/// Receives into `buf` with one `recvmsg`, appending every fd the kernel installed to `fds`,
/// also when the control message was truncated (those fds are ours to close, and `fds` owns
/// them now).
fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<File>) -> io::Result<Received> {
    recv_with_fds_flags(sock, buf, fds, 0)
}

/// [`recv_with_fds`] with extra `recvmsg` flags (`MSG_DONTWAIT` to poll).
fn recv_with_fds_flags(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<File>,
    flags: libc::c_int,
) -> io::Result<Received> {
    let mut cmsg = CmsgBuffer([0; CMSG_SPACE]);
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty header.
        let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = cmsg.0.as_mut_ptr().cast();
        hdr.msg_controllen = CMSG_SPACE as _;
        // SAFETY: `hdr` points at one iovec covering `buf` and at `cmsg`, both live and
        // writable for the whole call; the lengths given are theirs.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut hdr, libc::MSG_CMSG_CLOEXEC | flags) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        take_fds(&hdr, fds);
        return Ok(Received {
            bytes: usize::try_from(n).unwrap_or(0),
            truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
        });
    }
}

/// Takes ownership of every fd passed with `SCM_RIGHTS` in the control data `hdr` describes.
fn take_fds(hdr: &libc::msghdr, fds: &mut Vec<File>) {
    // SAFETY: `hdr` was filled in by a successful recvmsg; its control pointer and length
    // describe the initialised part of our control buffer, which the CMSG_* macros walk
    // without leaving it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(hdr) };
    while !c.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a header lying wholly
        // inside the control buffer.
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: computing the data offset of a header inside the buffer.
            let data = unsafe { libc::CMSG_DATA(c) };
            let head = data as usize - c as usize;
            #[allow(clippy::unnecessary_cast)] // cmsg_len is not usize on every libc
            let count = (len as usize).saturating_sub(head) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the kernel wrote `count` fds after the header (cmsg_len covers
                // them); the read is unaligned-safe.
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                if fd >= 0 {
                    // SAFETY: the kernel just installed `fd` in our table for us; nothing
                    // else owns it.
                    fds.push(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        // SAFETY: `c` is a header inside the buffer `hdr` describes.
        c = unsafe { libc::CMSG_NXTHDR(hdr, c) };
    }
}

/// How long a message may take to arrive.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// The first byte must arrive by then (`None`: a connection may idle between
    /// messages for as long as it likes).
    pub first_byte: Option<Instant>,
    /// Once a message has started, the rest must follow within this time.
    pub rest: Duration,
}

impl Deadlines {
    /// Idle as long as the peer likes, then `rest` for the message once it has begun.
    pub fn idle_then(rest: Duration) -> Self {
        Deadlines {
            first_byte: None,
            rest,
        }
    }
}

/// Waits until `sock` is readable or `deadline` passes.
fn wait_readable(sock: &UnixStream, deadline: Instant) -> Result<(), WireError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WireError::TimedOut);
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd that outlives the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(());
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(WireError::Io(e));
            }
        }
    }
}

/// Where a message being received stands: whether any byte of it has come, and by when the
/// rest must come (`None`: no bound).
#[derive(Default)]
struct Progress {
    started: bool,
    rest_by: Option<Instant>,
}

impl Progress {
    /// The first byte of a message is here: the rest is due within `deadlines.rest`.
    fn begin(&mut self, deadlines: &Deadlines) {
        self.started = true;
        self.rest_by = Instant::now().checked_add(deadlines.rest);
    }
}

/// Fills `buf` from the stream. Before the message's first byte the wait is bounded by
/// `deadlines.first_byte`; once any byte has come, the rest must come within
/// `deadlines.rest`.
fn recv_exact(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<File>,
    deadlines: &Deadlines,
    progress: &mut Progress,
    total: usize,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        let bound = if progress.started {
            progress.rest_by
        } else {
            deadlines.first_byte
        };
        if let Some(by) = bound {
            wait_readable(sock, by)?;
        }
        let r = recv_with_fds(sock, &mut buf[got..], fds).map_err(WireError::Io)?;
        if r.truncated {
            // More fds than we accept: the kernel cut the rest; the ones it installed are
            // in `fds` and close when the caller drops them.
            return Err(WireError::TooManyFds(fds.len() + 1));
        }
        if r.bytes == 0 {
            return Err(if progress.started {
                WireError::Truncated { got, want: total }
            } else {
                WireError::Closed
            });
        }
        if !progress.started {
            progress.begin(deadlines);
        }
        got += r.bytes;
    }
    Ok(())
}

/// Reads one whole message. A header whose size is out of bounds is [`WireError::BadSize`]:
/// the stream cannot be resynchronised and the caller should reply and close. A message that
/// does not arrive within `deadlines` is [`WireError::TimedOut`].
pub fn read_message_within(sock: &UnixStream, deadlines: &Deadlines) -> Result<Message, WireError> {
    let mut header = Header::default();
    let mut fds = Vec::new();
    let mut progress = Progress::default();
    recv_exact(
        sock,
        header.as_mut_slice(),
        &mut fds,
        deadlines,
        &mut progress,
        HEADER_SIZE,
    )?;
    let size = header.message_size;
    if (size as usize) < HEADER_SIZE || size > MAX_MESSAGE_SIZE {
        return Err(WireError::BadSize(size));
    }
    let mut payload = vec![0u8; size as usize - HEADER_SIZE];
    recv_exact(
        sock,
        &mut payload,
        &mut fds,
        deadlines,
        &mut progress,
        size as usize,
    )?;
    if fds.len() > MAX_MSG_FDS as usize {
        return Err(WireError::TooManyFds(fds.len()));
    }
    Ok(Message {
        header,
        payload,
        fds,
    })
}

/// Reads one whole message, waiting as long as it takes (a client's own tool; the server
/// bounds partial messages with [`read_message_within`]).
pub fn read_message(sock: &UnixStream) -> Result<Message, WireError> {
    read_message_within(sock, &Deadlines::idle_then(Duration::MAX))
}

/// Bytes a [`MessageReader`] asks the kernel for at once: many small messages, or the start of
/// a large one.
const READ_CHUNK: usize = 64 * 1024;

/// The server side of a connection's byte stream: buffered, so that a message usually costs
/// one `recvmsg` (pipelined posted writes cost less than one each), with every fd matched to
/// its message and every bound of [`read_message_within`] kept.
#[derive(Debug)]
pub struct MessageReader {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// One past the last byte received.
    end: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// Fds received, each batch with the stream offset of the last byte of the receive that
    /// brought it.
    fds: VecDeque<(u64, Vec<File>)>,
}

impl Default for MessageReader {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageReader {
    /// An empty reader.
    pub fn new() -> Self {
        MessageReader {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            base: 0,
            fds: VecDeque::new(),
        }
    }

    /// Empties the reader for a new stream (its buffer is kept).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.base = 0;
        self.fds.clear();
        if self.buf.len() > READ_CHUNK {
            self.buf = vec![0; READ_CHUNK];
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The next whole message from `sock`, within `deadlines`. After an error the stream is
    /// not to be read again.
    pub fn next(&mut self, sock: &UnixStream, deadlines: &Deadlines) -> Result<Message, WireError> {
        self.next_polling(sock, deadlines, None)
    }

    /// [`MessageReader::next`], polling first: until `poll_until` (if given), while no byte
    /// of the next message has come, the socket is read without blocking, again and again,
    /// so that a request arriving in that time is taken without the thread being put to
    /// sleep and woken. Then (or once a message has begun) it waits as `next` does. A
    /// message that arrives while polling costs one successful receive, as in `next`.
    pub fn next_polling(
        &mut self,
        sock: &UnixStream,
        deadlines: &Deadlines,
        poll_until: Option<Instant>,
    ) -> Result<Message, WireError> {
        let mut progress = Progress::default();
        if self.buffered() > 0 {
            progress.begin(deadlines);
        }
        loop {
            if let Some(msg) = self.take_message()? {
                return Ok(msg);
            }
            let polling = !progress.started && poll_until.is_some_and(|t| Instant::now() < t);
            let bound = if progress.started {
                progress.rest_by
            } else {
                deadlines.first_byte
            };
            self.make_room()?;
            let mut fds = Vec::new();
            // A bounded wait first tries without waiting: the bytes are usually there
            // already, and then no `poll` is needed.
            let try_first = polling || bound.is_some();
            let flags = if try_first { libc::MSG_DONTWAIT } else { 0 };
            let r = match recv_with_fds_flags(sock, &mut self.buf[self.end..], &mut fds, flags) {
                Ok(r) => r,
                Err(e) if try_first && e.kind() == io::ErrorKind::WouldBlock => {
                    if polling {
                        if deadlines.first_byte.is_some_and(|t| Instant::now() >= t) {
                            return Err(WireError::TimedOut);
                        }
                        // Let whatever else wants this CPU run (the client, when it shares
                        // it) rather than spin against it.
                        std::thread::yield_now();
                    } else if let Some(by) = bound {
                        wait_readable(sock, by)?;
                    }
                    continue;
                }
                Err(e) => return Err(WireError::Io(e)),
            };
            if r.truncated {
                return Err(WireError::TooManyFds(fds.len() + 1));
            }
            if r.bytes == 0 {
                return Err(if progress.started {
                    WireError::Truncated {
                        got: self.buffered(),
                        want: self.wanted(),
                    }
                } else {
                    WireError::Closed
                });
            }
            self.end += r.bytes;
            if !fds.is_empty() {
                let last = self.base + self.end as u64 - 1;
                self.fds.push_back((last, fds));
            }
            if !progress.started {
                progress.begin(deadlines);
            }
        }
    }

    /// The size of the message being received: its header's, or a header's.
    fn wanted(&self) -> usize {
        self.peek_header()
            .map_or(HEADER_SIZE, |h| h.message_size as usize)
    }

    fn peek_header(&self) -> Option<Header> {
        if self.buffered() < HEADER_SIZE {
            return None;
        }
        let bytes = self.buf.get(self.start..self.start + HEADER_SIZE)?;
        // Copied, not referenced: a message may start at any byte offset of the buffer.
        let mut header = Header::default();
        header.as_mut_slice().copy_from_slice(bytes);
        Some(header)
    }

    /// Hands out the first buffered message if it is whole.
    fn take_message(&mut self) -> Result<Option<Message>, WireError> {
        let Some(header) = self.peek_header() else {
            return Ok(None);
        };
        let size = header.message_size;
        if (size as usize) < HEADER_SIZE || size > MAX_MESSAGE_SIZE {
            return Err(WireError::BadSize(size));
        }
        let size = size as usize;
        if self.buffered() < size {
            return Ok(None);
        }
        let payload = self.buf[self.start + HEADER_SIZE..self.start + size].to_vec();
        let msg_end = self.base + (self.start + size) as u64;
        let mut fds = Vec::new();
        while self.fds.front().is_some_and(|(last, _)| *last < msg_end) {
            if let Some((_, batch)) = self.fds.pop_front() {
                fds.extend(batch);
            }
        }
        self.start += size;
        if self.start == self.end {
            self.base += self.end as u64;
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_CHUNK {
                // A large message passed: give the memory back.
                self.buf = vec![0; READ_CHUNK];
            }
        }
        if fds.len() > MAX_MSG_FDS as usize {
            return Err(WireError::TooManyFds(fds.len()));
        }
        Ok(Some(Message {
            header,
            payload,
            fds,
        }))
    }

    /// Makes room after `end` for the rest of the message being received (at least some
    /// room when its size is not known yet).
    fn make_room(&mut self) -> Result<(), WireError> {
        let want = self.wanted().max(HEADER_SIZE);
        if self.start > 0 && self.buf.len() - self.end < want.saturating_sub(self.buffered()).max(1)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            // Bounded: `take_message` refused any size above MAX_MESSAGE_SIZE already.
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            return Err(WireError::BadSize(u32::try_from(want).unwrap_or(u32::MAX)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::send;

    fn header(id: u16, payload: usize) -> Header {
        Header {
            message_id: id,
            command: 9,
            message_size: (HEADER_SIZE + payload) as u32,
            ..Default::default()
        }
    }

    fn memfd() -> File {
        File::from(
            nix::sys::memfd::memfd_create(c"reader", nix::sys::memfd::MemFdCreateFlag::empty())
                .unwrap(),
        )
    }

    #[test]
    fn pipelined_messages_of_any_size_come_out_whole_with_their_own_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd();
        // Odd sizes put later messages at unaligned buffer offsets; some are larger than a
        // read chunk; every third carries fds.
        let sizes: Vec<usize> = (0..200)
            .map(|i| match i % 7 {
                0 => 0,
                3 => READ_CHUNK + 1000 + i,
                _ => (i * 13) % 97,
            })
            .collect();
        let writer = {
            let sizes = sizes.clone();
            let raw = fd.as_raw_fd();
            std::thread::spawn(move || {
                for (i, &n) in sizes.iter().enumerate() {
                    let h = header(i as u16, n);
                    let body = vec![i as u8; n];
                    let fds: Vec<RawFd> = if i % 3 == 0 {
                        vec![raw; 1 + i % 2]
                    } else {
                        vec![]
                    };
                    send(&a, &[h.as_slice(), &body], &fds).unwrap();
                }
            })
        };
        let mut reader = MessageReader::new();
        let limits = Deadlines::idle_then(Duration::from_secs(10));
        for (i, &n) in sizes.iter().enumerate() {
            let m = reader.next(&b, &limits).unwrap();
            assert_eq!(m.header.message_id, i as u16);
            assert_eq!(m.payload.len(), n);
            assert!(m.payload.iter().all(|&x| x == i as u8));
            let want = if i % 3 == 0 { 1 + i % 2 } else { 0 };
            assert_eq!(m.fds.len(), want, "message {i}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_message_begun_and_not_finished_times_out_in_the_reader_too() {
        let (a, b) = UnixStream::pair().unwrap();
        let h = header(1, 10);
        send(&a, &[h.as_slice(), &[0u8; 4]], &[]).unwrap();
        let mut reader = MessageReader::new();
        let limits = Deadlines::idle_then(Duration::from_millis(50));
        assert!(matches!(reader.next(&b, &limits), Err(WireError::TimedOut)));
        let big = Header {
            message_size: MAX_MESSAGE_SIZE + 1,
            ..h
        };
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, &[big.as_slice()], &[]).unwrap();
        assert!(matches!(
            MessageReader::new().next(&b, &limits),
            Err(WireError::BadSize(_))
        ));
    }
}
