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
    let foreign = foreign_names(&s.docker, name).await;
    for other in &foreign {
        problems.push(FieldError::new(
            "metadata.name",
            format!(
                "a container named {other} exists that vidi-operator did not create (it has no {JOB_LABEL}={name} \
                 label), and this job's Vidi containers are named {name}-vidi-<attempt>: rename or remove that \
                 container, or give the job another name (vidi-operator never stops or removes a container it \
                 did not create)"
            ),
        ));
    }
    if s.opts.gpus == GpuMode::All && foreign.is_empty() {
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
    if let Some(why) = output_not_writable(s, &s.output_dir_path(name, job)).await {
        let field = if job.spec.output.as_ref().and_then(|o| o.host_path.as_ref()).is_some() {
            "spec.output.hostPath"
        } else {
            "--state-dir"
        };
        problems.push(FieldError::new(field, why));
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

/// Containers named like this job's Vidi containers (`<job>-vidi-…`) that vidi-operator did not
/// create for it: a run would clash with them on the name.
async fn foreign_names(docker: &Docker, job: &str) -> Vec<String> {
    let prefix = format!("{job}-vidi-");
    let filters: std::collections::HashMap<String, Vec<String>> =
        [("name".to_string(), vec![format!("^/{}", regex_escape(&prefix))])].into();
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let Ok(list) = docker.list_containers(Some(opts)).await else {
        return Vec::new();
    };
    list.into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(JOB_LABEL))
                .is_none_or(|j| j != job)
        })
        .filter_map(|c| c.names?.into_iter().next())
        .map(|n| n.trim_start_matches('/').to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// `s` with the characters a regular expression gives meaning to escaped (job names are DNS
/// labels, so only `-` and `.` could occur; all are escaped to be safe).
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$-".contains(c);
            special.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
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

/// Why Vidi could not write its result into `dir`, an existing directory, as the container's
/// user (`--user`, numeric): what it would otherwise find out only after the co-tenants were
/// stopped. A directory the operator creates is made writable for that user; one that exists is
/// left as it is. Not judged where the engine maps users (rootless Docker, `userns-remap`), nor
/// for a user given by name.
async fn output_not_writable(s: &Session, dir: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(dir).ok().filter(std::fs::Metadata::is_dir)?;
    let (uid, gid) = numeric_user(&s.opts.user)?;
    if let Ok(info) = s.docker.info().await
        && info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.contains("rootless") || o.contains("userns"))
    {
        return None;
    }
    if writable_by(meta.uid(), meta.gid(), meta.mode(), uid, gid) {
        return None;
    }
    let d = dir.display();
    let user = &s.opts.user;
    Some(format!(
        "{d} is not writable by the Vidi container's user {user} (it is owned by {}:{} with mode {:o}): \
         `sudo chown {user} {d}` (or `chmod o+wx {d}`), choose another directory, or set the container's \
         user with --user",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    ))
}

/// `uid:gid` from `--user`; the gid is unknown for a bare `uid` (the image's passwd file
/// decides it). None for names, which only the image can resolve.
fn numeric_user(user: &str) -> Option<(u32, Option<u32>)> {
    match user.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, Some(g.parse().ok()?))),
        None => Some((user.parse().ok()?, None)),
    }
}

/// Whether `uid:gid` may create files in a directory owned by `owner:group` with `mode`
/// (write and search), by the permission bits that apply to it; root may always. An unknown
/// gid is given the group's bits when they would allow it.
fn writable_by(owner: u32, group: u32, mode: u32, uid: u32, gid: Option<u32>) -> bool {
    let allows = |bits: u32| bits & 0o3 == 0o3;
    if uid == 0 {
        return true;
    }
    if uid == owner {
        return allows(mode >> 6);
    }
    match gid {
        Some(g) if g == group => allows(mode >> 3),
        None if allows(mode >> 3) => true,
        _ => allows(mode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bits_that_apply_to_the_container_user_decide() {
        // root's 0755 directory: not for 1000:1000; root always.
        let u = Some(1000);
        assert!(!writable_by(0, 0, 0o40755, 1000, u));
        assert!(writable_by(0, 0, 0o40755, 0, Some(0)));
        // Its own, or its group's with group write, or everyone's.
        assert!(writable_by(1000, 1000, 0o755, 1000, u));
        assert!(writable_by(0, 1000, 0o775, 1000, u));
        assert!(writable_by(0, 0, 0o777, 1000, u));
        assert!(writable_by(0, 0, 0o1777, 1000, u));
        // The owner's bits apply to the owner, even when others have more.
        assert!(!writable_by(1000, 0, 0o577, 1000, u));
        // Write without search is not enough to create a file.
        assert!(!writable_by(0, 0, 0o776, 1000, u));
        // A group's bits do not apply to a user who is not in it.
        assert!(!writable_by(0, 5, 0o770, 1000, u));
        // A gid the image decides: the group's bits are given the benefit of the doubt.
        assert!(writable_by(0, 5, 0o770, 1000, None));
        assert!(!writable_by(0, 5, 0o750, 1000, None));
    }

    #[test]
    fn the_user_flag_is_read_as_numbers_or_not_judged() {
        assert_eq!(numeric_user("1000:1000"), Some((1000, Some(1000))));
        assert_eq!(numeric_user("1001"), Some((1001, None)));
        assert_eq!(numeric_user("vidi"), None);
        assert_eq!(numeric_user("1000:video"), None);
    }
}
