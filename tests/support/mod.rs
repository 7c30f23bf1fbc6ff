//! Shared fixtures for the planner's tests: builders for snapshots, co-tenants and attempts, a
//! compact rendering of decisions, and a `World` model (see `world.rs`).
#![allow(dead_code)]

pub mod world;

use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vidi_operator::api::{Phase, Runtime, VidiJobSpec, VidiJobStatus, WorkloadKind};
use vidi_operator::plan::{
    self, Action, Attempt, AttemptState, CoTenant, CoTenantId, Decision, JobKey, JobView, Rival, Selection, Severity,
    Snapshot, Termination,
};

/// The namespace every test job lives in unless told otherwise.
pub const NS: &str = "ns";

/// A valid compact result, per the Vidi container contract.
pub const RESULT_JSON: &str = r#"{"segments":[[65,72.4],[180,184]],"precision":"fp16","videoSeconds":600}"#;

pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).expect("test timestamps are in range")
}

pub fn key(name: &str) -> JobKey {
    JobKey::new(NS, name)
}

/// A valid spec: a URL video, a query and weights on a claim; everything else defaulted.
pub fn spec() -> VidiJobSpec {
    spec_from(serde_json::json!({}))
}

/// A valid spec with the fields of `overrides` (camelCase JSON) merged over the defaults.
pub fn spec_from(overrides: serde_json::Value) -> VidiJobSpec {
    let mut base = serde_json::json!({
        "video": {"url": "https://videos.example/talk.mp4"},
        "query": "a dog catches a frisbee",
        "model": {"weights": {"claimName": "vidi-weights"}},
    });
    if let (Some(b), Some(o)) = (base.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).expect("test spec deserializes")
}

// ----- attempts -----

pub fn term(code: i32, reason: Option<&str>, message: Option<&str>) -> Termination {
    Termination {
        exit_code: code,
        reason: reason.map(String::from),
        message: message.map(String::from),
    }
}

/// Vidi ended with `code`; exit 0 carries a valid result JSON.
pub fn finished(code: i32) -> AttemptState {
    let message = (code == 0).then_some(RESULT_JSON);
    AttemptState::Finished {
        gate: Some(term(0, None, None)),
        main: Some(term(code, Some(if code == 0 { "Completed" } else { "Error" }), message)),
        reason: None,
    }
}

/// Killed for host RAM (exit 137, OOMKilled).
pub fn oom_killed() -> AttemptState {
    AttemptState::Finished {
        gate: Some(term(0, None, None)),
        main: Some(term(137, Some("OOMKilled"), None)),
        reason: None,
    }
}

/// The GPU gate gave up waiting for free memory (exit 4); Vidi never ran.
pub fn gate_timeout() -> AttemptState {
    AttemptState::Finished {
        gate: Some(term(
            vidi_operator::gpu::EXIT_GATE_TIMEOUT,
            Some("Error"),
            Some("12 GiB free, 20 GiB needed"),
        )),
        main: None,
        reason: None,
    }
}

pub fn pending() -> AttemptState {
    AttemptState::Pending { waiting: None }
}

pub fn attempt(
    job: &str,
    number: u32,
    precision: Option<vidi_operator::api::Precision>,
    state: AttemptState,
) -> Attempt {
    Attempt {
        number,
        name: plan::names::attempt(job, number),
        node: Some("gpu-node".into()),
        precision,
        gate_report: None,
        state,
    }
}

// ----- co-tenants -----

/// A Deployment in the test namespace, opted in, 1 replica with 1 live pod, found by the selector.
pub fn deploy(name: &str) -> CoTenant {
    CoTenant {
        id: CoTenantId {
            kind: WorkloadKind::Deployment,
            namespace: NS.into(),
            name: name.into(),
        },
        replicas: 1,
        live_pods: 1,
        holders: BTreeSet::new(),
        original_replicas: None,
        opted_in: true,
        selection: Selection::Selector,
        last_scaled_by: None,
        revision: Some("1".into()),
        gpu_memory_bytes: None,
        yield_priority: 1,
        release_hook: None,
        released: None,
    }
}

/// Builder-style tweaks on a co-tenant.
pub trait CoExt: Sized {
    fn replicas(self, n: i32) -> Self;
    fn pods(self, n: u32) -> Self;
    fn ns(self, ns: &str) -> Self;
    fn opted_in(self, on: bool) -> Self;
    fn selection(self, s: Selection) -> Self;
    /// Held by `holders` (job names in the test namespace) with `original` recorded; replicas 0, no pods.
    fn held(self, holders: &[&str], original: i32) -> Self;
    fn scaled_by(self, who: &str) -> Self;
}

