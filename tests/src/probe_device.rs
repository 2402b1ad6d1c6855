//! A small PCI device for framework tests: a 4 KiB trapped register BAR, a 64-bit memory BAR
//! backed by shared memory, an I/O BAR, INTx and MSI, and lifecycle hooks that record what
//! the framework called, in order, from which thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mdev::pci::{
    Bar, BarSpec, InterruptLayout, MsiCapability, PciConfig, PciDevice, PciFunction, PciIdentity,
};
use mdev::{DeviceError, Interrupts, SetContext, SharedMemory};

/// Vendor id of the probe device (QEMU's test vendor).
pub const PROBE_VENDOR: u16 = 0x1234;
/// Device id of the probe device.
pub const PROBE_DEVICE: u16 = 0x5eed;
/// Size of the trapped register BAR (BAR0).
pub const REG_BAR_SIZE: u64 = 4096;
/// Size of the shared-memory BAR (BAR2, 64-bit).
pub const MEM_BAR_SIZE: u64 = 1 << 20;
/// Writing a non-zero value here raises the interrupt line; zero lowers it.
pub const REG_IRQ_LINE: u64 = 0x100;

/// One recorded hook call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookEvent {
    /// `open_device` started for the named device.
    OpenStart(String),
    /// `open_device` finished.
    OpenEnd(String),
    /// `close_device` started.
    CloseStart(String),
    /// `close_device` finished.
    CloseEnd(String),
    /// `reset` ran.
    Reset(String),
}

/// The ordered record of hook calls, shared by several devices.
#[derive(Clone, Default)]
pub struct HookLog(Arc<Mutex<Vec<HookEvent>>>);

impl HookLog {
    /// Appends an event.
    pub fn push(&self, e: HookEvent) {
        self.0.lock().unwrap().push(e);
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<HookEvent> {
        self.0.lock().unwrap().clone()
    }

    /// How many `open_device` calls completed for `name`.
    pub fn opens(&self, name: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| **e == HookEvent::OpenEnd(name.into()))
            .count()
    }

    /// How many `close_device` calls completed for `name`.
    pub fn closes(&self, name: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| **e == HookEvent::CloseEnd(name.into()))
            .count()
    }
}

/// How a probe device behaves.
#[derive(Clone, Default)]
pub struct ProbeOptions {
    /// Number of upcoming `open_device` calls that fail with EIO.
    pub fail_opens: Arc<AtomicUsize>,
    /// Time each hook takes, to widen race windows in ordering tests.
    pub hook_time: Option<Duration>,
    /// When set, `open_device` waits here until every party has arrived.
    pub rendezvous: Option<Arc<Rendezvous>>,
    /// Number of upcoming `open_device` calls that panic.
    pub panic_opens: Arc<AtomicUsize>,
    /// Number of upcoming `close_device` calls that panic.
    pub panic_closes: Arc<AtomicUsize>,
}

/// Takes one from `n` if it is not zero; true when it did.
fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

/// A meeting point with a deadline: `n` parties each call [`Rendezvous::arrive`] and it returns
/// true once all have arrived, or false after the deadline. Two devices whose hooks meet here
/// prove their hooks ran at the same time, i.e. did not contend for one lock.
pub struct Rendezvous {
    parties: usize,
    arrived: Mutex<usize>,
    cv: std::sync::Condvar,
    met: AtomicUsize,
}

impl Rendezvous {
    /// A rendezvous of `parties`.
    pub fn new(parties: usize) -> Arc<Self> {
        Arc::new(Rendezvous {
            parties,
            arrived: Mutex::new(0),
            cv: std::sync::Condvar::new(),
            met: AtomicUsize::new(0),
        })
    }

    /// Arrives and waits (at most 10 s) for the others.
    pub fn arrive(&self) -> bool {
        let mut n = self.arrived.lock().unwrap();
        *n += 1;
        self.cv.notify_all();
        let (n, _) = self
            .cv
            .wait_timeout_while(n, Duration::from_secs(10), |n| *n < self.parties)
            .unwrap();
        let ok = *n >= self.parties;
        if ok {
            self.met.fetch_add(1, Ordering::AcqRel);
        }
        ok
    }

    /// How many parties saw everyone arrive.
    pub fn met(&self) -> usize {
        self.met.load(Ordering::Acquire)
    }
}

/// The device-specific part of the probe device (served as a [`PciDevice<ProbeDevice>`]).
pub struct ProbeDevice {
    name: String,
    log: HookLog,
    opts: ProbeOptions,
    regs: Vec<u8>,
    irqs: Arc<Interrupts>,
    /// Bumped by `open_device`, so tests can tell whether device state was reset.
    generation: u32,
}

