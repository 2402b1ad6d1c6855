//! Replays every committed corpus file through its target: each must pass the target's
//! invariants. This is how CI runs the fuzz targets deterministically (the soak and the
//! bounded CI run use libFuzzer, see `fuzz/run`).

use std::path::PathBuf;
use std::sync::Mutex;

/// Targets count the process's fds and watch its allocations: one replays at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn replay(target: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = mdev_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .expect("a target of that name");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    for f in &files {
        let data = std::fs::read(f).expect("corpus file");
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{} fails its invariants", f.display());
    }
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn every_wire_corpus_file_keeps_the_invariants() {
    replay("wire");
}

#[test]
fn every_server_corpus_file_keeps_the_invariants() {
    replay("server");
}

#[test]
fn every_pci_config_corpus_file_keeps_the_invariants() {
    replay("pci_config");
}

#[test]
fn every_uart_corpus_file_keeps_the_invariants() {
    replay("uart");
}

#[test]
fn every_mbochs_corpus_file_keeps_the_invariants() {
    replay("mbochs");
}

#[test]
fn every_mdpy_corpus_file_keeps_the_invariants() {
    replay("mdpy");
}

#[test]
fn every_mtty_line_corpus_file_keeps_the_invariants() {
    replay("mtty_line");
}

#[test]
fn every_rfb_corpus_file_keeps_the_invariants() {
    replay("rfb");
}
