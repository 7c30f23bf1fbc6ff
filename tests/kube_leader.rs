//! Two replicas of the real `vidi-operator run --leader-election` binary against the API
//! stand-in: only the Lease holder acts, a standby takes over when the leader is killed, a
//! leader that is told to stop releases the Lease, and a leader cut off from the API (its Lease
//! writes fail, or its requests hang and are delivered late) stops acting before its Lease
//! expires while the standby takes over and keeps the Lease.
//!
//! Each replica reaches the stand-in under its own name (`Standin::write_kubeconfig_for`), so
//! every request is recorded with the replica that made it and one replica alone can be cut off.
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod kube_support;
use kube_standin::{Cut, Gvr, PodOutcome, Standin};
use kube_support::{NS, deployment, standin_with_claims};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LEASE_NS: &str = "default";
const LEASE_NAME: &str = "vidi-operator";
const WAIT: Duration = Duration::from_secs(30);
/// The replicas' Lease timing: a standby takes over `LEASE` after the leader's last renewal was
/// sent; the leader stops acting `RENEW_DEADLINE` after it.
const LEASE: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: &str = "2s";
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600,"peakVramBytes":19000000000}"#;

/// One operator process; killed when dropped, so a failing test leaves nothing running.
struct Replica {
    identity: String,
    port: u16,
    child: Child,
    log: Arc<Log>,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: tokio::sync::Notify,
}

impl Log {
    fn has(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .is_ok_and(|l| l.iter().any(|line| line.contains(needle)))
    }

