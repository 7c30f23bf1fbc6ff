//! The pure planner: every decision of vidi-operator, shared by the Kubernetes and Docker
//! runtimes. No I/O: a `Snapshot` in, a `Decision` (actions + status) out.
mod action;
pub mod conditions;
mod lifecycle;
pub mod names;
pub mod outcome;
pub mod placement;
pub mod precision;
pub mod queue;
mod snapshot;
mod sweep;
pub mod yielding;

pub use action::{ALL_RESTORED, Action, Decision, Notice, Severity, Subject, gate_wait};
pub use lifecycle::{admission_errors, next};
pub use snapshot::{
    Attempt, AttemptState, CoTenant, CoTenantId, JobKey, JobView, Rival, Selection, Snapshot, Termination,
};
pub use sweep::stale_holders;
