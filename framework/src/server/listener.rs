//! The listening socket of a device: binding (0600, stale files replaced, a live socket never
//! stolen), accepting, and an orderly shutdown that closes every connection.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{info, warn};

use super::shared::{ConnectionStats, Shared};
#[cfg(doc)]
use super::shared::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MESSAGE_TIMEOUT};
use super::workers::Workers;
use crate::device_set::DeviceHandle;

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

/// A device served on a socket. Dropping it (or [`DeviceServer::shutdown`]) stops accepting,
/// closes every connection (each one's close runs as for a client that went away) and
/// removes the socket file it created.
pub struct DeviceServer {
    path: Option<PathBuf>,
    /// Whether this server created the socket file (and removes it at shutdown).
    owns_file: bool,
    /// The thread that starts the pool's threads.
    accept: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    workers: Arc<Workers>,
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
        let shared = Arc::new(Shared::new(handle));
        let workers = Workers::new(shared.clone(), listener);
        let pool = workers.clone();
        let name = format!("accept-{}", shared.handle.name());
        let accept = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                crate::confine::enter(crate::confine::ThreadKind::Listener);
                pool.supervise();
            })
            .map_err(|e| ServerError::io("spawn accept thread", e))?;
        Ok(DeviceServer {
            path,
            owns_file,
            accept: Some(accept),
            shared,
            workers,
        })
    }

    /// Serves at most `n` connections at once (default [`DEFAULT_MAX_CONNECTIONS`]); a client
    /// connecting beyond that is closed at once. A connection whose client has closed its end
    /// does not count, though its thread has yet to see it. Connections already open are not
    /// affected.
    pub fn set_max_connections(&self, n: usize) {
        self.shared.set_max_connections(n);
    }

    /// Bounds how long a begun message, and the VERSION handshake, may take (default
    /// [`DEFAULT_MESSAGE_TIMEOUT`]); a client that stalls past it is disconnected, freeing
    /// its slot. Applies to connections accepted from now on.
    pub fn set_message_timeout(&self, limit: Duration) {
        self.shared.set_message_timeout(limit);
    }

    /// Lets each connection poll its socket for up to `max` after a request before it blocks
    /// (zero, the default: never polls). The window adapts within that bound to how soon the
    /// client's requests follow each other (see [`PollWindow`](super::PollWindow)): polling
    /// saves the wake-up of a blocked thread (tens of microseconds across CPUs) on a busy
    /// connection, and costs nothing on an idle one, as it only ever follows a request.
    /// Applies at once, to every connection.
    pub fn set_poll(&self, max: Duration) {
        self.shared.set_poll_max(max);
    }

    /// The poll bound set by [`DeviceServer::set_poll`].
    pub fn poll(&self) -> Duration {
        self.shared.poll_max()
    }

    /// Records every message each connection accepted from now on receives, one file per
    /// connection in `dir` (see [`RECORD_DIR_ENV`](super::RECORD_DIR_ENV) for the format and
    /// the environment variable that sets it); `None` turns recording off.
    pub fn record_to(&self, dir: Option<PathBuf>) {
        self.shared.set_record_dir(dir);
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
        self.shared.connections()
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
        // No client is accepted any more, every connection's thread sees the end of its
        // stream and closes as for a client that went away; then the pool's threads end,
        // and none holds the device any more.
        self.workers.stop();
        if let Some(t) = self.accept.take() {
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
