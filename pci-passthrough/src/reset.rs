//! Reset scopes as device sets, and the rules for resetting them.
//!
//! A device's reset scope is what `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` reports: the devices
//! a slot (or else bus) reset also resets. Devices with the same scope share one device set,
//! keyed by the sorted list of the scope's addresses.
//!
//! - A client's DEVICE_RESET uses the function-level reset when the device has one;
//!   otherwise it is a hot reset of the whole scope, allowed only when every device of the
//!   scope is served here (EPERM otherwise) and no other owner holds any of them open (EBUSY).
//! - On a device's first open it is reset ([`open_reset`]): its function-level reset, or a
//!   hot reset of the scope when the whole set is idle.
//! - On a device's last close it needs a reset (its function-level reset, when it has one,
//!   satisfies that at once); when the whole set is idle and a member still needs one, the
//!   scope is hot reset — the kernel's "try bus reset" rule.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use mdev::{DeviceError, DeviceSetKey, OwnerId, SetContext};

use crate::address::PciAddress;
use crate::host::AffectedDevice;

/// Separator of addresses in a set key.
const KEY_SEPARATOR: &str = ",";

/// The set key of a reset scope: its addresses, sorted, joined by commas.
pub fn scope_key(affected: &[AffectedDevice]) -> Option<DeviceSetKey> {
    if affected.is_empty() {
        return None;
    }
    let mut names: Vec<String> = affected.iter().map(|a| a.address.to_string()).collect();
    names.sort();
    names.dedup();
    Some(DeviceSetKey(names.join(KEY_SEPARATOR)))
}

/// How a reset is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetMethod {
    /// `VFIO_DEVICE_RESET`.
    Function,
    /// `VFIO_DEVICE_PCI_HOT_RESET` with the fds of these groups.
    Hot {
        /// Every group of the scope, sorted, without repeats.
        groups: Vec<u32>,
    },
}

/// Why a reset is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResetRefused {
    /// No function-level reset and no hot reset scope.
    #[error("the device has no reset method")]
    NoMethod,
    /// A device of the scope is not served by this process.
    #[error("{0} shares the reset scope but is not served here")]
    NotServed(PciAddress),
    /// A device of the set is open by another owner.
    #[error("another client holds a device of the reset scope open")]
    InUse,
}

impl From<ResetRefused> for DeviceError {
    fn from(r: ResetRefused) -> Self {
        match r {
            ResetRefused::NoMethod => DeviceError::NotSupported("the device has no reset method"),
            ResetRefused::NotServed(_) => {
                DeviceError::Io(std::io::Error::from_raw_os_error(libc::EPERM))
            }
            ResetRefused::InUse => {
                DeviceError::Busy("another client holds a device of the reset scope open")
            }
        }
    }
}

/// Checks that a hot reset of `scope` may run in `ctx`: every affected device is a member
/// of the set (members are named by address), and the set is idle or — with `requester` —
/// open only by `requester`.
pub fn plan_hot_reset(
    scope: &[AffectedDevice],
    ctx: &SetContext,
    requester: Option<OwnerId>,
) -> Result<ResetMethod, ResetRefused> {
    if scope.is_empty() {
        return Err(ResetRefused::NoMethod);
    }
    for a in scope {
        let name = a.address.to_string();
        if !ctx.members.iter().any(|m| m.name == name) {
            return Err(ResetRefused::NotServed(a.address));
        }
    }
    let allowed = match requester {
        Some(owner) => ctx.set_is_owned_by(owner),
        None => ctx.set_is_idle(),
    };
    if !allowed {
        return Err(ResetRefused::InUse);
    }
    let mut groups: Vec<u32> = scope.iter().map(|a| a.group).collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(ResetMethod::Hot { groups })
}

/// How a client's DEVICE_RESET is done: the function-level reset when there is one, else a
/// hot reset of the scope under [`plan_hot_reset`]'s rules.
pub fn plan_device_reset(
    flr: bool,
    scope: &[AffectedDevice],
    ctx: &SetContext,
    requester: Option<OwnerId>,
) -> Result<ResetMethod, ResetRefused> {
    if flr {
        return Ok(ResetMethod::Function);
    }
    plan_hot_reset(scope, ctx, requester)
}

/// How a device is reset when its first client opens it (vfio-pci resets a function as it
/// enables it): its function-level reset when it has one; otherwise, when this is the
/// set's first open (nothing of it is in use), a hot reset of the scope under
/// [`plan_hot_reset`]'s rules; else none (a hot reset would pull siblings from under their
/// clients).
pub fn open_reset(flr: bool, scope: &[AffectedDevice], ctx: &SetContext) -> Option<ResetMethod> {
    if flr {
        return Some(ResetMethod::Function);
    }
    plan_hot_reset(scope, ctx, None).ok()
}

