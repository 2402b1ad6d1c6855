//! What ships next to the binaries, checked with the tools that consume it:
//!
//! - the systemd units in `contrib/systemd/` pass `systemd-analyze verify`, and the parent
//!   they describe runs under systemd's own `systemd-socket-activate` with the unit's socket,
//!   fd name, command line and environment: the first control connection starts it, its
//!   `--auto` definitions are up, and the control socket stays with its owner at exit;
//! - `generate-docs` writes a man page per subcommand and bash, zsh and fish completions.
//!
//! The systemd tools come from Debian's `systemd` package (`tests/provision-host`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mdev::region::CONFIG_REGION_INDEX;
use mdev_tests::{ScratchDir, ServedParent};
use mtty::device::{DEVICE_ID, VENDOR_ID};
use uuid::Uuid;

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/systemd");
const SOCKET_UNIT: &str = "mdev@.socket";
const SERVICE_UNIT: &str = "mdev@.service";

/// Runs a systemd tool, failing clearly when Debian's `systemd` package is missing.
fn systemd_tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "{name} not found: install Debian's systemd package (tests/provision-host)"
    );
    Command::new(name)
}

/// Where a unit's absolute paths point in a test: the binaries where cargo built them, the
/// runtime and configuration directories under `root`.
struct Layout {
    bin_dir: PathBuf,
    root: PathBuf,
}

impl Layout {
    fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn defs_root(&self) -> PathBuf {
        self.root.join("etc")
    }

    /// A unit's text with its install paths moved into the test's layout.
    fn localize(&self, text: &str) -> String {
        let s = |p: PathBuf| p.display().to_string();
        text.replace("/usr/local/bin", &s(self.bin_dir.clone()))
            .replace("/run/mdev", &s(self.run_dir()))
            .replace("/etc/mdev", &s(self.defs_root()))
            .replace("/etc/default", &s(self.root.join("default")))
    }
}

fn read_unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(UNITS).join(name))
        .unwrap_or_else(|e| panic!("{UNITS}/{name}: {e}"))
}

/// The values of `key` in `[section]` of a unit file, in order.
fn unit_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            if current == section && k.trim() == key {
                out.push(v.trim().to_string());
            }
        }
    }
    out
}

fn the_one(text: &str, section: &str, key: &str) -> String {
    let v = unit_values(text, section, key);
    assert_eq!(v.len(), 1, "exactly one {key}= in [{section}]: {v:?}");
    v[0].clone()
}

/// Writes the template units as the `mtty` instances, localized, into `dir`; runs
/// `systemd-analyze verify` on them.
fn verify_units(layout: &Layout, dir: &Path) -> Output {
    let mut paths = Vec::new();
    for (template, instance) in [
        (SOCKET_UNIT, "mdev@mtty.socket"),
        (SERVICE_UNIT, "mdev@mtty.service"),
    ] {
        let path = dir.join(instance);
        std::fs::write(&path, layout.localize(&read_unit(template))).expect("write unit");
        paths.push(path);
    }
    systemd_tool("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze verify")
}

#[test]
fn the_shipped_units_pass_systemd_analyze_verify() {
    let scratch = ScratchDir::new("units-verify");
    let bin_dir = Path::new(MTTY).parent().expect("bin dir").to_path_buf();
    let layout = Layout {
        bin_dir,
        root: scratch.join("root"),
    };
    let out = verify_units(&layout, &scratch);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );

    // The check is real: the same units naming a binary that is not there are refused.
    let missing = Layout {
        bin_dir: scratch.join("no-such-bin"),
        root: scratch.join("root"),
    };
    let out = verify_units(&missing, &scratch);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("not executable"),
        "a missing ExecStart binary is caught: {said}"
    );
}

