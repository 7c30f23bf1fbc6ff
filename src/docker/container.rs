//! The Vidi container of one attempt, per the container contract (DESIGN.md): inputs in env,
//! weights / HF cache / video mounted read-only, one writable output dir, a GPU request, host
//! RAM and shm limits, a non-root user. Pure: builds the Engine API body, so it is unit-tested.
use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig, Mount, MountType};

use crate::api::contract::{self, HF_HOME, MODEL_PATH, OUTPUT_DIR, PRECISION_LABEL, VIDEO_DIR};
use crate::api::{ATTEMPT_LABEL, JOB_LABEL, Precision, VidiJobSpec, parse_quantity_bytes};

use super::GpuMode;

/// Where the wrapper writes its termination message (the compact result, or one line saying
/// why it failed). Docker has no `/dev/termination-log`, and a non-root user could not write
/// there anyway; in the output dir the operator can read it after the container exits.
pub const TERMINATION_LOG_FILE: &str = ".termination-log";
/// [`contract::DEFAULT_SHM`] in bytes.
pub const DEFAULT_SHM_BYTES: u64 = 2 << 30;

/// What one attempt's container is made of.
#[derive(Clone, Debug)]
pub struct VidiContainer<'a> {
    pub job: &'a str,
    pub attempt: u32,
    pub name: &'a str,
    pub image: &'a str,
    pub precision: Precision,
    pub spec: &'a VidiJobSpec,
    /// Host directory mounted writable at [`OUTPUT_DIR`].
    pub output_dir: &'a Path,
    pub gpus: &'a GpuMode,
    /// `uid:gid` (or a name the image knows).
    pub user: &'a str,
}

