//! Persistent definitions driven the way a user drives them: the real `mtty` binary defines
//! instances in a directory, `mtty serve` starts the `--auto` ones, a restarted parent brings
//! them back with the same UUID and socket, and `start`, `stop`, `undefine` and
//! `list --defined` work on them. Definitions that cannot start are reported while the rest
//! start, a corrupt file is left byte for byte, and with `--json` every failure is JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mdev::region::CONFIG_REGION_INDEX;
use mdev_tests::{ScratchDir, ServedParent};
use mtty::device::{DEVICE_ID, VENDOR_ID};
use serde_json::Value;
use uuid::Uuid;

const MTTY: &str = env!("CARGO_BIN_EXE_mtty");

/// The sockets' and the definitions' directories of one parent.
struct Dirs {
    _scratch: ScratchDir,
    run: PathBuf,
    defs: PathBuf,
}

impl Dirs {
    fn new(label: &str) -> Self {
        let scratch = ScratchDir::new(label);
        Dirs {
            run: scratch.join("run"),
            defs: scratch.join("defs"),
            _scratch: scratch,
        }
    }

    /// `mtty ARGS…` with `--dir` and `--defs` set by the environment, as a user's shell would.
    fn mtty(&self, args: &[&str]) -> Output {
        Command::new(MTTY)
            .args(args)
            .env("MDEV_DIR", &self.run)
            .env("MDEV_DEFS_DIR", &self.defs)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run mtty")
    }

