//! One Vidi attempt on a Docker host: the GPU gate, then create and start the container and
//! stream its output; failures before Vidi runs become the attempt's recorded end, so the
//! planner classifies them like any other (a gate timeout steps precision down, a missing
//! NVIDIA runtime is NoGpu).

use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStateStatusEnum;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions, StopContainerOptionsBuilder,
};
use futures::StreamExt as _;
use tokio::task::JoinHandle;

use crate::api::Precision;
use crate::gpu;

use super::container::VidiContainer;
use super::events::{Event, Progress};
use super::journal::{AttemptEnd, AttemptRecord, Exit};
use super::session::{Run, Session};
use super::{DockerError, GpuMode, engine_message, observe, status_code};

/// How long a Vidi container gets to stop before it is killed.
const VIDI_STOP_TIMEOUT_SECS: i32 = 10;

impl Run<'_> {
    /// Stops an attempt's container. One that was created but never started (the operator died
    /// between the two) cannot be stopped and would look pending for ever: it is removed.
    pub(super) async fn stop_attempt(&self, name: &str) -> Result<(), DockerError> {
        // A container of that name that vidi-operator did not create is never touched.
        match self
            .s
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) if !observe::is_ours(&c, &self.journal.job) => return Ok(()),
            Err(e) if status_code(&e) == Some(404) => return Ok(()),
            _ => {}
        }
        self.s.say(Event::VidiStopping {
            container: name.to_string(),
        });
        let opts = StopContainerOptionsBuilder::default().t(VIDI_STOP_TIMEOUT_SECS).build();
        match self.s.docker.stop_container(name, Some(opts)).await {
            // 304: not running (perhaps never started); 404: gone.
            Ok(()) => {}
            Err(e) if status_code(&e) == Some(404) => return Ok(()),
            Err(e) if status_code(&e) == Some(304) => {}
            Err(e) => return Err(DockerError::api(format!("stopping the Vidi container {name}"), e)),
        }
        let never_started = self
            .s
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.status)
            == Some(ContainerStateStatusEnum::CREATED);
        if never_started {
            let opts = RemoveContainerOptionsBuilder::default().force(true).build();
            match self.s.docker.remove_container(name, Some(opts)).await {
                Ok(()) => {}
                Err(e) if status_code(&e) == Some(404) => {}
                Err(e) => {
                    return Err(DockerError::api(
                        format!("removing the unstarted Vidi container {name}"),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    fn record_end(&mut self, number: u32, end: AttemptEnd) -> Result<(), DockerError> {
        if let Some(rec) = self.journal.attempt_mut(number) {
            rec.end = Some(end);
        }
        self.save()
    }

    /// GPU gate, then create and start the Vidi container. Failures before Vidi runs become the
    /// attempt's recorded end, for the planner to classify like any other.
    pub(super) async fn start_attempt(
        &mut self,
        number: u32,
        name: &str,
        precision: Precision,
        min_free_bytes: u64,
        gate_timeout: Duration,
    ) -> Result<(), DockerError> {
        match self.journal.attempt_mut(number) {
            Some(rec) if rec.end.is_some() => return Ok(()),
            // StartAttempt is idempotent: an attempt whose container exists is already started.
            Some(_) if observe::container_running(&self.s.docker, name).await?.is_some() => return Ok(()),
            Some(_) => {}
            None => {
                // Recorded before the container exists, so a crash right after creating it still
                // leaves a journal that names it.
                self.journal.attempts.push(AttemptRecord {
                    number,
                    name: name.to_string(),
                    precision,
                    gate_report: None,
                    end: None,
                });
                self.save()?;
            }
        }
        if self.s.opts.gpus == GpuMode::All && self.s.opts.gate {
            match self.gate(min_free_bytes, gate_timeout).await {
                Ok(report) => {
                    if let Some(rec) = self.journal.attempt_mut(number) {
                        rec.gate_report = serde_json::to_string(&report).ok();
                    }
                    self.save()?;
                }
                Err((exit_code, message)) => {
                    self.s.say(Event::GateFailed {
                        message: message.clone(),
                    });
                    let gate = Exit {
                        exit_code,
                        reason: Some("GateFailed".into()),
                        message: Some(message),
                    };
                    return self.record_end(
                        number,
                        AttemptEnd {
                            gate: Some(gate),
                            main: None,
                            reason: None,
                        },
                    );
                }
            }
        }
        // An earlier run's or attempt's result and message must not pass for this one's.
        self.s.prepare_output_dir(&self.journal.output_dir)?;
        let spec = self.journal.spec.clone();
        let image = spec
            .model
            .image
            .clone()
            .unwrap_or_else(|| self.s.opts.vidi_image.clone());
        let c = VidiContainer {
            job: &self.journal.job,
            attempt: number,
            name,
            image: &image,
            precision,
            spec: &spec,
            output_dir: &self.journal.output_dir,
            gpus: &self.s.opts.gpus,
            user: &self.s.opts.user,
        };
        let body = c.create_body();
        let docker = &self.s.docker;
        let created = docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(name).build()), body)
            .await;
        let made = created.is_ok();
        let started = match created {
            Ok(_) => docker.start_container(name, None::<StartContainerOptions>).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            let end = start_failure(&e, &image);
            self.s.say(Event::VidiStartFailed {
                attempt: number,
                message: end
                    .gate
                    .as_ref()
                    .or(end.main.as_ref())
                    .and_then(|x| x.message.clone())
                    .or(end.reason.clone())
                    .unwrap_or_default(),
            });
            // Only the container this call created: a failed create (its name taken by a
            // container vidi-operator did not make) leaves that one alone.
            if made {
                let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                let _ = docker.remove_container(name, Some(opts)).await;
            }
            return self.record_end(number, end);
        }
        self.vidi_started.insert(number, std::time::Instant::now());
        self.s.say(Event::VidiStarted {
            container: name.to_string(),
            image: image.clone(),
            attempt: number,
            precision,
            deadline: self.deadline,
        });
        self.logs.push((
            name.to_string(),
            stream_logs(docker.clone(), name.to_string(), self.s.progress.clone()),
        ));
        Ok(())
    }

    /// Waits in-process until the GPU has `min_free_bytes` free, telling the user free vs
    /// needed. `Err((exit code, message))` uses the `gpu gate` exit codes.
    async fn gate(&self, min_free_bytes: u64, timeout: Duration) -> Result<gpu::GateReport, (i32, String)> {
        let probe = self.s.open_probe().map_err(|e| {
            (
                gpu::EXIT_NO_GPU,
                format!("{e}; without a GPU use --gpus none (no GPU request, no gate)"),
            )
        })?;
        let selector = Session::gpu_selector(&self.journal.spec);
        self.s.say(Event::GateWaiting {
            needed_bytes: min_free_bytes,
        });
        let progress = self.s.progress.clone();
        let report = gpu::wait_for_free(
            &*probe,
            &selector,
            min_free_bytes,
            timeout,
            self.s.opts.gate_interval,
            |r| {
                // The passing reading is reported as GatePassed below.
                if r.free_bytes < min_free_bytes {
                    progress(&Event::GateReading {
                        gpu: r.label(),
                        free_bytes: r.free_bytes,
                        needed_bytes: min_free_bytes,
                        holders: r.holders(),
                    });
                }
            },
        )
        .await
        .map_err(|e| (e.exit_code(), e.to_string()))?;
        self.s.say(Event::GatePassed {
            gpu: format!("GPU {} ({})", report.device.index, report.device.name),
            free_bytes: report.free_bytes,
            needed_bytes: report.min_free_bytes,
        });
        Ok(report)
    }
}

/// Why creating or starting the Vidi container failed, as the attempt's end.
fn start_failure(e: &bollard::errors::Error, image: &str) -> AttemptEnd {
    let msg = engine_message(e);
    if msg.contains("could not select device driver") || msg.contains("nvidia-container-cli") {
        // Reported like a failed gate with "no GPU": retrying cannot help.
        return AttemptEnd {
            gate: Some(Exit {
                exit_code: gpu::EXIT_NO_GPU,
                reason: Some("NoNvidiaRuntime".into()),
                message: Some(format!(
                    "Docker has no NVIDIA runtime: install nvidia-container-toolkit, run \
                     `sudo nvidia-ctk runtime configure --runtime=docker` and restart Docker \
                     (or use --gpus none to run without a GPU); Docker said: {msg}"
                )),
            }),
            main: None,
            reason: None,
        };
    }
    if status_code(e) == Some(404) && msg.contains("image") {
        // Removed since preflight saw it. Another attempt would find it missing too: reported
        // like bad input (exit 2), which is never retried.
        return AttemptEnd {
            gate: None,
            main: Some(Exit {
                exit_code: 2,
                reason: Some("ImageNotFound".into()),
                message: Some(format!(
                    "image {image} not found: build it with `vidi-operator docker build --tag {image}` ({msg})"
                )),
            }),
            reason: None,
        };
    }
    AttemptEnd {
        gate: None,
        main: None,
        reason: Some(format!("Docker could not start the container: {msg}")),
    }
}

/// Streams a container's output to the progress sink, one `[name] line` per line.
fn stream_logs(docker: Docker, name: String, progress: Progress) -> JoinHandle<()> {
    tokio::spawn(async move {
        let opts = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = docker.logs(&name, Some(opts));
        let mut partial = String::new();
        while let Some(Ok(chunk)) = logs.next().await {
            partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(at) = partial.find('\n') {
                let line: String = partial.drain(..=at).collect();
                progress(&Event::VidiOutput {
                    container: name.clone(),
                    line: line.trim_end().to_string(),
                });
            }
        }
        if !partial.trim().is_empty() {
            progress(&Event::VidiOutput {
                container: name.clone(),
                line: partial.trim_end().to_string(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::outcome::AttemptEnd as AttemptEnd2;

    fn engine_error(status_code: u16, message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn a_missing_nvidia_runtime_is_a_gpu_failure_that_says_what_to_install() {
        let end = start_failure(
            &engine_error(
                500,
                "could not select device driver \"nvidia\" with capabilities: [[gpu]]",
            ),
            "vidi:latest",
        );
        let gate = end.gate.expect("reported as the gate");
        assert_eq!(gate.exit_code, gpu::EXIT_NO_GPU);
        let message = gate.message.unwrap_or_default();
        assert!(
            message.starts_with("Docker has no NVIDIA runtime: install nvidia-container-toolkit"),
            "{message}"
        );
    }

    #[test]
    fn a_missing_image_says_how_to_build_it() {
        let end = start_failure(&engine_error(404, "No such image: vidi:latest"), "vidi:latest");
        let main = end.main.expect("reported as Vidi's exit");
        let why = main.message.clone().unwrap_or_default();
        assert!(why.contains("vidi-operator docker build --tag vidi:latest"), "{why}");
        // Exit 2 is bad input: never retried.
        let AttemptEnd2::Failed { retry, .. } =
            crate::plan::outcome::classify(None, Some(&(&main).into()), None, Precision::Fp16)
        else {
            panic!("a missing image is a failure");
        };
        assert_eq!(retry, crate::plan::outcome::Retry::Never);
    }
}