impl CoExt for CoTenant {
    fn replicas(mut self, n: i32) -> Self {
        self.replicas = n;
        self
    }
    fn pods(mut self, n: u32) -> Self {
        self.live_pods = n;
        self
    }
    fn ns(mut self, ns: &str) -> Self {
        self.id.namespace = ns.into();
        self
    }
    fn opted_in(mut self, on: bool) -> Self {
        self.opted_in = on;
        self
    }
    fn selection(mut self, s: Selection) -> Self {
        self.selection = s;
        self
    }
    fn held(mut self, holders: &[&str], original: i32) -> Self {
        self.holders = holders.iter().map(|h| key(h)).collect();
        self.original_replicas = Some(original);
        self.replicas = 0;
        self.live_pods = 0;
        self
    }
    fn scaled_by(mut self, who: &str) -> Self {
        self.last_scaled_by = Some(who.into());
        self
    }
}

// ----- snapshots -----

/// A snapshot under construction: `job("a").created(1).running().attempt(1, finished(3))`.
#[derive(Clone, Debug)]
pub struct Snap(pub Snapshot);

/// A Pending job `ns/<name>` created at t=0, observed at t=100, with a valid spec and no co-tenants.
/// Another job of the pool, priority 0.
pub fn rival_of(name: &str, created: i64, phase: Phase) -> Rival {
    Rival {
        key: key(name),
        created: t(created),
        priority: 0,
        phase,
        suspended: false,
        deleting: false,
    }
}

pub fn job(name: &str) -> Snap {
    Snap(Snapshot {
        runtime: Runtime::Kubernetes,
        job: JobView {
            key: key(name),
            generation: Some(1),
            created: t(0),
            spec: spec(),
            status: VidiJobStatus::default(),
            deleting: false,
        },
        co_tenants: Vec::new(),
        attempts: Vec::new(),
        rivals: Vec::new(),
        problems: Vec::new(),
        gpu_total_bytes: None,
        gpu_free_bytes: None,
        placement: Default::default(),
        dry_run: false,
        now: t(100),
    })
}

impl Snap {
    pub fn created(mut self, secs: i64) -> Self {
        self.0.job.created = t(secs);
        self
    }
    pub fn now(mut self, secs: i64) -> Self {
        self.0.now = t(secs);
        self
    }
    pub fn spec(mut self, spec: VidiJobSpec) -> Self {
        self.0.job.spec = spec;
        self
    }
    pub fn with_spec(mut self, f: impl FnOnce(&mut VidiJobSpec)) -> Self {
        f(&mut self.0.job.spec);
        self
    }
    pub fn status(mut self, f: impl FnOnce(&mut VidiJobStatus)) -> Self {
        f(&mut self.0.job.status);
        self
    }
    pub fn phase(self, phase: Phase) -> Self {
        self.status(|s| s.phase = phase)
    }
    /// Left the queue at t=10.
    pub fn started(self) -> Self {
        self.status(|s| s.start_time = Some(Time(t(10))))
    }
    pub fn suspending(self) -> Self {
        self.phase(Phase::Suspending).started()
    }
    /// Running since t=10 (attempts counted from the attempts added later).
    pub fn running(self) -> Self {
        self.phase(Phase::Running).started()
    }
    /// Adds attempt `number` of this job (precision fp16) and counts it in the status.
    pub fn attempt(mut self, number: u32, state: AttemptState) -> Self {
        let name = self.0.job.key.name.clone();
        self.0
            .attempts
            .push(attempt(&name, number, Some(vidi_operator::api::Precision::Fp16), state));
        self.0.job.status.attempts = self.0.job.status.attempts.max(number);
        self.0
            .job
            .status
            .precision
            .get_or_insert(vidi_operator::api::Precision::Fp16);
        self
    }
    pub fn attempt_at(mut self, number: u32, precision: vidi_operator::api::Precision, state: AttemptState) -> Self {
        let name = self.0.job.key.name.clone();
        self.0.attempts.push(attempt(&name, number, Some(precision), state));
        self.0.job.status.attempts = self.0.job.status.attempts.max(number);
        self.0.job.status.precision = Some(precision);
        self
    }
    pub fn co(mut self, c: CoTenant) -> Self {
        self.0.co_tenants.push(c);
        self
    }
    pub fn rival(mut self, name: &str, created: i64, phase: Phase) -> Self {
        self.0.rivals.push(rival_of(name, created, phase));
        self
    }
    /// Plans with one more rival, given whole (e.g. with a priority).
    pub fn plan_with_rival(mut self, r: Rival) -> Decision {
        self.0.rivals.push(r);
        self.plan()
    }
    pub fn deleting(mut self) -> Self {
        self.0.job.deleting = true;
        self
    }
    pub fn dry_run(mut self) -> Self {
        self.0.dry_run = true;
        self
    }
    /// On a Docker host: claims do not exist there, so the weights come from a host path.
    pub fn docker(mut self) -> Self {
        self.0.runtime = Runtime::Docker;
        let weights = &mut self.0.job.spec.model.weights;
        if weights.claim_name.take().is_some() {
            weights.host_path = Some("/models/vidi".into());
        }
        self
    }
    pub fn build(self) -> Snapshot {
        self.0
    }
    pub fn plan(&self) -> Decision {
        plan::next(&self.0)
    }
}

