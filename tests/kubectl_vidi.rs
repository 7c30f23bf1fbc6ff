//! `kubectl vidi` (the `kubectl-vidi` binary) against the API stand-in: each subcommand, each
//! output format, `wait`'s exit codes, and errors that name the job and its namespace.
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

mod kube_support;
use kube_standin::{Gvr, PodOutcome, Standin};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
/// The name the binary's requests are recorded under in the stand-in.
const CLIENT: &str = "kubectl-vidi";
const RESULT: &str = r#"{"segments":[[65,72.4],[180,184]],"precision":"fp16","videoSeconds":600}"#;

struct Cli {
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Cli {
    fn new(api: &Standin) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig_for(&kubeconfig, CLIENT).expect("kubeconfig");
        Cli { _dir: dir, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        command(&self.kubeconfig, args)
    }

    async fn run(&self, args: &[&str]) -> Output {
        let child = self.command(args).output();
        match tokio::time::timeout(WAIT, child).await {
            Ok(out) => out.expect("kubectl-vidi runs"),
            Err(_) => panic!("kubectl-vidi {args:?} did not end within {WAIT:?}"),
        }
    }

    /// Runs and expects exit 0; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "kubectl-vidi {args:?}: stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} -o json is not JSON ({e}): {text}"))
    }

    async fn yaml(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "yaml"]);
        let text = self.ok(&all).await;
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{args:?} -o yaml is not YAML ({e}): {text}"))
    }
}

fn command(kubeconfig: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-vidi"));
    c.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .env("RUST_BACKTRACE", "1")
        .kill_on_drop(true);
    c
}

fn job(name: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": {
        "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}, "hfCache": {"claimName": "hf-cache"}},
        "output": {"volume": {"claimName": "results", "path": "keynote"}},
    }})
}

/// A job created with `status` as given (no operator needed).
fn job_with_status(api: &Standin, name: &str, status: Value) -> Value {
    let mut j = job(name);
    j["status"] = status;
    api.create_with_status(&Gvr::vidijobs(), NS, j).expect("job created")
}

fn phase(api: &Standin, name: &str) -> Value {
    api.get(&Gvr::vidijobs(), NS, name)
        .map(|j| j["status"]["phase"].clone())
        .unwrap_or(Value::Null)
}

/// The header line of a table and the line starting with `first`.
fn row<'a>(table: &'a str, first: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in:\n{table}"))
}

fn header(table: &str) -> Vec<&str> {
    table.lines().next().unwrap_or_default().split_whitespace().collect()
}

