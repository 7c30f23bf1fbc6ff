//! Preflight: everything that can be known to fail before any co-tenant is stopped. A job that
//! could never run (no image, no NVIDIA driver or runtime, a `check` that cannot run, a path that
//! is not there) costs no downtime: `docker run` refuses it with every problem at once, and
//! `docker run --dry-run` reports the same list.
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions, WaitContainerOptionsBuilder,
};
use futures::StreamExt as _;

use crate::api::{FieldError, JOB_LABEL, VidiJob};

use super::container::VidiContainer;
use super::session::Session;
use super::{GpuMode, commands, engine_message, status_code};

/// The problems found, each naming the field or flag to change; empty when the job can run.
pub async fn check(s: &Session, job: &VidiJob, name: &str) -> Vec<FieldError> {
    let mut problems = Vec::new();
    let image = s.image(job).to_string();
    let image_field = if job.spec.model.image.is_some() {
        "spec.model.image"
    } else {
        "--vidi-image"
    };
    let image_present = match s.docker.inspect_image(&image).await {
        Ok(_) => true,
        Err(e) if status_code(&e) == Some(404) => {
            problems.push(FieldError::new(
                image_field,
                format!(
                    "image {image} is not on the Docker engine (vidi-operator does not pull): build it with \
                     `vidi-operator docker build --tag {image} docker/vidi`, or `docker pull {image}`"
                ),
            ));
            false
        }
        Err(e) => {
            problems.push(FieldError::new(
                image_field,
                format!("cannot look up image {image}: {}", engine_message(&e)),
            ));
            false
        }
    };
    if s.opts.gpus == GpuMode::All {
        if s.opts.gate
            && let Err(e) = s.open_probe()
        {
            problems.push(FieldError::new(
                "--gpus",
                format!(
                    "no usable NVIDIA driver for the GPU gate ({e}); on a machine without a GPU use --gpus none, \
                     or --no-gate to skip the free-memory check"
                ),
            ));
        }
        if image_present
            && s.check_gpu_runtime
            && let Some(problem) = gpu_runtime(&s.docker, s, job, name, &image).await
        {
            problems.push(problem);
        }
    }
    for (i, cmd) in job.spec.co_tenants.commands.iter().enumerate() {
        if let Err(e) = commands::check(&cmd.name, &cmd.check).await {
            let why = match e {
                super::DockerError::Command { message, .. } => message,
                other => other.to_string(),
            };
            problems.push(FieldError::new(format!("spec.coTenants.commands[{i}].check"), why));
        }
    }
    problems
}

/// Starts a throwaway container from the Vidi image with the job's GPU request (entrypoint
/// `true`): the only way to know the engine can give a container the GPU is to ask it. An
/// image without a `true` to run still shows whether the GPU could be attached.
async fn gpu_runtime(docker: &Docker, s: &Session, job: &VidiJob, name: &str, image: &str) -> Option<FieldError> {
    let probe_name = format!("{name}-vidi-preflight");
    let c = VidiContainer {
        job: name,
        attempt: 0,
        name: &probe_name,
        image,
        precision: job.spec.model.precision,
        spec: &job.spec,
        output_dir: &s.opts.state_dir,
        gpus: &s.opts.gpus,
        user: &s.opts.user,
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["true".into()]),
        cmd: Some(Vec::new()),
        labels: Some([(JOB_LABEL.to_string(), name.to_string())].into()),
        host_config: Some(HostConfig {
            device_requests: c.device_request().map(|d| vec![d]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let remove = || async {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        let _ = docker.remove_container(&probe_name, Some(opts)).await;
    };
    remove().await;
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&probe_name).build()),
            body,
        )
        .await;
    let started = match created {
        Ok(_) => docker.start_container(&probe_name, None::<StartContainerOptions>).await,
        Err(e) => Err(e),
    };
    let problem = match started {
        Ok(()) => {
            let opts = WaitContainerOptionsBuilder::default().condition("not-running").build();
            let _ = docker.wait_container(&probe_name, Some(opts)).next().await;
            None
        }
        Err(e) => {
            let msg = engine_message(&e);
            let gpu = ["device driver", "nvidia", "gpu"]
                .iter()
                .any(|w| msg.to_lowercase().contains(w));
            gpu.then(|| {
                FieldError::new(
                    "--gpus",
                    format!(
                        "the Docker engine cannot give a container the GPU: install nvidia-container-toolkit, run \
                         `sudo nvidia-ctk runtime configure --runtime=docker` and restart Docker (or use --gpus none \
                         to run without a GPU); Docker said: {msg}"
                    ),
                )
            })
        }
    };
    remove().await;
    problem
}
