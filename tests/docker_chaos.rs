//! Chaos against the real Docker engine: `docker run` is interrupted the ways users interrupt it
//! (kill -9 then `docker recover`; SIGINT, SIGTERM, SIGHUP; a closed stderr; the engine going
//! away mid-run) at moments spread over the whole run, and after each the co-tenants must be
//! exactly as they were: same container id, running state, restart policy, port bindings and
//! labels; the ComfyUI-like process running as exactly one instance; a bystander container
//! untouched. Each world is checked again once the slowest stop that could still be in flight
//! has had time to land.
//!
//! The world is built to break a restore that trusts "I asked":
//! - a CosyVoice-like container whose PID 1 ignores SIGTERM, so `docker stop` takes the whole
//!   stop timeout and goes on in the engine after its client is killed;
//! - a ComfyUI-like process that takes a second to shut down and cannot start while the old one
//!   still holds its "port";
//! - a stopped labelled container (must stay stopped) and an unlabelled bystander (never touched).
//!
//! Counts are printed (`chaos: …`) and every one must converge.
mod docker_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptionsBuilder, InspectContainerOptions, StartContainerOptions};
use docker_support::{Fixture, IMAGE, Proc, TEST_LABEL};
use tokio::sync::Mutex;

/// The slow container's whole `docker stop` (its PID 1 ignores SIGTERM).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Worlds driven in parallel (each with its own co-tenants and state dir).
const WORLDS: usize = 3;
const KILLS: usize = 51;
const PER_SIGNAL: usize = 10;

/// One world: its co-tenants, job file and state dir.
struct World {
    tag: String,
    dir: PathBuf,
    slow: String,
    idle: String,
    bystander: String,
    file: String,
}

/// What must be the same after every interruption.
#[derive(Debug, Clone, PartialEq)]
struct ContainerShot {
    id: String,
    running: bool,
    restart: Option<String>,
    ports: Option<String>,
    labels: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Shot {
    slow: ContainerShot,
    idle: ContainerShot,
    bystander: ContainerShot,
    /// The bystander's start time: touched at all means changed.
    bystander_started: Option<String>,
}

async fn shot_of(fx: &Fixture, name: &str) -> (ContainerShot, Option<String>) {
    let c = fx
        .docker
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .unwrap_or_else(|e| panic!("inspect {name}: {e}"));
    let state = c.state.unwrap_or_default();
    let host = c.host_config.unwrap_or_default();
    (
        ContainerShot {
            id: c.id.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            restart: host.restart_policy.and_then(|r| r.name).map(|n| n.to_string()),
            ports: host
                .port_bindings
                .map(|p| serde_json::to_string(&p).unwrap_or_default()),
            labels: c.config.and_then(|c| c.labels),
        },
        state.started_at,
    )
}

impl World {
    async fn new(fx: &Fixture, k: usize) -> World {
        let tag = format!("{}-w{k}", fx.name);
        let dir = fx.path(&format!("w{k}"));
        std::fs::create_dir_all(dir.join("state")).expect("world dir");
        let labels = |value: &str| -> Option<HashMap<String, String>> {
            Some([(TEST_LABEL.to_string(), value.to_string())].into())
        };
        // A port nothing else holds now (the kernel picks it).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let create = |name: String, cmd: Vec<&str>, label: String, ports: bool| {
            let body = ContainerCreateBody {
                image: Some(IMAGE.into()),
                entrypoint: Some(cmd.into_iter().map(String::from).collect()),
                labels: labels(&label),
                exposed_ports: ports.then(|| vec!["8000/tcp".to_string()]),
                host_config: Some(HostConfig {
                    restart_policy: Some(RestartPolicy {
                        name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                        maximum_retry_count: None,
                    }),
                    port_bindings: ports.then(|| {
                        [(
                            "8000/tcp".to_string(),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(port.to_string()),
                            }]),
                        )]
                        .into()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let docker = fx.docker.clone();
            async move {
                docker
                    .create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body)
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                name
            }
        };
        // PID 1 `sleep` has no SIGTERM handler, so the kernel ignores the signal: `docker stop`
        // takes the whole timeout, then kills it (exit 137), like Python as PID 1.
        let slow = create(format!("{tag}-tts"), vec!["/bin/sleep", "100000"], tag.clone(), true).await;
        let idle = create(format!("{tag}-idle"), vec!["/bin/sleep", "100000"], tag.clone(), false).await;
        let bystander = create(
            format!("{tag}-bystander"),
            vec!["/bin/sh", "/cotenant.sh"],
            format!("{tag}-not-selected"),
            false,
        )
        .await;
        for name in [&slow, &bystander] {
            fx.docker
                .start_container(name, None::<StartContainerOptions>)
                .await
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
        }
        let d = dir.display().to_string();
        std::fs::write(dir.join("proc.sh"), PROC_SH).expect("proc.sh");
        let file = dir.join("job.yaml");
        std::fs::write(
            &file,
            format!(
                r#"apiVersion: vidi.dev/v1alpha1
kind: VidiJob
metadata:
  name: {tag}
spec:
  video: {{hostPath: {video}}}
  query: "find sleep=1"
  model:
    image: {IMAGE}
    weights: {{hostPath: {weights}}}
  coTenants:
    selector: {{matchLabels: {{{TEST_LABEL}: {tag}}}}}
    commands:
      - name: comfy
        stop: "pid=$(cat {d}/pid 2>/dev/null) && kill $pid 2>/dev/null; true"
        start: "setsid sh {d}/proc.sh </dev/null >/dev/null 2>&1 &"
        check: "pid=$(cat {d}/pid 2>/dev/null) && [ -e /proc/$pid ] && [ \"$(cut -d' ' -f3 /proc/$pid/stat)\" != Z ]"
        stopTimeoutSeconds: 10
        startTimeoutSeconds: 10
"#,
                video = fx.path("video.mp4").display(),
                weights = fx.path("weights").display(),
            ),
        )
        .expect("job file");
        let world = World {
            tag,
            dir,
            slow,
            idle,
            bystander,
            file: file.display().to_string(),
        };
        assert!(
            Command::new("sh")
                .arg("-c")
                .arg(format!("setsid sh {d}/proc.sh </dev/null >/dev/null 2>&1 &"))
                .status()
                .expect("start proc")
                .success()
        );
        world.wait_proc_up().await;
        world
    }

