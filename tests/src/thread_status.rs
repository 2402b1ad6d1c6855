//! The threads of a running process as `/proc/PID/task/TID/status` shows them: their names
//! and seccomp modes, for the tests that check every thread of a binary is confined.

/// One thread of a process: its name and its `Seccomp:` mode (0 none, 1 strict, 2 filter).
#[derive(Debug)]
pub struct ThreadStatus {
    /// `Name:` (the thread's name, at most 15 bytes).
    pub name: String,
    /// `Seccomp:`.
    pub seccomp: Option<u8>,
}

/// The threads of process `pid` now (a thread that ends while they are read is left out).
pub fn threads(pid: u32) -> Vec<ThreadStatus> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.trim().to_string())
            };
            ThreadStatus {
                name: field("Name:").unwrap_or_default(),
                seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
            }
        })
        .collect()
}
