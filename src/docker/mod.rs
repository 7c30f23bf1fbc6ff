//! Docker host runtime: `vidi-operator docker run | recover | build`.
//!
//! The same planner as the Kubernetes controller decides everything (`plan::next`); this module
//! only turns a Docker host into a [`crate::plan::Snapshot`] ([`observe`]) and the planner's
//! actions into Docker calls and shell commands ([`act`]). What Kubernetes keeps in annotations
//! and `VidiJob.status` lives here in an fsync'ed [`journal`] in the state directory, so a crashed
//! or killed operator can be finished by the next `docker run` or by `docker recover`.
//!
//! - [`jobfile`]: reads the VidiJob YAML (strict: unknown fields are errors).
//! - [`lock`]: one job per host (flock, released by the kernel when the process dies).
//! - [`journal`]: what is held and how to undo it, plus the job's status.
//! - [`container`]: the Vidi container's create body (pure, unit-tested).
//! - [`session`]: the observe → plan → act loop, recovery and cancellation; `attempt`: the
//!   GPU gate and one Vidi container.
//! - [`build`]: builds an image from a directory through the Engine API.
pub mod act;
mod attempt;
pub mod build;
pub mod commands;
pub mod container;
pub mod engine;
pub mod events;
pub mod gpu_usage;
pub mod jobfile;
pub mod journal;
pub mod lock;
pub mod observe;
pub mod preflight;
pub mod session;
pub mod state_dir;

use std::path::PathBuf;

/// Holder marks and messages name Docker jobs `docker/<name>` (the planner's `JobKey`).
pub const JOB_NAMESPACE: &str = "docker";

/// Which GPUs the Vidi container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuMode {
    /// A GPU DeviceRequest (all GPUs, or `spec.gpu.device`), and the NVML gate before start.
    All,
    /// No GPU at all: no DeviceRequest and no gate. For trying the plumbing on a machine
    /// without a GPU (CI, laptops).
    None,
}

/// Everything that can go wrong on a Docker host.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker engine ({hint}): {source}")]
    Connect {
        hint: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("Docker {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal {} is unreadable ({source}); move it away only after restoring its co-tenants by hand", path.display())]
    JournalCorrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    JobFile(#[from] jobfile::JobFileError),
    #[error(transparent)]
    Locked(#[from] lock::LockError),
    #[error(transparent)]
    StateDir(#[from] state_dir::StateDirError),
    #[error("command co-tenant {name}: {message}")]
    Command { name: String, message: String },
    #[error("job {job} cannot run, so nothing was stopped:\n  {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Preflight {
        job: String,
        problems: Vec<crate::api::FieldError>,
    },
    #[error("image build failed: {0}")]
    Build(String),
    #[error("{0}")]
    Other(String),
}

impl DockerError {
    pub(crate) fn api(what: impl Into<String>, source: bollard::errors::Error) -> Self {
        DockerError::Api {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DockerError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Connects to the engine the `docker` CLI would use (see [`engine::resolve`]) and agrees on an
/// API version, so older engines (e.g. Debian's 20.10, API 1.41) work. Errors name the engine
/// tried and where that choice came from.
pub async fn connect() -> Result<bollard::Docker, DockerError> {
    let target = engine::resolve(&engine::Env::from_process()).map_err(DockerError::Other)?;
    let connect_error = |source| DockerError::Connect {
        hint: target.to_string(),
        source,
    };
    let docker = target.connect().map_err(connect_error)?;
    docker.negotiate_version().await.map_err(connect_error)
}

/// HTTP status of an Engine API error, if it was one.
pub(crate) fn status_code(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's message for an API error (without bollard's wrapping).
pub(crate) fn engine_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