// ----- reading decisions -----

fn co_name(id: &CoTenantId) -> String {
    if id.namespace.is_empty() {
        id.name.clone()
    } else {
        format!("{}/{}", id.namespace, id.name)
    }
}

fn keys(holders: &[JobKey]) -> String {
    holders.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
}

/// One line per write (Events left out): `hold ns/cosy orig=1 by=ns/a`, `restore ns/cosy to=1`, …
pub fn writes(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .filter_map(|a| {
            Some(match a {
                Action::Hold {
                    target,
                    holders,
                    original_replicas,
                    ..
                } => format!("hold {} orig={original_replicas} by={}", co_name(target), keys(holders)),
                Action::HoldInPlace {
                    target,
                    holders,
                    original_replicas,
                    ..
                } => format!(
                    "hold-in-place {} orig={original_replicas} by={}",
                    co_name(target),
                    keys(holders)
                ),
                Action::CallRelease { target, .. } => format!("call-release {}", co_name(target)),
                Action::FallBack { target, .. } => format!("fall-back {}", co_name(target)),
                Action::Resume { target, call, .. } => format!("resume {} call={call}", co_name(target)),
                Action::HoldOnNode {
                    target,
                    holders,
                    original_replicas,
                    replicas,
                    node,
                    marked_pods,
                    ..
                } => format!(
                    "hold {} on {node} orig={original_replicas} to={replicas} marked=[{}] by={}",
                    co_name(target),
                    marked_pods.join(","),
                    keys(holders)
                ),
                Action::MarkPods { target, pods, .. } => format!("mark {} [{}]", co_name(target), pods.join(",")),
                Action::UnmarkPods { target, pods } => format!("unmark {} [{}]", co_name(target), pods.join(",")),
                Action::Resuspend { target, .. } => format!("resuspend {}", co_name(target)),
                Action::Release { target, holders, .. } => format!("release {} by={}", co_name(target), keys(holders)),
                Action::Restore { target, replicas, .. } => format!("restore {} to={replicas}", co_name(target)),
                Action::StartAttempt {
                    attempt,
                    name,
                    precision,
                    ..
                } => format!("start {attempt} {name} {precision}"),
                Action::StopAttempt { attempt, name } => format!("stop {attempt} {name}"),
                Action::DeleteJob => "delete".to_string(),
                Action::Notify(_) => return None,
            })
        })
        .collect()
}

/// The Events of a decision as `(severity, reason, message)`.
pub fn notices(d: &Decision) -> Vec<(Severity, String, String)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify(n) => Some((n.severity, n.reason.clone(), n.message.clone())),
            _ => None,
        })
        .collect()
}

/// The Event with `reason`, if any.
pub fn notice(d: &Decision, reason: &str) -> Option<(Severity, String)> {
    notices(d)
        .into_iter()
        .find(|(_, r, _)| r == reason)
        .map(|(s, _, m)| (s, m))
}

/// Whether the decision contains any `Hold` write.
pub fn has_hold(d: &Decision) -> bool {
    d.actions.iter().any(|a| matches!(a, Action::Hold { .. }))
}

/// The status of condition `kind` ("True"/"False").
pub fn cond(status: &VidiJobStatus, kind: &str) -> String {
    plan::conditions::find(status, kind)
        .map(|c| c.status.clone())
        .unwrap_or_default()
}