    fn text(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Replica {
    /// Starts replica `identity`, reaching `api` under that name.
    fn start(api: &Standin, dir: &std::path::Path, identity: &str) -> Self {
        let kubeconfig = dir.join(format!("kubeconfig-{identity}"));
        api.write_kubeconfig_for(&kubeconfig, identity)
            .expect("kubeconfig written");
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_vidi-operator"))
            .args([
                "run",
                "--leader-election",
                "--lease-namespace",
                LEASE_NS,
                "--identity",
                identity,
            ])
            .args(["--lease-duration", &format!("{}s", LEASE.as_secs())])
            .args(["--renew-deadline", RENEW_DEADLINE, "--retry-period", "500ms"])
            .args(["--request-timeout", "1s"])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--vidi-image", "vidi:test", "--gate-image", "vidi-operator:test"])
            .env("KUBECONFIG", &kubeconfig)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("VIDI_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env_remove("VIDI_WATCH_NAMESPACES")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the operator binary starts");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = log.clone();
            let prefix = identity.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if std::env::var_os("VIDI_TEST_LOG").is_some() {
                        eprintln!("[{prefix}] {line}");
                    }
                    if let Ok(mut lines) = log.lines.lock() {
                        lines.push(line);
                    }
                    log.changed.notify_waiters();
                }
                log.changed.notify_waiters();
            });
        }
        Replica {
            identity: identity.into(),
            port,
            child,
            log,
        }
    }

    /// Waits until the replica has logged `needle`.
    async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let changed = self.log.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.log.has(needle) {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!(
                    "replica {} never logged {needle:?}; log:\n{}",
                    self.identity,
                    self.log.text()
                );
            }
        }
    }

    /// GET on the replica's health/metrics server: (status code, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match http_get(self.port, path).await {
                Ok(answer) => return answer,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!(
                        "replica {} never answered {path}: {e}\n{}",
                        self.identity,
                        self.log.text()
                    )
                }
                // The server may not be listening yet: retry until the deadline.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Waits until `path` answers 200.
    async fn wait_ok(&self, path: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (code, body) = self.get(path).await;
            if code == 200 {
                return body;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "replica {} {path} stays {code}: {body}\n{}",
                    self.identity,
                    self.log.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn counter(&self, name: &str) -> f64 {
        let body = self.wait_ok("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics of {}:\n{body}", self.identity))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit on its own.
    async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("replica {} did not exit; log:\n{}", self.identity, self.log.text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {answer}")))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn holder(lease: Option<Value>) -> Option<String> {
    lease?["spec"]["holderIdentity"].as_str().map(String::from)
}

async fn wait_holder(api: &Standin, want: Option<&str>) {
    let ok = api
        .wait_for(
            |v| holder(v.get(&Gvr::leases(), LEASE_NS, LEASE_NAME)).as_deref() == want,
            WAIT,
        )
        .await;
    if ok.is_err() {
        panic!(
            "the Lease holder never became {want:?}: {:?}",
            api.get(&Gvr::leases(), LEASE_NS, LEASE_NAME)
        );
    }
}

fn job(name: &str) -> Value {
    json!({
        "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
            "query": "a speaker holds up a phone",
            "model": {"weights": {"claimName": "weights"}},
        }
    })
}

/// Runs `name` to the end and checks the co-tenant came back as it was.
async fn job_completes(api: &Standin, name: &str) {
    api.create(&Gvr::vidijobs(), NS, job(name)).expect("job created");
    let done = api
        .wait_until(
            |v| {
                let st = v.get(&Gvr::vidijobs(), NS, name)?["status"].clone();
                (st["phase"] == "Succeeded" || st["phase"] == "Failed").then_some(st)
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|_| panic!("{name} never finished: {:?}", api.get(&Gvr::vidijobs(), NS, name)));
    assert_eq!(done["phase"], "Succeeded", "{done}");
    assert_eq!(done["result"]["segments"].as_array().map(Vec::len), Some(1), "{done}");
    api.wait_for(
        |v| {
            v.get(&Gvr::deployments(), NS, "cosyvoice").is_some_and(|d| {
                d["spec"]["replicas"] == 2 && d["metadata"]["annotations"].get("vidi.dev/held-by").is_none()
            })
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "cosyvoice not restored: {:?}",
            api.get(&Gvr::deployments(), NS, "cosyvoice")
        )
    });
}

/// The identities that published Events about `job`.
fn reporters(api: &Standin, job: &str) -> std::collections::BTreeSet<String> {
    api.list(&Gvr::events(), Some(NS))
        .iter()
        .filter(|e| e["regarding"]["kind"] == "VidiJob" && e["regarding"]["name"] == job)
        .map(|e| e["reportingInstance"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 2, true))
        .expect("co-tenant");
    api.kubelet().on_pod(|_| {
        Some(
            PodOutcome::succeed()
                .with_message(RESULT)
                .after(Duration::from_millis(200)),
        )
    });
    let dir = tempfile::tempdir().expect("temp dir");

    // Replica a starts first and takes the Lease; then b joins as a standby. (Started at the
    // same instant, both would try to take the free Lease with a server-side apply: a real API
    // server refuses the second with 409 because the first manager owns holderIdentity, but the
    // stand-in applies patches without field ownership, so that race cannot be judged here.)
    let mut replicas = vec![Replica::start(&api, dir.path(), "a")];
    wait_holder(&api, Some("a")).await;
    replicas[0].wait_log("leading: starting the controller").await;
    replicas.push(Replica::start(&api, dir.path(), "b"));
    let (l, s) = (0, 1);
    let leader_id = "a".to_string();
    replicas[s].wait_log("waiting to become the leader").await;
    for r in &replicas {
        assert_eq!(
            r.get("/healthz").await,
            (200, "ok".to_string()),
            "replica {}",
            r.identity
        );
        // The standby is ready by design (healthy, waiting); the leader once its caches synced.
        r.wait_ok("/readyz").await;
    }

    job_completes(&api, "first").await;
    let (leader, standby) = (&replicas[l], &replicas[s]);
    assert!(
        !standby.log.has("leading: starting the controller"),
        "the standby must not start a controller:\n{}",
        standby.log.text()
    );
    assert_eq!(
        reporters(&api, "first"),
        [leader.identity.clone()].into(),
        "Events come from the leader only"
    );
    assert!(leader.counter("vidi_operator_suspends_total").await >= 1.0);
    assert!(leader.counter("vidi_operator_reconciles_total").await >= 1.0);
    assert_eq!(standby.counter("vidi_operator_suspends_total").await, 0.0);
    assert_eq!(standby.counter("vidi_operator_reconciles_total").await, 0.0);
    assert_eq!(leader.counter("vidi_operator_leader").await, 1.0);
    assert_eq!(standby.counter("vidi_operator_leader").await, 0.0);
    assert_eq!(
        holder(api.get(&Gvr::leases(), LEASE_NS, LEASE_NAME)).as_deref(),
        Some(leader_id.as_str())
    );

    // The leader crashes (SIGKILL: no release). The standby takes over once the Lease expires
    // and runs the next job.
    replicas[l].kill();
    let new_id = replicas[s].identity.clone();
    wait_holder(&api, Some(&new_id)).await;
    replicas[s].wait_log("leading: starting the controller").await;
    job_completes(&api, "second").await;
    assert_eq!(reporters(&api, "second"), [new_id.clone()].into());
    assert!(replicas[s].counter("vidi_operator_suspends_total").await >= 1.0);
    assert_eq!(replicas[s].counter("vidi_operator_leader").await, 1.0);

    // Told to stop, the leader releases the Lease before it exits.
    replicas[s].terminate();
    let status = replicas[s].exited().await;
    assert!(
        status.success(),
        "a stopped leader exits 0: {status:?}\n{}",
        replicas[s].log.text()
    );
    wait_holder(&api, None).await;

    // The Lease calls are exactly those the chart's RBAC rules grant for leases.
    let lease_verbs: std::collections::BTreeSet<String> = api
        .access_log()
        .into_iter()
        .filter(|a| a.group == "coordination.k8s.io" && a.resource == "leases")
        .map(|a| a.verb)
        .collect();
    let granted: std::collections::BTreeSet<String> = vidi_operator::kube::rbac::rules()
        .iter()
        .filter(|r| r.api_groups == ["coordination.k8s.io"] && r.resources.contains(&"leases"))
        .flat_map(|r| r.verbs.iter().map(|v| v.to_string()))
        .collect();
    assert_eq!(lease_verbs, granted, "Lease verbs used vs. granted");
}

/// Two replicas, `a` leading and `b` standing by, with cosyvoice (2 replicas) as co-tenant and a
/// kubelet that keeps Vidi pods running until the test ends them.
async fn leader_and_standby(api: &Standin, dir: &std::path::Path) -> (Replica, Replica) {
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 2, true))
        .expect("co-tenant");
    api.kubelet().on_pod(|_| None);
    let a = Replica::start(api, dir, "a");
    wait_holder(api, Some("a")).await;
    a.wait_log("leading: starting the controller").await;
    let b = Replica::start(api, dir, "b");
    b.wait_ok("/readyz").await;
    (a, b)
}