    fn state(&self) -> String {
        self.dir.join("state").display().to_string()
    }

    fn run(&self, stderr_closed: bool) -> Proc {
        self.run_with(stderr_closed, &[])
    }

    /// `docker run` of this world's job, with `env` added to the operator's environment.
    fn run_with(&self, stderr_closed: bool, env: &[(&str, &str)]) -> Proc {
        let state = self.state();
        let args = [
            "docker",
            "run",
            "-f",
            &self.file,
            "--state-dir",
            &state,
            "--gpus",
            "none",
            "--stop-timeout",
            "2s",
            "--start-timeout",
            "20s",
        ];
        Proc::spawn_with(&args, stderr_closed, env)
    }

    /// The pid of the live ComfyUI-like instance, if exactly one holds the "port" and the pid
    /// file names it.
    fn proc_instance(&self) -> Result<u32, String> {
        let owner = std::fs::read_to_string(self.dir.join("port/owner"))
            .map_err(|_| "no instance holds the port".to_string())?;
        let pid = std::fs::read_to_string(self.dir.join("pid")).map_err(|e| format!("no pid file: {e}"))?;
        if owner.trim() != pid.trim() {
            return Err(format!(
                "the port is held by {} but the pid file says {}",
                owner.trim(),
                pid.trim()
            ));
        }
        let pid: u32 = pid.trim().parse().map_err(|e| format!("pid file: {e}"))?;
        let stat =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| format!("process {pid} is gone"))?;
        if stat.split(' ').nth(2) == Some("Z") {
            return Err(format!("process {pid} is a zombie"));
        }
        Ok(pid)
    }

