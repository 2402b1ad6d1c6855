//! Parents, types and instances: the kernel's mdev model as a small runtime every sample
//! binary uses. A [`Parent`] owns a driver's types, creates and removes instances by UUID
//! (each served on `DIR/UUID.sock`) and answers a control socket (`DIR/control.sock`).

pub mod activation;
mod budget;
pub mod cli;
mod control;
mod driver;
mod instances;

pub use budget::{Budget, BudgetExhausted, Reservation};
pub use control::{control_request, ControlServer, Request};
pub use driver::{
    refuse_params, CreateParams, MdevDriver, MdevType, NewDevice, DEVICE_API_VFIO_PCI,
};
pub use instances::{Holder, InstanceInfo, Parent, ParentError};
