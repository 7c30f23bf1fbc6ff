//! Controller-added latency and operator memory at scale: the operator binary (release build)
//! runs as its own process against the in-process API stand-in, with 1,000 VidiJobs and 100 GPU
//! nodes' worth of co-tenants.
//!
//! Scene (one namespace, 100 node pools `gpu-node=node-<i>`, each with a CosyVoice-like and a
//! ComfyUI-like Deployment opted in to yielding, one replica each):
//! - pools 0..50 are busy: one job runs there for the whole benchmark (its Vidi pod never ends)
//!   and 9 more wait behind it in `Queued` (500 jobs);
//! - pools 50..100 each ran 8 jobs to `Succeeded` through the real controller before measuring
//!   (400 finished jobs, their Vidi pods kept), then get 2 measured jobs each, one at a time
//!   (100 samples per transition; 1,000 jobs at the end).
//!
//! Latencies come from the stand-in's commit times of the writes (`Standin::changes_since`),
//! never from when this process noticed them, so the stand-in's simulated delays (pod
//! termination, the Vidi run) are outside every interval:
//! 1. suspend: the job's ADDED → the later of the two co-tenant writes with replicas 0 and the
//!    job in `vidi.dev/held-by`;
//! 2. start: the last co-tenant pod's DELETED (gone, after its termination delay) → the Vidi
//!    pod's ADDED;
//! 3. restore: the Vidi pod's write with phase Succeeded → the later of the two co-tenant writes
//!    that put the replicas back and drop the marks.
//!
//! Memory: VmRSS/VmHWM of the operator process from /proc/PID/status, so the stand-in (this
//! process) is not counted at all.
//!
//! `VIDI_BENCH_SCALE=10` multiplies the scene by ten: 10,000 VidiJobs, 1,000 pools, 2,000 co-tenant
//! Deployments (1,000 measured lifecycles).
//!
//! After the run, the kube-rs floor (`benches/floor`: what a patch, an Event and a watched change
//! cost a bare kube client on this machine right now) is priced for the lifecycle's own counts of
//! requests and changes, and printed next to the operator's CPU.
//!
//! `cargo bench --bench controller`; JSON in `target/bench-controller-x<scale>.json`, the operator's log
//! in `target/bench-controller-operator.log`. `VIDI_BENCH_VERBOSE=1` prints every sample,
//! `VIDI_BENCH_TRACE=1` the stand-in's write history of the first measured jobs.
//! `VIDI_BENCH_OPERATOR` names another operator binary and `VIDI_BENCH_OUT` another folder for
//! the JSON and the log: both let the two built binaries run on a machine without the checkout.
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod floor;

use kube::CustomResourceExt;
use kube_standin::{Change, Gvr, PodOutcome, Standin, View};
use serde_json::{Value, json};
use vidi_operator::api::VidiJob;

const NS: &str = "gpu";
/// `VIDI_BENCH_SCALE=n` multiplies the scene: pools, co-tenants, jobs (default 1: 1,000 jobs,
/// 100 pools, 200 co-tenant Deployments; 10: 10,000 jobs, 1,000 pools, 2,000 Deployments).
fn scale() -> usize {
    static SCALE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SCALE.get_or_init(|| {
        std::env::var("VIDI_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(1)
    })
}

/// GPU node pools, each with two co-tenant Deployments.
fn pools() -> usize {
    100 * scale()
}

/// Pools with a job running for the whole benchmark and 9 queued behind it.
fn busy_pools() -> usize {
    pools() / 2
}
const FINISHED_PER_POOL: usize = 8;
const QUEUED_PER_BUSY_POOL: usize = 9;
/// Measured jobs per idle pool, one after the other (`VIDI_BENCH_ROUNDS`, default 2): more rounds,
/// less noise in the CPU per lifecycle.
fn rounds() -> usize {
    std::env::var("VIDI_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2)
}
/// How long a deleted co-tenant pod stays terminating (simulated, excluded from the numbers).
const POD_TERMINATION: Duration = Duration::from_millis(30);
/// How long a Vidi pod runs (simulated, excluded from the numbers).
const VIDI_RUN: Duration = Duration::from_millis(20);
/// Issue 8's targets: per transition, and operator CPU per job lifecycle, at every scale.
const MEDIAN_TARGET_MS: f64 = 15.0;
const P99_TARGET_MS: f64 = 50.0;
const CPU_TARGET_MS: f64 = 5.0;
/// Patches, Events and watched changes of the kube-rs floor measured after the run.
const FLOOR_N: u64 = 500;

/// Operator memory: 64 MiB at 1,000 jobs, 160 MiB at 10,000.
fn rss_target_mib() -> u64 {
    if scale() <= 1 { 64 } else { 160 }
}

fn setup_timeout() -> Duration {
    SETUP_TIMEOUT_PER_SCALE * scale() as u32
}

/// Setting the scene, per unit of scale.
const SETUP_TIMEOUT_PER_SCALE: Duration = Duration::from_secs(240);
const CYCLE_TIMEOUT: Duration = Duration::from_secs(30);
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"int4","videoSeconds":600,"peakVramBytes":5000000000}"#;
const APPS: [&str; 2] = ["cosyvoice", "comfyui"];

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: measuring there would
    // only slow the test suite down (and in a debug build), so it just says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        println!("controller benchmark: run it with `cargo bench --bench controller`");
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    rt.block_on(bench());
}

