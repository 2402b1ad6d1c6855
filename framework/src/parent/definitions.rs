//! Persistent instance definitions (mdevctl's model): one file per defined instance,
//! `DIR/UUID.json`, holding its type, its create parameters and whether the parent starts it
//! by itself (`auto`):
//!
//! ```json
//! {"type": "mtty-2", "params": {"port0": "loopback"}, "auto": true}
//! ```
//!
//! A file is written once, atomically (a temporary file in the same directory, synced, then
//! renamed into place without replacing anything), and never rewritten: defining a UUID that
//! has a file refuses with EEXIST, whatever the file holds. A file that does not parse (edited
//! by hand, truncated) or is not named `UUID.json` is reported with its path and the reason
//! and left exactly as it is; only `undefine`, asked by name, deletes a file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::driver::CreateParams;

/// The extension of a definition file.
const EXTENSION: &str = "json";

/// A defined instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Definition {
    /// Its UUID (the file's name).
    pub uuid: Uuid,
    /// Its type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its create parameters.
    pub params: CreateParams,
    /// Started by the parent when it starts.
    pub auto: bool,
}

/// What a definition file holds (the UUID is its name). Unknown keys are refused, so a
/// misspelt key edited by hand (`"autostart"`) is reported rather than ignored.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefinitionFile {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    params: CreateParams,
    #[serde(default)]
    auto: bool,
}

/// Why a definition could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// A file or directory operation failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A definition file does not parse; it is left as it is.
    #[error("{}: not a valid definition ({source}); the file is left as it is", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error (line, column, what was expected).
        #[source]
        source: serde_json::Error,
    },
    /// A `.json` file in the directory is not named after a UUID; it is left as it is.
    #[error("{}: not named UUID.json; the file is ignored", .path.display())]
    Misnamed {
        /// The file.
        path: PathBuf,
    },
    /// The UUID is defined already (its file is never replaced).
    #[error("instance {uuid} is already defined ({})", .path.display())]
    Exists {
        /// The UUID.
        uuid: Uuid,
        /// Its file.
        path: PathBuf,
    },
    /// The UUID is not defined.
    #[error("instance {uuid} is not defined in {}", .dir.display())]
    NotDefined {
        /// The UUID.
        uuid: Uuid,
        /// The directory looked in.
        dir: PathBuf,
    },
}

impl DefinitionError {
    /// The errno a caller reports: the I/O error's, EBADMSG for a file that does not parse,
    /// EINVAL for a misnamed one, EEXIST and ENOENT.
    pub fn errno(&self) -> i32 {
        match self {
            DefinitionError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            DefinitionError::Corrupt { .. } => libc::EBADMSG,
            DefinitionError::Misnamed { .. } => libc::EINVAL,
            DefinitionError::Exists { .. } => libc::EEXIST,
            DefinitionError::NotDefined { .. } => libc::ENOENT,
        }
    }

    /// The file the error is about, when it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            DefinitionError::Io { path, .. }
            | DefinitionError::Corrupt { path, .. }
            | DefinitionError::Misnamed { path }
            | DefinitionError::Exists { path, .. } => Some(path),
            DefinitionError::NotDefined { .. } => None,
        }
    }
}

/// Everything a definitions directory holds: the definitions that read, and one error for
/// each file that did not.
#[derive(Debug, Default)]
pub struct Scan {
    /// Readable definitions, by UUID.
    pub definitions: Vec<Definition>,
    /// Files that could not be used, each with why.
    pub unreadable: Vec<DefinitionError>,
}

