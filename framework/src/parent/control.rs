//! The control socket of a parent (`DIR/control.sock`): one JSON [`Request`] per line, one
//! JSON [`Reply`] per line (see [`super::protocol`]). [`ControlServer`] answers it in the
//! parent; [`ControlClient`] is what the CLI and tests talk to it with.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info, warn};
use uuid::Uuid;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::definitions::DefinitionStore;
use super::driver::{CreateParams, MdevType};
use super::instances::{InstanceInfo, Parent};
use super::protocol::{ControlError, Reply, Request};

/// Name of the control socket inside a parent's directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// What the control socket acts on: the parent, and the definitions `start` reads.
struct Service {
    parent: Arc<Parent>,
    definitions: Option<DefinitionStore>,
}

impl Service {
    fn handle(&self, req: Request) -> Result<Reply, ControlError> {
        let parent = &self.parent;
        Ok(match req {
            Request::Types => Reply::Types(parent.types()),
            Request::List => Reply::Instances(parent.instances()),
            Request::Create {
                type_name,
                uuid,
                params,
            } => Reply::Instance(parent.create(&type_name, uuid, &params)?),
            Request::Start { uuid } => {
                let store = self.definitions.as_ref().ok_or_else(|| {
                    ControlError::new(libc::ENOTSUP, "this parent reads no definitions")
                })?;
                let def = store.load(uuid)?;
                let info = parent.create(&def.type_name, Some(uuid), &def.params)?;
                info!("started defined instance {uuid} ({})", def.type_name);
                Reply::Instance(info)
            }
            Request::Remove {
                uuid,
                force,
                timeout_ms,
            } => {
                let timeout =
                    timeout_ms.map_or_else(|| parent.remove_timeout(), Duration::from_millis);
                parent.remove_within(uuid, force, timeout)?;
                Reply::Removed(uuid)
            }
        })
    }
}

fn serve_one(service: &Service, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST));
    let mut out = stream;
    let mut line = String::new();
    while {
        line.clear();
        reader.read_line(&mut line)? > 0
    } {
        let reply = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => {
                debug!("control request {req:?}");
                service.handle(req).unwrap_or_else(Reply::Error)
            }
            Err(e) => Reply::Error(ControlError::invalid(format!("bad request: {e}"))),
        };
        let text = serde_json::to_string(&reply).map_err(io::Error::from)?;
        writeln!(out, "{text}")?;
        reader.get_mut().set_limit(MAX_REQUEST);
    }
    Ok(())
}