/// The operator binary cargo built with this benchmark, or `VIDI_BENCH_OPERATOR` (to run the two
/// built binaries on another machine, where the build's absolute paths do not exist).
fn operator_binary() -> String {
    std::env::var("VIDI_BENCH_OPERATOR").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vidi-operator").to_string())
}

fn node(pool: usize) -> String {
    format!("node-{pool}")
}

fn app(name: &str, pool: usize) -> String {
    format!("{name}-{pool}")
}

fn deployment(name: &str, pool: usize) -> Value {
    let app = app(name, pool);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": NS,
                     "labels": {"app": app, "gpu-node": node(pool), "vidi.dev/yield-gpu": "true"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"nodeSelector": {"gpu-node": node(pool)},
                         "containers": [{"name": name, "image": format!("{name}:latest")}]}
            }
        }
    })
}

fn job(name: &str, pool: usize) -> Value {
    json!({
        "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
            "query": "a speaker holds up a phone",
            "model": {"weights": {"claimName": "weights"}, "hfCache": {"claimName": "hf-cache"}, "precision": "int4"},
            "gpu": {"nodeSelector": {"gpu-node": node(pool)}},
            "coTenants": {"selector": {"matchLabels": {"gpu-node": node(pool), "vidi.dev/yield-gpu": "true"}}}
        }
    })
}

fn phase(v: &View<'_>, name: &str) -> Option<String> {
    v.get(&Gvr::vidijobs(), NS, name)?["status"]["phase"]
        .as_str()
        .map(str::to_string)
}

fn held_by(obj: &Value) -> Option<&str> {
    obj["metadata"]["annotations"]["vidi.dev/held-by"].as_str()
}

/// Both co-tenants of `pool` unheld, at one replica, and that replica ready again.
fn pool_restored(v: &View<'_>, pool: usize) -> bool {
    APPS.iter().all(|a| {
        v.get(&Gvr::deployments(), NS, &app(a, pool))
            .is_some_and(|d| held_by(&d).is_none() && d["spec"]["replicas"] == 1 && d["status"]["readyReplicas"] == 1)
    })
}

/// Waits until every named job has one of `phases`; checks each job once it is reached, so a
/// wake-up costs little even with a thousand jobs.
async fn wait_phases(api: &Standin, names: &[String], phases: &[&str], what: &str) {
    let mut next = 0;
    let started = Instant::now();
    let done = api
        .wait_for(
            |v| {
                while next < names.len() && phase(v, &names[next]).is_some_and(|p| phases.contains(&p.as_str())) {
                    next += 1;
                }
                next == names.len()
            },
            setup_timeout(),
        )
        .await;
    if done.is_err() {
        let stuck = &names[next.min(names.len() - 1)];
        panic!(
            "{what}: {stuck} still {:?} after {:?}",
            api.get(&Gvr::vidijobs(), NS, stuck).map(|j| j["status"].clone()),
            setup_timeout()
        );
    }
    eprintln!("  {what}: {} jobs in {:.1?}", names.len(), started.elapsed());
}

