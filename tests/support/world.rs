//! A model of the world the adapters observe and act on: co-tenant workloads with their marks,
//! VidiJobs with their persisted status, Vidi pods, and a clock. `snapshot` observes like an
//! adapter; `apply` acts like one and checks every write against DESIGN.md's invariants, so a
//! planner decision that breaks one panics with the model's trace.
use std::collections::{BTreeMap, BTreeSet};

use jiff::{SignedDuration, Timestamp};
use vidi_operator::api::{FieldError, Phase, Precision, ReleaseState, Runtime, VidiJobSpec, VidiJobStatus};
use vidi_operator::plan::{
    self, Action, Attempt, AttemptState, CoTenant, CoTenantId, Decision, JobKey, JobView, Notice, Rival, Selection,
    Snapshot, queue::pool_key,
};

use super::{NS, deploy, t};

/// A co-tenant workload and what the model knows about it beyond what an adapter sees.
#[derive(Clone, Debug)]
pub struct WCo {
    /// Observed state; `selection` is filled in per snapshot.
    pub co: CoTenant,
    /// Its `app` label (the name), for selectors other than the default.
    pub app: String,
    /// The replicas it must be back at once nothing holds it: its count before the first hold,
    /// or whatever someone else set while it was not held.
    pub baseline: i32,
    /// Its release hook answers with an error (HTTP 500) instead of 2xx.
    pub refuses_release: bool,
}

/// A VidiJob: spec, persisted status, and its Vidi pods.
#[derive(Clone, Debug)]
pub struct WJob {
    pub key: JobKey,
    pub created: Timestamp,
    pub generation: i64,
    pub spec: VidiJobSpec,
    pub status: VidiJobStatus,
    pub deleting: bool,
    pub attempts: Vec<Attempt>,
}

impl WJob {
    pub fn alive(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| !matches!(a.state, AttemptState::Finished { .. }))
    }
}

/// What applying a decision did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Every action applied and the status written.
    Full,
    /// Only a prefix of the actions applied (an operator crash); the status was not written.
    Crashed,
    /// A co-tenant write carried a stale revision (another write got there first): the adapter
    /// stopped there and did not write the status.
    Conflict,
    /// The job was removed (DeleteJob, or released after deletion).
    Removed,
}

#[derive(Clone, Debug)]
pub struct World {
    pub runtime: Runtime,
    pub now: Timestamp,
    pub cos: Vec<WCo>,
    pub jobs: Vec<WJob>,
    /// Jobs removed so far.
    pub gone: Vec<JobKey>,
    pub events: Vec<(JobKey, Notice)>,
    pub dry_run: bool,
    pub gpu_total_bytes: Option<u64>,
    /// What the adapter reads as free GPU memory (`policy: Minimal` weighs co-tenants against it).
    pub gpu_free_bytes: Option<u64>,
    /// Lookups by the job's spec that failed (what an adapter reports as `problems`).
    pub extra_problems: BTreeMap<JobKey, Vec<FieldError>>,
    /// Every step, for failure messages.
    pub trace: Vec<String>,
    /// Set while applying a decision planned from a lagging view.
    planned_from_stale_view: bool,
    /// Jobs whose latest decision was planned from a lagging view: they may have finished
    /// without seeing a hold, which their next (fresh) reconcile releases.
    pub stale_deciders: BTreeSet<JobKey>,
    /// Release-hook calls made, in order: `release <name>` / `resume <name>`.
    pub calls: Vec<String>,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> Self {
        World {
            runtime: Runtime::Kubernetes,
            now: t(1_000),
            cos: Vec::new(),
            jobs: Vec::new(),
            gone: Vec::new(),
            events: Vec::new(),
            dry_run: false,
            gpu_total_bytes: None,
            gpu_free_bytes: None,
            extra_problems: BTreeMap::new(),
            trace: Vec::new(),
            planned_from_stale_view: false,
            stale_deciders: BTreeSet::new(),
            calls: Vec::new(),
        }
    }

    // ----- building -----

    /// Adds a Deployment `ns/name` with `replicas` (and as many live pods).
    pub fn add_co(&mut self, ns: &str, name: &str, replicas: i32, opted_in: bool) -> &mut Self {
        let mut co = deploy(name);
        co.id.namespace = ns.into();
        co.replicas = replicas;
        co.live_pods = replicas.max(0) as u32;
        co.opted_in = opted_in;
        co.revision = Some("1".into());
        self.cos.push(WCo {
            co,
            app: name.into(),
            baseline: replicas,
            refuses_release: false,
        });
        self
    }

