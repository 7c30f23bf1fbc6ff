//! Checks the schema and CEL rules cannot express, and the runtime-specific ones.
//! The same checks run in both runtimes, so a spec means the same everywhere.
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::spec::{ModelFiles, VidiJobSpec, VolumePath, WorkloadKind};

/// Which runtime runs the job: host paths and commands exist only on a Docker host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Kubernetes,
    Docker,
}

/// One problem with a spec: the field (`spec.video.url`) and what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem with `spec` for `runtime`; empty when the spec is valid.
pub fn validate(spec: &VidiJobSpec, runtime: Runtime) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| errors.push(FieldError::new(field, message));

    let video = &spec.video;
    let sources = [video.url.is_some(), video.volume.is_some(), video.host_path.is_some()];
    match sources.iter().filter(|s| **s).count() {
        1 => {}
        0 => err(
            "spec.video",
            "expected exactly one of url, volume or hostPath; none is set".into(),
        ),
        _ => err(
            "spec.video",
            "expected exactly one of url, volume or hostPath; several are set".into(),
        ),
    }
    if let Some(url) = &video.url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        err(
            "spec.video.url",
            format!("expected an http:// or https:// URL, got {url:?}"),
        );
    }
    if let Some(volume) = &video.volume {
        check_volume_path("spec.video.volume", volume, &mut err);
    }
    check_host_path("spec.video.hostPath", video.host_path.as_deref(), runtime, &mut err);

    if spec.query.trim().is_empty() {
        err(
            "spec.query",
            "expected the text to find in the video; it is empty".into(),
        );
    } else if spec.query.chars().count() > 2000 {
        err(
            "spec.query",
            format!("expected at most 2000 characters, got {}", spec.query.chars().count()),
        );
    }

    check_files("spec.model.weights", &spec.model.weights, runtime, &mut err);
    if let Some(cache) = &spec.model.hf_cache {
        check_files("spec.model.hfCache", cache, runtime, &mut err);
    }
    if let Some(image) = &spec.model.image
        && image.trim().is_empty()
    {
        err(
            "spec.model.image",
            "expected an image reference or no field at all; it is empty".into(),
        );
    }

    if let Some(q) = &spec.gpu.min_free_memory {
        match parse_quantity_bytes(q) {
            Some(0) | None => err(
                "spec.gpu.minFreeMemory",
                format!("expected a positive size such as 20Gi, got {:?}", q.0),
            ),
            Some(_) => {}
        }
    }
    if let Some(q) = &spec.gpu.memory {
        match parse_quantity_bytes(q) {
            Some(0) | None => err(
                "spec.gpu.memory",
                format!("expected a positive size such as 24Gi, got {:?}", q.0),
            ),
            Some(_) => {}
        }
    }
    if spec.gpu.resource_name.trim().is_empty() {
        err(
            "spec.gpu.resourceName",
            "expected an extended resource name such as nvidia.com/gpu".into(),
        );
    }
    if runtime == Runtime::Kubernetes && spec.gpu.device.is_some() {
        err(
            "spec.gpu.device",
            "is for the Docker runtime; on Kubernetes use nodeSelector and resourceName".into(),
        );
    }
    if let Some(device) = &spec.gpu.device
        && device.parse::<crate::gpu::DeviceSelector>().is_err()
    {
        err(
            "spec.gpu.device",
            format!("expected a GPU index such as 0 or a UUID such as GPU-5f0c…, got {device:?}"),
        );
    }
    if runtime == Runtime::Docker && spec.suspend {
        // On Kubernetes a suspended job waits for someone to set it back to false; a `docker
        // run` is the start itself, and nothing would ever let it go.
        err(
            "spec.suspend",
            "true keeps a job from starting until it is set back to false, which only a Kubernetes \
             cluster can do; on a Docker host `docker run` starts the job: remove the field or set it to \
             false"
                .into(),
        );
    }
    if runtime == Runtime::Docker {
        // PersistentVolumeClaims exist only on Kubernetes.
        let claims = [
            ("spec.video.volume", spec.video.volume.is_some()),
            ("spec.model.weights.claimName", spec.model.weights.claim_name.is_some()),
            (
                "spec.model.hfCache.claimName",
                spec.model.hf_cache.as_ref().is_some_and(|c| c.claim_name.is_some()),
            ),
            (
                "spec.output.volume",
                spec.output.as_ref().is_some_and(|o| o.volume.is_some()),
            ),
        ];
        for (field, set) in claims {
            if set {
                err(
                    field,
                    "PersistentVolumeClaims exist only on Kubernetes; on a Docker host use hostPath".into(),
                );
            }
        }
    }

    let co = &spec.co_tenants;
    if let Some(selector) = &co.selector {
        errors.extend(super::selection::check(selector));
    }
    let mut err = |field: &str, message: String| errors.push(FieldError::new(field, message));
    for (i, r) in co.refs.iter().enumerate() {
        let field = format!("spec.coTenants.refs[{i}]");
        let ok = match runtime {
            Runtime::Kubernetes => {
                matches!(r.kind, WorkloadKind::Deployment | WorkloadKind::StatefulSet)
            }
            Runtime::Docker => r.kind == WorkloadKind::Container,
        };
        if !ok {
            let expected = match runtime {
                Runtime::Kubernetes => "Deployment or StatefulSet",
                Runtime::Docker => "Container",
            };
            err(
                &format!("{field}.kind"),
                format!("expected {expected} on {runtime:?}, got {}", r.kind),
            );
        }
        if r.name.trim().is_empty() {
            err(
                &format!("{field}.name"),
                "expected the workload's name; it is empty".into(),
            );
        }
        if runtime == Runtime::Docker && r.namespace.is_some() {
            err(
                &format!("{field}.namespace"),
                "Docker containers have no namespace; remove it".into(),
            );
        }
    }
    if runtime == Runtime::Kubernetes && !co.commands.is_empty() {
        err(
            "spec.coTenants.commands",
            "command co-tenants exist only on a Docker host; use refs or a selector".into(),
        );
    }
    if runtime == Runtime::Docker && !co.namespaces.is_empty() {
        err(
            "spec.coTenants.namespaces",
            "Docker has no namespaces; remove it".into(),
        );
    }
    for (i, c) in co.commands.iter().enumerate() {
        if c.name.trim().is_empty() {
            err(
                &format!("spec.coTenants.commands[{i}].name"),
                "expected a name such as comfyui; it is empty".into(),
            );
        } else if let Some(first) = co.commands[..i].iter().position(|d| d.name == c.name) {
            err(
                &format!("spec.coTenants.commands[{i}].name"),
                format!(
                    "command names must be unique: {:?} is also spec.coTenants.commands[{first}].name",
                    c.name
                ),
            );
        }
        if c.check.trim().is_empty() {
            err(
                &format!("spec.coTenants.commands[{i}].check"),
                "expected a shell command that exits 0 while the process runs (the operator restores only what it sees back); it is missing or empty".into(),
            );
        }
        if c.stop.trim().is_empty() {
            err(
                &format!("spec.coTenants.commands[{i}].stop"),
                "expected a shell command; it is empty".into(),
            );
        }
        if c.start.trim().is_empty() {
            err(
                &format!("spec.coTenants.commands[{i}].start"),
                "expected a shell command; it is empty".into(),
            );
        }
    }

    if let Some(output) = &spec.output {
        match (&output.volume, &output.host_path) {
            (Some(_), Some(_)) | (None, None) => {
                err("spec.output", "expected exactly one of volume or hostPath".into())
            }
            _ => {}
        }
        if let Some(volume) = &output.volume {
            check_volume_path("spec.output.volume", volume, &mut err);
        }
        check_host_path("spec.output.hostPath", output.host_path.as_deref(), runtime, &mut err);
    }

    if let Some(res) = &spec.resources {
        for (field, q) in [
            ("spec.resources.memory", &res.memory),
            ("spec.resources.cpu", &res.cpu),
            ("spec.resources.shmSize", &res.shm_size),
        ] {
            if let Some(q) = q
                && parse_quantity(q).is_none_or(|v| v <= 0.0)
            {
                err(
                    field,
                    format!("expected a positive quantity such as 32Gi or 4, got {:?}", q.0),
                );
            }
        }
    }
    if let Some(d) = spec.active_deadline_seconds
        && d < 1
    {
        err("spec.activeDeadlineSeconds", format!("expected at least 1, got {d}"));
    }
    if !(0..=10).contains(&spec.backoff_limit) {
        err(
            "spec.backoffLimit",
            format!("expected 0 to 10, got {}", spec.backoff_limit),
        );
    }
    if let Some(t) = spec.ttl_seconds_after_finished
        && t < 0
    {
        err("spec.ttlSecondsAfterFinished", format!("expected 0 or more, got {t}"));
    }
    for (i, r) in co.refs.iter().enumerate() {
        if let Some(hook) = &r.release {
            errors.extend(hook.check(&format!("spec.coTenants.refs[{i}].release")));
        }
    }
    for (i, c) in co.commands.iter().enumerate() {
        if let Some(hook) = &c.release {
            errors.extend(hook.check(&format!("spec.coTenants.commands[{i}].release")));
        }
    }
    errors
}

