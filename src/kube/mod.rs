//! The Kubernetes runtime: observe VidiJobs, co-tenants and pods from watch caches; plan; act.
mod act;
pub mod cache;
pub mod controller;
mod events;
mod gauges;
pub mod keda;
pub mod lease;
mod mappers;
pub mod observe;
mod placement;
pub mod pod;
pub mod rbac;
mod reconcile;
mod seen;
mod status;
mod sweep;
mod write;

pub use act::HELD_SINCE;
pub use cache::Scope;
pub use controller::{Clients, FINALIZER, Settings, run};
pub use pod::PodDefaults;

/// What can go wrong in a reconcile. Variant names are the `error` label of
/// `vidi_operator_reconcile_errors`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {what}: {source}")]
    Write {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing status: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{what}: {source}")]
    Hook {
        what: String,
        #[source]
        source: crate::release::CallError,
    },
    #[error("{0} cannot be suspended by the Kubernetes runtime")]
    Unsupported(String),
    /// Deleting, and co-tenants are still being restored (not a failure: the finalizer waits).
    #[error("still stopping Vidi and restoring co-tenants")]
    StillReleasing,
    /// The job changed since the plan read it; its status was not written (not a failure: the
    /// job is planned again). An error, so that kube's finalizer helper never takes a
    /// cleanup whose status did not land for a finished one.
    #[error("the job changed since it was read; planning again")]
    Replan,
    /// A co-tenant changed since the plan read it (its resourceVersion guard refused the write);
    /// not a failure: the job is planned again from the newer version.
    #[error("{what} changed since it was read; planning again")]
    Conflict { what: String },
}

impl Error {
    /// Every `error` label value, so each series exists (at 0) before its first error: a rate
    /// over it then works from the start, and a scrape shows every name the dashboard uses.
    pub const METRIC_LABELS: [&'static str; 9] = [
        "Write",
        "Hook",
        "Read",
        "Serialize",
        "Finalizer",
        "Unsupported",
        "StillReleasing",
        "Replan",
        "Conflict",
    ];

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Write { .. } => "Write",
            Error::Read { .. } => "Read",
            Error::Serialize(_) => "Serialize",
            Error::Finalizer(_) => "Finalizer",
            Error::Hook { .. } => "Hook",
            Error::Unsupported(_) => "Unsupported",
            Error::StillReleasing => "StillReleasing",
            Error::Replan => "Replan",
            Error::Conflict { .. } => "Conflict",
        }
    }
}