    async fn wait_proc_up(&self) {
        let start = Instant::now();
        while self.proc_instance().is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the process co-tenant did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn shot(&self, fx: &Fixture) -> Shot {
        let (slow, _) = shot_of(fx, &self.slow).await;
        let (idle, _) = shot_of(fx, &self.idle).await;
        let (bystander, bystander_started) = shot_of(fx, &self.bystander).await;
        Shot {
            slow,
            idle,
            bystander,
            bystander_started,
        }
    }

    /// Every difference from `before`, or none.
    async fn differences(&self, fx: &Fixture, before: &Shot) -> Vec<String> {
        let mut out = Vec::new();
        let now = self.shot(fx).await;
        if now != *before {
            out.push(format!("containers differ: before {before:?}, now {now:?}"));
        }
        if let Err(e) = self.proc_instance() {
            out.push(format!("process co-tenant: {e}"));
        }
        if self.dir.join("state/journal.json").exists() {
            out.push("the journal is still there".into());
        }
        let leftovers = fx.vidi_containers(&self.tag).await;
        if !leftovers.is_empty() {
            out.push(format!("Vidi containers left: {leftovers:?}"));
        }
        out
    }

    async fn recover(&self) -> Result<(), String> {
        let mut r = Proc::spawn(&["docker", "recover", "--state-dir", &self.state()]);
        match r.wait().await {
            Some(0) => Ok(()),
            code => Err(format!("recover exited {code:?}: {}", r.stderr())),
        }
    }
}

/// A ComfyUI-like server: one instance at a time (its "port" is a directory it creates), and a
/// one-second shutdown on SIGTERM. A second instance started while the first still shuts down
/// fails to get the port and exits, as ComfyUI does.
const PROC_SH: &str = r#"#!/bin/sh
d=$(dirname "$0")
if ! mkdir "$d/port" 2>/dev/null; then echo "port in use" >> "$d/events"; exit 1; fi
echo $$ > "$d/port/owner"
echo $$ > "$d/pid"
echo "up $$" >> "$d/events"
trap 'sleep 1; echo "down $$" >> "$d/events"; rm -rf "$d/port"; exit 0' TERM
while :; do sleep 1 & wait $!; done
"#;

/// How one interrupted run ended.
#[derive(Debug)]
struct Outcome {
    what: String,
    problems: Vec<String>,
}

/// One interruption of one run: start it, interrupt it `at` into the run with `how`, finish
/// (recover where the run could not), then check right away and again once any stop still in
/// flight could have landed.
async fn interrupt(fx: &Fixture, w: &World, before: &Shot, how: &str, at: Duration) -> Outcome {
    let what = format!("{how} at {:.2}s", at.as_secs_f64());
    let closed_stderr = how.ends_with("+closed-stderr");
    let sig = how.trim_end_matches("+closed-stderr");
    let mut run = w.run(closed_stderr);
    tokio::time::sleep(at).await;
    let mut problems = Vec::new();
    if sig != "none" {
        run.signal(sig);
    }
    let code = run.wait().await;
    let expected = match sig {
        "KILL" => None,
        "INT" => Some(130),
        "TERM" => Some(143),
        "HUP" => Some(129),
        _ => Some(0),
    };
    // A run that ended before the signal came exits 0; one signalled before its handlers were
    // installed dies of it, having touched nothing.
    let signalled_early = code.is_none() && !w.dir.join("state/journal.json").exists();
    if code != expected && code != Some(0) && !signalled_early {
        problems.push(format!(
            "exit {code:?}, expected {expected:?} or 0; stderr:\n{}",
            run.stderr()
        ));
    }
    if sig == "KILL" || code.is_none() {
        if let Err(e) = w.recover().await {
            problems.push(e);
        }
    } else if w.dir.join("state/journal.json").exists() {
        problems.push(format!(
            "exited {code:?} but left the journal; stderr:\n{}",
            run.stderr()
        ));
        let _ = w.recover().await;
    }
    problems.extend(w.differences(fx, before).await);
    // A stop the engine was still carrying out would land within its timeout: look again then.
    tokio::time::sleep(STOP_TIMEOUT + Duration::from_millis(1500)).await;
    problems.extend(
        w.differences(fx, before)
            .await
            .into_iter()
            .map(|p| format!("later: {p}")),
    );
    if !problems.is_empty() {
        // Put the world back for the next round, whatever happened.
        let _ = w.recover().await;
        let _ = fx.docker.start_container(&w.slow, None::<StartContainerOptions>).await;
        if w.proc_instance().is_err() {
            let _ = std::fs::remove_dir_all(w.dir.join("port"));
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "setsid sh {}/proc.sh </dev/null >/dev/null 2>&1 &",
                    w.dir.display()
                ))
                .status();
            w.wait_proc_up().await;
        }
    }
    Outcome { what, problems }
}