impl ProbeDevice {
    /// A probe device named `name` recording into `log`: a 4 KiB trapped register BAR0, a
    /// 64-bit prefetchable memory BAR2 backed by shared memory, a 16-byte I/O BAR4, INTx and
    /// one MSI vector.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(name: &str, log: HookLog, opts: ProbeOptions) -> PciDevice<ProbeDevice> {
        let mut config = PciConfig::new(&PciIdentity {
            subsystem_id: 1,
            ..PciIdentity::new(PROBE_VENDOR, PROBE_DEVICE)
        });
        config
            .add_capability(&MsiCapability {
                vectors: 1,
                address_64: true,
                per_vector_mask: false,
            })
            .expect("msi");
        let mem = Arc::new(SharedMemory::new(name, MEM_BAR_SIZE as usize).expect("memfd"));
        let bars = vec![
            Bar::trapped(0, BarSpec::memory32(REG_BAR_SIZE)),
            Bar::memory(2, BarSpec::prefetchable(MEM_BAR_SIZE, true), mem),
            Bar::trapped(4, BarSpec::io(16)),
        ];
        let irqs = InterruptLayout {
            intx: true,
            msi_vectors: 1,
            msix_vectors: 0,
        };
        PciDevice::new(config, bars, irqs, |irqs| {
            Ok(ProbeDevice {
                name: name.to_string(),
                log,
                opts,
                regs: vec![0; REG_BAR_SIZE as usize],
                irqs: irqs.clone(),
                generation: 0,
            })
        })
        .expect("probe device")
    }

    fn pause(&self) {
        if let Some(t) = self.opts.hook_time {
            std::thread::sleep(t);
        }
    }
}

impl PciFunction for ProbeDevice {
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        match bar {
            0 if offset == 0 && data.len() == 4 => {
                data.copy_from_slice(&self.generation.to_le_bytes())
            }
            0 => {
                let o = offset as usize;
                data.copy_from_slice(&self.regs[o..o + data.len()]);
            }
            _ => data.fill(0xff),
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        let o = offset as usize;
        self.regs[o..o + data.len()].copy_from_slice(data);
        if offset == REG_IRQ_LINE {
            self.irqs.update_line(data.iter().any(|b| *b != 0));
        }
    }

    fn open_device(&mut self, _ctx: &SetContext) -> Result<(), DeviceError> {
        self.log.push(HookEvent::OpenStart(self.name.clone()));
        self.pause();
        if let Some(r) = &self.opts.rendezvous {
            r.arrive();
        }
        if take_one(&self.opts.panic_opens) {
            panic!("probe {}: open_device panics as asked", self.name);
        }
        if take_one(&self.opts.fail_opens) {
            self.log
                .push(HookEvent::OpenEnd(format!("{}:failed", self.name)));
            return Err(DeviceError::Io(std::io::Error::from_raw_os_error(
                libc::EIO,
            )));
        }
        self.generation += 1;
        self.log.push(HookEvent::OpenEnd(self.name.clone()));
        Ok(())
    }

    fn close_device(&mut self, _ctx: &SetContext) {
        self.log.push(HookEvent::CloseStart(self.name.clone()));
        self.pause();
        if take_one(&self.opts.panic_closes) {
            panic!("probe {}: close_device panics as asked", self.name);
        }
        self.log.push(HookEvent::CloseEnd(self.name.clone()));
    }

    fn reset(&mut self) {
        self.regs.fill(0);
        self.log.push(HookEvent::Reset(self.name.clone()));
    }

    fn describe(&self) -> String {
        format!("probe {}", self.name)
    }
}

/// A probe device registered in a [`DeviceSets`] and served on `DIR/NAME.sock`.
pub struct ServedProbe {
    /// The server (dropping it stops serving).
    pub server: mdev::server::DeviceServer,
    /// Its socket.
    pub path: std::path::PathBuf,
}

impl ServedProbe {
    /// The device's handle (open count, interrupts, set).
    pub fn handle(&self) -> &Arc<mdev::device_set::DeviceHandle> {
        self.server.handle()
    }
}

/// Registers a probe device `name` in `sets` (in the set `key`, a singleton set without one),
/// recording into `log`, and serves it on `dir/NAME.sock`.
pub fn serve_probe(
    sets: &mdev::device_set::DeviceSets,
    dir: &std::path::Path,
    name: &str,
    log: &HookLog,
    opts: ProbeOptions,
    key: Option<&str>,
) -> ServedProbe {
    let dev = ProbeDevice::new(name, log.clone(), opts);
    let handle = sets.register(
        name,
        Box::new(dev),
        key.map(mdev::device_set::DeviceSetKey::from),
    );
    let path = dir.join(format!("{name}.sock"));
    let server = mdev::server::DeviceServer::bind(&path, handle).expect("bind");
    ServedProbe { server, path }
}