/// A real operator runs one job while two more wait: `status` shows the phase, each waiting job's
/// queue position and whom it waits for, and the co-tenant held with its hold's start; then
/// `logs`, `wait` and `result` follow the first job to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_a_job_with_status_logs_wait_and_result() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache", "results"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    // Vidi pods keep running until the test finishes them.
    api.kubelet().on_pod(|_| None);
    let op = Operator::start(&api);
    let cli = Cli::new(&api);

    api.create(&Gvr::vidijobs(), NS, job("first")).unwrap();
    api.wait_for(|v| phase_in(v, "first") == "Running", WAIT)
        .await
        .expect("first runs");
    api.create(&Gvr::vidijobs(), NS, job("second")).unwrap();
    api.create(&Gvr::vidijobs(), NS, job("third")).unwrap();
    api.wait_for(
        |v| phase_in(v, "second") == "Queued" && phase_in(v, "third") == "Queued",
        WAIT,
    )
    .await
    .expect("the others queue");
    // The next in line joins the hold, so the co-tenant stays down between the two jobs.
    api.wait_for(
        |v| {
            v.get(&Gvr::deployments(), NS, "cosyvoice")
                .is_some_and(|d| d["metadata"]["annotations"]["vidi.dev/held-by"] == "media/first,media/second")
        },
        WAIT,
    )
    .await
    .expect("second joins the hold");

    let table = cli.ok(&["status", "-n", NS]).await;
    assert_eq!(
        header(&table),
        ["NAME", "PHASE", "QUEUE", "ATTEMPTS", "AGE", "HOLDS"],
        "{table}"
    );
    let first = row(&table, "first");
    assert!(
        first.contains("Running") && first.contains("media/cosyvoice (for "),
        "{table}"
    );
    assert!(row(&table, "second").contains("1 (behind media/first)"), "{table}");
    assert!(row(&table, "third").contains("2 (behind media/second)"), "{table}");

    for report in [
        cli.json(&["status", "-n", NS]).await,
        cli.yaml(&["status", "-n", NS]).await,
    ] {
        let jobs = report["jobs"].as_array().expect("jobs");
        let by = |n: &str| jobs.iter().find(|j| j["name"] == n).cloned().unwrap_or(Value::Null);
        let first = by("first");
        assert_eq!(first["phase"], "Running", "{report}");
        assert!(
            first.get("queuePosition").is_none(),
            "a running job is not in the queue: {first}"
        );
        let hold = &first["holds"][0];
        assert_eq!(
            (&hold["kind"], &hold["namespace"], &hold["name"]),
            (&json!("Deployment"), &json!(NS), &json!("cosyvoice"))
        );
        assert_eq!(hold["originalReplicas"], 1);
        assert!(hold["heldSince"].as_str().is_some_and(|s| s.ends_with('Z')), "{hold}");
        assert!(hold["heldSeconds"].as_i64().is_some_and(|s| s >= 0), "{hold}");
        assert_eq!(hold["sharedWith"], json!(["media/second"]));
        assert_eq!(by("second")["queuePosition"], 1);
        assert_eq!(by("second")["waitingFor"], "media/first");
        assert_eq!(by("third")["queuePosition"], 2);
        assert_eq!(by("third")["waitingFor"], "media/second");
        assert_eq!(by("third")["holds"], json!([]));
    }

    // One job by name; every namespace with -A (a NAMESPACE column first).
    let one = cli.json(&["status", "-n", NS, "second"]).await;
    assert_eq!(one["jobs"].as_array().map(Vec::len), Some(1));
    let all = cli.ok(&["status", "-A"]).await;
    assert_eq!(header(&all)[..2], ["NAMESPACE", "NAME"], "{all}");
    assert!(
        all.lines().any(|l| l.starts_with("media") && l.contains("first")),
        "{all}"
    );

    // The log of the running attempt, then its end.
    let pod = "first-vidi-1";
    api.append_log(NS, pod, "vidi", "loading weights\nanswering\n");
    assert_eq!(
        cli.ok(&["logs", "-n", NS, "first"]).await,
        "loading weights\nanswering\n"
    );
    let before = watches(&api);
    let waiting = tokio::spawn(cli.command(&["wait", "-n", NS, "first", "--timeout", "60s"]).output());
    let deadline = Instant::now() + WAIT;
    while watches(&api) == before {
        assert!(Instant::now() < deadline, "`wait` never started a watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.kubelet()
        .finish(NS, pod, PodOutcome::succeed().with_message(RESULT))
        .expect("pod finishes");
    let out = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("wait ends once the job has")
        .expect("joined")
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("media/first: Succeeded"), "{said}");
    assert!(said.contains("2 segments"), "{said}");

    let result = cli.ok(&["result", "-n", NS, "first"]).await;
    assert_eq!(header(&result), ["START", "END", "DURATION"], "{result}");
    assert!(result.contains("00:01:05   00:01:12.4   7.4s"), "{result}");
    assert!(result.contains("00:03:00   00:03:04     4.0s"), "{result}");

    // It only reads, and only what the README says it reads.
    let used: std::collections::BTreeSet<(String, String)> = api
        .access_records()
        .into_iter()
        .filter(|r| r.client.as_deref() == Some(CLIENT))
        .map(|r| {
            let res = [r.access.resource, r.access.subresource].join("/");
            (r.access.verb, res.trim_end_matches('/').to_string())
        })
        .collect();
    let documented: std::collections::BTreeSet<(String, String)> = [
        ("get", "vidijobs"),
        ("list", "vidijobs"),
        ("watch", "vidijobs"),
        ("list", "deployments"),
        ("list", "statefulsets"),
        ("list", "pods"),
        ("get", "pods/log"),
    ]
    .into_iter()
    .map(|(v, r)| (v.to_string(), r.to_string()))
    .collect();
    assert!(used.is_subset(&documented), "{used:?}");
    assert_eq!(used, documented, "this scene uses every documented read");
    op.crash().await;
}