/// How long one uninterrupted run takes in `w` (the span the moments are spread over).
async fn full_run(fx: &Fixture, w: &World, before: &Shot) -> Duration {
    let start = Instant::now();
    let mut run = w.run(false);
    let code = run.wait().await;
    let took = start.elapsed();
    assert_eq!(code, Some(0), "an uninterrupted run: {}", run.stderr());
    let problems = w.differences(fx, before).await;
    assert!(
        problems.is_empty(),
        "an uninterrupted run: {problems:?}\n{}",
        run.stderr()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_interruption_leaves_every_co_tenant_exactly_as_it_was() {
    let Some(fx) = Fixture::new("chaos").await else { return };
    let fx = Arc::new(fx);
    let mut worlds = Vec::new();
    for k in 0..WORLDS {
        let w = World::new(&fx, k).await;
        let before = w.shot(&fx).await;
        worlds.push((w, before));
    }
    let span = full_run(&fx, &worlds[0].0, &worlds[0].1).await;
    eprintln!("chaos: one uninterrupted run takes {:.2}s", span.as_secs_f64());

    // Every interruption, at moments spread evenly over the run (and a little past its end).
    let mut plan: Vec<(String, Duration)> = Vec::new();
    let spread = |n: usize, i: usize| span.mul_f64((i as f64 + 0.5) / n as f64 * 1.05);
    for i in 0..KILLS {
        plan.push(("KILL".into(), spread(KILLS, i)));
    }
    for sig in ["INT", "TERM", "HUP"] {
        for i in 0..PER_SIGNAL {
            plan.push((sig.into(), spread(PER_SIGNAL, i)));
        }
    }
    // The SSH session drops: the terminal is gone (stderr closed), then SIGHUP.
    for i in 0..3 {
        plan.push(("HUP+closed-stderr".into(), spread(3, i)));
    }
    // Nobody reads stderr at all (`2>&1 | head -1`): the run finishes on its own.
    plan.push(("none+closed-stderr".into(), Duration::ZERO));

    let plan = Arc::new(Mutex::new(plan));
    let mut tasks = Vec::new();
    for (w, before) in worlds {
        let (fx, plan) = (fx.clone(), plan.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let Some((how, at)) = plan.lock().await.pop() else {
                    break;
                };
                outcomes.push((how.clone(), interrupt(&fx, &w, &before, &how, at).await));
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.expect("world task"));
    }
    let mut counts: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    let mut failures = Vec::new();
    for (how, o) in &outcomes {
        let c = counts.entry(how.clone()).or_default();
        c.1 += 1;
        if o.problems.is_empty() {
            c.0 += 1;
        } else {
            failures.push(format!("{}:\n  {}", o.what, o.problems.join("\n  ")));
        }
    }
    for (how, (ok, all)) in &counts {
        eprintln!("chaos: {how}: {ok} of {all} restored exactly");
    }
    assert!(
        failures.is_empty(),
        "{} of {} interruptions did not converge:\n{}",
        failures.len(),
        outcomes.len(),
        failures.join("\n")
    );
    assert_eq!(outcomes.len(), KILLS + 3 * PER_SIGNAL + 4);
}

/// The engine goes away mid-run (every connection cut, new ones refused for a few seconds) and
/// comes back: the run gives up on the job, keeps retrying the restore until the engine answers,
/// and everything ends exactly as it was. Reaches the engine through `DOCKER_HOST`, so this also
/// shows the operator honours it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_going_away_mid_run_is_ridden_out() {
    let Some(fx) = Fixture::new("engine").await else { return };
    let w = World::new(&fx, 0).await;
    let before = w.shot(&fx).await;
    let proxy = EngineProxy::start(&fx.path("engine.sock")).await;
    let host = format!("unix://{}", fx.path("engine.sock").display());
    // While stopping the slow container, while Vidi runs, while restoring.
    for (i, at) in [0.8, 3.2, 4.6].into_iter().enumerate() {
        let mut run = w.run_with(false, &[("DOCKER_HOST", &host)]);
        tokio::time::sleep(Duration::from_secs_f64(at)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.heal();
        let code = run.wait().await;
        let err = run.stderr();
        assert!(matches!(code, Some(0 | 1)), "cut {i} at {at}s: exit {code:?}\n{err}");
        tokio::time::sleep(STOP_TIMEOUT + Duration::from_millis(1500)).await;
        let problems = w.differences(&fx, &before).await;
        assert!(problems.is_empty(), "cut {i} at {at}s: {problems:?}\n{err}");
        eprintln!("chaos: engine cut {i} at {at}s: exit {code:?}, restored exactly");
    }
    assert!(proxy.connections() > 0, "the operator went through DOCKER_HOST");
}

/// A unix-socket proxy to the real engine that can cut every connection and refuse new ones.
struct EngineProxy {
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl EngineProxy {
    async fn start(path: &Path) -> EngineProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::UnixListener::bind(path).expect("bind proxy socket");
        let proxy = EngineProxy {
            cut: Default::default(),
            conns: Default::default(),
            count: Default::default(),
        };
        let (cut, conns, count) = (proxy.cut.clone(), proxy.conns.clone(), proxy.count.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: the engine is "down"
                }
                count.fetch_add(1, Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                    }
                });
                conns.lock().unwrap_or_else(|p| p.into_inner()).push(task);
            }
        });
        proxy
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for World {
    /// The ComfyUI-like process outlives the test otherwise.
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}
