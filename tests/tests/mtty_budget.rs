//! The mtty port budget through the parent and its control socket: availability per type,
//! exhaustion with a clear error, and the budget exact after create/remove cycles, failed
//! creates and a client that dies in the middle of a message.

mod mtty_guest;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use mdev::parent::{ControlClient, ControlServer, CreateParams, Reply, CONTROL_SOCKET};
use mdev_tests::{wait_until, RawClient};
use mtty_guest::{harness, Harness};
use uuid::Uuid;

fn available(h: &Harness) -> Vec<u64> {
    h.parent
        .types()
        .iter()
        .map(|t| t.available_instances)
        .collect()
}

#[test]
fn budget_is_exact_after_create_remove_cycles_and_failed_creates() {
    let h = harness(5);
    assert_eq!(available(&h), vec![5, 2]);
    for _ in 0..3 {
        let a = h.create("mtty-2", &[]);
        let b = h.create("mtty-2", &[]);
        assert_eq!(available(&h), vec![1, 0]);
        let err = h
            .parent
            .create("mtty-2", None, &CreateParams::new())
            .unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
        assert!(
            err.to_string().contains("1 of 5 free"),
            "clear error: {err}"
        );
        let c = h.create("mtty-1", &[]);
        h.parent.remove(a.uuid, false).unwrap();
        h.parent.remove(b.uuid, false).unwrap();
        h.parent.remove(c.uuid, false).unwrap();
        assert_eq!(h.driver.budget().free(), 5);
    }
    let bad: CreateParams = [("port0".to_string(), "socket:/no/such/dir/s".to_string())].into();
    assert!(
        h.parent.create("mtty-1", None, &bad).is_err(),
        "console cannot bind"
    );
    let bad: CreateParams = [("port2".to_string(), "loopback".to_string())].into();
    assert_eq!(
        h.parent.create("mtty-2", None, &bad).unwrap_err().errno(),
        libc::EINVAL
    );
    let taken = h.create("mtty-1", &[]);
    assert_eq!(
        h.parent
            .create("mtty-1", Some(taken.uuid), &CreateParams::new())
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    h.parent.remove(taken.uuid, false).unwrap();
    assert_eq!(h.driver.budget().free(), 5, "failed creates took nothing");
}

#[test]
fn a_client_dying_mid_message_leaves_the_budget_exact_after_remove() {
    let h = harness(24);
    let info = h.create("mtty-2", &[]);
    let mut raw = RawClient::open(&info.socket);
    raw.send_raw(&[0x01, 0x00, 0x09]); // half a header, then gone
    drop(raw);
    let handle = h.parent.handle(info.uuid).unwrap();
    wait_until("crashed client closed", || handle.open_count() == 0);
    drop(handle);
    h.parent.remove(info.uuid, false).unwrap();
    assert_eq!(h.driver.budget().free(), 24);
}

#[test]
fn an_open_instance_is_busy_until_forced_and_its_ports_come_back() {
    let h = harness(24);
    let info = h.create("mtty-2", &[]);
    let _raw = RawClient::open(&info.socket);
    let handle = h.parent.handle(info.uuid).unwrap();
    wait_until("open", || handle.open_count() == 1);
    drop(handle);
    let busy = h.parent.remove(info.uuid, false).unwrap_err();
    assert_eq!(busy.errno(), libc::EBUSY);
    let me = std::process::id();
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    assert!(
        busy.to_string().contains(&format!("pid {me}, uid {uid}")),
        "the refusal names who holds it: {busy}"
    );
    let listed = h.parent.instances();
    let holders = &listed[0].holders;
    assert_eq!(holders.len(), 1);
    assert_eq!((holders[0].pid, holders[0].uid), (me, Some(uid)));
    assert!(
        !holders[0].driving,
        "a client that only negotiated is passive"
    );
    // The refused remove left the instance whole: it still serves new clients.
    let mut again = RawClient::open(&info.socket);
    assert!(again.read32(0, 0).is_ok());
    h.parent.remove(info.uuid, true).unwrap();
    assert_eq!(h.driver.budget().free(), 24);
}

#[test]
fn a_client_arriving_during_a_remove_is_refused_not_accepted_then_closed() {
    let h = harness(24);
    let info = h.create("mtty-1", &[]);
    let handle = h.parent.handle(info.uuid).unwrap();
    // The remove's first step (check idle, refuse new opens) is taken: a client that
    // connects now is turned away at VERSION with ENODEV.
    handle.retire(false).unwrap();
    let mut late = RawClient::connect(&info.socket);
    let r = late.version(b"{}\0");
    assert_eq!(r.errno(), Some(libc::ENODEV as u32));
    assert_eq!(handle.open_count(), 0);
    drop(handle);
    h.parent.remove(info.uuid, false).unwrap();
    assert_eq!(h.driver.budget().free(), 24);
}

#[test]
fn the_control_socket_lists_creates_and_removes() {
    let h = harness(4);
    let _control = ControlServer::start(h.parent.clone()).unwrap();
    let mut client = ControlClient::connect(h.dir.path()).unwrap();
    let types = client.types().unwrap();
    assert_eq!(types[1].name, "mtty-2");
    assert_eq!(types[1].available_instances, 2);
    let uuid = Uuid::new_v4();
    let params: CreateParams = [("port0".to_string(), "loopback".to_string())].into();
    let created = client.create("mtty-2", Some(uuid), &params).unwrap();
    assert_eq!(created.uuid, uuid);
    assert_eq!(created.params, params);
    assert_eq!(client.list().unwrap().len(), 1);
    assert!(
        client.create("mtty-2", None, &CreateParams::new()).is_ok(),
        "4 ports: a second mtty-2 fits"
    );
    let full = client
        .create("mtty-1", None, &CreateParams::new())
        .unwrap_err();
    assert_eq!((full.errno, full.name.as_str()), (libc::ENOSPC, "ENOSPC"));
    assert!(full.message.contains("0 of 4 free"), "{full}");
    // A parent without definitions cannot start one.
    let start = client.start(Uuid::new_v4()).unwrap_err();
    assert_eq!(start.errno, libc::ENOTSUP);
    client.remove(uuid, false).unwrap();
    let gone = client.remove(uuid, false).unwrap_err();
    assert_eq!((gone.errno, gone.name.as_str()), (libc::ENOENT, "ENOENT"));
    assert_eq!(h.driver.budget().free(), 2);
}

#[test]
fn the_control_socket_answers_garbage_with_a_typed_einval() {
    let h = harness(4);
    let _control = ControlServer::start(h.parent.clone()).unwrap();
    let mut s = UnixStream::connect(h.dir.path().join(CONTROL_SOCKET)).unwrap();
    writeln!(s, r#"{{"op":"format-disk"}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    match serde_json::from_str::<Reply>(&line).unwrap() {
        Reply::Error(e) => {
            assert_eq!((e.errno, e.name.as_str()), (libc::EINVAL, "EINVAL"));
            assert!(e.message.contains("bad request"), "{e}");
        }
        other => panic!("garbage answered with {other:?}"),
    }
    // The same connection still serves well-formed requests.
    writeln!(s, r#"{{"op":"types"}}"#).unwrap();
    line.clear();
    BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(matches!(
        serde_json::from_str::<Reply>(&line).unwrap(),
        Reply::Types(t) if t.len() == 2
    ));
}
