//! Counting this process's open fds through `/proc/self/fd`: what the tests check to show
//! that nothing a client handed over, or was handed, stays open. Servers under test run in
//! the test process, so their fds count too.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn entries() -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|e| Some(e.ok()?.path()))
}

/// How many fds this process has open.
pub fn open_fds() -> usize {
    entries().count()
}

/// Open fds that refer to a memfd named `name` (other tests' fds do not disturb the count).
pub fn fds_named(name: &str) -> usize {
    let want = format!("/memfd:{name} (deleted)");
    entries()
        .filter_map(|p| std::fs::read_link(p).ok())
        .filter(|l| l.to_string_lossy() == want)
        .count()
}

/// The inode identity (device, inode) of an open file.
pub fn identity(file: &std::fs::File) -> (u64, u64) {
    let meta = file.metadata().expect("fstat");
    (meta.dev(), meta.ino())
}

/// Open fds on the file with `identity` (from [`identity`]).
pub fn fds_on(identity: (u64, u64)) -> usize {
    entries()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(|m| (m.dev(), m.ino()) == identity)
        .count()
}