    /// Adds job `ns/name` created at `created` seconds.
    pub fn add_job(&mut self, name: &str, created: i64, spec: VidiJobSpec) -> &mut Self {
        self.jobs.push(WJob {
            key: JobKey::new(NS, name),
            created: t(created),
            generation: 1,
            spec,
            status: VidiJobStatus::default(),
            deleting: false,
            attempts: Vec::new(),
        });
        self
    }

    pub fn job(&self, name: &str) -> &WJob {
        self.find(&JobKey::new(NS, name))
            .unwrap_or_else(|| panic!("no job {name}; trace:\n{}", self.trace.join("\n")))
    }

    pub fn job_mut(&mut self, name: &str) -> &mut WJob {
        let k = JobKey::new(NS, name);
        self.jobs
            .iter_mut()
            .find(|j| j.key == k)
            .unwrap_or_else(|| panic!("no job {name}"))
    }

    pub fn find(&self, k: &JobKey) -> Option<&WJob> {
        self.jobs.iter().find(|j| j.key == *k)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.find(&JobKey::new(NS, name)).is_some()
    }

    /// The co-tenant `ns/name`.
    pub fn co(&self, ns_name: &str) -> &CoTenant {
        &self.cos[self.co_index(ns_name)].co
    }

    pub fn co_index(&self, ns_name: &str) -> usize {
        let (ns, name) = ns_name.split_once('/').expect("ns/name");
        self.cos
            .iter()
            .position(|c| c.co.id.namespace == ns && c.co.id.name == name)
            .unwrap_or_else(|| panic!("no co-tenant {ns_name}"))
    }

    pub fn phase(&self, name: &str) -> Phase {
        self.job(name).status.phase
    }

    // ----- observing -----

    fn selection(&self, job: &WJob, c: &WCo) -> Option<Selection> {
        let co = &job.spec.co_tenants;
        for (i, r) in co.refs.iter().enumerate() {
            let ns = r.namespace.clone().unwrap_or_else(|| job.key.namespace.clone());
            if r.kind == c.co.id.kind && r.name == c.co.id.name && ns == c.co.id.namespace {
                return Some(Selection::Ref(i));
            }
        }
        let namespaces = if co.namespaces.is_empty() {
            vec![job.key.namespace.clone()]
        } else {
            co.namespaces.clone()
        };
        let matches = match co.selector.as_ref().and_then(|s| s.match_labels.as_ref()) {
            // The model's labels: `vidi.dev/yield-gpu` (when opted in) and `app=<name>`.
            Some(labels) => labels.iter().all(|(k, v)| match k.as_str() {
                vidi_operator::api::YIELD_LABEL => v == "true" && c.co.opted_in,
                "app" => *v == c.app,
                _ => false,
            }),
            None => c.co.opted_in,
        };
        if namespaces.contains(&c.co.id.namespace) && matches {
            return Some(Selection::Selector);
        }
        c.co.holders.contains(&job.key).then_some(Selection::HeldOnly)
    }

    /// What an adapter observes for job `k`.
    pub fn snapshot(&self, k: &JobKey) -> Snapshot {
        let job = self.find(k).unwrap_or_else(|| panic!("no job {k}"));
        let mut problems = self.extra_problems.get(k).cloned().unwrap_or_default();
        for (i, r) in job.spec.co_tenants.refs.iter().enumerate() {
            let ns = r.namespace.clone().unwrap_or_else(|| job.key.namespace.clone());
            let found = self
                .cos
                .iter()
                .any(|c| c.co.id.kind == r.kind && c.co.id.name == r.name && c.co.id.namespace == ns);
            if !found {
                problems.push(FieldError::new(
                    format!("spec.coTenants.refs[{i}]"),
                    format!("{} {ns}/{} not found", r.kind, r.name),
                ));
            }
        }
        let co_tenants = self
            .cos
            .iter()
            .filter_map(|c| {
                self.selection(job, c).map(|selection| CoTenant {
                    selection,
                    ..c.co.clone()
                })
            })
            .collect();
        let pool = pool_key(&job.spec);
        let rivals = self
            .jobs
            .iter()
            .filter(|r| r.key != job.key && !r.status.phase.is_terminal() && pool_key(&r.spec) == pool)
            .map(|r| Rival {
                key: r.key.clone(),
                created: r.created,
                priority: r.spec.priority,
                phase: r.status.phase,
                suspended: r.spec.suspend,
                deleting: r.deleting,
            })
            .collect();
        Snapshot {
            runtime: self.runtime,
            job: JobView {
                key: job.key.clone(),
                generation: Some(job.generation),
                created: job.created,
                spec: job.spec.clone(),
                status: job.status.clone(),
                deleting: job.deleting,
            },
            co_tenants,
            attempts: job.attempts.clone(),
            rivals,
            problems,
            gpu_total_bytes: self.gpu_total_bytes,
            gpu_free_bytes: self.gpu_free_bytes,
            placement: Default::default(),
            dry_run: self.dry_run,
            now: self.now,
        }
    }