impl VidiContainer<'_> {
    /// `VIDI_VIDEO`: the mounted file for a host path; a URL is passed through and the image's
    /// wrapper downloads it (so the operator needs no network access or scratch space).
    pub fn video(&self) -> String {
        match (&self.spec.video.host_path, &self.spec.video.url) {
            (Some(path), _) => format!("{VIDEO_DIR}/{}", file_name(path)),
            (None, Some(url)) => url.clone(),
            (None, None) => String::new(),
        }
    }

    pub fn env(&self) -> Vec<String> {
        let log = format!("{OUTPUT_DIR}/{TERMINATION_LOG_FILE}");
        contract::environment(self.spec, self.precision, self.video(), Some(log))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    pub fn labels(&self) -> HashMap<String, String> {
        [
            (JOB_LABEL.to_string(), self.job.to_string()),
            (ATTEMPT_LABEL.to_string(), self.attempt.to_string()),
            (PRECISION_LABEL.to_string(), self.precision.to_string()),
        ]
        .into()
    }

    /// Host path → container path, read-only flag.
    pub fn mounts(&self) -> Vec<(String, String, bool)> {
        let mut m = Vec::new();
        if let Some(w) = &self.spec.model.weights.host_path {
            m.push((w.clone(), MODEL_PATH.to_string(), true));
        }
        if let Some(c) = self.spec.model.hf_cache.as_ref().and_then(|c| c.host_path.as_ref()) {
            m.push((c.clone(), HF_HOME.to_string(), true));
        }
        if let Some(v) = &self.spec.video.host_path {
            m.push((v.clone(), format!("{VIDEO_DIR}/{}", file_name(v)), true));
        }
        m.push((self.output_dir.display().to_string(), OUTPUT_DIR.to_string(), false));
        m
    }

    pub fn device_request(&self) -> Option<DeviceRequest> {
        match self.gpus {
            GpuMode::None => None,
            GpuMode::All => {
                let (count, device_ids) = match &self.spec.gpu.device {
                    Some(d) => (None, Some(vec![d.clone()])),
                    None => (Some(-1), None),
                };
                Some(DeviceRequest {
                    driver: Some("nvidia".into()),
                    count,
                    device_ids,
                    capabilities: Some(vec![vec!["gpu".into()]]),
                    options: None,
                })
            }
        }
    }

    pub fn memory_bytes(&self) -> Option<i64> {
        let q = self.spec.resources.as_ref()?.memory.as_ref()?;
        parse_quantity_bytes(q).and_then(|b| i64::try_from(b).ok())
    }

    pub fn shm_bytes(&self) -> i64 {
        let shm = self.spec.resources.as_ref().and_then(|r| r.shm_size.as_ref());
        let bytes = shm.and_then(parse_quantity_bytes).unwrap_or(DEFAULT_SHM_BYTES);
        i64::try_from(bytes).unwrap_or(i64::MAX)
    }

    fn nano_cpus(&self) -> Option<i64> {
        let q = self.spec.resources.as_ref()?.cpu.as_ref()?;
        crate::api::parse_quantity(q).map(|c| (c * 1e9) as i64)
    }

    /// The Engine API body.
    pub fn create_body(&self) -> ContainerCreateBody {
        let mounts = self
            .mounts()
            .into_iter()
            .map(|(source, target, read_only)| Mount {
                source: Some(source),
                target: Some(target),
                typ: Some(MountType::BIND),
                read_only: Some(read_only),
                ..Default::default()
            })
            .collect();
        let memory = self.memory_bytes();
        ContainerCreateBody {
            image: Some(self.image.to_string()),
            user: Some(self.user.to_string()),
            env: Some(self.env()),
            labels: Some(self.labels()),
            host_config: Some(HostConfig {
                mounts: Some(mounts),
                device_requests: self.device_request().map(|d| vec![d]),
                shm_size: Some(self.shm_bytes()),
                memory,
                // No swap beyond the limit: a model load that does not fit should be OOMKilled
                // (and reported as such), not crawl through swap for an hour.
                memory_swap: memory,
                nano_cpus: self.nano_cpus(),
                // PID 1 that forwards SIGTERM, so `docker stop` ends Python promptly.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Lines for `--dry-run`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "would run container {} from image {} as user {}",
            self.name, self.image, self.user
        )];
        let gpu = match self.device_request() {
            None => "no GPU (--gpus none)".to_string(),
            Some(d) => match d.device_ids {
                Some(ids) => format!("GPU {}", ids.join(",")),
                None => "all GPUs".to_string(),
            },
        };
        lines.push(format!(
            "  gpu: {gpu}; shm {}; memory {}",
            crate::gpu::format_bytes(self.shm_bytes() as u64),
            self.memory_bytes()
                .map_or_else(|| "unlimited".to_string(), |m| crate::gpu::format_bytes(m as u64))
        ));
        for (src, dst, ro) in self.mounts() {
            lines.push(format!(
                "  mount {src} -> {dst} ({})",
                if ro { "read-only" } else { "writable" }
            ));
        }
        for e in self.env() {
            lines.push(format!("  env {e}"));
        }
        lines
    }
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "video".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> VidiJobSpec {
        let mut v = serde_json::json!({
            "video": {"hostPath": "/data/talk.mp4"},
            "query": "a dog",
            "model": {"weights": {"hostPath": "/models/vidi-1.5"}, "hfCache": {"hostPath": "/hf"}},
            "resources": {"memory": "32Gi", "shmSize": "8Gi"}
        });
        if let (Some(base), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn follows_the_container_contract() {
        let spec = spec(serde_json::json!({}));
        let c = VidiContainer {
            job: "find-dog",
            attempt: 2,
            name: "find-dog-vidi-2",
            image: "vidi:latest",
            precision: Precision::Int8,
            spec: &spec,
            output_dir: Path::new("/out"),
            gpus: &GpuMode::All,
            user: "1000:1000",
        };
        let body = c.create_body();
        let env = body.env.unwrap();
        for want in [
            "VIDI_VIDEO=/input/talk.mp4",
            "VIDI_QUERY=a dog",
            "VIDI_MODEL_PATH=/models/vidi",
            "VIDI_PRECISION=int8",
            "VIDI_OUTPUT_DIR=/output",
            "HF_HUB_OFFLINE=1",
            "HF_HOME=/models/hf",
        ] {
            assert!(env.contains(&want.to_string()), "{want} missing from {env:?}");
        }
        assert_eq!(body.user.as_deref(), Some("1000:1000"));
        assert_eq!(body.labels.unwrap()[ATTEMPT_LABEL], "2");
        let hc = body.host_config.unwrap();
        assert_eq!(hc.memory, Some(32 << 30));
        assert_eq!(hc.shm_size, Some(8 << 30));
        let gpu = &hc.device_requests.unwrap()[0];
        assert_eq!((gpu.driver.as_deref(), gpu.count), (Some("nvidia"), Some(-1)));
        let mounts = hc.mounts.unwrap();
        let ro: Vec<_> = mounts
            .iter()
            .map(|m| (m.target.clone().unwrap(), m.read_only.unwrap()))
            .collect();
        assert!(ro.contains(&("/models/vidi".into(), true)));
        assert!(ro.contains(&("/input/talk.mp4".into(), true)));
        assert!(ro.contains(&("/output".into(), false)));
    }

    #[test]
    fn device_and_no_gpu() {
        let spec = spec(serde_json::json!({"gpu": {"device": "GPU-abc"}, "video": {"url": "https://x/v.mp4"}}));
        let mut c = VidiContainer {
            job: "j",
            attempt: 1,
            name: "j-vidi-1",
            image: "vidi",
            precision: Precision::Fp16,
            spec: &spec,
            output_dir: Path::new("/out"),
            gpus: &GpuMode::All,
            user: "1000:1000",
        };
        assert_eq!(
            c.device_request().unwrap().device_ids,
            Some(vec!["GPU-abc".to_string()])
        );
        assert_eq!(c.video(), "https://x/v.mp4");
        c.gpus = &GpuMode::None;
        assert!(c.create_body().host_config.unwrap().device_requests.is_none());
    }
}
