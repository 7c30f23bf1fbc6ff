//! Shared helpers for the Docker host tests (tests/docker_*.rs): a real engine, a fake Vidi
//! image built locally from busybox (no registry), unique names per test, and cleanup of every
//! container a test made, also when it fails.
#![allow(dead_code)]
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StartContainerOptions,
};

pub const BIN: &str = env!("CARGO_BIN_EXE_vidi-operator");
pub const IMAGE: &str = "vidi-test/fake-vidi:latest";
/// Label on every co-tenant a test creates: `<TEST_LABEL>=<fixture name>`.
pub const TEST_LABEL: &str = "vidi-test";
/// Generous: a loaded 2-core CI machine can be slow to start containers.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The engine, or `None` (the test then returns) when none is reachable — except with
/// `CI=true`, where a missing engine fails the test so CI can never silently skip these.
pub async fn engine() -> Option<Docker> {
    let why = match vidi_operator::docker::connect().await {
        Ok(d) => match d.ping().await {
            Ok(_) => return Some(d),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but no Docker engine is reachable, so the Docker tests cannot run: {why}");
    }
    eprintln!("SKIPPED: no Docker engine reachable ({why}); set CI=true to make this a failure");
    None
}

static BUILT: Mutex<bool> = Mutex::new(false);

/// Builds the fake Vidi image once per test binary with `vidi-operator docker build`.
pub fn fake_image() {
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/fake-vidi");
    let ctx = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(&src).expect("tests/images/fake-vidi") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), ctx.path().join(entry.file_name())).expect("copy image file");
    }
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("/bin/busybox is needed to build the test image: apt-get install busybox-static");
    let out = Command::new(BIN)
        .args(["docker", "build", "--tag", IMAGE])
        .arg(ctx.path())
        .output()
        .expect("run vidi-operator docker build");
    assert!(
        out.status.success(),
        "building the fake Vidi image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    *built = true;
}

/// A running `vidi-operator` whose output is collected as it comes.
pub struct Proc {
    pub child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

fn collect(mut from: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let sink = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_with(args, false, &[])
    }

    /// With `stderr_closed`, its stderr is a pipe whose reading end is closed at once (as after
    /// `2>&1 | head -1`, or a terminal that went away): every write fails with EPIPE.
    pub fn spawn_with(args: &[&str], stderr_closed: bool, env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vidi-operator");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = if stderr_closed {
            drop(child.stderr.take());
            Arc::new(Mutex::new("(stderr was closed)".to_string()))
        } else {
            collect(child.stderr.take().expect("stderr"))
        };
        Proc { child, stdout, stderr }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the exit (with a deadline) and returns the code (`None` if killed by a signal).
    pub async fn wait(&mut self) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status.code();
            }
            if start.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!(
                    "vidi-operator did not exit within {DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }
}

/// Polls `check` until it holds or the deadline passes (then panics with `what`).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One test's world: a temp dir (state dir, job files, host paths), unique names, and cleanup.
pub struct Fixture {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub docker: Docker,
}

impl Fixture {
    /// `None` when no engine is reachable (see [`engine`]).
    pub async fn new(test: &str) -> Option<Fixture> {
        let docker = engine().await?;
        tokio::task::spawn_blocking(fake_image)
            .await
            .expect("image build thread");
        let name = format!("vt{}-{test}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("weights")).expect("weights dir");
        std::fs::write(dir.path().join("video.mp4"), b"not really a video").expect("video file");
        Some(Fixture { name, dir, docker })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn state_dir(&self) -> String {
        self.path("state").display().to_string()
    }

    /// A job name unique to this fixture.
    pub fn job(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.name)
    }

    /// Creates (and starts, if `running`) a co-tenant container that sleeps until stopped.
    pub async fn cotenant(&self, suffix: &str, running: bool) -> String {
        let name = format!("{}-{suffix}", self.name);
        self.container(&name, &[(TEST_LABEL, &self.name)], running).await;
        name
    }

    /// Creates (and starts, if `running`) a container `name` from the test image that sleeps
    /// until stopped, with `labels` (the fixture removes it at the end if one of them is its
    /// `TEST_LABEL` or `vidi.dev/job` mark).
    pub async fn container(&self, name: &str, labels: &[(&str, &str)], running: bool) {
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            entrypoint: Some(vec!["/bin/sh".into(), "/cotenant.sh".into()]),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        };
        self.docker
            .create_container(Some(CreateContainerOptionsBuilder::default().name(name).build()), body)
            .await
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        if running {
            self.docker
                .start_container(name, None::<StartContainerOptions>)
                .await
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
        }
    }