/// A vfio-user client reads the card's PCI identity through `socket`.
fn assert_serves_an_mtty(socket: &Path) {
    let mut client = vfio_user::Client::new(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let mut id = [0u8; 4];
    client
        .region_read(CONFIG_REGION_INDEX, 0, &mut id)
        .expect("config read");
    assert_eq!(
        u32::from_le_bytes(id),
        u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16
    );
}

#[test]
fn systemd_socket_activate_runs_the_unit_parent_with_its_auto_definitions() {
    let scratch = ScratchDir::new("units-activate");
    let layout = Layout {
        bin_dir: Path::new(MTTY).parent().expect("bin dir").to_path_buf(),
        root: scratch.join("root"),
    };
    let socket_unit = layout
        .localize(&read_unit(SOCKET_UNIT))
        .replace("%i", "mtty");
    let service_unit = layout
        .localize(&read_unit(SERVICE_UNIT))
        .replace("%i", "mtty");
    let listen = PathBuf::from(the_one(&socket_unit, "Socket", "ListenStream"));
    let fd_name = the_one(&socket_unit, "Socket", "FileDescriptorName");
    let exec = the_one(&service_unit, "Service", "ExecStart");
    let run_dir = layout.run_dir().join("mtty");
    assert_eq!(listen, run_dir.join("control.sock"), "the unit's socket");

    // A definition in the unit's definitions directory, made before the parent exists.
    let defs = layout.defs_root().join("mtty");
    let out = Command::new(MTTY)
        .args(["define", "--auto", "--param", "port0=loopback", "--defs"])
        .arg(&defs)
        .arg("mtty-1")
        .output()
        .expect("mtty define");
    assert!(out.status.success(), "{out:?}");
    let uuid: Uuid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("define prints the UUID");

    // The socket unit's directory (systemd makes it with DirectoryMode=).
    std::fs::create_dir_all(&run_dir).unwrap();
    let mut cmd = systemd_tool("systemd-socket-activate");
    cmd.arg("--listen")
        .arg(&listen)
        .arg(format!("--fdname={fd_name}"));
    for env in unit_values(&service_unit, "Service", "Environment") {
        cmd.arg(format!("--setenv={env}"));
    }
    cmd.args(exec.split_whitespace());
    let mut parent = ServedParent::spawn(cmd, &run_dir, "systemd-socket-activate mtty serve");

    // The first control connection starts the parent; it answers with the definition up.
    let running = parent.wait_ready();
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0].uuid, uuid);
    assert_eq!(running[0].socket, run_dir.join(format!("{uuid}.sock")));
    assert_serves_an_mtty(&running[0].socket);
    let log = parent.stderr();
    assert!(
        log.contains("Execing") && log.contains("INFO"),
        "started by systemd-socket-activate, with the unit's RUST_LOG: {log}"
    );

    // The passed-in control socket takes further requests.
    let out = Command::new(MTTY)
        .args(["create", "--json", "--dir"])
        .arg(&run_dir)
        .arg("mtty-2")
        .output()
        .expect("mtty create");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let second = PathBuf::from(created["socket"].as_str().expect("socket"));
    assert_serves_an_mtty(&second);

    assert!(parent.terminate().success(), "clean exit on SIGTERM");
    assert!(
        listen.exists(),
        "the control socket belongs to the service manager and stays"
    );
    assert!(!running[0].socket.exists() && !second.exists());
}

#[test]
fn generate_docs_writes_a_man_page_per_subcommand_and_completions() {
    let out_dir = ScratchDir::new("shell-docs");
    let out = Command::new(MTTY)
        .args(["generate-docs", "--out"])
        .arg(out_dir.path())
        .output()
        .expect("mtty generate-docs");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    let subcommands = [
        "serve", "types", "list", "create", "remove", "define", "undefine", "start", "stop",
        "attach",
    ];
    let man = out_dir.join("man/man1");
    for page in std::iter::once("mtty.1".to_string())
        .chain(subcommands.iter().map(|s| format!("mtty-{s}.1")))
    {
        let path = man.join(&page);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page} is a roff man page");
        assert!(
            listed.contains(&path.display().to_string()),
            "{page} listed"
        );
    }
    let define = std::fs::read_to_string(man.join("mtty-define.1")).unwrap();
    assert!(
        define.contains("auto") && define.contains("defs"),
        "{define}"
    );
    let top = std::fs::read_to_string(man.join("mtty.1")).unwrap();
    for s in subcommands {
        assert!(top.contains(s), "mtty.1 lists {s}");
    }
    let man_in = |w: &str| {
        std::fs::read_dir(&man)
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(w))
    };
    assert!(
        !man_in("generate-docs"),
        "the hidden subcommand has no page"
    );
    for file in [
        "completions/bash/mtty.bash",
        "completions/zsh/_mtty",
        "completions/fish/mtty.fish",
    ] {
        let text = std::fs::read_to_string(out_dir.join(file)).expect(file);
        for word in [
            "define", "undefine", "start", "stop", "defs", "auto", "json",
        ] {
            assert!(text.contains(word), "{file} completes {word}");
        }
    }
}
