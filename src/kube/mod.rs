//! The Kubernetes runtime: observe VidiJobs, co-tenants and pods from watch caches; plan; act.
mod act;
pub mod cache;
pub mod controller;
pub mod keda;
pub mod lease;
mod mappers;
pub mod observe;
mod placement;
pub mod pod;
pub mod rbac;
mod reconcile;
mod status;
mod sweep;

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
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Write { .. } => "Write",
            Error::Read { .. } => "Read",
            Error::Serialize(_) => "Serialize",
            Error::Finalizer(_) => "Finalizer",
            Error::Unsupported(_) => "Unsupported",
            Error::StillReleasing => "StillReleasing",
            Error::Replan => "Replan",
        }
    }
}
