//! Access policy: who may reach which target, as which login, with which rights, and when.
//!
//! - [`model`]: users, groups, targets, protected subnets and grants (stored in sled, changed only
//!   through the control API);
//! - [`validate`]: checks a change against the current policy before it is stored;
//! - [`window`]: validity windows (days of week, time of day, UTC);
//! - [`evaluate`]: the decision, a pure function of the policy, the request and the time;
//! - [`standing`]: whether access a live session uses still holds, and until when;
//! - [`live`]: the policy in force, an `Arc` snapshot swapped whole on change.
//!
//! Invariant: nothing in this module does IO or touches tokio. The session actor takes a
//! [`live::Live`] snapshot and asks; tests call the same function with tables of cases.

pub mod commands;
pub mod evaluate;
pub mod live;
pub mod model;
pub mod standing;
pub mod validate;
pub mod window;

pub use evaluate::{
    AccessRequest, Decision, Denied, ResolvedTarget, TcpRequest, evaluate, evaluate_any,
    evaluate_tcp, resolve_target,
};
pub use live::Live;
pub use model::{
    Approvers, Entity, EntityKind, Grant, GrantObject, GrantSubject, Group, Policy, Revocation,
    Right, Rights, Target, User,
};
pub use validate::{PolicyError, check_add, check_remove};