    /// What an adapter with a lagging cache observes for job `k`: its own status and pods as
    /// they are now (adapters remember their own writes), but the co-tenants and the other jobs
    /// as they were in `old`.
    pub fn stale_snapshot(&self, k: &JobKey, old: &World) -> Option<Snapshot> {
        let now = self.find(k)?.clone();
        let mut snap = self.snapshot(k);
        let mut then = old.clone();
        match then.jobs.iter_mut().find(|j| j.key == *k) {
            Some(j) => *j = now,
            None => return None,
        }
        let stale = then.snapshot(k);
        snap.co_tenants = stale.co_tenants;
        snap.rivals = stale.rivals;
        Some(snap)
    }

    // ----- acting -----

    /// Observes job `name`, plans, and applies the whole decision.
    pub fn reconcile(&mut self, name: &str) -> Decision {
        let k = JobKey::new(NS, name);
        let d = plan::next(&self.snapshot(&k));
        self.apply(&k, &d, None);
        d
    }

    /// Reconciles every job (in creation order) until a round changes nothing; returns the rounds.
    pub fn settle_all(&mut self, max_rounds: usize) -> usize {
        for round in 0..max_rounds {
            let before = self.fingerprint();
            let keys: Vec<JobKey> = self.jobs.iter().map(|j| j.key.clone()).collect();
            for k in keys {
                if self.find(&k).is_some() {
                    let d = plan::next(&self.snapshot(&k));
                    self.apply(&k, &d, None);
                }
            }
            self.drain();
            self.settle_pods();
            if self.fingerprint() == before {
                return round;
            }
        }
        max_rounds
    }

    fn fingerprint(&self) -> String {
        let jobs: Vec<String> = self
            .jobs
            .iter()
            .map(|j| format!("{}:{:?}:{:?}:{}", j.key, j.status.phase, j.attempts, j.status.attempts))
            .collect();
        let cos: Vec<String> = self
            .cos
            .iter()
            .map(|c| {
                format!(
                    "{:?}{}{}{:?}{:?}",
                    c.co.id, c.co.replicas, c.co.live_pods, c.co.holders, c.co.original_replicas
                )
            })
            .collect();
        format!("{jobs:?}{cos:?}")
    }

