//! What a device's lifecycle hooks see of its device set: every member, each member's opens
//! and who holds them. Shared by [`crate::device`] (the hooks' signatures) and
//! [`crate::device_set`] (which builds it under the set lock), so neither imports the other.

use crate::owner::{ConnectionId, OwnerId};

/// Identity of a registered device, unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct DeviceId(pub u64);

/// One open of a device: the connection, who is behind it, and whether it drives the device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Open {
    /// The connection.
    pub conn: ConnectionId,
    /// The client process behind it.
    pub owner: OwnerId,
    /// The client's user id, when the kernel told it (`SO_PEERCRED`).
    pub uid: Option<u32>,
    /// The connection drives the device: it routed interrupts or mapped DMA memory, as a
    /// VMM does. A connection that only reads and writes regions (a display viewer) is
    /// passive.
    pub driving: bool,
}

impl Open {
    /// A passive open by `owner` on `conn`, user unknown.
    pub fn new(conn: ConnectionId, owner: OwnerId) -> Self {
        Open {
            conn,
            owner,
            uid: None,
            driving: false,
        }
    }
}

/// The state of one member of a set, as hooks see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberState {
    /// The device.
    pub id: DeviceId,
    /// Its name (instance UUID or PCI address).
    pub name: String,
    /// Its open connections and who owns them.
    pub opens: Vec<Open>,
    /// The device is being removed: no new open is accepted.
    pub leaving: bool,
}

impl MemberState {
    /// A member with no open.
    pub fn new(id: DeviceId, name: &str) -> Self {
        MemberState {
            id,
            name: name.to_string(),
            opens: Vec::new(),
            leaving: false,
        }
    }

    /// True when no connection holds the device open.
    pub fn is_closed(&self) -> bool {
        self.opens.is_empty()
    }

    /// True when every open of the device belongs to `owner` (vacuously true when closed).
    pub fn is_open_only_by(&self, owner: OwnerId) -> bool {
        self.opens.iter().all(|o| o.owner == owner)
    }

    /// The opens of owners other than `owner` that drive the device.
    pub fn driven_by_others(&self, owner: OwnerId) -> impl Iterator<Item = &Open> {
        self.opens
            .iter()
            .filter(move |o| o.driving && o.owner != owner)
    }
}

/// What a lifecycle hook sees of its set: every member's open state, borrowed under the set
/// lock, so it cannot change while the hook runs (and costs nothing to build).
#[derive(Clone, Copy, Debug)]
pub struct SetContext<'a> {
    /// The device the hook runs for.
    pub this: DeviceId,
    /// The owner whose request led to the hook (the opener, the closer, the resetter).
    pub requester: Option<OwnerId>,
    /// Every device of the set, this one included.
    pub members: &'a [MemberState],
}

impl SetContext<'_> {
    /// True when no device of the set is open.
    pub fn set_is_idle(&self) -> bool {
        self.members.iter().all(MemberState::is_closed)
    }

    /// True when every device of the set is closed or open only by `owner`.
    pub fn set_is_owned_by(&self, owner: OwnerId) -> bool {
        self.members.iter().all(|m| m.is_open_only_by(owner))
    }

    /// The state of `id` in the set.
    pub fn member(&self, id: DeviceId) -> Option<&MemberState> {
        self.members.iter().find(|m| m.id == id)
    }
}
