//! `kubectl vidi`: follow VidiJobs from a terminal (status, wait, logs, result). Each command
//! reads the cluster through a [`kube::Client`] and returns a report that prints as a table or
//! serializes as JSON/YAML; the `kubectl-vidi` binary is the thin command line over it.
pub mod logs;
pub mod result;
pub mod status;
mod table;
pub mod wait;

use kube::Api;

use crate::api::VidiJob;

pub use table::Table;

/// What a plugin command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("VidiJob {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("VidiJob {name:?} not found in any namespace")]
    NotFoundAnywhere { name: String },
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("VidiJob {namespace}/{name} has no attempt {attempt}; {found}")]
    NoAttempt {
        namespace: String,
        name: String,
        attempt: u32,
        found: String,
    },
    #[error(
        "VidiJob {namespace}/{name} has no pod {}",
        if *.ended { format!("(it ended {phase} before Vidi started)") } else { format!("yet (phase {phase})") }
    )]
    NoPod {
        namespace: String,
        name: String,
        phase: String,
        /// The job has ended: no pod will come.
        ended: bool,
    },
    #[error("VidiJob {namespace}/{name} has no result: it is {phase}{why}")]
    NoResult {
        namespace: String,
        name: String,
        phase: String,
        why: String,
    },
    #[error("timed out after {waited} waiting for VidiJob {namespace}/{name} to finish (phase {phase}){watch}")]
    Timeout {
        namespace: String,
        name: String,
        phase: String,
        waited: String,
        /// Why the watch kept breaking, when it did.
        watch: String,
    },
    #[error("VidiJob {namespace}/{name} was deleted while waiting for it to finish (phase {phase})")]
    Deleted {
        namespace: String,
        name: String,
        phase: String,
    },
    #[error("reading the log of pod {namespace}/{pod}: {source}")]
    Log {
        namespace: String,
        pod: String,
        #[source]
        source: std::io::Error,
    },
}

/// Which namespaces a command looks in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    One(String),
    All,
}

/// Reads one VidiJob; a missing one is [`Error::NotFound`], naming the job and the namespace.
pub async fn get_job(client: &kube::Client, namespace: &str, name: &str) -> Result<VidiJob, Error> {
    let api: Api<VidiJob> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(Error::NotFound {
            namespace: namespace.into(),
            name: name.into(),
        }),
        Err(source) => Err(Error::Api {
            what: format!("reading VidiJob {namespace}/{name}"),
            source,
        }),
    }
}

/// `4m12s` for people (whole seconds).
pub fn human(seconds: i64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds.max(0) as u64))
        .to_string()
        .replace(' ', "")
}

/// Seconds from `from` to `to` (0 if `to` is earlier).
pub fn seconds_between(from: jiff::Timestamp, to: jiff::Timestamp) -> i64 {
    ((to.as_millisecond() - from.as_millisecond()) / 1000).max(0)
}