fn check_volume_path(field: &str, volume: &VolumePath, err: &mut impl FnMut(&str, String)) {
    if volume.claim_name.trim().is_empty() {
        err(
            &format!("{field}.claimName"),
            "expected a PersistentVolumeClaim name; it is empty".into(),
        );
    }
    check_relative(&format!("{field}.path"), &volume.path, err);
}

fn check_relative(field: &str, path: &str, err: &mut impl FnMut(&str, String)) {
    if path.trim().is_empty() {
        err(
            field,
            "expected a path relative to the claim's root; it is empty".into(),
        );
    } else if path.starts_with('/') {
        err(
            field,
            format!("expected a path relative to the claim's root, got the absolute path {path:?}"),
        );
    } else if path.split('/').any(|s| s == "..") {
        err(
            field,
            format!("expected a path inside the claim, got {path:?} which climbs out with '..'"),
        );
    }
}

fn check_host_path(field: &str, path: Option<&str>, runtime: Runtime, err: &mut impl FnMut(&str, String)) {
    let Some(path) = path else { return };
    match runtime {
        Runtime::Kubernetes => err(
            field,
            "host paths are allowed only with `vidi-operator docker run`; on Kubernetes use a PersistentVolumeClaim"
                .into(),
        ),
        Runtime::Docker if !path.starts_with('/') => {
            err(field, format!("expected an absolute host path, got {path:?}"))
        }
        Runtime::Docker => {}
    }
}