/// Which devices of one reset scope need a reset, shared by the scope's devices. Only
/// touched from lifecycle hooks, which run under the set lock, so it is never contended.
#[derive(Debug, Default)]
pub struct ResetState {
    needs_reset: Mutex<BTreeMap<PciAddress, bool>>,
}

impl ResetState {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PciAddress, bool>> {
        self.needs_reset.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `device` as needing (or no longer needing) a reset.
    pub fn set_needs_reset(&self, device: PciAddress, needs: bool) {
        self.lock().insert(device, needs);
    }

    /// True when some device of the scope needs a reset.
    pub fn any_needs_reset(&self) -> bool {
        self.lock().values().any(|n| *n)
    }

    /// True when `device` needs a reset.
    pub fn needs_reset(&self, device: PciAddress) -> bool {
        self.lock().get(&device).copied().unwrap_or(false)
    }

    /// After a hot reset: nothing needs a reset any more.
    pub fn all_reset(&self) {
        for n in self.lock().values_mut() {
            *n = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdev::{ConnectionId, DeviceId, MemberState, Open};

    const A: OwnerId = OwnerId(100);
    const B: OwnerId = OwnerId(200);

    fn addr(dev: u8) -> PciAddress {
        PciAddress::from_devfn(0, 1, dev << 3)
    }

    fn scope() -> Vec<AffectedDevice> {
        vec![
            AffectedDevice {
                address: addr(2),
                group: 7,
            },
            AffectedDevice {
                address: addr(1),
                group: 7,
            },
        ]
    }

    fn member(dev: u8, opens: &[OwnerId]) -> MemberState {
        MemberState {
            opens: opens
                .iter()
                .enumerate()
                .map(|(i, o)| Open::new(ConnectionId(i as u64), *o))
                .collect(),
            ..MemberState::new(DeviceId(u64::from(dev)), &addr(dev).to_string())
        }
    }

    fn ctx(members: &[MemberState]) -> SetContext<'_> {
        SetContext {
            this: members[0].id,
            requester: Some(A),
            members,
        }
    }

    #[test]
    fn the_key_is_the_sorted_scope() {
        assert_eq!(scope_key(&scope()).unwrap().0, "0000:01:01.0,0000:01:02.0");
        assert_eq!(scope_key(&[]), None);
    }

    #[test]
    fn a_function_reset_needs_no_permission_from_the_set() {
        let m = [member(1, &[A]), member(2, &[B])];
        assert_eq!(
            plan_device_reset(true, &scope(), &ctx(&m), Some(A)),
            Ok(ResetMethod::Function)
        );
    }

    #[test]
    fn a_hot_reset_is_allowed_when_the_requester_owns_every_open_member() {
        let m = [member(1, &[A, A]), member(2, &[])];
        assert_eq!(
            plan_device_reset(false, &scope(), &ctx(&m), Some(A)),
            Ok(ResetMethod::Hot { groups: vec![7] })
        );
    }

    #[test]
    fn a_hot_reset_is_refused_while_another_owner_holds_a_member() {
        let m = [member(1, &[A]), member(2, &[B])];
        assert_eq!(
            plan_device_reset(false, &scope(), &ctx(&m), Some(A)),
            Err(ResetRefused::InUse)
        );
    }

    #[test]
    fn a_hot_reset_is_refused_when_a_scope_device_is_not_served_here() {
        let m = [member(1, &[A])];
        assert_eq!(
            plan_device_reset(false, &scope(), &ctx(&m), Some(A)),
            Err(ResetRefused::NotServed(addr(2)))
        );
        let e: DeviceError = ResetRefused::NotServed(addr(2)).into();
        assert_eq!(e.errno(), libc::EPERM);
        assert_eq!(DeviceError::from(ResetRefused::InUse).errno(), libc::EBUSY);
    }

    #[test]
    fn without_a_requester_only_an_idle_set_may_be_reset() {
        let busy = [member(1, &[]), member(2, &[A])];
        assert_eq!(
            plan_hot_reset(&scope(), &ctx(&busy), None),
            Err(ResetRefused::InUse)
        );
        let idle = [member(1, &[]), member(2, &[])];
        assert!(plan_hot_reset(&scope(), &ctx(&idle), None).is_ok());
    }

    #[test]
    fn no_method_without_flr_or_scope() {
        let m = [member(1, &[A])];
        assert_eq!(
            plan_device_reset(false, &[], &ctx(&m), Some(A)),
            Err(ResetRefused::NoMethod)
        );
    }
}
