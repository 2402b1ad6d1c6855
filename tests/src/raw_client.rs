//! A raw vfio-user client that can send anything, including messages no real client would,
//! and read replies with a timeout so a server that hangs fails the test instead of it.

use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use mdev::wire::{self, Header, HEADER_SIZE};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use vm_memory::ByteValued;

/// Room for this many fds with each `recvmsg` of [`RawClient::request_receiving_fds`]; more
/// fail the test (the kernel would have dropped them).
const FD_ROOM: usize = 32;

/// A reply as received.
#[derive(Debug)]
pub struct Reply {
    /// Its header.
    pub header: Header,
    /// The bytes after the header.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The errno of an error reply, or `None` for a success.
    pub fn errno(&self) -> Option<u32> {
        (self.header.flags & wire::flags::ERROR != 0).then_some(self.header.error)
    }
}

/// A raw client connection.
pub struct RawClient {
    /// The socket.
    pub sock: UnixStream,
    next_id: u16,
}

impl RawClient {
    /// Connects without negotiating.
    pub fn connect(path: &Path) -> Self {
        let sock = UnixStream::connect(path).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient { sock, next_id: 0 }
    }

    /// Connects and negotiates the version.
    pub fn open(path: &Path) -> Self {
        let mut c = Self::connect(path);
        let r = c.version(b"{\"capabilities\":{\"max_msg_fds\":8}}\0");
        assert_eq!(r.errno(), None, "version refused");
        c
    }

    /// Sends VERSION with `caps` (raw bytes, NUL included or not).
    pub fn version(&mut self, caps: &[u8]) -> Reply {
        let v = wire::VersionMsg { major: 0, minor: 1 };
        let mut payload = v.as_slice().to_vec();
        payload.extend_from_slice(caps);
        self.request(wire::Command::Version as u16, 0, &payload, &[])
    }

    /// Sends a command with `payload` and `fds` and waits for its reply.
    pub fn request(&mut self, command: u16, flags: u32, payload: &[u8], fds: &[RawFd]) -> Reply {
        let id = self.send(command, flags, payload, fds);
        let r = self.read_reply().expect("reply");
        assert_eq!(r.header.message_id, id, "reply out of order");
        r
    }

    /// Sends a command and reads its reply with `recvmsg`, keeping every fd that came with
    /// it (SCM_RIGHTS): what the server handed this client, counted at the socket.
    pub fn request_receiving_fds(
        &mut self,
        command: u16,
        flags: u32,
        payload: &[u8],
    ) -> (Reply, Vec<OwnedFd>) {
        let id = self.send(command, flags, payload, &[]);
        let mut fds = Vec::new();
        let mut header = Header::default();
        self.recv_keeping_fds(header.as_mut_slice(), &mut fds);
        let mut body = vec![0u8; (header.message_size as usize).saturating_sub(HEADER_SIZE)];
        self.recv_keeping_fds(&mut body, &mut fds);
        assert_eq!(header.message_id, id, "reply out of order");
        let reply = Reply {
            header,
            payload: body,
        };
        (reply, fds)
    }

    /// Fills `buf` from the socket, collecting the fds passed along the way.
    fn recv_keeping_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) {
        let mut got = 0;
        while got < buf.len() {
            let mut cmsg = nix::cmsg_space!([RawFd; FD_ROOM]);
            let mut iov = [IoSliceMut::new(&mut buf[got..])];
            let msg = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("recvmsg");
            assert!(
                !msg.flags.contains(MsgFlags::MSG_CTRUNC),
                "more than {FD_ROOM} fds came with one read"
            );
            for c in msg.cmsgs().expect("control messages") {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: the kernel just installed each fd in our table for us; nothing
                    // else owns it.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            assert!(msg.bytes > 0, "the server closed the connection mid-reply");
            got += msg.bytes;
        }
    }

    /// Sends a command without waiting; returns its message id.
    pub fn send(&mut self, command: u16, flags: u32, payload: &[u8], fds: &[RawFd]) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let h = Header {
            message_id: id,
            command,
            message_size: (HEADER_SIZE + payload.len()) as u32,
            flags,
            error: 0,
        };
        wire::send(&self.sock, &[h.as_slice(), payload], fds).expect("send");
        id
    }

    /// Writes raw bytes to the socket.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("send raw");
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub fn read_reply(&mut self) -> Option<Reply> {
        let mut h = Header::default();
        if self.sock.read_exact(h.as_mut_slice()).is_err() {
            return None;
        }
        let mut payload = vec![0u8; (h.message_size as usize).saturating_sub(HEADER_SIZE)];
        self.sock.read_exact(&mut payload).ok()?;
        Some(Reply { header: h, payload })
    }

    /// The next reply: `Ok(Some)` a reply, `Ok(None)` the server closed the connection,
    /// `Err` nothing within the read timeout (a hung server) or a broken reply.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, String> {
        let closed = |e: &std::io::Error| {
            e.kind() == std::io::ErrorKind::UnexpectedEof
                || e.raw_os_error() == Some(libc::ECONNRESET)
        };
        let mut h = Header::default();
        if let Err(e) = self.sock.read_exact(h.as_mut_slice()) {
            return if closed(&e) {
                Ok(None)
            } else {
                Err(format!("no reply: {e}"))
            };
        }
        let mut payload = vec![0u8; (h.message_size as usize).saturating_sub(HEADER_SIZE)];
        self.sock
            .read_exact(&mut payload)
            .map_err(|e| format!("reply body: {e}"))?;
        Ok(Some(Reply { header: h, payload }))
    }

    /// True when the server has closed its end (a read returns end of stream).
    pub fn closed_by_server(&mut self) -> bool {
        let mut b = [0u8; 1];
        // A server that closes with our bytes still unread makes the read fail with ECONNRESET.
        match self.sock.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.raw_os_error() == Some(libc::ECONNRESET),
            Ok(_) => false,
        }
    }

    /// A 4-byte REGION_READ.
    pub fn read32(&mut self, region: u32, offset: u64) -> Result<u32, u32> {
        let req = wire::RegionAccessMsg {
            offset,
            region,
            count: 4,
        };
        let r = self.request(wire::Command::RegionRead as u16, 0, req.as_slice(), &[]);
        match r.errno() {
            Some(e) => Err(e),
            None => Ok(u32::from_le_bytes(r.payload[16..20].try_into().unwrap())),
        }
    }

    /// A 4-byte REGION_WRITE.
    pub fn write32(&mut self, region: u32, offset: u64, value: u32) -> Result<(), u32> {
        let req = wire::RegionAccessMsg {
            offset,
            region,
            count: 4,
        };
        let mut p = req.as_slice().to_vec();
        p.extend_from_slice(&value.to_le_bytes());
        let r = self.request(wire::Command::RegionWrite as u16, 0, &p, &[]);
        r.errno().map_or(Ok(()), Err)
    }

    /// The raw fd, for tests that pass it around.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
