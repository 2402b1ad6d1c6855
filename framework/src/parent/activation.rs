//! systemd socket activation: listening sockets handed to the process by its service manager
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`; the fds start at 3). A parent serves its
//! control socket on the one named `control` (or on the only one, when unnamed) and an instance
//! created at start with `uuid=U` on the one named `U`.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// The first fd passed by the service manager.
pub const LISTEN_FDS_START: RawFd = 3;
/// The name of the control socket among the passed fds.
pub const CONTROL_NAME: &str = "control";
/// At most this many fds are accepted (a guard against a garbage `LISTEN_FDS`).
const MAX_FDS: usize = 1024;

/// A malformed or unusable activation environment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a number (or is too large).
    #[error("LISTEN_FDS={0:?} is not a count")]
    BadCount(String),
    /// `LISTEN_PID` is not a process id.
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    /// `LISTEN_FDNAMES` has a different number of names than `LISTEN_FDS` fds.
    #[error("LISTEN_FDNAMES names {names} fds but LISTEN_FDS is {fds}")]
    NameCount {
        /// Names in `LISTEN_FDNAMES`.
        names: usize,
        /// The `LISTEN_FDS` count.
        fds: usize,
    },
    /// A passed fd is not a listening UNIX stream socket.
    #[error("fd {0} is not a listening UNIX stream socket")]
    NotAListener(RawFd),
}

/// Which fds the environment passes to process `pid`, with their names ("" when unnamed).
/// `Ok(empty)` when nothing is meant for this process.
pub fn parse_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<(RawFd, String)>, ActivationError> {
    let (Some(p), Some(n)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let target: u32 = p
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadPid(p.into()))?;
    if target != pid {
        return Ok(Vec::new());
    }
    let count: usize = n
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadCount(n.into()))?;
    if count > MAX_FDS {
        return Err(ActivationError::BadCount(n.into()));
    }
    let names: Vec<String> = match listen_fdnames {
        Some(list) if !list.is_empty() => list.split(':').map(str::to_string).collect(),
        _ => vec![String::new(); count],
    };
    if names.len() != count {
        return Err(ActivationError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    Ok(names
        .into_iter()
        .enumerate()
        .filter_map(|(i, name)| {
            Some((
                LISTEN_FDS_START.checked_add(RawFd::try_from(i).ok()?)?,
                name,
            ))
        })
        .collect())
}

/// The listening sockets passed to this process, by name.
#[derive(Debug, Default)]
pub struct Activated {
    sockets: BTreeMap<String, UnixListener>,
    unnamed: Vec<UnixListener>,
}

impl Activated {
    /// Takes the sockets the environment passes to this process and clears the variables, so
    /// children do not inherit them. Each fd must be a listening UNIX stream socket.
    pub fn from_env() -> Result<Self, ActivationError> {
        let var = |k: &str| std::env::var(k).ok();
        let fds = parse_env(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )?;
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(k);
        }
        let mut out = Activated::default();
        for (fd, name) in fds {
            if !is_unix_listener(fd) {
                return Err(ActivationError::NotAListener(fd));
            }
            // SAFETY: the service manager passed `fd` to this process for it to own, it is
            // open (checked above) and nothing else in the process has taken it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(&owned);
            let listener = UnixListener::from(owned);
            if name.is_empty() || name == "unknown" {
                out.unnamed.push(listener);
            } else {
                out.sockets.insert(name, listener);
            }
        }
        Ok(out)
    }

    /// The socket named `name`.
    pub fn take(&mut self, name: &str) -> Option<UnixListener> {
        self.sockets.remove(name)
    }

    /// The control socket: the one named `control`, else the only unnamed one.
    pub fn take_control(&mut self) -> Option<UnixListener> {
        self.take(CONTROL_NAME).or_else(|| {
            (self.unnamed.len() == 1 && self.sockets.is_empty()).then(|| self.unnamed.remove(0))
        })
    }

    /// Names of sockets nobody took (to warn about).
    pub fn leftover(&self) -> Vec<String> {
        let mut v: Vec<String> = self.sockets.keys().cloned().collect();
        v.extend(self.unnamed.iter().map(|_| String::from("(unnamed)")));
        v
    }
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len: libc::socklen_t = 4; // size_of::<c_int>()
                                      // SAFETY: getsockopt writes at most `len` bytes into `v`, which outlives the call; an
                                      // invalid fd only makes it fail.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

fn is_unix_listener(fd: RawFd) -> bool {
    sockopt(fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
        && sockopt(fd, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && sockopt(fd, libc::SO_ACCEPTCONN) == Some(1)
}

fn set_cloexec(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETFD on an fd we own; no memory is passed.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_unless_the_pid_is_ours() {
        assert!(parse_env(None, Some("1"), None, 7).unwrap().is_empty());
        assert!(parse_env(Some("8"), Some("1"), None, 7).unwrap().is_empty());
        assert_eq!(
            parse_env(Some("7"), Some("1"), None, 7).unwrap(),
            vec![(3, String::new())]
        );
    }

    #[test]
    fn names_follow_the_fds() {
        let v = parse_env(Some("7"), Some("2"), Some("control:1234"), 7).unwrap();
        assert_eq!(v, vec![(3, "control".into()), (4, "1234".into())]);
    }

    #[test]
    fn garbage_is_an_error_not_a_guess() {
        assert_eq!(
            parse_env(Some("x"), Some("1"), None, 7),
            Err(ActivationError::BadPid("x".into()))
        );
        assert_eq!(
            parse_env(Some("7"), Some("-1"), None, 7),
            Err(ActivationError::BadCount("-1".into()))
        );
        assert_eq!(
            parse_env(Some("7"), Some("99999"), None, 7),
            Err(ActivationError::BadCount("99999".into()))
        );
        assert_eq!(
            parse_env(Some("7"), Some("2"), Some("control"), 7),
            Err(ActivationError::NameCount { names: 1, fds: 2 })
        );
    }

    #[test]
    fn only_listening_unix_stream_sockets_pass() {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("mdev-act-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let l = UnixListener::bind(dir.join("s")).unwrap();
        assert!(is_unix_listener(l.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!is_unix_listener(a.as_raw_fd()));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_unix_listener(f.as_raw_fd()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