fn phase_in(v: &kube_standin::View<'_>, name: &str) -> String {
    v.get(&Gvr::vidijobs(), NS, name)
        .and_then(|j| j["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

/// `wait` ends as soon as the job does, either way, through its watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_exits_0_on_succeeded_and_1_on_failed_promptly() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    for (name, end, code) in [("good", "Succeeded", 0), ("bad", "Failed", 1)] {
        job_with_status(&api, name, json!({"phase": "Running", "attempts": 1}));
        let watches_before = watches(&api);
        let mut child = cli
            .command(&["wait", "-n", NS, name, "--timeout", "10m"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // Changes the job only once the wait watches it.
        let deadline = Instant::now() + WAIT;
        while watches(&api) == watches_before {
            assert!(Instant::now() < deadline, "`wait` never started a watch");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut status = json!({"phase": end});
        if end == "Failed" {
            status["reason"] = json!("BadInput");
            status["message"] = json!("Vidi exited 2: video not found");
        }
        api.patch_status(&Gvr::vidijobs(), NS, name, json!({"status": status}))
            .expect("status");
        let started = Instant::now();
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("wait ends promptly")
            .expect("exit status");
        assert_eq!(status.code(), Some(code), "{name}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            use tokio::io::AsyncReadExt as _;
            out.read_to_string(&mut stdout).await.expect("stdout");
        }
        assert!(stdout.starts_with(&format!("media/{name}: {end}")), "{stdout}");
        if end == "Failed" {
            assert!(
                stdout.contains("(BadInput)") && stdout.contains("video not found"),
                "{stdout}"
            );
        }
    }
    // A job already finished: at once, and -o json / yaml carry the same.
    let done = cli.json(&["wait", "-n", NS, "good"]).await;
    assert_eq!(done["phase"], "Succeeded");
    let out = cli.run(&["wait", "-n", NS, "bad", "-o", "yaml"]).await;
    assert_eq!(out.status.code(), Some(1));
    let failed: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    assert_eq!(
        (&failed["phase"], &failed["reason"]),
        (&json!("Failed"), &json!("BadInput"))
    );
}

/// The watches of VidiJobs the binary has started.
fn watches(api: &Standin) -> usize {
    api.access_records()
        .iter()
        .filter(|r| r.client.as_deref() == Some(CLIENT))
        .filter(|r| r.access.verb == "watch" && r.access.resource == "vidijobs")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_exit_4_saying_the_phase() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    job_with_status(&api, "slow", json!({"phase": "Queued"}));
    let out = cli.run(&["wait", "-n", NS, "slow", "--timeout", "1s"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: timed out after 1s waiting for VidiJob media/slow to finish (phase Queued)\n"
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_job_is_an_error_naming_it_and_its_namespace() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    for args in [
        vec!["status", "ghost"],
        vec!["wait", "ghost"],
        vec!["logs", "ghost"],
        vec!["logs", "ghost", "-f"],
        vec!["result", "ghost"],
    ] {
        for output in ["table", "json", "yaml"] {
            if args.contains(&"-f") && output != "table" {
                continue;
            }
            let mut all = args.clone();
            all.extend(["-n", NS, "-o", output]);
            let out = cli.run(&all).await;
            assert_eq!(out.status.code(), Some(1), "{all:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                "error: VidiJob \"ghost\" not found in namespace \"media\"\n",
                "{all:?}: one line, no backtrace although RUST_BACKTRACE=1"
            );
            assert!(out.stdout.is_empty(), "{all:?}");
        }
    }
    let out = cli.run(&["status", "-A", "ghost"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob \"ghost\" not found in any namespace\n"
    );
    // No job at all is no error: a note on stderr, as kubectl's "No resources found".
    let out = cli.run(&["status", "-n", NS]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "No VidiJobs found in namespace media.\n"
    );
    // The context's namespace is the default (the stand-in's kubeconfig says `default`).
    let out = cli.run(&["result", "ghost"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob \"ghost\" not found in namespace \"default\"\n"
    );
    // -A names no single namespace: only status takes it.
    let out = cli.run(&["wait", "-A", "ghost"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: -A/--all-namespaces applies to `status` only"));
    // A wrong command line is exit 2; no arguments shows help and is no error.
    assert_eq!(cli.run(&["wait"]).await.status.code(), Some(2));
    assert_eq!(cli.run(&["status", "-o", "xml"]).await.status.code(), Some(2));
    let help = cli.run(&[]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("kubectl vidi"));
}

/// Puts the Vidi container of attempt pod `pod` in `state` (and the pod in `phase`, when given),
/// as the kubelet would.
fn vidi_container(api: &Standin, pod: &str, phase: Option<&str>, state: Value) {
    let mut status = json!({"containerStatuses": [{"name": "vidi", "state": state}]});
    if let Some(phase) = phase {
        status["phase"] = json!(phase);
    }
    api.patch_status(&Gvr::pods(), NS, pod, json!({"status": status}))
        .expect("pod status");
}

/// A pod of attempt `n` of job `job` (owned by it), with the Vidi container in `state`.
fn attempt_pod(api: &Standin, job: &Value, n: u32, state: Value) {
    let name = job["metadata"]["name"].as_str().unwrap_or_default();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{name}-vidi-{n}"), "namespace": NS,
            "labels": {"vidi.dev/job": name, "vidi.dev/attempt": n.to_string()},
            "ownerReferences": [{"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "name": name,
                                 "uid": job["metadata"]["uid"], "controller": true}],
        },
        "spec": {"initContainers": [{"name": "gpu-gate", "image": "gate"}], "containers": [{"name": "vidi", "image": "vidi"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "vidi", "state": state}]},
    });
    api.create_with_status(&Gvr::pods(), NS, pod).expect("pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_across_attempts_one_attempt_and_follow() {
    let api = standin_with_claims(&[]).await;
    api.kubelet().set_enabled(false);
    let cli = Cli::new(&api);
    let j = job_with_status(&api, "retried", json!({"phase": "Running", "attempts": 3}));
    let ended = json!({"terminated": {"exitCode": 3, "reason": "Error"}});
    attempt_pod(&api, &j, 1, ended.clone());
    attempt_pod(&api, &j, 2, ended);
    api.append_log(NS, "retried-vidi-1", "vidi", "fp16\nCUDA out of memory\n");
    api.append_log(NS, "retried-vidi-2", "vidi", "int8\nCUDA out of memory\n");

    let all = cli.ok(&["logs", "-n", NS, "retried"]).await;
    assert_eq!(
        all,
        "==> attempt 1 (pod retried-vidi-1) <==\nfp16\nCUDA out of memory\n==> attempt 2 (pod retried-vidi-2) <==\nint8\nCUDA out of memory\n"
    );
    assert_eq!(
        cli.ok(&["logs", "-n", NS, "retried", "--attempt", "2"]).await,
        "int8\nCUDA out of memory\n"
    );
    let report = cli.json(&["logs", "-n", NS, "retried"]).await;
    assert_eq!(report["attempts"][0]["attempt"], 1);
    assert_eq!(report["attempts"][1]["log"], "int8\nCUDA out of memory\n");
    let report = cli.yaml(&["logs", "-n", NS, "retried", "--attempt", "1"]).await;
    assert_eq!(report["attempts"][0]["pod"], "retried-vidi-1");

    let out = cli.run(&["logs", "-n", NS, "retried", "--attempt", "3"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob media/retried has no attempt 3; its pods are attempts 1, 2\n"
    );

    // The third attempt's gate still waits: no log yet, said so in place of it.
    attempt_pod(&api, &j, 3, json!({"waiting": {"reason": "PodInitializing"}}));
    let text = cli.ok(&["logs", "-n", NS, "retried", "--attempt", "3"]).await;
    assert!(
        text.contains("(no log: ") && text.contains("waiting to start: PodInitializing"),
        "{text}"
    );

    // -f --attempt follows that attempt as it logs, and ends when its container does (the job
    // has not ended).
    vidi_container(&api, "retried-vidi-3", None, json!({"running": {}}));
    api.append_log(NS, "retried-vidi-3", "vidi", "int4\n");
    let mut child = cli
        .command(&["logs", "-n", NS, "retried", "-f", "--attempt", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut seen = String::new();
    read_until(&mut stdout, &mut seen, "int4\n").await;
    api.append_log(NS, "retried-vidi-3", "vidi", "2 segments\n");
    read_until(&mut stdout, &mut seen, "2 segments\n").await;
    vidi_container(
        &api,
        "retried-vidi-3",
        Some("Succeeded"),
        json!({"terminated": {"exitCode": 0}}),
    );
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("-f ends with the container")
        .expect("exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(seen, "int4\n2 segments\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_waits_for_vidi_to_start_and_follows_every_retry_to_the_end() {
    let api = standin_with_claims(&[]).await;
    api.kubelet().set_enabled(false);
    let cli = Cli::new(&api);
    let j = job_with_status(
        &api,
        "later",
        json!({"phase": "Queued", "message": "behind media/first (1 ahead)"}),
    );
    // Without -f there is nothing to show yet.
    let out = cli.run(&["logs", "-n", NS, "later"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob media/later has no pod yet (phase Queued)\n"
    );
    let mut child = cli
        .command(&["logs", "-n", NS, "later", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut stdout, mut stderr) = (
        child.stdout.take().expect("stdout"),
        child.stderr.take().expect("stderr"),
    );
    let (mut seen, mut told) = (String::new(), String::new());
    // Queued: no pod yet, so it waits and says for what.
    read_until(
        &mut stderr,
        &mut told,
        "waiting for VidiJob media/later to start Vidi: Queued: behind media/first (1 ahead)\n",
    )
    .await;
    // Its turn: the first attempt's pod, whose gate still waits for free memory.
    api.patch_status(
        &Gvr::vidijobs(),
        NS,
        "later",
        json!({"status": {"phase": "Running", "attempts": 1, "podName": "later-vidi-1"}}),
    )
    .expect("running");
    attempt_pod(&api, &j, 1, json!({"waiting": {"reason": "PodInitializing"}}));
    read_until(&mut stderr, &mut told, "waiting to start: PodInitializing\n").await;
    assert!(
        told.contains("waiting for attempt 1's container to start (pod later-vidi-1)"),
        "{told}"
    );
    vidi_container(&api, "later-vidi-1", None, json!({"running": {}}));
    api.append_log(NS, "later-vidi-1", "vidi", "fp16\n");
    read_until(&mut stdout, &mut seen, "fp16\n").await;
    // The attempt fails; the retry is a new pod, followed under its own header.
    api.append_log(NS, "later-vidi-1", "vidi", "CUDA out of memory\n");
    vidi_container(
        &api,
        "later-vidi-1",
        Some("Failed"),
        json!({"terminated": {"exitCode": 3}}),
    );
    read_until(&mut stdout, &mut seen, "CUDA out of memory\n").await;
    // Two more attempts come before the follow looks again: the second ended already, the
    // third runs. Each is followed in turn, none skipped.
    attempt_pod(&api, &j, 2, json!({"terminated": {"exitCode": 3, "reason": "Error"}}));
    api.append_log(NS, "later-vidi-2", "vidi", "int8\nCUDA out of memory\n");
    attempt_pod(&api, &j, 3, json!({"running": {}}));
    api.patch_status(
        &Gvr::vidijobs(),
        NS,
        "later",
        json!({"status": {"phase": "Running", "attempts": 3, "podName": "later-vidi-3"}}),
    )
    .expect("retrying");
    api.append_log(NS, "later-vidi-3", "vidi", "int4\n2 segments\n");
    read_until(&mut stdout, &mut seen, "2 segments\n").await;
    vidi_container(
        &api,
        "later-vidi-3",
        Some("Succeeded"),
        json!({"terminated": {"exitCode": 0}}),
    );
    // The container has ended but the job has not: the follow goes on until it has.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().expect("child").is_none(),
        "-f ended before the job did"
    );
    api.patch_status(&Gvr::vidijobs(), NS, "later", json!({"status": {"phase": "Succeeded"}}))
        .expect("succeeded");
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("-f ends with the job")
        .expect("exit");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        seen,
        "fp16\nCUDA out of memory\n==> attempt 2 (pod later-vidi-2) <==\nint8\nCUDA out of memory\n==> attempt 3 (pod later-vidi-3) <==\nint4\n2 segments\n"
    );

    // A job that ended without ever starting Vidi has no log to follow: said so, exit 1.
    job_with_status(&api, "refused", json!({"phase": "Failed", "reason": "BadInput"}));
    let out = cli.run(&["logs", "-n", NS, "refused", "-f"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob media/refused has no pod (it ended Failed before Vidi started)\n"
    );
}

async fn read_until(out: &mut (impl tokio::io::AsyncRead + Unpin), seen: &mut String, end: &str) {
    use tokio::io::AsyncReadExt as _;
    let deadline = Instant::now() + WAIT;
    while !seen.ends_with(end) {
        let mut buf = [0u8; 256];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, out.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => panic!("no {end:?} in the followed log; got {seen:?}"),
        };
        assert!(n > 0, "the log ended before {end:?}; got {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_prints_segments_and_the_preview_in_every_format() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    job_with_status(
        &api,
        "done",
        json!({"phase": "Succeeded", "result": {
            "segments": [{"startSeconds": 65.0, "endSeconds": 72.4}, {"startSeconds": 3723.0, "endSeconds": 3725.0}],
            "summary": "2 segments: 00:01:05-00:01:12, 01:02:03-01:02:05",
            "precision": "int8", "videoSeconds": 4000.0,
            "preview": "keynote/preview.html"}}),
    );
    let table = cli.ok(&["result", "-n", NS, "done"]).await;
    assert_eq!(
        table,
        "START      END          DURATION\n00:01:05   00:01:12.4   7.4s\n01:02:03   01:02:05     2.0s\n\n2 segments: 00:01:05-00:01:12, 01:02:03-01:02:05\npreview: keynote/preview.html (on PersistentVolumeClaim results)\n"
    );
    for report in [
        cli.json(&["result", "-n", NS, "done"]).await,
        cli.yaml(&["result", "-n", NS, "done"]).await,
    ] {
        assert_eq!(report["segments"][0]["durationSeconds"], 7.4);
        assert_eq!(report["segments"][1]["startSeconds"], 3723.0);
        assert_eq!(report["preview"], "keynote/preview.html");
        assert_eq!(report["outputClaim"], "results");
        assert_eq!(report["precision"], "int8");
    }

    job_with_status(
        &api,
        "broken",
        json!({"phase": "Failed", "reason": "BadInput", "message": "Vidi exited 2: video not found"}),
    );
    let out = cli.run(&["result", "-n", NS, "broken"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob media/broken has no result: it is Failed (BadInput): Vidi exited 2: video not found\n"
    );
    assert_eq!(phase(&api, "broken"), "Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_a_job_deleted_meanwhile_says_so_with_exit_1() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    job_with_status(&api, "gone", json!({"phase": "Running"}));
    let before = watches(&api);
    let waiting = cli.command(&["wait", "-n", NS, "gone"]).output();
    let waiting = tokio::spawn(waiting);
    let deadline = Instant::now() + WAIT;
    while watches(&api) == before {
        assert!(Instant::now() < deadline, "`wait` never started a watch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.delete(&Gvr::vidijobs(), NS, "gone").expect("deleted");
    let out = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("wait ends with the job")
        .expect("joined")
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: VidiJob media/gone was deleted while waiting for it to finish (phase Running)\n"
    );
}

/// `--context` picks a context of the kubeconfig, as kubectl's does; one that is not there is an
/// error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_and_namespace_come_from_the_kubeconfig_as_in_kubectl() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    job_with_status(&api, "here", json!({"phase": "Queued"}));
    // The stand-in's kubeconfig has one context, `standin`, whose namespace is `default`.
    let named = cli.json(&["status", "--context", "standin", "-n", NS]).await;
    assert_eq!(named["jobs"][0]["name"], "here");
    assert_eq!(named["jobs"][0]["queuePosition"], 0, "nothing goes before it");
    assert_eq!(cli.json(&["status", "--context", "standin"]).await["jobs"], json!([]));
    let out = cli.run(&["status", "--context", "elsewhere"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: using kubeconfig "), "{err}");
    assert!(err.contains("elsewhere"), "{err}");
    assert_eq!(err.lines().count(), 2, "what, then why: {err}");
}

/// A user who may not list co-tenants in a namespace still sees what the job holds there, from
/// the job's own record, marked as such; what they may read shows with its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_falls_back_to_the_jobs_record_where_co_tenants_are_not_readable() {
    let api = standin_with_claims(&[]).await;
    let cli = Cli::new(&api);
    let mut cosy = deployment("cosyvoice", NS, 0, true);
    cosy["metadata"]["annotations"] = json!({
        "vidi.dev/held-by": "media/mixed", "vidi.dev/original-replicas": "1",
        "vidi.dev/held-since": "2026-11-30T10:00:00Z"});
    api.create(&Gvr::deployments(), NS, cosy).expect("co-tenant");
    job_with_status(
        &api,
        "mixed",
        json!({"phase": "Running", "attempts": 1, "suspended": [
            {"kind": "Deployment", "namespace": "gpu", "name": "comfyui", "originalReplicas": 2},
            {"kind": "Deployment", "name": "cosyvoice", "originalReplicas": 1}]}),
    );
    // Namespaces are listed in order: `gpu` first, and that list is refused.
    api.fail_next("list", "deployments", 403);
    let report = cli.json(&["status", "-n", NS, "mixed"]).await;
    let holds = &report["jobs"][0]["holds"];
    assert_eq!(holds[0]["namespace"], "gpu", "{report}");
    assert_eq!(holds[0]["unreadable"], true);
    assert_eq!(holds[0]["originalReplicas"], 2);
    assert!(holds[0].get("heldSince").is_none(), "{report}");
    assert_eq!(holds[1]["name"], "cosyvoice");
    assert_eq!(holds[1]["heldSince"], "2026-11-30T10:00:00Z");
    assert!(holds[1].get("unreadable").is_none(), "{report}");

    api.fail_next("list", "deployments", 403);
    let table = cli.ok(&["status", "-n", NS]).await;
    assert!(
        row(&table, "mixed").contains("gpu/comfyui (not readable: since when unknown), media/cosyvoice (for "),
        "{table}"
    );
    // Anything else than a refusal is still an error.
    api.fail_next("list", "deployments", 500);
    let out = cli.run(&["status", "-n", NS]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error: listing Deployments in gpu: "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
