//! The control socket of a parent (`DIR/control.sock`): one JSON request per line, one JSON
//! response per line. `{"op":"types"}`, `{"op":"list"}`,
//! `{"op":"create","type":"mtty-2","uuid":null,"params":{}}`,
//! `{"op":"remove","uuid":"…","force":false}`. A response is `{"ok":true,"result":…}` or
//! `{"ok":false,"errno":N,"error":"…"}`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, warn};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::driver::CreateParams;
use super::instances::Parent;

/// Name of the control socket inside a parent's directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// List types.
    Types,
    /// List instances.
    List,
    /// Create an instance.
    Create {
        /// Type name.
        #[serde(rename = "type")]
        type_name: String,
        /// UUID, or a fresh one.
        #[serde(default)]
        uuid: Option<Uuid>,
        /// Parameters.
        #[serde(default)]
        params: CreateParams,
    },
    /// Remove an instance.
    Remove {
        /// Which.
        uuid: Uuid,
        /// Close its connections if it is open.
        #[serde(default)]
        force: bool,
    },
}

/// A control request failed.
#[derive(Debug, thiserror::Error)]
#[error("{message} (errno {errno})")]
pub struct ControlError {
    /// errno.
    pub errno: i32,
    /// What the parent said.
    pub message: String,
}

fn handle(parent: &Parent, req: Request) -> serde_json::Value {
    let result = match req {
        Request::Types => Ok(serde_json::to_value(parent.types())),
        Request::List => Ok(serde_json::to_value(parent.instances())),
        Request::Create {
            type_name,
            uuid,
            params,
        } => parent
            .create(&type_name, uuid, &params)
            .map(serde_json::to_value),
        Request::Remove { uuid, force } => parent
            .remove(uuid, force)
            .map(|()| Ok(serde_json::Value::Null)),
    };
    match result {
        Ok(Ok(v)) => serde_json::json!({"ok": true, "result": v}),
        Ok(Err(e)) => serde_json::json!({"ok": false, "errno": libc::EIO, "error": e.to_string()}),
        Err(e) => serde_json::json!({"ok": false, "errno": e.errno(), "error": e.to_string()}),
    }
}

fn serve_one(parent: &Parent, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST));
    let mut out = stream;
    let mut line = String::new();
    while {
        line.clear();
        reader.read_line(&mut line)? > 0
    } {
        let resp = match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => {
                debug!("control request {req:?}");
                handle(parent, req)
            }
            Err(e) => {
                serde_json::json!({"ok": false, "errno": libc::EINVAL, "error": format!("bad request: {e}")})
            }
        };
        writeln!(out, "{resp}")?;
        reader.get_mut().set_limit(MAX_REQUEST);
    }
    Ok(())
}

/// The control socket server of a parent. Dropping it stops it and removes the socket.
pub struct ControlServer {
    path: PathBuf,
    owns_file: bool,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Serves `parent`'s control socket in its directory.
    pub fn start(parent: Arc<Parent>) -> io::Result<Self> {
        Self::start_on(parent, None)
    }

    /// Serves `parent`'s control socket on `listener` (passed in by the service manager; its
    /// file is left alone at shutdown), or on `DIR/control.sock` when there is none.
    pub fn start_on(parent: Arc<Parent>, listener: Option<UnixListener>) -> io::Result<Self> {
        if let Some(listener) = listener {
            let path = listener
                .local_addr()?
                .as_pathname()
                .map(Path::to_path_buf)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unnamed socket"))?;
            return Self::serve(parent, listener, path, false);
        }
        let path = parent.dir().join(CONTROL_SOCKET);
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
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Self::serve(parent, listener, path, true)
    }

    fn serve(
        parent: Arc<Parent>,
        listener: UnixListener,
        path: PathBuf,
        owns_file: bool,
    ) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        return;
                    }
                    match stream {
                        Ok(s) => {
                            let p = parent.clone();
                            let _ = std::thread::Builder::new()
                                .name("control-conn".into())
                                .spawn(move || {
                                    if let Err(e) = serve_one(&p, s) {
                                        debug!("control connection ended: {e}");
                                    }
                                });
                        }
                        Err(e) => warn!("control accept failed: {e}"),
                    }
                }
            })?;
        Ok(ControlServer {
            path,
            owns_file,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.owns_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends one request to the parent serving `dir` and returns its result.
pub fn control_request(dir: &Path, req: &Request) -> Result<serde_json::Value, ControlError> {
    let io_err = |e: io::Error| ControlError {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: format!("control socket {}: {e}", dir.join(CONTROL_SOCKET).display()),
    };
    let mut s = UnixStream::connect(dir.join(CONTROL_SOCKET)).map_err(io_err)?;
    let line = serde_json::to_string(req).map_err(|e| ControlError {
        errno: libc::EINVAL,
        message: e.to_string(),
    })?;
    writeln!(s, "{line}").map_err(io_err)?;
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp).map_err(io_err)?;
    let v: serde_json::Value = serde_json::from_str(&resp).map_err(|e| ControlError {
        errno: libc::EPROTO,
        message: format!("bad response: {e}"),
    })?;
    if v["ok"].as_bool() == Some(true) {
        Ok(v["result"].clone())
    } else {
        Err(ControlError {
            errno: v["errno"].as_i64().unwrap_or(libc::EIO as i64) as i32,
            message: v["error"].as_str().unwrap_or("unknown error").to_string(),
        })
    }
}