/// A directory of definitions, one `UUID.json` each.
#[derive(Clone, Debug)]
pub struct DefinitionStore {
    dir: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DefinitionError + '_ {
    move |source| DefinitionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DefinitionStore {
    /// The store in `dir` (created by the first [`DefinitionStore::define`]).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DefinitionStore { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `uuid`.
    pub fn path_of(&self, uuid: Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.{EXTENSION}"))
    }

    /// Writes `definition` atomically; refuses with [`DefinitionError::Exists`] when its UUID
    /// has a file, readable or not. Returns the file.
    pub fn define(&self, definition: &Definition) -> Result<PathBuf, DefinitionError> {
        let path = self.path_of(definition.uuid);
        let exists = || DefinitionError::Exists {
            uuid: definition.uuid,
            path: path.clone(),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(io_at(&self.dir))?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(exists());
        }
        let mut text = serde_json::to_string_pretty(&DefinitionFile {
            type_name: definition.type_name.clone(),
            params: definition.params.clone(),
            auto: definition.auto,
        })
        .map_err(|e| io_at(&path)(io::Error::from(e)))?;
        text.push('\n');
        let tmp = self.dir.join(format!(
            ".{}.{EXTENSION}.{}.tmp",
            definition.uuid,
            std::process::id()
        ));
        let written = write_synced(&tmp, text.as_bytes())
            .and_then(|()| rename_no_replace(&tmp, &path).map_err(io_at(&path)));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        match written {
            Err(DefinitionError::Io { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) =>
            {
                return Err(exists())
            }
            other => other?,
        }
        // The rename is durable once the directory is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        Ok(path)
    }

    /// Deletes the file of `uuid` (readable or not); [`DefinitionError::NotDefined`] when
    /// there is none. A running instance is not touched.
    pub fn undefine(&self, uuid: Uuid) -> Result<PathBuf, DefinitionError> {
        let path = self.path_of(uuid);
        match fs::remove_file(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DefinitionError::NotDefined {
                uuid,
                dir: self.dir.clone(),
            }),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Reads the definition of `uuid`.
    pub fn load(&self, uuid: Uuid) -> Result<Definition, DefinitionError> {
        let path = self.path_of(uuid);
        match fs::read(&path) {
            Ok(bytes) => parse(uuid, &path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(DefinitionError::NotDefined {
                uuid,
                dir: self.dir.clone(),
            }),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Reads every definition in the directory, by UUID; a file that cannot be used is in
    /// [`Scan::unreadable`] and the others are read regardless. Hidden files (temporary files
    /// of a define in progress) and files not ending in `.json` are skipped. A missing
    /// directory holds no definitions.
    pub fn scan(&self) -> Result<Scan, DefinitionError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Scan::default()),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        let mut scan = Scan::default();
        for entry in entries {
            let entry = entry.map_err(io_at(&self.dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || path.extension().is_none_or(|e| e != EXTENSION) {
                continue;
            }
            let uuid = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| Uuid::parse_str(s).ok().filter(|u| u.to_string() == s));
            let read = match uuid {
                None => Err(DefinitionError::Misnamed { path: path.clone() }),
                Some(uuid) => fs::read(&path)
                    .map_err(io_at(&path))
                    .and_then(|bytes| parse(uuid, &path, &bytes)),
            };
            match read {
                Ok(d) => scan.definitions.push(d),
                Err(e) => scan.unreadable.push(e),
            }
        }
        scan.definitions.sort_by_key(|d| d.uuid);
        scan.unreadable
            .sort_by(|a, b| a.path().cmp(&b.path()).then(a.errno().cmp(&b.errno())));
        Ok(scan)
    }
}

fn parse(uuid: Uuid, path: &Path, bytes: &[u8]) -> Result<Definition, DefinitionError> {
    let file: DefinitionFile =
        serde_json::from_slice(bytes).map_err(|source| DefinitionError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Definition {
        uuid,
        type_name: file.type_name,
        params: file.params,
        auto: file.auto,
    })
}

/// Creates `path` (which must not exist), writes `bytes` and syncs them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DefinitionError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(io_at(path))?;
    f.write_all(bytes).map_err(io_at(path))?;
    f.sync_all().map_err(io_at(path))
}

/// Renames `from` to `to` in one step, failing with EEXIST rather than replacing `to`
/// (`renameat2(RENAME_NOREPLACE)`; a hard link then unlink where the filesystem lacks it).
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EINVAL) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(io::Error::from(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(label: &str) -> Self {
            let d = std::env::temp_dir().join(format!(
                "mdev-defs-{label}-{}-{}",
                std::process::id(),
                Uuid::new_v4()
            ));
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn def(auto: bool) -> Definition {
        Definition {
            uuid: Uuid::new_v4(),
            type_name: "mtty-2".into(),
            params: [("port0".to_string(), "loopback".to_string())].into(),
            auto,
        }
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_definition_is_one_file_read_back_as_written() {
        let tmp = TempDir::new("roundtrip");
        let store = DefinitionStore::new(tmp.0.join("nested/defs"));
        let d = def(true);
        let path = store.define(&d).unwrap();
        assert_eq!(path, tmp.0.join(format!("nested/defs/{}.json", d.uuid)));
        assert_eq!(files_in(store.dir()), vec![format!("{}.json", d.uuid)]);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"type\": \"mtty-2\"") && text.contains("\"auto\": true"));
        assert!(!text.contains("uuid"), "the name carries the UUID: {text}");
        assert_eq!(store.load(d.uuid).unwrap(), d);
        let scan = store.scan().unwrap();
        assert_eq!(scan.definitions, vec![d]);
        assert!(scan.unreadable.is_empty());
    }

    #[test]
    fn defining_a_uuid_twice_is_refused_and_the_file_kept() {
        let tmp = TempDir::new("twice");
        let store = DefinitionStore::new(&tmp.0);
        let d = def(false);
        store.define(&d).unwrap();
        let before = fs::read(store.path_of(d.uuid)).unwrap();
        let again = Definition {
            type_name: "mtty-1".into(),
            ..d.clone()
        };
        let err = store.define(&again).unwrap_err();
        assert_eq!(err.errno(), libc::EEXIST);
        assert_eq!(fs::read(store.path_of(d.uuid)).unwrap(), before);
        assert_eq!(files_in(&tmp.0).len(), 1, "no temporary file left behind");
    }

    #[test]
    fn the_no_replace_rename_refuses_an_existing_target() {
        let tmp = TempDir::new("norename");
        fs::create_dir_all(&tmp.0).unwrap();
        let (a, b) = (tmp.0.join("a"), tmp.0.join("b"));
        fs::write(&a, "new").unwrap();
        fs::write(&b, "old").unwrap();
        let err = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(fs::read_to_string(&b).unwrap(), "old");
        fs::remove_file(&b).unwrap();
        rename_no_replace(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), "new");
        assert!(!a.exists());
    }

    #[test]
    fn a_corrupt_file_is_reported_left_alone_and_never_redefined() {
        let tmp = TempDir::new("corrupt");
        let store = DefinitionStore::new(&tmp.0);
        let good = def(true);
        store.define(&good).unwrap();
        let bad = Uuid::new_v4();
        let garbage = b"{\"type\": \"mtty-2\", \"auto\": tru";
        fs::write(store.path_of(bad), garbage).unwrap();
        let typo = Uuid::new_v4();
        fs::write(
            store.path_of(typo),
            br#"{"type": "mtty-1", "autostart": true}"#,
        )
        .unwrap();

        let scan = store.scan().unwrap();
        assert_eq!(scan.definitions, vec![good], "the good one still reads");
        assert_eq!(scan.unreadable.len(), 2);
        for e in &scan.unreadable {
            assert_eq!(e.errno(), libc::EBADMSG);
        }
        let messages: String = scan.unreadable.iter().map(|e| e.to_string()).collect();
        assert!(messages.contains(&format!("{bad}.json")), "{messages}");
        assert!(
            messages.contains("autostart"),
            "names the unknown key: {messages}"
        );
        assert!(messages.contains("line 1"), "says where: {messages}");

        assert_eq!(store.load(bad).unwrap_err().errno(), libc::EBADMSG);
        let redefine = Definition {
            uuid: bad,
            ..def(false)
        };
        assert_eq!(store.define(&redefine).unwrap_err().errno(), libc::EEXIST);
        assert_eq!(fs::read(store.path_of(bad)).unwrap(), garbage);
        // Asked by name, undefine removes it.
        store.undefine(bad).unwrap();
        assert!(!store.path_of(bad).exists());
    }

    #[test]
    fn misnamed_files_are_reported_and_others_skipped() {
        let tmp = TempDir::new("names");
        let store = DefinitionStore::new(&tmp.0);
        fs::create_dir_all(&tmp.0).unwrap();
        let u = Uuid::new_v4();
        let body = br#"{"type": "vga"}"#;
        fs::write(tmp.0.join("my-card.json"), body).unwrap();
        fs::write(tmp.0.join(format!("{}.json", u.simple())), body).unwrap();
        fs::write(tmp.0.join(format!(".{u}.json.1.tmp")), body).unwrap();
        fs::write(tmp.0.join(format!("{u}.json~")), body).unwrap();
        fs::write(tmp.0.join("README"), "notes").unwrap();
        let scan = store.scan().unwrap();
        assert!(scan.definitions.is_empty());
        let mut named: Vec<String> = scan
            .unreadable
            .iter()
            .map(|e| {
                assert_eq!(e.errno(), libc::EINVAL);
                e.path().unwrap().display().to_string()
            })
            .collect();
        named.sort();
        let mut want = vec![
            tmp.0.join("my-card.json").display().to_string(),
            tmp.0
                .join(format!("{}.json", u.simple()))
                .display()
                .to_string(),
        ];
        want.sort();
        assert_eq!(named, want);
    }

    #[test]
    fn defaults_and_missing_things() {
        let tmp = TempDir::new("missing");
        let store = DefinitionStore::new(&tmp.0);
        assert!(store.scan().unwrap().definitions.is_empty(), "no directory");
        let u = Uuid::new_v4();
        assert_eq!(store.load(u).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(store.undefine(u).unwrap_err().errno(), libc::ENOENT);
        fs::create_dir_all(&tmp.0).unwrap();
        fs::write(store.path_of(u), br#"{"type": "vga"}"#).unwrap();
        let d = store.load(u).unwrap();
        assert!(
            !d.auto && d.params.is_empty(),
            "auto and params default off"
        );
    }
}
