//! One viewer's thread: waits on its socket and its wake-up eventfd, feeds what the viewer
//! sends into its [`Session`], and answers its update requests from the latest picture.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;

use super::store::FrameStore;
use super::VncConfig;
use crate::rfb::{Session, SessionError};

/// How long a viewer arriving after an idle spell waits for a fresh capture.
const FRESH_CAPTURE_WAIT: Duration = Duration::from_secs(2);

/// Why a viewer's connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The viewer broke the protocol (or cannot follow the display).
    #[error(transparent)]
    Protocol(#[from] SessionError),
    /// No complete handshake in time.
    #[error("no handshake within {0:?}")]
    HandshakeTimeout(Duration),
    /// The viewer did not take an update within the write timeout.
    #[error("the viewer did not take an update within {0:?}")]
    Stalled(Duration),
}

/// What a viewer was sent, for the log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Sent {
    pub updates: u64,
    pub bytes: u64,
}

/// A viewer's connection, registered in the store as `id`; unregistered when dropped.
pub(crate) struct Viewer {
    pub id: u64,
    pub peer: SocketAddr,
    pub stream: TcpStream,
    pub waker: Arc<EventFd>,
    pub polls_at_start: u64,
    pub store: Arc<FrameStore>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.store.unregister(self.id);
    }
}

impl Viewer {
    /// Serves the viewer until it leaves (`Ok`), breaks something (`Err`) or the store closes.
    pub fn serve(&mut self, config: &VncConfig, sent: &mut Sent) -> Result<(), ConnectionError> {
        self.stream.set_nodelay(true)?;
        self.store
            .wait_poll_after(self.polls_at_start, FRESH_CAPTURE_WAIT);
        let mut session = Session::new(&config.name);
        let handshake_deadline = Instant::now() + config.handshake_timeout;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let Ok(picture) = self.store.latest() else {
                return Ok(());
            };
            if session.update(&picture)? {
                sent.updates += 1;
            }
            drop(picture);
            self.flush(&mut session, config, sent)?;

            let timeout = if session.is_ready() {
                PollTimeout::NONE
            } else {
                let left = handshake_deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ConnectionError::HandshakeTimeout(config.handshake_timeout));
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            };
            let (socket_ready, woken) = {
                let mut fds = [
                    PollFd::new(self.stream.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.waker.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if woken {
                // Non-blocking: a wake-up already consumed reads as EAGAIN.
                let _ = self.waker.read();
            }
            if socket_ready {
                let n = match self.stream.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.into()),
                };
                let Ok(picture) = self.store.latest() else {
                    return Ok(());
                };
                let received = session.receive(&buf[..n], &picture);
                drop(picture);
                // Replies queued before an error (a refusal's reason) still go out.
                self.flush(&mut session, config, sent)?;
                received?;
            }
        }
    }

    fn flush(
        &mut self,
        session: &mut Session,
        config: &VncConfig,
        sent: &mut Sent,
    ) -> Result<(), ConnectionError> {
        let out = session.output();
        if out.is_empty() {
            return Ok(());
        }
        // The whole update within the write timeout: a viewer trickling its reads cannot
        // hold this thread (and the picture it encodes from) for longer.
        let deadline = Instant::now() + config.write_timeout;
        let mut rest = out;
        while !rest.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnectionError::Stalled(config.write_timeout));
            }
            self.stream.set_write_timeout(Some(left))?;
            match self.stream.write(rest) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ConnectionError::Stalled(config.write_timeout))
                }
                Err(e) => return Err(e.into()),
            }
        }
        sent.bytes += out.len() as u64;
        session.clear_output();
        Ok(())
    }
}
