//! Graceful removal through real sockets (issue #13): `remove` of an instance that clients
//! hold asks every connection that routed the device request interrupt (REQ) to let go, once,
//! refuses newcomers while it waits, and removes the instance when they have closed; a holder
//! that cannot be asked, or does not let go in time, gets EBUSY naming it (or is closed when
//! forced) and leaves nothing half-removed; the parent's shutdown asks every instance's
//! clients first, then stops, and can be cut short.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdev::irq::{IrqIndex, SetIrqsFlags};
use mdev::parent::{
    Budget, ControlClient, ControlServer, CreateParams, MdevDriver, MdevType, NewDevice, Parent,
    ParentError, Reservation,
};
use mdev::pci::PciDevice;
use mdev::wire::{self, Command};
use mdev::{ConnectionId, Device, DeviceError, Interrupts, RegionInfo, SetContext};
use mdev_tests::probe_device::{HookLog, ProbeDevice, ProbeOptions};
use mdev_tests::{init_logging, wait_event, wait_until, RawClient, ScratchDir};
use uuid::Uuid;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A probe device holding one unit of its driver's budget until it drops.
struct Budgeted {
    probe: PciDevice<ProbeDevice>,
    _reservation: Reservation,
}

impl Device for Budgeted {
    fn region_info(&self, index: u32) -> RegionInfo {
        self.probe.region_info(index)
    }
    fn interrupts(&self) -> &Arc<Interrupts> {
        self.probe.interrupts()
    }
    fn read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.probe.read(region, offset, data)
    }
    fn write(&mut self, region: u32, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.probe.write(region, offset, data)
    }
    fn open_device(&mut self, ctx: &SetContext) -> Result<(), DeviceError> {
        self.probe.open_device(ctx)
    }
    fn close_device(&mut self, ctx: &SetContext) {
        self.probe.close_device(ctx)
    }
    fn connection_closed(&mut self, owner: ConnectionId) {
        self.probe.connection_closed(owner)
    }
}

/// A driver of budgeted probe devices whose hooks all land in one log.
struct ProbeDriver {
    log: HookLog,
    budget: Budget,
}

impl MdevDriver for ProbeDriver {
    fn name(&self) -> &str {
        "probe"
    }
    fn types(&self) -> Vec<MdevType> {
        vec![MdevType::vfio_pci(
            "probe",
            "a probe device".into(),
            self.budget.free(),
        )]
    }
    fn create(
        &self,
        _type_name: &str,
        uuid: Uuid,
        _params: &CreateParams,
    ) -> Result<NewDevice, DeviceError> {
        let reservation = self
            .budget
            .take(1)
            .map_err(|e| DeviceError::NoSpace(e.to_string()))?;
        let probe = ProbeDevice::new(&uuid.to_string(), self.log.clone(), ProbeOptions::default());
        Ok(NewDevice {
            device: Box::new(Budgeted {
                probe,
                _reservation: reservation,
            }),
            set_key: None,
        })
    }
}

struct Fixture {
    parent: Arc<Parent>,
    log: HookLog,
    budget: Budget,
    _dir: ScratchDir,
}

impl Fixture {
    fn new(label: &str) -> Self {
        init_logging();
        let dir = ScratchDir::new(label);
        let log = HookLog::default();
        let budget = Budget::new("probes", 4);
        let driver = Arc::new(ProbeDriver {
            log: log.clone(),
            budget: budget.clone(),
        });
        let parent = Parent::new(driver, dir.path()).expect("parent");
        Fixture {
            parent,
            log,
            budget,
            _dir: dir,
        }
    }

    /// A new instance: its UUID and socket.
    fn create(&self) -> (Uuid, std::path::PathBuf) {
        let info = self
            .parent
            .create("probe", None, &CreateParams::new())
            .expect("create");
        (info.uuid, info.socket)
    }

    fn leaving(&self, uuid: Uuid) -> bool {
        self.parent
            .instances()
            .iter()
            .any(|i| i.uuid == uuid && i.leaving)
    }

