//! The Vidi pod of one attempt: the GPU gate as an init container, then Vidi, per the container
//! contract in DESIGN.md.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::contract::{self, HF_HOME as HF_DIR, MODEL_PATH as WEIGHTS_DIR, OUTPUT_DIR, VIDEO_DIR};
use crate::api::{ATTEMPT_LABEL, JOB_LABEL, Precision, VidiJob};

pub use crate::api::contract::PRECISION_LABEL;

pub const GATE_CONTAINER: &str = "gpu-gate";
pub const VIDI_CONTAINER: &str = "vidi";

/// What the operator's configuration adds to every Vidi pod.
#[derive(Clone, Debug)]
pub struct PodDefaults {
    /// Image used when `spec.model.image` is empty.
    pub vidi_image: String,
    /// Image with the operator binary, for the GPU gate init container.
    pub gate_image: String,
    /// How long the gate waits for free memory before the attempt fails.
    pub gate_timeout: std::time::Duration,
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool, sub_path: Option<&str>) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        sub_path: sub_path.filter(|p| !p.is_empty()).map(String::from),
        ..Default::default()
    }
}

fn claim(name: &str, claim_name: &str, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim_name.into(),
            read_only: Some(read_only),
        }),
        ..Default::default()
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(true),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What the GPU gate of one attempt waits for, and how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    pub min_free_bytes: u64,
    pub timeout: std::time::Duration,
}

impl Gate {
    /// The operator's gate timeout, shortened to `release_wait` when some co-tenants are only
    /// released in place (the planner's `StartAttempt`).
    pub fn new(defaults: &PodDefaults, min_free_bytes: u64, release_wait: Option<std::time::Duration>) -> Gate {
        Gate {
            min_free_bytes,
            timeout: crate::plan::gate_wait(release_wait, defaults.gate_timeout),
        }
    }
}

/// Builds attempt `number`'s pod, named `name`, at `precision`, behind `gate`.
/// `deadline_left` is what remains of the job's activeDeadlineSeconds.
pub fn build(
    job: &VidiJob,
    defaults: &PodDefaults,
    name: &str,
    number: u32,
    precision: Precision,
    gate: Gate,
    deadline_left: Option<i64>,
) -> Pod {
    let spec = &job.spec;
    let gpu = spec.gpu.resource_name.clone();
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();

    let weights = &spec.model.weights;
    if let Some(c) = &weights.claim_name {
        volumes.push(claim("weights", c, true));
        mounts.push(mount("weights", WEIGHTS_DIR, true, weights.path.as_deref()));
    }
    if let Some(cache) = &spec.model.hf_cache
        && let Some(c) = &cache.claim_name
    {
        volumes.push(claim("hf-cache", c, true));
        mounts.push(mount("hf-cache", HF_DIR, true, cache.path.as_deref()));
    }
    // A URL is fetched by the Vidi wrapper itself; a claim is mounted read-only.
    let video = match (&spec.video.url, &spec.video.volume) {
        (Some(url), _) => url.clone(),
        (None, Some(v)) => {
            volumes.push(claim("video", &v.claim_name, true));
            mounts.push(mount("video", VIDEO_DIR, true, None));
            format!("{VIDEO_DIR}/{}", v.path)
        }
        (None, None) => String::new(),
    };
    // The termination message goes to Kubernetes' own /dev/termination-log (the default).
    let envs: Vec<EnvVar> = contract::environment(spec, precision, video, None)
        .into_iter()
        .map(|(k, v)| env(k, v))
        .collect();
    match spec.output.as_ref().and_then(|o| o.volume.as_ref()) {
        Some(v) => {
            volumes.push(claim("output", &v.claim_name, false));
            mounts.push(mount("output", OUTPUT_DIR, false, Some(&v.path)));
        }
        None => {
            volumes.push(Volume {
                name: "output".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            });
            mounts.push(mount("output", OUTPUT_DIR, false, None));
        }
    }
    let shm = spec
        .resources
        .as_ref()
        .and_then(|r| r.shm_size.clone())
        .unwrap_or_else(|| Quantity(contract::DEFAULT_SHM.into()));
    volumes.push(Volume {
        name: "shm".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(shm),
            ..Default::default()
        }),
        ..Default::default()
    });
    mounts.push(mount("shm", "/dev/shm", false, None));

    let gpu_only = BTreeMap::from([(gpu.clone(), Quantity("1".into()))]);
    let mut limits = gpu_only.clone();
    let mut requests = BTreeMap::new();
    if let Some(res) = &spec.resources {
        if let Some(m) = &res.memory {
            limits.insert("memory".into(), m.clone());
            requests.insert("memory".into(), m.clone());
        }
        if let Some(c) = &res.cpu {
            requests.insert("cpu".into(), c.clone());
        }
    }

    let gate = Container {
        name: GATE_CONTAINER.into(),
        image: Some(defaults.gate_image.clone()),
        args: Some(vec![
            "gpu".into(),
            "gate".into(),
            format!("--min-free={}", gate.min_free_bytes),
            format!("--timeout={}s", gate.timeout.as_secs()),
            "--termination-log=/dev/termination-log".into(),
        ]),
        resources: Some(ResourceRequirements {
            limits: Some(gpu_only),
            ..Default::default()
        }),
        security_context: Some(restricted()),
        ..Default::default()
    };
    let vidi = Container {
        name: VIDI_CONTAINER.into(),
        image: Some(spec.model.image.clone().unwrap_or_else(|| defaults.vidi_image.clone())),
        env: Some(envs),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: (!requests.is_empty()).then_some(requests),
            ..Default::default()
        }),
        security_context: Some(restricted()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let name_label = job.name_any();
    let labels = BTreeMap::from([
        (JOB_LABEL.to_string(), name_label),
        (ATTEMPT_LABEL.to_string(), number.to_string()),
        (PRECISION_LABEL.to_string(), precision.as_str().to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "vidi-operator".to_string()),
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: job.namespace(),
            labels: Some(labels),
            owner_references: job.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: deadline_left.map(|s| s.max(1)),
            node_selector: (!spec.gpu.node_selector.is_empty()).then(|| spec.gpu.node_selector.clone()),
            tolerations: (!spec.gpu.tolerations.is_empty()).then(|| spec.gpu.tolerations.clone()),
            init_containers: Some(vec![gate]),
            containers: vec![vidi],
            volumes: Some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                fs_group: Some(1000),
                seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// Pins the pod to `node` with a required node affinity on the node's name (`matchFields`
/// `metadata.name`, as the DaemonSet controller does): the scheduler still places it, so taints,
/// resources and the pool's nodeSelector are still checked, and a node that cannot take it leaves
/// it Pending with the scheduler's reason instead of failing at the kubelet as `nodeName` would.
/// The node's name, not its `kubernetes.io/hostname` label, which need not be equal to it.
pub fn pin(pod: &mut Pod, node: &str) {
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm};
    let Some(spec) = pod.spec.as_mut() else { return };
    spec.affinity = Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_fields: Some(vec![NodeSelectorRequirement {
                        key: "metadata.name".into(),
                        operator: "In".into(),
                        values: Some(vec![node.to_string()]),
                    }]),
                    match_expressions: None,
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// The node a pod is pinned to by `pin`, if any.
pub fn pinned_node(pod: &Pod) -> Option<&str> {
    let terms = &pod
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first())
        .map(String::as_str)
}