/// A bound control socket, not yet answered: connections queue until a [`ControlServer`]
/// serves it. `serve` binds it first (so a second parent on the same directory fails before
/// touching anything) and serves it once its start-up instances exist, so a client that
/// connects early is answered with them in place.
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// The socket's file, removed on drop when this process bound it.
struct SocketFile {
    path: PathBuf,
    owned: bool,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl ControlSocket {
    /// Binds `DIR/control.sock` (mode 0600), replacing a stale file; fails with
    /// `AddrInUse` when a parent answers there.
    pub fn bind(dir: &Path) -> io::Result<Self> {
        let path = dir.join(CONTROL_SOCKET);
        if path.exists() {
            if UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        let file = SocketFile { path, owned: true };
        std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ControlSocket { listener, file })
    }

    /// A socket passed in by the service manager; its file is left alone at shutdown.
    pub fn from_listener(listener: UnixListener) -> io::Result<Self> {
        let path = listener
            .local_addr()?
            .as_pathname()
            .map(Path::to_path_buf)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unnamed socket"))?;
        Ok(ControlSocket {
            listener,
            file: SocketFile { path, owned: false },
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// Waits until `listener` has a client (true) or `stop` is signalled (false).
fn wait_for_client(listener: &UnixListener, stop: &EventFd) -> bool {
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
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!("control poll failed: {}", io::Error::last_os_error());
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

/// The control socket server of a parent. Dropping it stops it and removes the socket file
/// it bound.
pub struct ControlServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
    file: SocketFile,
}

impl ControlServer {
    /// Serves `parent`'s control socket in its directory, without definitions (`start`
    /// answers ENOTSUP).
    pub fn start(parent: Arc<Parent>) -> io::Result<Self> {
        let socket = ControlSocket::bind(parent.dir())?;
        Self::serve(parent, None, socket)
    }

    /// Answers `socket` for `parent`, starting defined instances from `definitions` on
    /// request.
    pub fn serve(
        parent: Arc<Parent>,
        definitions: Option<DefinitionStore>,
        socket: ControlSocket,
    ) -> io::Result<Self> {
        let service = Arc::new(Service {
            parent,
            definitions,
        });
        let ControlSocket { listener, file } = socket;
        // The accept loop waits on the listener and on this eventfd, so stopping it never
        // depends on the socket file still being there to connect to.
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stop2 = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                crate::confine::enter(crate::confine::ThreadKind::Control);
                while wait_for_client(&listener, &stop2) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let service = service.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-conn".into())
                                .spawn(move || {
                                    crate::confine::enter(
                                        crate::confine::ThreadKind::ControlConnection,
                                    );
                                    if let Err(e) = serve_one(&service, s) {
                                        debug!("control connection ended: {e}");
                                    }
                                });
                        }
                        Err(e) => warn!("control accept failed: {e}"),
                    }
                }
            })?;
        Ok(ControlServer {
            stop,
            thread: Some(thread),
            file,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // `file` is dropped next: the socket file goes if this process bound it.
    }
}

/// A connection to the control socket of the parent serving a directory.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to `DIR/control.sock`. The error's errno is the connect's (ENOENT or
    /// ECONNREFUSED when no parent serves `dir`).
    pub fn connect(dir: &Path) -> Result<Self, ControlError> {
        let path = dir.join(CONTROL_SOCKET);
        let writer = UnixStream::connect(&path).map_err(|e| io_error(&path, &e))?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| io_error(&path, &e))?);
        Ok(ControlClient {
            path,
            reader,
            writer,
        })
    }

    /// Sends `req` and returns the parent's reply; a [`Reply::Error`] is returned as `Err`.
    pub fn call(&mut self, req: &Request) -> Result<Reply, ControlError> {
        let line = serde_json::to_string(req).map_err(|e| ControlError::invalid(e.to_string()))?;
        writeln!(self.writer, "{line}").map_err(|e| io_error(&self.path, &e))?;
        let mut resp = String::new();
        let n = self
            .reader
            .read_line(&mut resp)
            .map_err(|e| io_error(&self.path, &e))?;
        if n == 0 {
            return Err(ControlError::new(
                libc::EPROTO,
                format!("{}: the parent closed the connection", self.path.display()),
            ));
        }
        match serde_json::from_str::<Reply>(&resp) {
            Ok(Reply::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => Err(ControlError::new(
                libc::EPROTO,
                format!("{}: bad reply: {e}", self.path.display()),
            )),
        }
    }

    /// The types and their availability.
    pub fn types(&mut self) -> Result<Vec<MdevType>, ControlError> {
        match self.call(&Request::Types)? {
            Reply::Types(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }

    /// The running instances.
    pub fn list(&mut self) -> Result<Vec<InstanceInfo>, ControlError> {
        match self.call(&Request::List)? {
            Reply::Instances(l) => Ok(l),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates an instance.
    pub fn create(
        &mut self,
        type_name: &str,
        uuid: Option<Uuid>,
        params: &CreateParams,
    ) -> Result<InstanceInfo, ControlError> {
        let req = Request::Create {
            type_name: type_name.to_string(),
            uuid,
            params: params.clone(),
        };
        match self.call(&req)? {
            Reply::Instance(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts the defined instance `uuid`.
    pub fn start(&mut self, uuid: Uuid) -> Result<InstanceInfo, ControlError> {
        match self.call(&Request::Start { uuid })? {
            Reply::Instance(i) => Ok(i),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes (stops) an instance, its clients getting the parent's default time to let
    /// go once asked.
    pub fn remove(&mut self, uuid: Uuid, force: bool) -> Result<(), ControlError> {
        self.remove_within(uuid, force, None)
    }

    /// Removes (stops) an instance, its clients getting `timeout` (the parent's default when
    /// `None`) to let go once asked (REQ). The call returns when the instance is gone or the
    /// removal was refused.
    pub fn remove_within(
        &mut self,
        uuid: Uuid,
        force: bool,
        timeout: Option<Duration>,
    ) -> Result<(), ControlError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let req = Request::Remove {
            uuid,
            force,
            timeout_ms,
        };
        match self.call(&req)? {
            Reply::Removed(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn io_error(path: &Path, e: &io::Error) -> ControlError {
    ControlError::new(
        e.raw_os_error().unwrap_or(libc::EIO),
        format!("control socket {}: {e}", path.display()),
    )
}

fn unexpected(reply: &Reply) -> ControlError {
    ControlError::new(
        libc::EPROTO,
        format!("unexpected reply from the parent: {reply:?}"),
    )
}

/// Sends one request to the parent serving `dir` and returns its reply.
pub fn control_request(dir: &Path, req: &Request) -> Result<Reply, ControlError> {
    ControlClient::connect(dir)?.call(req)
}