    /// Removes `uuid` on another thread, as a control client's request does.
    fn remove_in_background(
        &self,
        uuid: Uuid,
        force: bool,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Result<(), ParentError>> {
        let parent = self.parent.clone();
        std::thread::spawn(move || parent.remove_within(uuid, force, timeout))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.parent.shutdown();
    }
}

/// Routes vector 0 of `index` to a fresh eventfd, as QEMU does for INTx and REQ.
fn route(c: &mut RawClient, index: IrqIndex) -> EventFd {
    let e = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let msg = wire::SetIrqsMsg {
        argsz: std::mem::size_of::<wire::SetIrqsMsg>() as u32,
        flags: (SetIrqsFlags::DATA_EVENTFD | SetIrqsFlags::ACTION_TRIGGER).bits(),
        index: index as u32,
        start: 0,
        count: 1,
    };
    let r = c.request(
        Command::DeviceSetIrqs as u16,
        0,
        msg.as_slice(),
        &[e.as_raw_fd()],
    );
    assert_eq!(r.errno(), None, "SET_IRQS {index:?}");
    e
}

/// `e` holds no further signal (give a late delivery time to arrive first).
fn quiet(e: &EventFd) -> bool {
    std::thread::sleep(Duration::from_millis(100));
    e.read().is_err()
}

fn me() -> (u32, u32) {
    // SAFETY: getuid has no preconditions and cannot fail.
    (std::process::id(), unsafe { libc::getuid() })
}

#[test]
fn remove_asks_each_connection_that_routed_req_once_and_finishes_when_they_close() {
    let f = Fixture::new("rm-asks");
    let (uuid, socket) = f.create();
    let name = uuid.to_string();
    let mut vmm = RawClient::open(&socket);
    let _intx = route(&mut vmm, IrqIndex::Intx);
    let vmm_req = route(&mut vmm, IrqIndex::Req);
    let mut second = RawClient::open(&socket);
    let second_req = route(&mut second, IrqIndex::Req);
    assert_eq!(f.budget.free(), 3);

    let removal = f.remove_in_background(uuid, false, Duration::from_secs(20));
    assert_eq!(wait_event(&vmm_req), 1, "the VMM is asked once");
    assert_eq!(wait_event(&second_req), 1, "so is the other client");
    assert!(f.leaving(uuid), "listed as leaving while it waits");
    // A newcomer is refused while the instance leaves, never accepted and then closed.
    let mut late = RawClient::connect(&socket);
    assert_eq!(late.version(b"{}\0").errno(), Some(libc::ENODEV as u32));
    // A second removal does not start another departure.
    let again = f
        .parent
        .remove_within(uuid, true, Duration::ZERO)
        .unwrap_err();
    assert_eq!(again.errno(), libc::EALREADY);
    // The clients still work until they let go; then the removal completes.
    assert!(vmm.read32(0, 0).is_ok());
    drop(vmm);
    assert!(quiet(&second_req), "asked once, not again");
    drop(second);
    removal.join().unwrap().expect("removed once both let go");
    assert!(f.parent.instances().is_empty());
    assert_eq!((f.log.opens(&name), f.log.closes(&name)), (1, 1));
    assert_eq!(f.budget.free(), 4, "its budget returned");
    assert!(quiet(&vmm_req));
}

#[test]
fn a_holder_that_cannot_be_asked_makes_remove_fail_at_once_and_disturbs_nobody() {
    let f = Fixture::new("rm-unaskable");
    let (uuid, socket) = f.create();
    let mut vmm = RawClient::open(&socket);
    let vmm_req = route(&mut vmm, IrqIndex::Req);
    let _viewer = RawClient::open(&socket); // routes no REQ
    let t = Instant::now();
    let err = f
        .parent
        .remove_within(uuid, false, Duration::from_secs(20))
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "refused at once, no wait"
    );
    assert_eq!(err.errno(), libc::EBUSY);
    let (pid, uid) = me();
    let text = err.to_string();
    assert!(text.contains(&format!("pid {pid}, uid {uid}")), "{text}");
    assert!(text.contains("cannot be asked"), "{text}");
    assert!(quiet(&vmm_req), "nobody was asked");
    assert!(!f.leaving(uuid));
    let mut newcomer = RawClient::open(&socket);
    assert!(newcomer.read32(0, 0).is_ok(), "the instance serves on");
}

