//! The listening socket of a device: binding (0600, stale files replaced, a live socket never
//! stolen), accepting, and an orderly shutdown that closes every connection.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{error, info, warn};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{serve_connection, ConnectionStats};
use crate::device_set::DeviceHandle;
use crate::owner::ConnectionId;

/// Why a device could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Something that is not a socket sits at the path.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Another server is listening on the path.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ServerError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        ServerError::Io {
            context: context.into(),
            source,
        }
    }

    /// The errno for this error.
    pub fn errno(&self) -> i32 {
        match self {
            ServerError::NotASocket(_) => libc::EEXIST,
            ServerError::InUse(_) => libc::EADDRINUSE,
            ServerError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

struct Live {
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

pub(crate) struct Shared {
    pub(crate) handle: Arc<DeviceHandle>,
    live: Mutex<HashMap<ConnectionId, Live>>,
    /// Threads of connections that have ended and left `live`, not yet joined: each may still
    /// be dropping its last references (to the device among them) when it is forgotten.
    ended: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) stats: ConnectionStats,
    /// Connections served at once; more are refused (each costs a thread).
    max_connections: AtomicUsize,
    /// Milliseconds a started message (and the whole VERSION handshake) may take.
    message_timeout_ms: AtomicU64,
    /// Where connections record what they receive (off: `None`).
    record_dir: Mutex<Option<PathBuf>>,
}

impl Shared {
    pub(crate) fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms.load(Ordering::Relaxed))
    }

    /// Shuts down the socket of every live connection: each connection's thread sees the
    /// end of its stream, and its close runs as for a client that went away.
    pub(crate) fn disconnect_all(&self) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        for l in live.values() {
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The directory connections record into, if recording is on.
    pub(crate) fn record_dir(&self) -> Option<PathBuf> {
        self.record_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Called by connection `id`'s own thread as it ends: the connection leaves `live`, and
    /// its thread is kept to be joined, so that a shutdown returns only once no thread holds
    /// the device.
    pub(crate) fn forget(&self, id: ConnectionId) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut gone = live.remove(&id);
        if let Some(thread) = gone.as_mut().and_then(|l| l.thread.take()) {
            // Under the `live` lock: a shutdown finds this thread in one list or the other.
            let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            // Threads that have finished hold nothing any more: no need to keep them.
            ended.retain(|t| !t.is_finished());
            ended.push(thread);
        }
        drop(live);
        // Only now is the socket closed for good (our clone goes with the entry), and the
        // client sees the end of the stream.
        drop(gone);
    }
}

/// Connections one device serves at once by default. Each is a thread; QEMU needs one, a
/// viewer or a test a few more.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How long a client may take to finish a message it has begun, and to complete the VERSION
/// handshake after connecting. Between messages a connection may stay idle for ever. QEMU's
/// own reply timeout is 5 s by default.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// A device served on a socket. Dropping it (or [`DeviceServer::shutdown`]) stops accepting,
/// closes every connection (each one's close runs as for a client that went away) and
/// removes the socket file it created.
pub struct DeviceServer {
    path: Option<PathBuf>,
    /// Whether this server created the socket file (and removes it at shutdown).
    owns_file: bool,
    stop: EventFd,
    accept: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl DeviceServer {
    /// Binds `path` (mode 0600) and serves `handle` on it. A stale socket file left by a dead
    /// server is replaced; a socket some server still answers on is not.
    pub fn bind(path: &Path, handle: Arc<DeviceHandle>) -> Result<Self, ServerError> {
        remove_stale(path)?;
        let listener = UnixListener::bind(path)
            .map_err(|e| ServerError::io(format!("bind {}", path.display()), e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| ServerError::io(format!("chmod {}", path.display()), e))?;
        info!("{}: serving on {}", handle.name(), path.display());
        Self::start(listener, Some(path.to_path_buf()), true, handle)
    }

    /// Serves `handle` on an already-bound listening socket (systemd socket activation). The
    /// socket file belongs to whoever bound it and is not removed at shutdown.
    pub fn from_listener(
        listener: UnixListener,
        handle: Arc<DeviceHandle>,
    ) -> Result<Self, ServerError> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        match &path {
            Some(p) => info!("{}: serving on {} (passed in)", handle.name(), p.display()),
            None => info!("{}: serving on a passed-in socket", handle.name()),
        }
        Self::start(listener, path, false, handle)
    }

    fn start(
        listener: UnixListener,
        path: Option<PathBuf>,
        owns_file: bool,
        handle: Arc<DeviceHandle>,
    ) -> Result<Self, ServerError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(|e| ServerError::io("eventfd", e))?;
        let stop_clone = stop
            .try_clone()
            .map_err(|e| ServerError::io("eventfd", e))?;
        let shared = Arc::new(Shared {
            handle,
            live: Mutex::new(HashMap::new()),
            ended: Mutex::new(Vec::new()),
            max_connections: AtomicUsize::new(DEFAULT_MAX_CONNECTIONS),
            message_timeout_ms: AtomicU64::new(DEFAULT_MESSAGE_TIMEOUT.as_secs() * 1000),
            stats: ConnectionStats::default(),
            record_dir: Mutex::new(super::record::dir_from_env()),
        });
        let shared2 = shared.clone();
        let name = format!("accept-{}", shared.handle.name());
        let accept = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                crate::confine::enter(crate::confine::ThreadKind::Listener);
                accept_loop(listener, stop_clone, shared2)
            })
            .map_err(|e| ServerError::io("spawn accept thread", e))?;
        Ok(DeviceServer {
            path,
            owns_file,
            stop,
            accept: Some(accept),
            shared,
        })
    }

    /// Serves at most `n` connections at once (default [`DEFAULT_MAX_CONNECTIONS`]); a client
    /// connecting beyond that is closed at once. Connections already open are not affected.
    pub fn set_max_connections(&self, n: usize) {
        self.shared.max_connections.store(n, Ordering::Relaxed);
    }

    /// Bounds how long a begun message, and the VERSION handshake, may take (default
    /// [`DEFAULT_MESSAGE_TIMEOUT`]); a client that stalls past it is disconnected, freeing
    /// its slot. Applies to connections accepted from now on.
    pub fn set_message_timeout(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared.message_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// Records every message each connection accepted from now on receives, one file per
    /// connection in `dir` (see [`RECORD_DIR_ENV`](super::RECORD_DIR_ENV) for the format and
    /// the environment variable that sets it); `None` turns recording off.
    pub fn record_to(&self, dir: Option<PathBuf>) {
        *self
            .shared
            .record_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = dir;
    }

    /// The socket path (when the socket has one).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The device being served.
    pub fn handle(&self) -> &Arc<DeviceHandle> {
        &self.shared.handle
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Number of connections currently being served.
    pub fn connections(&self) -> usize {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Counters of this server's connections.
    pub fn stats(&self) -> &ConnectionStats {
        &self.shared.stats
    }

    /// Stops accepting, closes every connection and waits for their threads.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let live: Vec<Live> = {
            let mut map = self.shared.live.lock().unwrap_or_else(|p| p.into_inner());
            map.drain().map(|(_, l)| l).collect()
        };
        for l in &live {
            let _ = l.stream.shutdown(std::net::Shutdown::Both);
        }
        for mut l in live {
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
        // Connections that ended on their own may still be letting go of the device.
        let ended =
            std::mem::take(&mut *self.shared.ended.lock().unwrap_or_else(|p| p.into_inner()));
        for t in ended {
            let _ = t.join();
        }
        if let Some(p) = self.path.as_ref().filter(|_| self.owns_file) {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for DeviceServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ServerError::io(format!("stat {}", path.display()), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_path_buf())),
        Err(_) => {
            warn!("removing stale socket {}", path.display());
            fs::remove_file(path)
                .map_err(|e| ServerError::io(format!("remove {}", path.display()), e))
        }
    }
}

fn accept_loop(listener: UnixListener, stop: EventFd, shared: Arc<Shared>) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!("{}: poll failed: {e}", shared.handle.name());
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("{}: accept failed: {e}", shared.handle.name());
                continue;
            }
        };
        let id = ConnectionId::next();
        let clone = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                warn!("{}: cannot track connection: {e}", shared.handle.name());
                continue;
            }
        };
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        let max = shared.max_connections.load(Ordering::Relaxed);
        if live.len() >= max {
            // Closing at once is the clearest answer a client that has not spoken yet can get.
            shared.stats.refused.fetch_add(1, Ordering::Relaxed);
            if shared
                .stats
                .refused
                .load(Ordering::Relaxed)
                .is_power_of_two()
            {
                warn!(
                    "{}: {max} connections already open; refusing more (refused so far: {})",
                    shared.handle.name(),
                    shared.stats.refused.load(Ordering::Relaxed)
                );
            }
            drop(stream);
            continue;
        }
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{id}"))
            .spawn(move || {
                crate::confine::enter(crate::confine::ThreadKind::Connection);
                serve_connection(stream, id, s2)
            });
        match thread {
            Ok(t) => {
                live.insert(
                    id,
                    Live {
                        stream: clone,
                        thread: Some(t),
                    },
                );
            }
            Err(e) => warn!(
                "{}: cannot spawn connection thread: {e}",
                shared.handle.name()
            ),
        }
    }
}