/// /proc/PID/status fields in KiB.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The operator's /metrics address, from its log line `serving /healthz, /readyz and /metrics
/// addr=…` (it binds port 0 and logs the port it got).
fn metrics_addr(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("serving /healthz"))?;
    Some(line.rsplit("addr=").next()?.trim().to_string())
}

/// `vidi_operator_reconciles_total` from the operator's /metrics.
fn reconciles(addr: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("vidi_operator_reconciles_total "))?
        .trim()
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Operator {
    child: Child,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_operator(api: &Standin, target: &std::path::Path) -> Operator {
    let kubeconfig = target.join("bench-controller.kubeconfig");
    if let Err(e) = api.write_kubeconfig(&kubeconfig) {
        panic!("writing {}: {e}", kubeconfig.display());
    }
    let log_path = target.join("bench-controller-operator.log");
    let log = match std::fs::File::create(&log_path) {
        Ok(f) => f,
        Err(e) => panic!("creating {}: {e}", log_path.display()),
    };
    let child = Command::new(operator_binary())
        .args([
            "run",
            "--metrics-addr",
            "127.0.0.1:0",
            "--vidi-image",
            "vidi:bench",
            "--gate-image",
            "vidi-operator:bench",
            "--identity",
            "bench",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("VIDI_WATCH_NAMESPACES")
        .env_remove("VIDI_LEADER_ELECTION")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    match child {
        Ok(child) => Operator { child },
        Err(e) => panic!("starting the operator binary: {e}"),
    }
}

/// Samples the operator's VmRSS every 50 ms; keeps the maximum seen while `on`.
struct RssSampler {
    on: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let on = Arc::new(AtomicBool::new(true));
        let max_kib = Arc::new(AtomicU64::new(0));
        let (on2, max2) = (on.clone(), max_kib.clone());
        std::thread::spawn(move || {
            while on2.load(Ordering::Relaxed) {
                if let Some(kib) = proc_kib(pid, "VmRSS:") {
                    max2.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { on, max_kib }
    }

    fn stop(&self) -> u64 {
        self.on.store(false, Ordering::Relaxed);
        self.max_kib.load(Ordering::Relaxed)
    }
}

/// One measured job's three intervals.
#[derive(Debug)]
struct Sample {
    suspend: Duration,
    start: Duration,
    restore: Duration,
}

fn is_pod(c: &Change) -> bool {
    c.group.is_empty() && c.resource == "pods"
}

fn is_deployment(c: &Change) -> bool {
    c.group == "apps" && c.resource == "deployments"
}

/// Reads the three intervals of job `name` in `pool` from the stand-in's write history.
fn intervals(changes: &[Change], name: &str, pool: usize) -> Result<Sample, String> {
    let apps: Vec<String> = APPS.iter().map(|a| app(a, pool)).collect();
    let created = changes
        .iter()
        .find(|c| c.resource == "vidijobs" && c.event == "ADDED" && c.name() == name)
        .ok_or("no ADDED for the job")?;
    // 1. The first write per co-tenant that scales it to 0 with this job as a holder.
    let mut suspended = Vec::new();
    for a in &apps {
        let c = changes
            .iter()
            .find(|c| {
                is_deployment(c)
                    && c.name() == a
                    && c.object["spec"]["replicas"] == 0
                    && held_by(&c.object).is_some_and(|h| h.split(',').any(|k| k == format!("{NS}/{name}")))
            })
            .ok_or_else(|| format!("no suspend of {a}"))?;
        suspended.push(c.at);
    }
    let suspend_at = suspended.iter().max().copied().ok_or("no co-tenants")?;
    // 2. The Vidi pod's creation, and the last co-tenant pod removal before it.
    let vidi = changes
        .iter()
        .find(|c| is_pod(c) && c.event == "ADDED" && c.object["metadata"]["labels"]["vidi.dev/job"] == name)
        .ok_or("no Vidi pod")?;
    let vidi_name = vidi.name().to_string();
    let gone = changes
        .iter()
        .filter(|c| c.resource_version < vidi.resource_version)
        .filter(|c| is_pod(c) && c.event == "DELETED")
        .filter(|c| {
            c.object["metadata"]["labels"]["app"]
                .as_str()
                .is_some_and(|l| apps.iter().any(|a| a == l))
        })
        .map(|c| c.at)
        .max()
        .ok_or("no co-tenant pod went away before the Vidi pod was created")?;
    let live_at_create = changes
        .iter()
        .filter(|c| c.resource_version > vidi.resource_version && is_pod(c) && c.event == "DELETED")
        .any(|c| {
            c.object["metadata"]["labels"]["app"]
                .as_str()
                .is_some_and(|l| apps.iter().any(|a| a == l))
        });
    if live_at_create {
        return Err("a co-tenant pod was still there when the Vidi pod was created".into());
    }
    // 3. The Vidi pod's Succeeded, then the writes that give the co-tenants back.
    let finished = changes
        .iter()
        .find(|c| is_pod(c) && c.name() == vidi_name && c.object["status"]["phase"] == "Succeeded")
        .ok_or("the Vidi pod never succeeded")?;
    let mut restored = Vec::new();
    for a in &apps {
        let c = changes
            .iter()
            .filter(|c| c.resource_version > finished.resource_version)
            .find(|c| {
                is_deployment(c) && c.name() == a && held_by(&c.object).is_none() && c.object["spec"]["replicas"] == 1
            })
            .ok_or_else(|| format!("no restore of {a}"))?;
        restored.push(c.at);
    }
    let restore_at = restored.iter().max().copied().ok_or("no co-tenants")?;
    Ok(Sample {
        suspend: suspend_at.duration_since(created.at),
        start: vidi.at.duration_since(gone),
        restore: restore_at.duration_since(finished.at),
    })
}

#[derive(Debug)]
struct Stats {
    n: usize,
    median_ms: f64,
    p99_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

/// Median (mean of the middle two for even n) and nearest-rank p99.
/// The operator's requests while measuring (the stand-in's own writes, such as the kubelet's, are
/// not requests), by verb, resource and answer; and the changes of the kinds it watches, which its
/// watches delivered.
fn traffic(
    api: &Standin,
    since: u64,
) -> (
    std::collections::BTreeMap<String, usize>,
    std::collections::BTreeMap<String, usize>,
    std::collections::BTreeMap<String, usize>,
) {
    let mut requests = std::collections::BTreeMap::new();
    for r in api.access_records() {
        let a = &r.access;
        let sub = if a.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", a.subresource)
        };
        *requests
            .entry(format!("{} {}{sub} {}", a.verb, a.resource, r.code))
            .or_insert(0) += 1;
    }
    let mut watched = std::collections::BTreeMap::new();
    let mut reasons = std::collections::BTreeMap::new();
    for c in api.changes_since(since) {
        if c.resource != "events" {
            *watched.entry(c.resource.clone()).or_insert(0) += 1;
        }
        if c.resource == "events" && c.event == "ADDED" {
            let reason = c.object["reason"].as_str().unwrap_or_default();
            *reasons.entry(reason.to_string()).or_insert(0) += 1;
        }
    }
    (requests, watched, reasons)
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if n.is_multiple_of(2) {
        (ms(v[n / 2 - 1]) + ms(v[n / 2])) / 2.0
    } else {
        ms(v[n / 2])
    };
    let rank = ((n as f64) * 0.99).ceil() as usize;
    Stats {
        n,
        median_ms: median,
        p99_ms: ms(v[rank.clamp(1, n) - 1]),
        min_ms: ms(v[0]),
        max_ms: ms(v[n - 1]),
    }
}

fn stats_json(s: &Stats) -> Value {
    json!({"n": s.n, "median_ms": s.median_ms, "p99_ms": s.p99_ms, "min_ms": s.min_ms, "max_ms": s.max_ms})
}

async fn bench() {
    let target = match std::env::var_os("VIDI_BENCH_OUT") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
    };
    if let Err(e) = std::fs::create_dir_all(&target) {
        panic!("creating {}: {e}", target.display());
    }
    let total_start = Instant::now();
    let api = Standin::start().await;
    api.set_history_limit(200_000);
    api.set_pod_termination(POD_TERMINATION);
    if let Err(e) = api.register_crd(&VidiJob::crd()) {
        panic!("CRD: {e:?}");
    }
    let setup = || -> Result<(), kube_standin::ApiError> {
        api.create_namespace(NS)?;
        for claim in ["videos", "weights", "hf-cache"] {
            api.create(
                &Gvr::pvcs(),
                NS,
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}}),
            )?;
        }
        for pool in 0..pools() {
            api.kubelet().add_node(&node(pool), &[("gpu-node", &node(pool))]);
            for a in APPS {
                api.create(&Gvr::deployments(), NS, deployment(a, pool))?;
            }
        }
        Ok(())
    };
    if let Err(e) = setup() {
        panic!("setting up the scene: {e:?}");
    }
    // Busy pools' first jobs run until the end; every other Vidi pod succeeds after VIDI_RUN.
    api.kubelet().on_pod(|pod| {
        let job = pod["metadata"]["labels"]["vidi.dev/job"].as_str().unwrap_or_default();
        (!(job.starts_with("busy-") && job.ends_with("-0"))).then(|| PodOutcome {
            message: Some(RESULT.into()),
            after: VIDI_RUN,
            ..PodOutcome::succeed()
        })
    });
    let all_ready = api
        .wait_for(
            |v| {
                (0..pools()).all(|p| {
                    APPS.iter().all(|a| {
                        v.get(&Gvr::deployments(), NS, &app(a, p))
                            .is_some_and(|d| d["status"]["readyReplicas"] == 1)
                    })
                })
            },
            setup_timeout(),
        )
        .await;
    if all_ready.is_err() {
        panic!("co-tenant pods never came up");
    }

    eprintln!("starting the operator ({})", operator_binary());
    let operator = start_operator(&api, &target);
    let pid = operator.child.id();
    // Synced = every cache has listed; the controller reads 5 kinds.
    let synced_by = Instant::now() + setup_timeout();
    loop {
        let listed: std::collections::BTreeSet<String> = api
            .access_records()
            .into_iter()
            .filter(|r| r.access.verb == "list" || r.access.verb == "watch")
            .map(|r| r.access.resource)
            .collect();
        let kinds = [
            "vidijobs",
            "deployments",
            "statefulsets",
            "pods",
            "persistentvolumeclaims",
        ];
        if kinds.iter().all(|k| listed.contains(*k)) {
            break;
        }
        if Instant::now() > synced_by {
            panic!("the operator never listed {kinds:?}; see target/bench-controller-operator.log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = proc_kib(pid, "VmRSS:").unwrap_or(0);
    eprintln!("operator pid {pid} synced; VmRSS {:.2} MiB with no jobs", mib(rss_idle));

    // Background load.
    let create = |name: &str, pool: usize| {
        if let Err(e) = api.create(&Gvr::vidijobs(), NS, job(name, pool)) {
            panic!("creating {name}: {e:?}");
        }
    };
    let busy: Vec<String> = (0..busy_pools()).map(|p| format!("busy-{p}-0")).collect();
    let finished: Vec<String> = (busy_pools()..pools())
        .flat_map(|p| (0..FINISHED_PER_POOL).map(move |k| format!("done-{p}-{k}")))
        .collect();
    for (p, name) in busy.iter().enumerate() {
        create(name, p);
    }
    for name in &finished {
        let pool: usize = name.split('-').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        create(name, pool);
    }
    eprintln!("background: {} running + {} to finish", busy.len(), finished.len());
    wait_phases(&api, &busy, &["Running"], "busy pools running").await;
    wait_phases(&api, &finished, &["Succeeded"], "finished jobs").await;
    let queued: Vec<String> = (0..busy_pools())
        .flat_map(|p| (1..=QUEUED_PER_BUSY_POOL).map(move |k| format!("busy-{p}-{k}")))
        .collect();
    for name in &queued {
        let pool: usize = name.split('-').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        create(name, pool);
    }
    wait_phases(&api, &queued, &["Queued"], "queued jobs").await;
    let restored = api
        .wait_for(
            |v| (busy_pools()..pools()).all(|p| pool_restored(v, p)),
            setup_timeout(),
        )
        .await;
    if restored.is_err() {
        panic!("measured pools' co-tenants were not restored after the background jobs");
    }
    // The phases above are reached before the operator has worked through the burst's
    // follow-up reconciles (peers woken by each status write): wait until it is idle, so the
    // samples measure a steady state rather than the tail of the setup burst.
    let settle_start = Instant::now();
    let mut last_cpu = proc_cpu_seconds(pid).unwrap_or(0.0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu = proc_cpu_seconds(pid).unwrap_or(0.0);
        let busy_share = (cpu - last_cpu) / 0.5;
        last_cpu = cpu;
        if busy_share < 0.05 || settle_start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let settle_secs = settle_start.elapsed().as_secs_f64();
    eprintln!("  operator idle after {settle_secs:.1} s");
    let background_jobs = busy.len() + finished.len() + queued.len();
    let rss_loaded = proc_kib(pid, "VmRSS:").unwrap_or(0);
    api.clear_access_log();
    let rv_measure = api.resource_version();
    let metrics = metrics_addr(&target.join("bench-controller-operator.log"));
    let reconciles_before = metrics.as_deref().and_then(reconciles);
    let cpu_before = proc_cpu_seconds(pid).unwrap_or(0.0);
    eprintln!(
        "background ready: {background_jobs} jobs; operator VmRSS {:.2} MiB; measuring {} jobs one at a time",
        mib(rss_loaded),
        rounds() * (pools() - busy_pools())
    );

    // Measured jobs, one at a time so each interval is latency, not queueing behind another.
    let sampler = RssSampler::start(pid);
    let measure_start = Instant::now();
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds() {
        for pool in busy_pools()..pools() {
            let name = format!("m-{pool}-{round}");
            let rv0 = api.resource_version();
            create(&name, pool);
            let ended = api
                .wait_for(
                    |v| phase(v, &name).as_deref() == Some("Succeeded") && pool_restored(v, pool),
                    CYCLE_TIMEOUT,
                )
                .await;
            if ended.is_err() {
                panic!(
                    "{name} did not finish and restore within {CYCLE_TIMEOUT:?}: status {:?}",
                    api.get(&Gvr::vidijobs(), NS, &name).map(|j| j["status"].clone())
                );
            }
            if std::env::var_os("VIDI_BENCH_TRACE").is_some() && pool < busy_pools() + 3 {
                let changes = api.changes_since(rv0);
                let t0 = changes[0].at;
                for c in &changes {
                    eprintln!(
                        "    {:>8.2} ms {:<8} {:<12} {:<24} phase={} replicas={} held={:?}",
                        c.at.duration_since(t0).as_secs_f64() * 1000.0,
                        c.event,
                        c.resource,
                        c.name(),
                        c.object["status"]["phase"],
                        c.object["spec"]["replicas"],
                        held_by(&c.object)
                    );
                    if c.resource == "vidijobs" && std::env::var_os("VIDI_BENCH_TRACE_STATUS").is_some() {
                        eprintln!("             status {}", c.object["status"]);
                    }
                    if c.resource == "events" && std::env::var_os("VIDI_BENCH_TRACE_STATUS").is_some() {
                        eprintln!("             {} {}", c.object["reason"], c.object["note"]);
                    }
                }
            }
            match intervals(&api.changes_since(rv0), &name, pool) {
                Ok(s) => {
                    if std::env::var_os("VIDI_BENCH_VERBOSE").is_some() {
                        eprintln!(
                            "  {name}: {s:?} (cycle ends {:.1?} into measuring)",
                            measure_start.elapsed()
                        );
                    }
                    samples.push(s)
                }
                Err(e) => failures.push(format!("{name}: {e}")),
            }
        }
    }
    let measure_secs = measure_start.elapsed().as_secs_f64();
    let rss_peak_measuring = sampler.stop();
    let cpu_measuring = proc_cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    let reconciles_measuring = match (reconciles_before, metrics.as_deref().and_then(reconciles)) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let rss_end = proc_kib(pid, "VmRSS:").unwrap_or(0);
    let (requests, watched, reasons) = traffic(&api, rv_measure);
    let hwm = proc_kib(pid, "VmHWM:").unwrap_or(0);
    let json_kib = |gvr: &Gvr| -> (usize, f64) {
        let objs = api.list(gvr, Some(NS));
        let bytes: usize = objs.iter().map(|o| o.to_string().len()).sum();
        (objs.len(), bytes as f64 / 1024.0)
    };
    let (jobs_total, jobs_json_kib) = json_kib(&Gvr::vidijobs());
    let (pods_total, pods_json_kib) = json_kib(&Gvr::pods());
    let (_, deployments_json_kib) = json_kib(&Gvr::deployments());
    let (events_total, events_json_kib) = json_kib(&Gvr::events());
    drop(operator);
    // The prices of this moment on this machine: the CPU target is in ms, and these VMs differ by
    // several times in what a request costs (docs/performance.md).
    let prices = tokio::task::block_in_place(|| floor::measure(&api, "floor", FLOOR_N));

    for f in &failures {
        eprintln!("unusable sample: {f}");
    }
    if samples.is_empty() {
        panic!("no samples");
    }
    let suspend = stats(samples.iter().map(|s| s.suspend).collect());
    let start = stats(samples.iter().map(|s| s.start).collect());
    let restore = stats(samples.iter().map(|s| s.restore).collect());
    let row = |what: &str, s: &Stats| {
        let ok = s.median_ms <= MEDIAN_TARGET_MS && s.p99_ms <= P99_TARGET_MS;
        println!(
            "{what:<44} {:>4} {:>9.3} {:>9.3} {:>9.3} {:>9.3}  {}",
            s.n,
            s.median_ms,
            s.p99_ms,
            s.min_ms,
            s.max_ms,
            if ok { "met" } else { "MISSED" }
        );
    };
    println!();
    println!(
        "vidi-operator controller benchmark: {jobs_total} VidiJobs, {} GPU node pools, {} co-tenant Deployments, {pods_total} pods",
        pools(),
        pools() * APPS.len()
    );
    println!(
        "{:<44} {:>4} {:>9} {:>9} {:>9} {:>9}  target: median <= {MEDIAN_TARGET_MS} ms, p99 <= {P99_TARGET_MS} ms",
        "controller-added latency (ms)", "n", "median", "p99", "min", "max"
    );
    row("job created -> suspend written", &suspend);
    row("last co-tenant pod gone -> Vidi pod created", &start);
    row("Vidi pod finished -> restore written", &restore);
    println!();
    let rss_target = rss_target_mib();
    let rss_ok = hwm <= rss_target * 1024;
    println!("operator memory (separate process, /proc/{pid}/status), target <= {rss_target} MiB:");
    println!("  VmRSS synced, no jobs           {:>8.2} MiB", mib(rss_idle));
    println!(
        "  VmRSS with {background_jobs} jobs             {:>8.2} MiB",
        mib(rss_loaded)
    );
    println!("  VmRSS peak while measuring      {:>8.2} MiB", mib(rss_peak_measuring));
    println!("  VmRSS at the end ({jobs_total} jobs)     {:>8.2} MiB", mib(rss_end));
    println!(
        "  VmHWM (peak over the whole run) {:>8.2} MiB  {}",
        mib(hwm),
        if rss_ok { "met" } else { "MISSED" }
    );
    let cpu_ms_per_job = cpu_measuring * 1000.0 / samples.len() as f64;
    println!(
        "  operator CPU while measuring: {cpu_measuring:.2} s over {measure_secs:.1} s wall ({} jobs): {cpu_ms_per_job:.1} ms per job lifecycle, target <= {CPU_TARGET_MS} ms  {}",
        samples.len(),
        if cpu_ms_per_job <= CPU_TARGET_MS {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  the watched objects as compact JSON: jobs {:.0} KiB, pods {:.0} KiB, deployments {:.0} KiB",
        jobs_json_kib, pods_json_kib, deployments_json_kib
    );
    println!(
        "  Events the operator published (kube's Recorder caches each for 6 min): {events_total}, {events_json_kib:.0} KiB as JSON"
    );
    let lifecycles = samples.len() as f64;
    let per = |counts: &std::collections::BTreeMap<String, usize>| -> Value {
        counts
            .iter()
            .map(|(k, n)| (k.clone(), json!(*n as f64 / lifecycles)))
            .collect()
    };
    let line = |counts: &std::collections::BTreeMap<String, usize>| -> String {
        let total: usize = counts.values().sum();
        let parts: Vec<String> = counts
            .iter()
            .map(|(k, n)| format!("{k} {:.2}", *n as f64 / lifecycles))
            .collect();
        format!("{:.2} ({})", total as f64 / lifecycles, parts.join(", "))
    };
    println!("  operator requests per job lifecycle: {}", line(&requests));
    println!("  changes it watched per job lifecycle: {}", line(&watched));
    println!("  Events created per job lifecycle, by reason: {}", line(&reasons));
    let total = |counts: &std::collections::BTreeMap<String, usize>| counts.values().sum::<usize>() as f64 / lifecycles;
    let events_sent = requests
        .iter()
        .filter(|(k, _)| k.starts_with("create events "))
        .map(|(_, n)| *n)
        .sum::<usize>() as f64
        / lifecycles;
    let echoed = total(&requests) - events_sent;
    let others = (total(&watched) - echoed).max(0.0);
    let floor_ms = prices.lifecycle_ms(echoed, events_sent, others);
    println!(
        "  kube-rs floor of this lifecycle, measured right after ({FLOOR_N} of each): {echoed:.1} echoed writes x {:.1} µs + {events_sent:.1} Events x {:.1} µs + {others:.1} changes by others x {:.1} µs = {floor_ms:.2} ms; the operator's CPU is {:.2}x that",
        prices.patch_us,
        prices.event_us,
        prices.watched_us,
        cpu_ms_per_job / floor_ms
    );
    let reconciles_per = reconciles_measuring.map(|n| n / lifecycles);
    match reconciles_per {
        Some(n) => println!("  reconciles per job lifecycle: {n:.2}"),
        None => println!("  reconciles per job lifecycle: unknown (the operator's /metrics could not be read)"),
    }
    println!("total bench time {:.1?}", total_start.elapsed());

    let report = json!({
        "scene": {
            "scale": scale(), "jobs_at_end": jobs_total, "pods_at_end": pods_total, "pools": pools(),
            "co_tenant_deployments": pools() * APPS.len(), "busy_pools": busy_pools(),
            "running_jobs": busy_pools(), "queued_jobs": queued.len(), "finished_before_measuring": finished.len(),
            "measured_jobs": samples.len(), "unusable_samples": failures,
            "pod_termination_ms": POD_TERMINATION.as_millis() as u64, "vidi_run_ms": VIDI_RUN.as_millis() as u64,
        },
        "latency_ms": {
            "job_created_to_suspend_written": stats_json(&suspend),
            "last_cotenant_pod_gone_to_vidi_pod_created": stats_json(&start),
            "vidi_pod_finished_to_restore_written": stats_json(&restore),
        },
        "operator_memory_mib": {
            "rss_synced_no_jobs": mib(rss_idle), "rss_background_loaded": mib(rss_loaded),
            "rss_peak_measuring": mib(rss_peak_measuring), "rss_end": mib(rss_end), "hwm": mib(hwm),
        },
        "watched_objects_json_kib": {"vidijobs": jobs_json_kib, "pods": pods_json_kib, "deployments": deployments_json_kib},
        "events_published": {"count": events_total, "json_kib": events_json_kib},
        "settle_seconds_before_measuring": settle_secs,
        "operator_cpu_seconds_measuring": cpu_measuring,
        "operator_cpu_ms_per_lifecycle": cpu_ms_per_job,
        "measuring_wall_seconds": measure_secs,
        "operator_requests_per_lifecycle": per(&requests),
        "watched_changes_per_lifecycle": per(&watched),
        "events_created_per_lifecycle": per(&reasons),
        "reconciles_per_lifecycle": reconciles_per,
        "kube_floor": {
            "n_each": FLOOR_N, "patch_us": prices.patch_us, "event_us": prices.event_us, "watched_us": prices.watched_us,
            "lifecycle_ms": floor_ms, "operator_cpu_over_floor": cpu_ms_per_job / floor_ms,
        },
        "targets": {"median_ms": MEDIAN_TARGET_MS, "p99_ms": P99_TARGET_MS, "rss_mib": rss_target, "cpu_ms_per_lifecycle": CPU_TARGET_MS},
    });
    let out = target.join(format!("bench-controller-x{}.json", scale()));
    match serde_json::to_string_pretty(&report) {
        Ok(text) => {
            if let Err(e) = std::fs::write(&out, text + "\n") {
                eprintln!("cannot write {}: {e}", out.display());
            } else {
                println!("wrote {}", out.display());
            }
        }
        Err(e) => eprintln!("cannot serialize the report: {e}"),
    }
}
