//! The server: a listener thread that admits viewers (one thread each) and a poller thread
//! that captures frames into the store while anyone watches. In a confined process
//! ([`mdev::confine`]) each thread enters its kind first thing (`vnc-listener`,
//! `vnc-session`, `vnc-poller`); elsewhere (tests, benches) that does nothing.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdev::confine::{self, ThreadKind};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::store::FrameStore;
use super::viewer::{Sent, Viewer};
use super::{FrameSource, VncConfig, VncError};
use crate::client::ClientError;
use crate::rfb::{Picture, Successor};

/// A running VNC server. Dropping it (or [`VncServer::shutdown`]) stops it and disconnects
/// every viewer.
pub struct VncServer {
    addr: SocketAddr,
    store: Arc<FrameStore>,
    stop: Arc<EventFd>,
    acceptor: Option<JoinHandle<()>>,
    poller: Option<JoinHandle<Result<(), ClientError>>>,
}

fn eventfd() -> Result<EventFd, VncError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| VncError::Setup(e.into()))
}

impl VncServer {
    /// Serves `source` to viewers connecting to `listener`. The first frame is captured
    /// before this returns (a source that cannot be read fails here).
    pub fn start(
        mut source: impl FrameSource,
        listener: TcpListener,
        config: VncConfig,
    ) -> Result<Self, VncError> {
        let addr = listener.local_addr().map_err(VncError::Setup)?;
        let mut bytes = Vec::new();
        let mode = source.capture(&mut bytes)?;
        let store = Arc::new(FrameStore::new(Picture::first(mode, bytes)));
        let stop = Arc::new(eventfd()?);
        let poller = {
            let store = store.clone();
            let interval = Duration::from_secs(1) / config.fps.max(1);
            std::thread::Builder::new()
                .name("vnc-poller".into())
                .spawn(move || {
                    confine::enter(ThreadKind::VncPoller);
                    poll_frames(source, &store, interval)
                })
                .map_err(VncError::Setup)?
        };
        let acceptor = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::Builder::new()
                .name("vnc-listener".into())
                .spawn(move || {
                    confine::enter(ThreadKind::VncListener);
                    accept_viewers(&listener, &store, &stop, &config)
                })
                .map_err(VncError::Setup)?
        };
        log::info!("vnc: serving on {addr} (view-only)");
        Ok(VncServer {
            addr,
            store,
            stop,
            acceptor: Some(acceptor),
            poller: Some(poller),
        })
    }

    /// The address viewers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Viewers connected now.
    pub fn viewers(&self) -> usize {
        self.store.viewers()
    }

    /// Serves until the display can no longer be read (the instance went away): returns that
    /// error. Viewers are disconnected first.
    pub fn wait(mut self) -> Result<(), VncError> {
        let result = match self.poller.take().map(JoinHandle::join) {
            Some(Ok(r)) => r.map_err(VncError::from),
            Some(Err(_)) => Err(VncError::Setup(io::Error::other("the poller panicked"))),
            None => Ok(()),
        };
        self.stop_threads();
        result
    }

    /// Stops serving: the listener closes and every viewer is disconnected.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.store.close();
        let _ = self.stop.write(1);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VncServer {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// How often an idle poller (no viewer connected) looks whether the device asked it to let go.
const RELEASE_CHECK: Duration = Duration::from_millis(250);

/// The poller: while any viewer is connected, captures a frame every `interval` and publishes
/// it when it differs from the latest picture. Ends when the store closes, with the error of
/// a capture that failed, or when the device asks its viewers to let go (closing the store in
/// both cases).
fn poll_frames(
    mut source: impl FrameSource,
    store: &FrameStore,
    interval: Duration,
) -> Result<(), ClientError> {
    let mut buffer: Option<Vec<u8>> = None;
    let mut replaced: Option<Arc<Picture>> = None;
    while store.wait_for_viewers(RELEASE_CHECK, || source.release_requested())
        && !source.release_requested()
    {
        let started = Instant::now();
        // Reuse the memory of the last unchanged capture, or of the picture replaced last
        // time once no viewer holds it any more.
        let mut bytes = buffer
            .take()
            .or_else(|| {
                let old = Arc::try_unwrap(replaced.take()?).ok()?;
                Some(old.into_bytes())
            })
            .unwrap_or_default();
        let mode = match source.capture(&mut bytes) {
            Ok(mode) => mode,
            Err(e) => {
                log::error!("vnc: the display cannot be read any more: {e}");
                store.close();
                return Err(e);
            }
        };
        let Ok(current) = store.latest() else {
            break;
        };
        match current.successor(mode, bytes) {
            Successor::Changed(next) => {
                if next.grid() != current.grid()
                    || next.is_scanned_out() != current.is_scanned_out()
                {
                    log::info!(
                        "vnc: display now {}x{}{}",
                        next.width(),
                        next.height(),
                        if next.is_scanned_out() {
                            ""
                        } else {
                            " (nothing scanned out: black)"
                        }
                    );
                }
                drop(current);
                replaced = Some(store.publish(next));
            }
            Successor::Unchanged(b) => buffer = Some(b),
        }
        store.record_poll();
        if !store.sleep_until(started + interval) {
            break;
        }
    }
    if source.release_requested() {
        log::info!("vnc: the instance is being removed: the viewer lets it go");
        store.close();
    }
    Ok(())
}

/// The listener: admits viewers (up to the limit), each on a thread of its own, until `stop`
/// is signalled.
fn accept_viewers(
    listener: &TcpListener,
    store: &Arc<FrameStore>,
    stop: &EventFd,
    config: &VncConfig,
) {
    let mut seq = 0u64;
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log::error!("vnc: waiting for viewers: {e}");
                return;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) || store.is_closed() {
            return;
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                // Out of fds or the like: back off instead of spinning.
                log::warn!("vnc: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let admitted = (|| {
            let waker =
                Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).ok()?);
            let (id, polls) =
                store.register(waker.clone(), stream.try_clone().ok()?, config.max_viewers)?;
            Some(Viewer {
                id,
                peer,
                stream,
                waker,
                polls_at_start: polls,
                store: store.clone(),
            })
        })();
        let Some(mut viewer) = admitted else {
            log::warn!(
                "vnc: viewer {peer} refused: {} viewers already (the limit)",
                store.viewers()
            );
            continue;
        };
        seq += 1;
        log::info!("vnc: viewer {peer} connected ({} now)", store.viewers());
        let config = config.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vnc-viewer-{seq}"))
            .spawn(move || {
                confine::enter(ThreadKind::VncSession);
                let mut sent = Sent::default();
                let result = viewer.serve(&config, &mut sent);
                let how = match &result {
                    Ok(()) => "left".to_string(),
                    Err(e) => format!("dropped: {e}"),
                };
                log::info!(
                    "vnc: viewer {} {how} ({} updates, {} bytes sent)",
                    viewer.peer,
                    sent.updates,
                    sent.bytes
                );
            });
        if let Err(e) = spawned {
            log::warn!("vnc: no thread for viewer {peer}: {e}");
        }
    }
}