    fn fail(&self, why: String) -> ! {
        let tail: Vec<&String> = self
            .trace
            .iter()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "{why}\n--- trace (last {} steps) ---\n{}",
            tail.len(),
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        )
    }

    fn co_mut(&mut self, id: &CoTenantId) -> &mut WCo {
        match self.cos.iter().position(|c| c.co.id == *id) {
            Some(i) => &mut self.cos[i],
            None => self.fail(format!("write to unknown co-tenant {id}")),
        }
    }

    fn bump(c: &mut WCo) {
        let r: u64 = c.co.revision.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
        c.co.revision = Some((r + 1).to_string());
    }

    /// Applies `d` for job `k` like an adapter: actions in order, then the status, then the
    /// attempts it starts. With `crash_after = Some(n)` only the first `n` actions (starts
    /// excluded) are applied and neither the status nor a start (the operator died). Panics when a write breaks an invariant.
    pub fn apply(&mut self, k: &JobKey, d: &Decision, crash_after: Option<usize>) -> Applied {
        let summary = super::writes(d).join("; ");
        let upto = crash_after.map_or(d.actions.len(), |n| n.min(d.actions.len()));
        self.trace.push(format!(
            "t={} {} plan [{summary}] -> {:?} {}{}",
            self.now.as_second(),
            k,
            d.status.phase,
            d.status.message.as_deref().unwrap_or(""),
            match crash_after {
                Some(_) => format!(" CRASH after {upto} of {} actions", d.actions.len()),
                None => String::new(),
            }
        ));
        let mut written: BTreeSet<CoTenantId> = BTreeSet::new();
        // Like the adapters, an attempt is started only once the decision's status is written.
        let (starts, actions): (Vec<&Action>, Vec<&Action>) =
            d.actions.iter().partition(|a| matches!(a, Action::StartAttempt { .. }));
        let upto = upto.min(actions.len());
        for action in &actions[..upto] {
            if let Some(target) = target_of(action)
                && !written.insert(target.clone())
            {
                self.fail(format!(
                    "{k}: one decision writes {target} twice (the second write would conflict on resourceVersion, and the co-tenant flaps): [{summary}]"
                ));
            }
            // Optimistic concurrency: a write planned from an older view of the co-tenant fails.
            if let Some((target, Some(rev))) = revision_of(action) {
                let current = self
                    .cos
                    .iter()
                    .find(|c| c.co.id == *target)
                    .and_then(|c| c.co.revision.clone());
                if current.as_deref() != Some(rev) {
                    self.trace
                        .push(format!("  conflict: {target} changed since revision {rev}"));
                    return Applied::Conflict;
                }
            }
            match action {
                Action::Hold {
                    target,
                    holders,
                    original_replicas,
                    ..
                } => {
                    let c = self.co_mut(target).clone();
                    let new: BTreeSet<JobKey> = holders.iter().cloned().collect();
                    if !new.contains(k) {
                        self.fail(format!("{k}: Hold of {target} does not name the job as a holder"));
                    }
                    if !new.is_superset(&c.co.holders) {
                        self.fail(format!(
                            "{k}: Hold of {target} drops holders: was {:?}, writes {:?}",
                            c.co.holders, new
                        ));
                    }
                    match (c.co.holders.is_empty(), c.co.original_replicas) {
                        (false, Some(recorded)) if recorded != *original_replicas => self.fail(format!(
                            "{k}: Hold of {target} overwrites the recorded original {recorded} with {original_replicas} (invariant 1)"
                        )),
                        (true, _) if c.co.replicas != *original_replicas => self.fail(format!(
                            "{k}: first Hold of {target} records {original_replicas} but it runs {} (invariant 1)",
                            c.co.replicas
                        )),
                        _ => {}
                    }
                    let w = self.co_mut(target);
                    w.co.replicas = 0;
                    w.co.holders = new;
                    w.co.original_replicas = Some(*original_replicas);
                    Self::bump(w);
                }
                Action::HoldInPlace {
                    target,
                    holders,
                    original_replicas,
                    mark,
                    ..
                } => {
                    let c = self.co_mut(target).clone();
                    let new: BTreeSet<JobKey> = holders.iter().cloned().collect();
                    if !new.contains(k) || !new.is_superset(&c.co.holders) {
                        self.fail(format!(
                            "{k}: HoldInPlace of {target} writes holders {new:?}; held by {:?}",
                            c.co.holders
                        ));
                    }
                    if c.co.holders.is_empty() && c.co.replicas != *original_replicas {
                        self.fail(format!(
                            "{k}: first HoldInPlace of {target} records {original_replicas} but it runs {} (invariant 1)",
                            c.co.replicas
                        ));
                    }
                    if !c.co.holders.is_empty() && c.co.released.is_none() {
                        self.fail(format!("{k}: HoldInPlace of {target}, which is held scaled down"));
                    }
                    let w = self.co_mut(target);
                    w.co.holders = new;
                    w.co.original_replicas = Some(*original_replicas);
                    w.co.released = Some(mark.clone());
                    Self::bump(w);
                }
                Action::CallRelease { target, .. } => {
                    let c = self.co_mut(target).clone();
                    // Recorded before it is made (crash safety): the adapters read the co-tenant
                    // afresh and call only while its mark says Requested. A plan from a lagging
                    // view may ask after the answer was recorded, or after a fall-back removed
                    // the mark: then there is no call at all.
                    if !c
                        .co
                        .released
                        .as_ref()
                        .is_some_and(|m| m.state == ReleaseState::Requested)
                    {
                        self.trace
                            .push(format!("  {target}: no Requested mark any more; no call"));
                        continue;
                    }
                    self.calls.push(format!("release {}", target.name));
                    let w = self.co_mut(target);
                    if let Some(m) = w.co.released.as_mut() {
                        m.state = if w.refuses_release {
                            ReleaseState::Refused { why: "HTTP 500".into() }
                        } else {
                            ReleaseState::Released
                        };
                    }
                    Self::bump(w);
                }
                Action::FallBack { target, .. } => {
                    let c = self.co_mut(target).clone();
                    if !c.co.holders.contains(k) || c.co.original_replicas.is_none() || c.co.released.is_none() {
                        self.fail(format!("{k}: FallBack of {target}, which it does not hold in place"));
                    }
                    let w = self.co_mut(target);
                    w.co.replicas = 0;
                    w.co.released = None;
                    Self::bump(w);
                }
                Action::Resume {
                    target, call, replicas, ..
                } => {
                    let c = self.co_mut(target).clone();
                    if c.co.holders.iter().any(|h| h != k) || c.co.released.is_none() {
                        self.fail(format!(
                            "{k}: Resume of {target} while held by {:?} (in place: {})",
                            c.co.holders,
                            c.co.released.is_some()
                        ));
                    }
                    if *call {
                        self.calls.push(format!("resume {}", target.name));
                    }
                    self.restore(target, *replicas);
                    self.co_mut(target).co.released = None;
                }
                Action::Resuspend { target, .. } => {
                    let c = self.co_mut(target).clone();
                    if !c.co.holders.contains(k) || c.co.original_replicas.is_none() {
                        self.fail(format!(
                            "{k}: Resuspend of {target}, which it does not hold with a recorded original"
                        ));
                    }
                    let w = self.co_mut(target);
                    w.co.replicas = 0;
                    Self::bump(w);
                }
                Action::Release { target, holders, .. } => {
                    let c = self.co_mut(target).clone();
                    let new: BTreeSet<JobKey> = holders.iter().cloned().collect();
                    let mut expected = c.co.holders.clone();
                    expected.remove(k);
                    if new != expected || new.is_empty() || !c.co.holders.contains(k) {
                        self.fail(format!(
                            "{k}: Release of {target} writes holders {new:?}; held by {:?}",
                            c.co.holders
                        ));
                    }
                    let w = self.co_mut(target);
                    w.co.holders = new;
                    Self::bump(w);
                }
                Action::Restore { target, replicas, .. } => {
                    let others: Vec<&JobKey> = self.co_mut(target).co.holders.iter().filter(|h| *h != k).collect();
                    if !others.is_empty() {
                        let others = format!("{others:?}");
                        self.fail(format!(
                            "{k}: Restore of {target} while {others} still hold it (invariant 2)"
                        ));
                    }
                    self.restore(target, *replicas);
                }
                Action::StartAttempt {
                    attempt,
                    name,
                    precision,
                    ..
                } => self.start(k, *attempt, name, *precision),
                Action::StopAttempt { name, .. } => {
                    if let Some(j) = self.jobs.iter_mut().find(|j| j.key == *k)
                        && let Some(a) = j.attempts.iter_mut().find(|a| a.name == *name)
                        && matches!(a.state, AttemptState::Pending { .. } | AttemptState::Running)
                    {
                        a.state = AttemptState::Terminating;
                    }
                }
                Action::Notify(n) => self.events.push((k.clone(), n.clone())),
                // This world has no nodes (its snapshots carry no placement).
                Action::MarkPods { target, .. }
                | Action::UnmarkPods { target, .. }
                | Action::HoldOnNode { target, .. } => {
                    self.fail(format!("{k}: a per-node write to {target} in a world without nodes"))
                }
                // Kubernetes: the delete sets deletionTimestamp; the finalizer keeps the job until
                // a decision says `released`.
                Action::DeleteJob => {
                    if let Some(j) = self.jobs.iter_mut().find(|j| j.key == *k) {
                        j.deleting = true;
                    }
                }
            }
        }
        if crash_after.is_some() {
            return Applied::Crashed;
        }
        if self.planned_from_stale_view {
            self.stale_deciders.insert(k.clone());
        } else {
            self.stale_deciders.remove(k);
        }
        if d.released {
            let deleting = self.find(k).is_some_and(|j| j.deleting);
            if !deleting {
                self.fail(format!("{k}: released although not being deleted"));
            }
            self.check_may_go(k, "released");
            self.remove(k);
            return Applied::Removed;
        }
        if let Some(j) = self.jobs.iter_mut().find(|j| j.key == *k) {
            j.status = d.status.clone();
        }
        // As the Kubernetes adapter does: once its status write shows in its cache (and with it
        // every earlier change, another job's start included), it plans again and creates the
        // pod only if that plan still starts it.
        let again = if starts.is_empty() {
            Vec::new()
        } else {
            vidi_operator::plan::next(&self.snapshot(k)).started_attempts()
        };
        for start in starts {
            if let Action::StartAttempt { attempt, .. } = start
                && !again.contains(attempt)
            {
                self.trace.push(format!(
                    "  {k}: attempt {attempt} not started: a plan from the world now does not start it"
                ));
                continue;
            }
            if let Action::StartAttempt {
                attempt,
                name,
                precision,
                ..
            } = start
            {
                self.start(k, *attempt, name, *precision);
            }
        }
        if !self.planned_from_stale_view {
            self.check_status_matches(k);
        }
        Applied::Full
    }

    /// Applies a decision planned from a lagging view (`stale_snapshot`, or a concurrent
    /// reconcile): its `status.suspended` may describe that view rather than the world.
    pub fn apply_stale(&mut self, k: &JobKey, d: &Decision) -> Applied {
        self.planned_from_stale_view = true;
        let applied = self.apply(k, d, None);
        self.planned_from_stale_view = false;
        applied
    }

    fn restore(&mut self, target: &CoTenantId, replicas: i32) {
        let c = self.co_mut(target).clone();
        if let Some(original) = c.co.original_replicas
            && original != replicas
        {
            self.fail(format!(
                "Restore of {target} writes {replicas} but the recorded original is {original} (invariant 2)"
            ));
        }
        let w = self.co_mut(target);
        w.co.replicas = replicas;
        w.co.holders.clear();
        w.co.original_replicas = None;
        // Pods come back as soon as it has replicas again.
        w.co.live_pods = replicas.max(0) as u32;
        Self::bump(w);
    }

    fn start(&mut self, k: &JobKey, number: u32, name: &str, precision: Precision) {
        let Some(j) = self.jobs.iter_mut().find(|j| j.key == *k) else {
            return;
        };
        if j.attempts.iter().any(|a| a.name == name) {
            return;
        }
        j.attempts.push(Attempt {
            number,
            name: name.to_string(),
            node: Some("gpu-node".into()),
            precision: Some(precision),
            gate_report: None,
            state: AttemptState::Pending { waiting: None },
        });
        self.check_one_per_pool();
    }

    fn check_may_go(&self, k: &JobKey, why: &str) {
        let held: Vec<String> = self
            .cos
            .iter()
            .filter(|c| c.co.holders.contains(k))
            .map(|c| c.co.id.to_string())
            .collect();
        if !held.is_empty() {
            self.fail(format!("{k}: {why} while it still holds {held:?} (invariant 4)"));
        }
        if self.find(k).is_some_and(|j| j.alive()) {
            self.fail(format!("{k}: {why} while a Vidi attempt is still alive"));
        }
    }

    fn remove(&mut self, k: &JobKey) {
        self.trace.push(format!("  {k} removed"));
        self.jobs.retain(|j| j.key != *k);
        self.gone.push(k.clone());
    }

    /// After a full apply, `status.suspended` lists exactly what the job holds.
    fn check_status_matches(&self, k: &JobKey) {
        let Some(j) = self.find(k) else { return };
        let listed: BTreeSet<(String, String)> = j
            .status
            .suspended
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let held: BTreeSet<(String, String)> = self
            .cos
            .iter()
            .filter(|c| c.co.holders.contains(k))
            .map(|c| (c.co.id.namespace.clone(), c.co.id.name.clone()))
            .collect();
        if listed != held {
            self.fail(format!("{k}: status.suspended lists {listed:?} but it holds {held:?}"));
        }
    }

    // ----- the rest of the world -----

    /// Co-tenants scaled to 0 lose their pods.
    pub fn drain(&mut self) {
        for c in &mut self.cos {
            if c.co.replicas == 0 {
                c.co.live_pods = 0;
            }
        }
    }

    /// Drains one co-tenant.
    pub fn drain_one(&mut self, i: usize) {
        if let Some(c) = self.cos.get_mut(i)
            && c.co.replicas == 0
        {
            c.co.live_pods = 0;
        }
    }

    /// Terminating Vidi pods are gone.
    pub fn settle_pods(&mut self) {
        for j in &mut self.jobs {
            j.attempts.retain(|a| a.state != AttemptState::Terminating);
        }
    }

    /// Someone else (`who`) sets co-tenant `i` to `replicas`; its pods follow at once.
    pub fn scale(&mut self, i: usize, replicas: i32, who: &str) {
        let Some(c) = self.cos.get_mut(i) else { return };
        c.co.replicas = replicas;
        c.co.live_pods = replicas.max(0) as u32;
        c.co.last_scaled_by = Some(who.to_string());
        if c.co.holders.is_empty() {
            c.baseline = replicas;
        }
        Self::bump(c);
        let line = format!("t={} {who} scales {} to {replicas}", self.now.as_second(), c.co.id);
        self.trace.push(line);
    }

    /// Someone adds or removes co-tenant `i`'s opt-in label.
    pub fn flip_label(&mut self, i: usize) {
        let Some(c) = self.cos.get_mut(i) else { return };
        c.co.opted_in = !c.co.opted_in;
        let line = format!("t={} {} opted in: {}", self.now.as_second(), c.co.id, c.co.opted_in);
        self.trace.push(line);
    }

    /// The newest alive attempt of `name` moves to `state`; false when none is alive.
    pub fn finish(&mut self, name: &str, state: AttemptState) -> bool {
        let k = JobKey::new(NS, name);
        let now = self.now.as_second();
        let Some(j) = self.jobs.iter_mut().find(|j| j.key == k) else {
            return false;
        };
        let Some(a) = j
            .attempts
            .iter_mut()
            .filter(|a| matches!(a.state, AttemptState::Pending { .. } | AttemptState::Running))
            .max_by_key(|a| a.number)
        else {
            return false;
        };
        let line = format!("t={now} {k} attempt {} -> {state:?}", a.number);
        a.state = state;
        self.trace.push(line);
        true
    }

    /// The newest pending attempt of `name` starts running.
    pub fn run_pod(&mut self, name: &str) {
        let k = JobKey::new(NS, name);
        if let Some(j) = self.jobs.iter_mut().find(|j| j.key == k)
            && let Some(a) = j
                .attempts
                .iter_mut()
                .filter(|a| matches!(a.state, AttemptState::Pending { .. }))
                .max_by_key(|a| a.number)
        {
            a.state = AttemptState::Running;
        }
    }

    pub fn advance(&mut self, secs: i64) {
        self.now = self
            .now
            .saturating_add(SignedDuration::from_secs(secs))
            .expect("clock in range");
        self.trace.push(format!("t={} (+{secs}s)", self.now.as_second()));
    }

    /// A user deletes job `name` (deletionTimestamp set; the finalizer keeps it until released).
    pub fn delete(&mut self, name: &str) {
        self.trace
            .push(format!("t={} delete {NS}/{name}", self.now.as_second()));
        if let Some(j) = self.jobs.iter_mut().find(|j| j.key.name == name) {
            j.deleting = true;
        }
    }

    /// Edits job `name`'s spec (a new generation).
    pub fn edit(&mut self, name: &str, f: impl FnOnce(&mut VidiJobSpec)) {
        self.trace.push(format!("t={} edit {NS}/{name}", self.now.as_second()));
        if let Some(j) = self.jobs.iter_mut().find(|j| j.key.name == name) {
            f(&mut j.spec);
            j.generation += 1;
        }
    }

    /// Operator restart: the start-up sweep drops holders that no longer exist or have finished.
    pub fn restart_sweep(&mut self) {
        self.trace
            .push(format!("t={} operator restarts: sweep", self.now.as_second()));
        let live: BTreeMap<JobKey, bool> = self
            .jobs
            .iter()
            .map(|j| (j.key.clone(), !j.status.phase.is_terminal()))
            .collect();
        for i in 0..self.cos.len() {
            let co = self.cos[i].co.clone();
            let Some(action) = plan::stale_holders(&co, |k| live.get(k).copied().unwrap_or(false)) else {
                continue;
            };
            self.trace.push(format!("  sweep {action:?}"));
            match action {
                Action::Restore { target, replicas, .. } => self.restore(&target, replicas),
                Action::Release { target, holders, .. } => {
                    let w = self.co_mut(&target);
                    w.co.holders = holders.into_iter().collect();
                    Self::bump(w);
                }
                Action::Resume {
                    target, call, replicas, ..
                } => {
                    if call {
                        self.calls.push(format!("resume {}", target.name));
                    }
                    self.restore(&target, replicas);
                    self.co_mut(&target).co.released = None;
                }
                other => self.fail(format!("sweep returned {other:?}")),
            }
        }
    }

    // ----- invariants on the state -----

    /// Invariant 3: at most one job per pool has a live (non-finished) attempt.
    pub fn check_one_per_pool(&self) {
        let mut pools: BTreeMap<String, Vec<&JobKey>> = BTreeMap::new();
        for j in &self.jobs {
            if j.alive() {
                pools.entry(pool_key(&j.spec)).or_default().push(&j.key);
            }
        }
        for (pool, jobs) in pools {
            if jobs.len() > 1 {
                self.fail(format!(
                    "jobs {jobs:?} have live Vidi attempts on pool {pool} (invariant 3)"
                ));
            }
        }
    }

    /// The state invariants that hold after every step.
    pub fn check(&self) {
        for c in &self.cos {
            let co = &c.co;
            if co.holders.is_empty() != co.original_replicas.is_none() {
                self.fail(format!(
                    "{} has holders {:?} but original {:?}: the marks go together (invariants 1, 2)",
                    co.id, co.holders, co.original_replicas
                ));
            }
            if co.released.is_some() && co.holders.is_empty() {
                self.fail(format!("{} carries a release mark but no holder", co.id));
            }
            for h in &co.holders {
                match self.find(h) {
                    None => self.fail(format!(
                        "{} is held by {h}, which no longer exists (invariant 4)",
                        co.id
                    )),
                    Some(j) if j.status.phase.is_terminal() && !self.stale_deciders.contains(h) => {
                        self.fail(format!("{} is held by {h}, which has finished (invariant 4)", co.id))
                    }
                    _ => {}
                }
            }
            if let Some(original) = co.original_replicas
                && original != c.baseline
            {
                self.fail(format!(
                    "{} records original {original} but was at {} before it was held",
                    co.id, c.baseline
                ));
            }
        }
        self.check_one_per_pool();
    }

    /// Invariant 4 and 6 once nothing holds anything: every co-tenant is back where it was.
    pub fn check_all_restored(&self) {
        for c in &self.cos {
            if !c.co.holders.is_empty() || c.co.original_replicas.is_some() || c.co.released.is_some() {
                self.fail(format!(
                    "{} still carries marks at the end: held by {:?}, original {:?}",
                    c.co.id, c.co.holders, c.co.original_replicas
                ));
            }
            if c.co.replicas != c.baseline {
                self.fail(format!(
                    "{} ends at {} replicas, expected {} (invariants 4, 6)",
                    c.co.id, c.co.replicas, c.baseline
                ));
            }
        }
    }

    /// Which co-tenants `k` holds.
    pub fn held_by(&self, k: &JobKey) -> Vec<String> {
        self.cos
            .iter()
            .filter(|c| c.co.holders.contains(k))
            .map(|c| format!("{}/{}", c.co.id.namespace, c.co.id.name))
            .collect()
    }
}

/// The co-tenant an action writes and the revision it was planned from.
pub fn revision_of(a: &Action) -> Option<(&CoTenantId, Option<&str>)> {
    match a {
        Action::Hold { target, revision, .. }
        | Action::HoldInPlace { target, revision, .. }
        | Action::FallBack { target, revision }
        | Action::Resume { target, revision, .. }
        | Action::Resuspend { target, revision }
        | Action::Release { target, revision, .. }
        | Action::Restore { target, revision, .. } => Some((target, revision.as_deref())),
        _ => None,
    }
}

/// The co-tenant an action writes, if it writes one.
pub fn target_of(a: &Action) -> Option<&CoTenantId> {
    match a {
        Action::Hold { target, .. }
        | Action::HoldInPlace { target, .. }
        | Action::FallBack { target, .. }
        | Action::Resume { target, .. }
        | Action::Resuspend { target, .. }
        | Action::Release { target, .. }
        | Action::Restore { target, .. } => Some(target),
        _ => None,
    }
}