/// Creates `name` and waits until its Vidi pod runs; returns the pod's name.
async fn running_job(api: &Standin, name: &str) -> String {
    api.create(&Gvr::vidijobs(), NS, job(name)).expect("job created");
    api.wait_until(
        |v| {
            let st = v.get(&Gvr::vidijobs(), NS, name)?["status"].clone();
            let pod = st["podName"].as_str()?.to_string();
            let running = v.get(&Gvr::pods(), NS, &pod)?["status"]["phase"] == "Running";
            (st["phase"] == "Running" && running).then_some(pod)
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| panic!("{name} never ran: {:?}", api.get(&Gvr::vidijobs(), NS, name)))
}

/// Ends the Vidi pod and waits until the job succeeded and cosyvoice is back at 2, unmarked.
async fn finishes(api: &Standin, name: &str, pod: &str) {
    api.kubelet()
        .finish(NS, pod, PodOutcome::succeed().with_message(RESULT))
        .expect("pod finished");
    api.wait_for(
        |v| {
            let done = v
                .get(&Gvr::vidijobs(), NS, name)
                .is_some_and(|j| j["status"]["phase"] == "Succeeded");
            let restored = v.get(&Gvr::deployments(), NS, "cosyvoice").is_some_and(|d| {
                d["spec"]["replicas"] == 2 && d["metadata"]["annotations"].get("vidi.dev/held-by").is_none()
            });
            done && restored
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{name} did not finish and restore: {:?}\n{:?}",
            api.get(&Gvr::vidijobs(), NS, name),
            api.get(&Gvr::deployments(), NS, "cosyvoice")
        )
    });
}

/// When `id`'s Lease expires, as a standby counts it: its last accepted Lease write plus the
/// lease duration.
fn lease_expiry(api: &Standin, id: &str) -> std::time::Instant {
    let last = api
        .access_records()
        .into_iter()
        .filter(|r| r.client.as_deref() == Some(id) && r.access.resource == "leases" && r.is_accepted_write())
        .map(|r| r.at)
        .max()
        .unwrap_or_else(|| panic!("{id} never wrote the Lease"));
    last + LEASE
}