    /// Whether a container runs; `None` when it does not exist.
    pub async fn running(&self, name: &str) -> Option<bool> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Some(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(_) => None,
        }
    }

    /// When a container last started (unchanged = not stopped and started since).
    pub async fn started_at(&self, name: &str) -> Option<String> {
        self.docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.started_at)
    }

    /// The Vidi containers of job `job` that exist now.
    /// Waits until one of `job`'s Vidi containers runs.
    pub async fn vidi_running(&self, job: &str) {
        eventually(&format!("{job}'s Vidi container to run"), || async {
            self.vidi_containers(job).await.iter().any(|(_, running)| *running)
        })
        .await;
    }

    pub async fn vidi_containers(&self, job: &str) -> Vec<(String, bool)> {
        let filters = [("label".to_string(), vec![format!("vidi.dev/job={job}")])].into();
        let list = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .expect("list containers");
        list.into_iter()
            .map(|c| {
                let name = c.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
                let running = c.state.is_some_and(|s| s.to_string() == "running");
                (name.trim_start_matches('/').to_string(), running)
            })
            .collect()
    }

    /// A command co-tenant whose "process" is a marker file, logging each stop and start.
    pub fn command_yaml(&self) -> String {
        let d = self.dir.path().display();
        std::fs::write(self.path("comfy.running"), b"").expect("marker");
        format!(
            r#"
    commands:
      - name: comfy
        stop: "rm -f {d}/comfy.running && echo stop >> {d}/comfy.log"
        start: "touch {d}/comfy.running && echo start >> {d}/comfy.log"
        check: "test -f {d}/comfy.running""#
        )
    }

    pub fn command_log(&self) -> String {
        std::fs::read_to_string(self.path("comfy.log")).unwrap_or_default()
    }

    pub fn command_running(&self) -> bool {
        self.path("comfy.running").exists()
    }

    /// Writes a job file and returns its path. `co_tenants` is YAML under `coTenants:` (the
    /// selector for this fixture's label is always there); `extra` goes under `spec:`.
    pub fn job_file(&self, job: &str, query: &str, co_tenants: &str, extra: &str) -> String {
        let d = self.dir.path().display();
        let yaml = format!(
            r#"apiVersion: vidi.dev/v1alpha1
kind: VidiJob
metadata:
  name: {job}
spec:
  video: {{hostPath: {d}/video.mp4}}
  query: "{query}"
  model:
    image: {IMAGE}
    weights: {{hostPath: {d}/weights}}
    precision: auto
  coTenants:
    selector: {{matchLabels: {{{TEST_LABEL}: {name}}}}}{co_tenants}
{extra}"#,
            name = self.name
        );
        let path = self.path(&format!("{job}.yaml"));
        std::fs::write(&path, yaml).expect("job file");
        path.display().to_string()
    }

    /// `vidi-operator docker run -f FILE --gpus none --state-dir … ARGS…`.
    pub fn run(&self, file: &str, args: &[&str]) -> Proc {
        let state = self.state_dir();
        let mut all = vec!["docker", "run", "-f", file, "--state-dir", &state];
        if !args.contains(&"--gpus") {
            all.extend(["--gpus", "none"]);
        }
        all.extend(args);
        Proc::spawn(&all)
    }

    /// Lets a fake Vidi started with `wait=go` in its query finish (it waits for this file in
    /// its output dir, the default one under the state dir).
    pub fn release_vidi(&self, job: &str) {
        std::fs::write(self.path(&format!("state/jobs/{job}/output/go")), b"").expect("signal the fake Vidi");
    }

    pub fn journal_exists(&self) -> bool {
        self.path("state/journal.json").exists()
    }
}

impl Drop for Fixture {
    /// Removes every container this test made (co-tenants by label, Vidi containers by job
    /// name prefix), even when the test panicked. Drop cannot await, so a thread of its own
    /// runs the calls on a fresh runtime.
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(docker) = vidi_operator::docker::connect().await else {
                    return;
                };
                let Ok(list) = docker
                    .list_containers(Some(ListContainersOptionsBuilder::default().all(true).build()))
                    .await
                else {
                    return;
                };
                for c in list {
                    let labels = c.labels.unwrap_or_default();
                    let ours = labels
                        .get(TEST_LABEL)
                        .is_some_and(|v| *v == name || v.starts_with(&format!("{name}-")))
                        || labels
                            .get("vidi.dev/job")
                            .is_some_and(|j| j.starts_with(&format!("{name}-")));
                    if let (true, Some(id)) = (ours, c.id) {
                        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
                        let _ = docker.remove_container(&id, Some(opts)).await;
                    }
                }
            });
        })
        .join();
    }
}

/// `docker run -o json`'s stdout, one JSON object per line; each must parse and name its event.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("a line is not JSON ({e}): {line}\n{stdout}"));
            assert!(v["event"].is_string(), "a line without \"event\": {line}");
            v
        })
        .collect()
}

/// The final VidiJob's status from `docker run -o json`: the last line, `{"event":"result",…}`.
pub fn status_json(stdout: &str) -> serde_json::Value {
    let lines = json_lines(stdout);
    let last = lines.last().unwrap_or_else(|| panic!("no JSON lines on stdout"));
    assert_eq!(last["event"], "result", "the last line is the result: {last}");
    last["job"]["status"].clone()
}
