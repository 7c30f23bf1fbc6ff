//! The Vidi container contract (DESIGN.md), defined once for both runtimes: where the inputs
//! and outputs appear inside the container, the environment the wrapper reads, and the labels
//! an attempt carries. The Kubernetes pod builder and the Docker container builder only say
//! where each thing comes from (a claim or a host path).
use super::{Precision, VidiJobSpec};

/// The weights directory, mounted read-only.
pub const MODEL_PATH: &str = "/models/vidi";
/// The Hugging Face cache with the vision and audio towers, mounted read-only (`HF_HOME`).
pub const HF_HOME: &str = "/models/hf";
/// Where a video from a claim or host path is mounted.
pub const VIDEO_DIR: &str = "/input";
/// The writable output directory (`result.json`, and on Docker the termination message).
pub const OUTPUT_DIR: &str = "/output";
/// The full result the wrapper writes in the output directory.
pub const RESULT_FILE: &str = "result.json";
/// Label with the precision an attempt runs at (read back after a restart).
pub const PRECISION_LABEL: &str = "vidi.dev/precision";
/// `/dev/shm` when `spec.resources.shmSize` does not say: PyTorch data loaders need more than
/// a container runtime's 64 MiB default.
pub const DEFAULT_SHM: &str = "2Gi";

/// The wrapper's environment variables.
pub mod env {
    pub const VIDEO: &str = "VIDI_VIDEO";
    pub const QUERY: &str = "VIDI_QUERY";
    pub const MODEL_PATH: &str = "VIDI_MODEL_PATH";
    pub const PRECISION: &str = "VIDI_PRECISION";
    pub const OUTPUT_DIR: &str = "VIDI_OUTPUT_DIR";
    pub const TERMINATION_LOG: &str = "VIDI_TERMINATION_LOG";
    pub const HF_HOME: &str = "HF_HOME";
    pub const HF_HUB_OFFLINE: &str = "HF_HUB_OFFLINE";
}

/// The Vidi container's environment, in order. `video` is what `VIDI_VIDEO` says (a URL, or
/// the mounted file under [`VIDEO_DIR`]); `termination_log` where the wrapper writes its
/// termination message when the runtime has no `/dev/termination-log` of its own.
pub fn environment(
    spec: &VidiJobSpec,
    precision: Precision,
    video: String,
    termination_log: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (env::VIDEO, video),
        (env::QUERY, spec.query.clone()),
        (env::MODEL_PATH, MODEL_PATH.to_string()),
        (env::PRECISION, precision.as_str().to_string()),
        (env::OUTPUT_DIR, OUTPUT_DIR.to_string()),
    ];
    if let Some(log) = termination_log {
        out.push((env::TERMINATION_LOG, log));
    }
    // Everything the model needs is mounted; a download at run time would be a surprise (and
    // fails on an offline GPU box anyway).
    out.push((env::HF_HUB_OFFLINE, "1".to_string()));
    if spec.model.hf_cache.is_some() {
        out.push((env::HF_HOME, HF_HOME.to_string()));
    }
    out
}