/// Waits until the Lease has been written `times` more times, held by `id` each time.
async fn keeps_renewing(api: &Standin, id: &str, times: usize) {
    let mut versions = std::collections::BTreeSet::new();
    api.wait_for(
        |v| {
            let Some(lease) = v.get(&Gvr::leases(), LEASE_NS, LEASE_NAME) else {
                return false;
            };
            assert_eq!(
                lease["spec"]["holderIdentity"].as_str(),
                Some(id),
                "the Lease changed hands: {lease}"
            );
            versions.insert(lease["metadata"]["resourceVersion"].to_string());
            versions.len() > times
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| panic!("{id} stopped renewing the Lease"));
}

/// The writes `id` made (accepted or refused) after `t`.
fn writes_after(api: &Standin, id: &str, t: std::time::Instant) -> Vec<kube_standin::AccessRecord> {
    api.access_records()
        .into_iter()
        .filter(|r| r.client.as_deref() == Some(id) && r.at > t && r.is_write())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_writes_fail_stops_before_its_lease_expires() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, b) = leader_and_standby(&api, dir.path()).await;
    let pod = running_job(&api, "cut").await;

    // a can still read and write everything but the Lease.
    api.cut_off("a", Cut::LeaseWritesFail);
    a.wait_log("stopped leading").await;
    let (code, _) = a.get("/readyz").await;
    assert_eq!(code, 503, "a replica that stopped leading reports not-ready");
    assert_eq!(a.get("/healthz").await, (200, "ok".to_string()));
    wait_holder(&api, Some("b")).await;
    b.wait_log("leading: starting the controller").await;

    // The job ends while a could still write: only b acts on it.
    finishes(&api, "cut", &pod).await;
    let expiry = lease_expiry(&api, "a");
    let late = writes_after(&api, "a", expiry);
    assert!(
        late.iter().all(|r| !r.is_accepted_write()),
        "a wrote after its Lease expired: {late:?}"
    );
    // Its only write attempts are tries to take the Lease again (refused, and fenced anyway).
    assert!(
        late.iter().all(|r| r.access.resource == "leases"),
        "a's controller acted after its Lease expired: {late:?}"
    );
    assert!(
        api.access_records()
            .iter()
            .any(|r| r.client.as_deref() == Some("b") && r.is_accepted_write() && r.access.resource == "deployments"),
        "b restored the co-tenant"
    );
    assert!(reporters(&api, "cut").contains("b"));

    // Healed, a stays a standby (it resumes only by winning the Lease, which b holds) and is
    // ready again once it sees b lead.
    api.heal("a");
    a.wait_ok("/readyz").await;
    keeps_renewing(&api, "b", 3).await;
    assert_eq!(
        a.log.text().matches("leading: starting the controller").count(),
        1,
        "a started a controller again without the Lease:\n{}",
        a.log.text()
    );
    assert!(
        a.child.try_wait().expect("try_wait").is_none(),
        "a keeps running as a standby"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_requests_hang_stops_and_its_late_writes_are_refused() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut a, mut b) = leader_and_standby(&api, dir.path()).await;
    let pod = running_job(&api, "hang").await;

    // Everything a sends now is held, to be delivered after b has taken over.
    api.cut_off("a", Cut::Hang);
    a.wait_log("stopped leading").await;
    assert_eq!(a.get("/readyz").await.0, 503, "a stopped leading: not ready");
    assert_eq!(a.get("/healthz").await, (200, "ok".to_string()));
    // Its metrics say so, and no longer report the hold it can no longer see.
    assert_eq!(a.counter("vidi_operator_leader").await, 0.0);
    assert_eq!(a.counter("vidi_operator_co_tenants_held").await, 0.0);
    wait_holder(&api, Some("b")).await;
    finishes(&api, "hang", &pod).await;
    api.wait_for(|v| v.held_requests("a") > 0, WAIT)
        .await
        .expect("a's requests are held");

    // The partition heals: every held request of a reaches the server, late.
    let expiry = lease_expiry(&api, "a");
    api.heal("a");
    api.wait_for(|v| v.held_requests("a") == 0, WAIT)
        .await
        .expect("a's held requests are served");
    let late = writes_after(&api, "a", expiry);
    assert!(
        late.iter().any(|r| r.access.resource == "leases"),
        "a renewal of a was in flight and arrived late: {late:?}"
    );
    assert!(
        late.iter().all(|r| r.code == 409),
        "every write of a that arrived after its Lease expired is refused: {late:?}"
    );

    // b keeps the Lease and keeps running; a becomes a standby again.
    keeps_renewing(&api, "b", 3).await;
    a.wait_ok("/readyz").await;
    assert!(b.child.try_wait().expect("try_wait").is_none(), "b keeps running");
    assert!(a.child.try_wait().expect("try_wait").is_none(), "a keeps running");
    assert_eq!(
        writes_after(&api, "a", expiry)
            .iter()
            .filter(|r| r.is_accepted_write())
            .count(),
        0
    );
}