    /// `mtty ARGS… --json`, which must succeed; its JSON.
    fn json_ok(&self, args: &[&str]) -> Value {
        let out = self.mtty(&[args, &["--json"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "mtty {args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// `mtty ARGS… --json`, which must fail with exit status 1 and a JSON error naming
    /// `errno`; its message.
    fn json_err(&self, args: &[&str], errno: &str) -> String {
        let out = self.mtty(&[args, &["--json"]].concat());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "mtty {args:?}: {stdout}");
        let v: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"));
        assert_eq!(v["error"]["name"], errno, "mtty {args:?}: {v}");
        let number = v["error"]["errno"].as_i64().expect("errno is a number");
        assert!(number > 0, "{v}");
        v["error"]["message"].as_str().expect("message").to_string()
    }

    /// `mtty serve`, ready (its start-up instances exist).
    fn serve(&self, extra: &[&str]) -> (ServedParent, Vec<mdev::parent::InstanceInfo>) {
        let mut cmd = Command::new(MTTY);
        cmd.arg("serve")
            .arg("--dir")
            .arg(&self.run)
            .arg("--defs")
            .arg(&self.defs)
            .args(extra);
        let mut parent = ServedParent::spawn(cmd, &self.run, "mtty serve");
        let running = parent.wait_ready();
        (parent, running)
    }

    fn socket(&self, uuid: Uuid) -> PathBuf {
        self.run.join(format!("{uuid}.sock"))
    }

    fn definition(&self, uuid: Uuid) -> PathBuf {
        self.defs.join(format!("{uuid}.json"))
    }

    /// `list --defined --json`, by UUID: (state, socket).
    fn defined_states(&self) -> (Vec<(Uuid, String, Option<PathBuf>)>, Value) {
        let v = self.json_ok(&["list", "--defined"]);
        let states = v["definitions"]
            .as_array()
            .expect("definitions")
            .iter()
            .map(|d| {
                (
                    d["uuid"]
                        .as_str()
                        .and_then(|u| u.parse().ok())
                        .expect("uuid"),
                    d["state"].as_str().expect("state").to_string(),
                    d["socket"].as_str().map(PathBuf::from),
                )
            })
            .collect();
        (states, v)
    }
}

/// A vfio-user client connects to `socket` and reads the card's PCI identity.
fn assert_serves_an_mtty(socket: &Path) {
    let mut client = vfio_user::Client::new(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    let mut id = [0u8; 4];
    client
        .region_read(CONFIG_REGION_INDEX, 0, &mut id)
        .expect("config read");
    assert_eq!(
        u32::from_le_bytes(id),
        u32::from(VENDOR_ID) | u32::from(DEVICE_ID) << 16,
        "mtty's vendor/device id through {}",
        socket.display()
    );
}

#[test]
fn a_restarted_parent_brings_back_its_auto_definitions_with_the_same_uuid_and_socket() {
    let d = Dirs::new("defs-restart");
    let defined = d.json_ok(&["define", "--auto", "--param", "port0=loopback", "mtty-2"]);
    let uuid: Uuid = defined["uuid"].as_str().unwrap().parse().unwrap();
    assert_eq!(defined["auto"], true);
    assert_eq!(defined["file"], d.definition(uuid).display().to_string());
    let file = std::fs::read(d.definition(uuid)).expect("the definition file");

    for round in ["first start", "restart"] {
        let (parent, running) = d.serve(&[]);
        assert_eq!(running.len(), 1, "{round}: {running:?}");
        assert_eq!(running[0].uuid, uuid, "{round}: the same UUID");
        assert_eq!(
            running[0].socket,
            d.socket(uuid),
            "{round}: the same socket"
        );
        assert_eq!(
            running[0].params["port0"], "loopback",
            "{round}: its params"
        );
        assert_serves_an_mtty(&d.socket(uuid));
        let (states, listing) = d.defined_states();
        assert_eq!(
            states,
            vec![(uuid, "running".to_string(), Some(d.socket(uuid)))],
            "{round}"
        );
        assert_eq!(listing["parent_running"], true);
        assert!(
            parent
                .stdout()
                .contains(&format!("{uuid} mtty-2 {}", d.socket(uuid).display())),
            "{round}: serve announces it: {}",
            parent.stdout()
        );
        assert!(parent.terminate().success(), "{round}: clean exit");
        assert!(!d.socket(uuid).exists(), "{round}: the socket goes with it");
        assert_eq!(
            std::fs::read(d.definition(uuid)).unwrap(),
            file,
            "{round}: the definition is never rewritten"
        );
    }
    let (states, listing) = d.defined_states();
    assert_eq!(states, vec![(uuid, "stopped".to_string(), None)]);
    assert_eq!(listing["parent_running"], false);
}

#[test]
fn definitions_that_cannot_start_are_reported_and_the_others_start() {
    let d = Dirs::new("defs-broken");
    // Sorted by UUID, `fits` takes 2 of the 3 ports and `no_room` finds 1 left.
    let fits = Uuid::parse_str("11111111-1111-4111-8111-111111111111").unwrap();
    let no_room = Uuid::parse_str("22222222-2222-4222-8222-222222222222").unwrap();
    let bad_param = Uuid::parse_str("33333333-3333-4333-8333-333333333333").unwrap();
    let manual = Uuid::parse_str("44444444-4444-4444-8444-444444444444").unwrap();
    let corrupt = Uuid::parse_str("55555555-5555-4555-8555-555555555555").unwrap();
    for (uuid, ty, extra) in [
        (fits, "mtty-2", vec!["--auto"]),
        (no_room, "mtty-2", vec!["--auto"]),
        (
            bad_param,
            "mtty-1",
            vec!["--auto", "--param", "port7=loopback"],
        ),
        (manual, "mtty-1", vec![]),
    ] {
        let u = uuid.to_string();
        d.json_ok(&[&["define", "--uuid", &u, ty][..], &extra].concat());
    }
    // Edited by hand: cut short, and a file not named after a UUID.
    let garbage = b"{\"type\": \"mtty-1\", \"auto\": tr";
    std::fs::write(d.definition(corrupt), garbage).unwrap();
    std::fs::write(
        d.defs.join("spare-card.json"),
        br#"{"type":"mtty-1","auto":true}"#,
    )
    .unwrap();

    let (parent, running) = d.serve(&["--max-ports", "3"]);
    let uuids: Vec<Uuid> = running.iter().map(|i| i.uuid).collect();
    assert_eq!(uuids, vec![fits], "only the one that can start runs");
    assert_serves_an_mtty(&d.socket(fits));
    let log = parent.stderr();
    for (what, needle) in [
        ("budget", format!("{no_room} (")),
        ("budget detail", "1 of 3 free".to_string()),
        ("bad parameter", format!("{bad_param} (")),
        (
            "corrupt file",
            format!("{corrupt}.json: not a valid definition"),
        ),
        (
            "misnamed file",
            "spare-card.json: not named UUID.json".to_string(),
        ),
    ] {
        assert!(
            log.contains(&needle),
            "{what} is reported ({needle}):\n{log}"
        );
    }

    let (states, listing) = d.defined_states();
    let state = |u: Uuid| states.iter().find(|s| s.0 == u).map(|s| s.1.as_str());
    assert_eq!(state(fits), Some("running"));
    for u in [no_room, bad_param, manual] {
        assert_eq!(state(u), Some("stopped"), "{u}");
    }
    let unreadable = listing["unreadable"].as_array().expect("unreadable");
    let names: Vec<&str> = unreadable
        .iter()
        .map(|u| u["error"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["EBADMSG", "EINVAL"], "{unreadable:?}");

    // The corrupt file is never replaced, by a define or by anything else.
    let msg = d.json_err(
        &["define", "--uuid", &corrupt.to_string(), "mtty-1"],
        "EEXIST",
    );
    assert!(msg.contains(&corrupt.to_string()), "{msg}");
    assert_eq!(std::fs::read(d.definition(corrupt)).unwrap(), garbage);
    let msg = d.json_err(&["start", &corrupt.to_string()], "EBADMSG");
    assert!(msg.contains("not a valid definition"), "{msg}");

    // start / stop a definition that is not automatic; its definition stays.
    let started = d.json_ok(&["start", &manual.to_string()]);
    assert_eq!(started["socket"], d.socket(manual).display().to_string());
    assert_serves_an_mtty(&d.socket(manual));
    let (states, _) = d.defined_states();
    assert!(states.contains(&(manual, "running".into(), Some(d.socket(manual)))));
    d.json_err(&["start", &manual.to_string()], "EEXIST");
    d.json_err(&["start", &no_room.to_string()], "ENOSPC");
    d.json_ok(&["stop", &manual.to_string()]);
    assert!(!d.socket(manual).exists());
    let (states, _) = d.defined_states();
    assert!(states.contains(&(manual, "stopped".into(), None)));

    // undefine removes the file, nothing else.
    let undefined = d.json_ok(&["undefine", &manual.to_string()]);
    assert_eq!(
        undefined["file"],
        d.definition(manual).display().to_string()
    );
    assert!(!d.definition(manual).exists());
    d.json_err(&["undefine", &manual.to_string()], "ENOENT");
    d.json_err(&["start", &manual.to_string()], "ENOENT");
    let (states, _) = d.defined_states();
    assert!(states.iter().all(|s| s.0 != manual));

    assert!(parent.terminate().success());
    assert_eq!(std::fs::read(d.definition(corrupt)).unwrap(), garbage);
    assert!(d.defs.join("spare-card.json").exists());
}

#[test]
fn with_json_every_failure_is_a_json_error_with_errno_and_name() {
    let d = Dirs::new("defs-json");
    let u = Uuid::new_v4().to_string();
    // No parent runs: every control-socket command says so, as JSON.
    for args in [
        vec!["types"],
        vec!["list"],
        vec!["create", "mtty-1"],
        vec!["remove", &u],
        vec!["start", &u],
        vec!["stop", &u],
    ] {
        let msg = d.json_err(&args, "ENOENT");
        assert!(msg.contains("control.sock"), "{args:?}: {msg}");
    }
    // Bad input, refused before anything is written.
    let msg = d.json_err(&["define", "mtty-9"], "EINVAL");
    assert!(msg.contains("mtty-9") && msg.contains("mtty-2"), "{msg}");
    d.json_err(&["define", "--param", "port0", "mtty-1"], "EINVAL");
    d.json_err(&["create", "--param", "port0", "mtty-1"], "EINVAL");
    d.json_err(&["undefine", &u], "ENOENT");
    assert!(!d.defs.exists() || std::fs::read_dir(&d.defs).unwrap().count() == 0);
    // Listing definitions needs no parent.
    let listing = d.json_ok(&["list", "--defined"]);
    assert_eq!(listing["parent_running"], false);

    // A running parent's refusals carry its errno.
    let (parent, _) = d.serve(&[]);
    let created = d.json_ok(&["create", "--uuid", &u, "mtty-1"]);
    assert_eq!(created["uuid"], u);
    d.json_err(&["create", "--uuid", &u, "mtty-1"], "EEXIST");
    d.json_err(&["create", "mtty-3"], "EINVAL");
    let _client = vfio_user::Client::new(&d.socket(u.parse().unwrap())).expect("connect");
    let msg = d.json_err(&["remove", &u], "EBUSY");
    assert!(msg.contains("pid"), "names who holds it: {msg}");
    assert_eq!(d.json_ok(&["remove", "--force", &u])["uuid"], u);

    // Without --json, the same failure is text on stderr and nothing on stdout.
    let out = d.mtty(&["remove", &u]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("no instance {u}")) && stderr.contains("ENOENT"));
    assert!(parent.terminate().success());
}
