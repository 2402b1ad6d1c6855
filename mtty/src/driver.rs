//! The mtty parent driver: its types, the global port budget and the per-port consoles
//! chosen at create time (`port0=socket:/path`, `port1=pty`, …).

use mdev::parent::{Budget, CreateParams, MdevDriver, MdevType, NewDevice};
use mdev::DeviceError;
use uuid::Uuid;

use crate::console::ConsoleSpec;
use crate::device::new_mtty;
use crate::types::{MttyType, TYPES};

/// Default number of ports shared by all instances (the kernel sample's MAX_MTTYS).
pub const DEFAULT_MAX_PORTS: u64 = 24;

/// Name of the driver (and of its socket directory).
pub const DRIVER_NAME: &str = "mtty";

/// The mtty driver.
pub struct MttyDriver {
    ports: Budget,
}

impl MttyDriver {
    /// A driver whose instances share `max_ports` ports.
    pub fn new(max_ports: u64) -> Self {
        MttyDriver {
            ports: Budget::new("mtty ports", max_ports),
        }
    }

    /// The port budget.
    pub fn budget(&self) -> &Budget {
        &self.ports
    }
}

/// The console of each of `ty`'s ports from the create parameters: `portN=SPEC` (or
/// `consoleN=SPEC`), loopback when absent.
pub fn consoles_from_params(
    ty: &MttyType,
    params: &CreateParams,
) -> Result<Vec<ConsoleSpec>, DeviceError> {
    let mut consoles = vec![ConsoleSpec::Loopback; ty.ports];
    for (key, value) in params {
        let index = key
            .strip_prefix("port")
            .or_else(|| key.strip_prefix("console"))
            .and_then(|n| n.parse::<usize>().ok());
        let Some(slot) = index.and_then(|i| consoles.get_mut(i)) else {
            log::warn!(
                "mtty: parameter '{key}' refused ({} has {} port(s))",
                ty.name,
                ty.ports
            );
            return Err(DeviceError::InvalidArgument(
                "unknown mtty parameter (port0=…, port1=… within the type's ports)",
            ));
        };
        *slot = value.parse().map_err(|e| {
            log::warn!("mtty: {key}: {e}");
            DeviceError::InvalidArgument("console is loopback, terminal, socket:PATH or pty")
        })?;
    }
    Ok(consoles)
}

impl MdevDriver for MttyDriver {
    fn name(&self) -> &str {
        DRIVER_NAME
    }

    fn types(&self) -> Vec<MdevType> {
        TYPES
            .iter()
            .map(|t| {
                MdevType::vfio_pci(t.name, t.description(), self.ports.free() / t.ports as u64)
            })
            .collect()
    }

    fn create(
        &self,
        type_name: &str,
        uuid: Uuid,
        params: &CreateParams,
    ) -> Result<NewDevice, DeviceError> {
        let ty = MttyType::by_name(type_name).ok_or(DeviceError::InvalidArgument(
            "unknown mtty type (mtty-1, mtty-2)",
        ))?;
        let consoles = consoles_from_params(ty, params)?;
        let reservation = self.ports.take(ty.ports as u64).map_err(|e| {
            DeviceError::NoSpace(format!(
                "mtty port budget exhausted: {} wanted, {} of {} free",
                e.wanted, e.free, e.total
            ))
        })?;
        // On failure the reservation drops with the half-built device: the ports go back.
        let device = new_mtty(&format!("mtty {uuid}"), &consoles, Some(reservation))?;
        Ok(NewDevice {
            device: Box::new(device),
            set_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> CreateParams {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn availability_is_free_ports_over_ports_per_type() {
        let d = MttyDriver::new(5);
        let avail = |d: &MttyDriver| -> Vec<u64> {
            d.types().iter().map(|t| t.available_instances).collect()
        };
        assert_eq!(avail(&d), vec![5, 2]);
        let a = d
            .create("mtty-2", Uuid::new_v4(), &CreateParams::new())
            .unwrap();
        assert_eq!(avail(&d), vec![3, 1]);
        drop(a);
        assert_eq!(d.budget().free(), 5);
    }

    #[test]
    fn exhausted_budget_and_bad_params_take_nothing() {
        let d = MttyDriver::new(3);
        let _a = d
            .create("mtty-2", Uuid::new_v4(), &CreateParams::new())
            .unwrap();
        let err = d
            .create("mtty-2", Uuid::new_v4(), &CreateParams::new())
            .err()
            .unwrap();
        assert_eq!(err.errno(), libc::ENOSPC);
        assert!(err.to_string().contains("1 of 3 free"), "{err}");
        for bad in [
            params(&[("port1", "loopback")]),
            params(&[("port0", "tcp:9")]),
            params(&[("speed", "9600")]),
        ] {
            let e = d.create("mtty-1", Uuid::new_v4(), &bad).err().unwrap();
            assert_eq!(e.errno(), libc::EINVAL);
        }
        assert_eq!(
            d.create("mtty-3", Uuid::new_v4(), &CreateParams::new())
                .err()
                .unwrap()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(d.budget().free(), 1);
    }

    #[test]
    fn a_console_that_fails_to_start_returns_its_ports() {
        let d = MttyDriver::new(2);
        let p = params(&[("port0", "socket:/nonexistent-dir/x.sock")]);
        assert!(d.create("mtty-1", Uuid::new_v4(), &p).is_err());
        assert_eq!(d.budget().free(), 2);
    }
}