fn check_files(field: &str, files: &ModelFiles, runtime: Runtime, err: &mut impl FnMut(&str, String)) {
    match (&files.claim_name, &files.host_path) {
        (Some(_), Some(_)) => err(
            field,
            "expected exactly one of claimName or hostPath; both are set".into(),
        ),
        (None, None) => err(
            field,
            "expected exactly one of claimName or hostPath; neither is set".into(),
        ),
        _ => {}
    }
    if let Some(claim) = &files.claim_name
        && claim.trim().is_empty()
    {
        err(
            &format!("{field}.claimName"),
            "expected a PersistentVolumeClaim name; it is empty".into(),
        );
    }
    if let Some(path) = &files.path {
        if files.host_path.is_some() {
            err(
                &format!("{field}.path"),
                "goes with claimName; put the whole directory in hostPath".into(),
            );
        } else if !path.is_empty() {
            check_relative(&format!("{field}.path"), path, err);
        }
    }
    check_host_path(&format!("{field}.hostPath"), files.host_path.as_deref(), runtime, err);
}

/// A Kubernetes quantity (`20Gi`, `1.5G`, `500M`, `4`, `250m`, `1e3`) as a number.
pub fn parse_quantity(q: &Quantity) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let s = q.0.trim();
    let (num, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| s.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((s, 1.0));
    if num.is_empty() || !num.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+' || c == '-') {
        return None;
    }
    let v = num.parse::<f64>().ok()? * factor;
    v.is_finite().then_some(v)
}

/// A memory quantity in whole bytes.
pub fn parse_quantity_bytes(q: &Quantity) -> Option<u64> {
    parse_quantity(q).filter(|v| *v >= 0.0).map(|v| v.ceil() as u64)
}