#[test]
fn a_holder_that_does_not_let_go_in_time_gets_ebusy_then_force_closes_it() {
    let f = Fixture::new("rm-timeout");
    let (uuid, socket) = f.create();
    let name = uuid.to_string();
    let mut stubborn = RawClient::open(&socket);
    let req = route(&mut stubborn, IrqIndex::Req);
    let wait = Duration::from_millis(300);
    let t = Instant::now();
    let err = f.parent.remove_within(uuid, false, wait).unwrap_err();
    assert!(t.elapsed() >= wait, "it waited");
    assert_eq!(err.errno(), libc::EBUSY);
    let (pid, uid) = me();
    let text = err.to_string();
    assert!(text.contains(&format!("pid {pid}, uid {uid}")), "{text}");
    assert!(text.contains("did not let go within 0.3 s"), "{text}");
    assert_eq!(wait_event(&req), 1, "it was asked once");
    // Nothing half-removed: the holder still works, newcomers are accepted again.
    assert!(!f.leaving(uuid));
    assert!(stubborn.read32(0, 0).is_ok());
    let newcomer = RawClient::open(&socket);
    drop(newcomer);
    assert_eq!(f.log.closes(&name), 0, "never closed while held");

    // Forced: asked again, then closed when the wait ends.
    f.parent
        .remove_within(uuid, true, Duration::from_millis(200))
        .expect("forced removal");
    assert_eq!(wait_event(&req), 1);
    assert!(stubborn.closed_by_server(), "its connection was closed");
    assert_eq!((f.log.opens(&name), f.log.closes(&name)), (1, 1));
    assert_eq!(f.budget.free(), 4);
}

#[test]
fn a_forced_remove_closes_holders_that_cannot_be_asked_without_waiting() {
    let f = Fixture::new("rm-force");
    let (uuid, socket) = f.create();
    let mut viewer = RawClient::open(&socket);
    let t = Instant::now();
    f.parent
        .remove_within(uuid, true, Duration::from_secs(20))
        .expect("forced removal");
    assert!(t.elapsed() < Duration::from_secs(5), "nobody to wait for");
    assert!(viewer.closed_by_server());
    assert_eq!(f.budget.free(), 4);
}

#[test]
fn the_control_socket_carries_the_wait_and_names_the_holder() {
    let f = Fixture::new("rm-control");
    let _control = ControlServer::start(f.parent.clone()).expect("control socket");
    let (uuid, socket) = f.create();
    let mut stubborn = RawClient::open(&socket);
    let req = route(&mut stubborn, IrqIndex::Req);
    let mut client = ControlClient::connect(f.parent.dir()).expect("connect");
    let err = client
        .remove_within(uuid, false, Some(Duration::from_millis(200)))
        .unwrap_err();
    assert_eq!((err.errno, err.name.as_str()), (libc::EBUSY, "EBUSY"));
    assert!(err.message.contains(&format!("pid {}", me().0)), "{err}");
    assert_eq!(wait_event(&req), 1);
    assert!(!client.list().expect("list")[0].leaving);
    // The holder lets go when asked this time: the default wait (the parent's) suffices.
    let asked = std::thread::spawn(move || {
        wait_event(&req);
        drop(stubborn);
    });
    client.remove(uuid, false).expect("removed");
    asked.join().unwrap();
    assert!(client.list().expect("list").is_empty());
}

#[test]
fn a_graceful_shutdown_asks_every_instance_first_then_stops() {
    let f = Fixture::new("rm-shutdown");
    let (a, a_socket) = f.create();
    let (b, b_socket) = f.create();
    let mut ca = RawClient::open(&a_socket);
    let mut cb = RawClient::open(&b_socket);
    let (ra, rb) = (route(&mut ca, IrqIndex::Req), route(&mut cb, IrqIndex::Req));
    let parent = f.parent.clone();
    let t = Instant::now();
    let stopping = std::thread::spawn(move || parent.shutdown_gracefully(Duration::from_secs(20)));
    // Both are asked while both still hold their instance: nobody is stopped first.
    assert_eq!(wait_event(&ra), 1);
    assert_eq!(wait_event(&rb), 1);
    assert!(f.leaving(a) && f.leaving(b));
    assert!(ca.read32(0, 0).is_ok() && cb.read32(0, 0).is_ok());
    drop(ca);
    drop(cb);
    stopping.join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "done once they let go"
    );
    assert!(f.parent.instances().is_empty());
    for u in [a, b] {
        assert_eq!(f.log.closes(&u.to_string()), 1);
    }
    assert_eq!(f.budget.free(), 4);
}

#[test]
fn forcing_cuts_a_graceful_shutdown_short() {
    let f = Fixture::new("rm-force-stop");
    let (_, socket) = f.create();
    let mut stubborn = RawClient::open(&socket);
    let req = route(&mut stubborn, IrqIndex::Req);
    let parent = f.parent.clone();
    let stopping = std::thread::spawn(move || parent.shutdown_gracefully(Duration::from_secs(60)));
    assert_eq!(wait_event(&req), 1);
    let t = Instant::now();
    f.parent.force();
    stopping.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "no 60 s wait");
    assert!(stubborn.closed_by_server());
    assert!(f.parent.instances().is_empty());
    wait_until("the budget returned", || f.budget.free() == 4);
}
