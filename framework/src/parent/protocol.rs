//! The messages of a parent's control socket, shared by the server ([`super::ControlServer`])
//! and the client ([`super::ControlClient`]): one JSON [`Request`] per line in, one JSON
//! [`Reply`] per line out.
//!
//! ```text
//! → {"op":"types"}                                   ← {"types":[{"name":"mtty-1",…},…]}
//! → {"op":"list"}                                    ← {"instances":[{"uuid":…,"holders":[…],…}]}
//! → {"op":"create","type":"mtty-2","params":{}}      ← {"instance":{"uuid":…,"socket":…,…}}
//! → {"op":"start","uuid":"…"}                        ← {"instance":{…}}
//! → {"op":"remove","uuid":"…","force":false,"timeout_ms":10000} ← {"removed":"…"}
//!                                        any failure ← {"error":{"errno":16,"name":"EBUSY","message":"…"}}
//! ```

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::definitions::DefinitionError;
use super::driver::{CreateParams, MdevType};
use super::instances::{InstanceInfo, ParentError};

/// A control request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// List the types and their availability.
    Types,
    /// List the running instances.
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
    /// Start the instance defined as `uuid` in the parent's definitions directory.
    Start {
        /// Which definition.
        uuid: Uuid,
    },
    /// Remove (stop) an instance; its definition, if any, stays. Its clients are asked to
    /// let go (REQ) and get `timeout_ms` (the parent's default when absent) to do so.
    Remove {
        /// Which.
        uuid: Uuid,
        /// Close the connections that still hold it at the end instead of refusing (EBUSY).
        #[serde(default)]
        force: bool,
        /// How long asked clients get to let go, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// For [`Request::Types`].
    Types(Vec<MdevType>),
    /// For [`Request::List`].
    Instances(Vec<InstanceInfo>),
    /// For [`Request::Create`] and [`Request::Start`]: the instance now served.
    Instance(InstanceInfo),
    /// For [`Request::Remove`]: the instance that is gone.
    Removed(Uuid),
    /// Any request that failed.
    Error(ControlError),
}

/// A failure as the control socket and `--json` output report it: an errno, its symbolic
/// name and what went wrong.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({name})")]
pub struct ControlError {
    /// The errno (positive).
    pub errno: i32,
    /// Its symbolic name, e.g. `EBUSY`.
    #[serde(default)]
    pub name: String,
    /// What failed, with the detail (path, UUID, who holds an instance, …).
    pub message: String,
}

impl ControlError {
    /// An error with `errno` (its name looked up) and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        ControlError {
            errno,
            name: errno_name(errno),
            message: message.into(),
        }
    }

    /// An invalid argument (EINVAL).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(libc::EINVAL, message)
    }
}

impl From<&ParentError> for ControlError {
    fn from(e: &ParentError) -> Self {
        ControlError::new(e.errno(), e.to_string())
    }
}

impl From<ParentError> for ControlError {
    fn from(e: ParentError) -> Self {
        ControlError::from(&e)
    }
}

impl From<&DefinitionError> for ControlError {
    fn from(e: &DefinitionError) -> Self {
        ControlError::new(e.errno(), e.to_string())
    }
}

impl From<DefinitionError> for ControlError {
    fn from(e: DefinitionError) -> Self {
        ControlError::from(&e)
    }
}

/// The symbolic name of `errno` (`16` → `EBUSY`), `EUNKNOWN` for a number Linux does not use.
pub fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => "EUNKNOWN".to_string(),
        e => format!("{e:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_form() {
        let r: Request =
            serde_json::from_str(r#"{"op":"create","type":"mtty-2","params":{"port0":"pty"}}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::Create {
                type_name: "mtty-2".into(),
                uuid: None,
                params: [("port0".to_string(), "pty".to_string())].into(),
            }
        );
        let u = Uuid::nil();
        let line = serde_json::to_string(&Request::Start { uuid: u }).unwrap();
        assert_eq!(line, format!(r#"{{"op":"start","uuid":"{u}"}}"#));
        assert!(serde_json::from_str::<Request>(r#"{"op":"format-disk"}"#).is_err());
        // A remove from an older client (no timeout) still parses: the parent's default.
        let r: Request =
            serde_json::from_str(&format!(r#"{{"op":"remove","uuid":"{u}","force":true}}"#))
                .unwrap();
        assert_eq!(
            r,
            Request::Remove {
                uuid: u,
                force: true,
                timeout_ms: None
            }
        );
    }

    #[test]
    fn an_error_reply_carries_errno_name_and_message() {
        let reply = Reply::Error(ControlError::new(libc::EBUSY, "held by conn#1"));
        let line = serde_json::to_string(&reply).unwrap();
        assert_eq!(
            line,
            r#"{"error":{"errno":16,"name":"EBUSY","message":"held by conn#1"}}"#
        );
        assert_eq!(serde_json::from_str::<Reply>(&line).unwrap(), reply);
    }

    #[test]
    fn errno_names_are_the_symbolic_ones() {
        assert_eq!(errno_name(libc::ENOENT), "ENOENT");
        assert_eq!(errno_name(libc::EEXIST), "EEXIST");
        assert_eq!(errno_name(libc::ENOSPC), "ENOSPC");
        assert_eq!(errno_name(libc::EBADMSG), "EBADMSG");
        assert_eq!(errno_name(0), "EUNKNOWN");
        assert_eq!(errno_name(100_000), "EUNKNOWN");
    }
}
