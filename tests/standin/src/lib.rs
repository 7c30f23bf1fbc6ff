//! kube-standin: a stateful, in-process Kubernetes API server stand-in with watch support.
//!
//! ```no_run
//! # async fn demo() {
//! let api = kube_standin::Standin::start().await;
//! let client = api.client();
//! # let _ = client;
//! # }
//! ```
//!
//! Objects are stored as `serde_json::Value`, keyed by (group, plural, namespace, name).
//! See `docs/testing.md` for the semantics and the simplifications.

mod error;
mod http;
mod kubelet;
mod logs;
mod schema;
mod selector;
mod store;

pub use error::ApiError;
pub use selector::{FieldSelector, LabelSelector};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use store::{DeleteOpts, Fault, PatchType, State};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The node name the kubelet and the workload controller use when no node is configured.
pub const DEFAULT_NODE: &str = "standin-node";

/// Group, version and plural resource name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// API group, "" for core.
    pub group: String,
    /// Version, e.g. "v1".
    pub version: String,
    /// Plural resource name, e.g. "pods".
    pub plural: String,
}

impl Gvr {
    /// Any resource.
    pub fn new(group: &str, version: &str, plural: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
        }
    }
    /// core/v1 pods
    pub fn pods() -> Self {
        Self::new("", "v1", "pods")
    }
    /// core/v1 persistentvolumeclaims
    pub fn pvcs() -> Self {
        Self::new("", "v1", "persistentvolumeclaims")
    }
    /// core/v1 namespaces
    pub fn namespaces() -> Self {
        Self::new("", "v1", "namespaces")
    }
    /// core/v1 events
    pub fn core_events() -> Self {
        Self::new("", "v1", "events")
    }
    /// events.k8s.io/v1 events
    pub fn events() -> Self {
        Self::new("events.k8s.io", "v1", "events")
    }
    /// apps/v1 deployments
    pub fn deployments() -> Self {
        Self::new("apps", "v1", "deployments")
    }
    /// apps/v1 statefulsets
    pub fn statefulsets() -> Self {
        Self::new("apps", "v1", "statefulsets")
    }
    /// core/v1 nodes (cluster-scoped)
    pub fn nodes() -> Self {
        Self::new("", "v1", "nodes")
    }
    /// autoscaling/v2 horizontalpodautoscalers
    pub fn hpas() -> Self {
        Self::new("autoscaling", "v2", "horizontalpodautoscalers")
    }
    /// coordination.k8s.io/v1 leases
    pub fn leases() -> Self {
        Self::new("coordination.k8s.io", "v1", "leases")
    }
    /// vidi.dev/v1alpha1 vidijobs (registered only once the CRD is registered)
    pub fn vidijobs() -> Self {
        Self::new("vidi.dev", "v1alpha1", "vidijobs")
    }
}

/// A served resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, "" for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name.
    pub plural: String,
    /// Kind.
    pub kind: String,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status_subresource: bool,
    /// Defined by a CRD (refuses strategic merge patches).
    pub custom: bool,
}

impl ResourceInfo {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// One access as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// RBAC verb: get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    /// API group ("" for core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource ("" for none, "status").
    pub subresource: String,
}

impl Access {
    /// Shorthand for comparisons in tests.
    pub fn new(verb: &str, group: &str, resource: &str, subresource: &str) -> Self {
        Self {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
        }
    }
}

/// One request, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    /// What was accessed.
    pub access: Access,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// HTTP status code of the answer (200 for watches that started).
    pub code: u16,
    /// The client, for requests sent through [`Standin::client_for`] or
    /// [`Standin::write_kubeconfig_for`].
    pub client: Option<String>,
    /// When the stand-in answered (for a write: committed or refused).
    pub at: std::time::Instant,
}

impl AccessRecord {
    /// A create, update, patch, delete or deletecollection.
    pub fn is_write(&self) -> bool {
        matches!(
            self.access.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// A write the stand-in accepted.
    pub fn is_accepted_write(&self) -> bool {
        self.is_write() && (200..300).contains(&self.code)
    }
}

/// `patch vidijobs/status gpu/m-1 -> 409`: one request as a test failure message shows it.
impl std::fmt::Display for AccessRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.access.verb, self.access.resource)?;
        if !self.access.subresource.is_empty() {
            write!(f, "/{}", self.access.subresource)?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " {ns}/")?;
        } else {
            write!(f, " ")?;
        }
        write!(f, "{} -> {}", self.name.as_deref().unwrap_or("*"), self.code)
    }
}

/// How one client loses the API (see [`Standin::cut_off`]); other clients are unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Its Lease writes (create, update, patch) fail with 503; every other request works.
    LeaseWritesFail,
    /// Its requests hang, and its open watches stop delivering, until [`Standin::heal`]; then
    /// the held requests are served late, even those the client gave up on (as TCP delivers
    /// what was already sent when a partition heals).
    Hang,
}

/// One committed write, as watchers see it, with the time it was committed (see
/// [`Standin::changes_since`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The resourceVersion the write produced.
    pub resource_version: u64,
    /// API group ("" for core).
    pub group: String,
    /// Plural resource.
    pub resource: String,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Watch event type: ADDED, MODIFIED or DELETED.
    pub event: &'static str,
    /// The object after the write (for DELETED: as it was removed).
    pub object: Value,
    /// When the stand-in committed the write (monotonic clock, taken under its lock).
    pub at: std::time::Instant,
}

impl Change {
    /// The object's name.
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
}

/// How a job pod ends (see [`Kubelet`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOutcome {
    /// Exit code of every main container.
    pub exit_code: i32,
    /// Container termination reason (default "Completed"/"Error"), e.g. "OOMKilled".
    /// "DeadlineExceeded" and "Evicted" are pod-level: they go to `status.reason` instead.
    pub reason: Option<String>,
    /// Termination message (what the container wrote to /dev/termination-log).
    pub message: Option<String>,
    /// Init containers by index; missing entries succeed. A failing one fails the pod.
    pub init: Vec<InitOutcome>,
    /// How long the pod runs before it ends.
    pub after: Duration,
}

impl PodOutcome {
    /// Exit 0.
    pub fn succeed() -> Self {
        Self::default()
    }
    /// Exit with `code`.
    pub fn exit(code: i32) -> Self {
        Self {
            exit_code: code,
            ..Self::default()
        }
    }
    /// Sets the container (or pod-level) reason.
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Sets the termination message.
    pub fn with_message(mut self, message: &str) -> Self {
        self.message = Some(message.into());
        self
    }
    /// Adds the next init container's outcome.
    pub fn with_init(mut self, init: InitOutcome) -> Self {
        self.init.push(init);
        self
    }
    /// Runs for `d` before ending.
    pub fn after(mut self, d: Duration) -> Self {
        self.after = d;
        self
    }
}

/// How an init container ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitOutcome {
    /// Exit code.
    pub exit_code: i32,
    /// Termination reason (default "Completed"/"Error").
    pub reason: Option<String>,
    /// Termination message.
    pub message: Option<String>,
}

impl InitOutcome {
    /// Exit with `code`, with an optional message.
    pub fn exit(code: i32, message: Option<&str>) -> Self {
        Self {
            exit_code: code,
            reason: None,
            message: message.map(String::from),
        }
    }
}

/// A condition in [`Standin::wait_for`] did not hold before the deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitTimeout(pub Duration);

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for WaitTimeout {}

/// Read-only view of the store, for [`Standin::wait_for`].
pub struct View<'a>(&'a State);

impl View<'_> {
    /// One object (ns "" for cluster-scoped).
    pub fn get(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        let res = self.0.resource(gvr)?;
        self.0.get(&res, ns, name).ok()
    }
    /// All objects of a resource, optionally in one namespace.
    pub fn list(&self, gvr: &Gvr, ns: Option<&str>) -> Vec<Value> {
        let Some(res) = self.0.resource(gvr) else {
            return Vec::new();
        };
        self.0
            .list(&res, ns, &LabelSelector::default(), &FieldSelector::default())
    }
    /// Current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.0.rv
    }
    /// Requests of client `id` held by a [`Cut::Hang`] and not served yet.
    pub fn held_requests(&self, id: &str) -> usize {
        self.0.held.get(id).copied().unwrap_or(0)
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) notify: watch::Sender<u64>,
    pub(crate) cancel: CancellationToken,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` under the lock, then wakes watchers and starts the timers `f` scheduled.
    pub(crate) fn with<R>(self: &Arc<Self>, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, timers, rv) = {
            let mut st = self.lock();
            let r = f(&mut st);
            (r, std::mem::take(&mut st.timers), st.rv)
        };
        self.after_write(timers, rv);
        r
    }

    fn after_write(self: &Arc<Self>, timers: Vec<store::Timer>, rv: u64) {
        if *self.notify.borrow() != rv {
            self.notify.send_replace(rv);
        }
        for t in timers {
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(t.after) => shared.fire(t.action),
                    _ = shared.cancel.cancelled() => {}
                }
            });
        }
    }

    fn fire(self: &Arc<Self>, action: store::TimerAction) {
        let (timers, rv) = {
            let mut st = self.lock();
            st.fire(action);
            (std::mem::take(&mut st.timers), st.rv)
        };
        self.after_write(timers, rv);
    }

    /// Wakes every watcher and waiter even though nothing was written.
    pub(crate) fn poke(&self) {
        self.notify.send_modify(|_| {});
    }
}

/// The stand-in API server. Dropping it stops the server, the watches and the simulators.
pub struct Standin {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Handle on the kubelet simulator.
#[derive(Clone)]
pub struct Kubelet {
    shared: Arc<Shared>,
}

impl Kubelet {
    /// Decides how each job pod ends, when it starts. `None`: the pod keeps running (until
    /// [`Kubelet::finish`] or its activeDeadlineSeconds). Runs under the stand-in's lock:
    /// it must not call back into the stand-in.
    pub fn on_pod(&self, f: impl Fn(&Value) -> Option<PodOutcome> + Send + Sync + 'static) {
        self.shared.lock().kubelet.decide = Some(Arc::new(f));
    }
    /// The outcome of the pod with this name (takes precedence over `on_pod`).
    pub fn outcome_for(&self, ns: &str, name: &str, outcome: PodOutcome) {
        self.shared
            .lock()
            .kubelet
            .by_name
            .insert((ns.into(), name.into()), outcome);
    }
    /// Ends a pod now with `outcome` (its `after` is ignored).
    pub fn finish(&self, ns: &str, name: &str, outcome: PodOutcome) -> Result<(), ApiError> {
        self.shared.with(|st| st.kubelet_finish_now(ns, name, &outcome))
    }
    /// Adds a node; pods are scheduled to the first node whose labels satisfy their
    /// nodeSelector (none fits: they stay Pending, Unschedulable). Without nodes every pod
    /// lands on [`DEFAULT_NODE`].
    pub fn add_node(&self, name: &str, labels: &[(&str, &str)]) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.shared.lock().kubelet.nodes.push((name.into(), labels));
    }
    /// Adds a GPU node as NVIDIA's device plugin and GPU Feature Discovery present it: a Node
    /// object labelled `nvidia.com/gpu.memory: <memory_mib>` (plus `labels`) offering one
    /// `nvidia.com/gpu`, on which pods are then scheduled (see [`Kubelet::add_node`]).
    pub fn add_gpu_node(&self, name: &str, labels: &[(&str, &str)], memory_mib: u64) -> Result<Value, ApiError> {
        let mut all: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        all.insert("kubernetes.io/hostname".into(), json!(name));
        all.insert("nvidia.com/gpu.memory".into(), json!(memory_mib.to_string()));
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": all},
            "status": {
                "capacity": {"nvidia.com/gpu": "1", "cpu": "16", "memory": "128Gi"},
                "allocatable": {"nvidia.com/gpu": "1", "cpu": "16", "memory": "128Gi"},
            },
        });
        let res = lookup(&self.shared, &Gvr::nodes())?;
        let created = self.shared.with(|st| st.create(&res, "", node, true))?;
        let mut node_labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        node_labels.push(("kubernetes.io/hostname".into(), name.into()));
        node_labels.push(("nvidia.com/gpu.memory".into(), memory_mib.to_string()));
        self.shared
            .lock()
            .kubelet
            .nodes
            .push((name.into(), node_labels.into_iter().collect()));
        Ok(created)
    }
    /// Switches the kubelet on or off (on by default). Off: job pods stay as created.
    pub fn set_enabled(&self, on: bool) {
        let mut st = self.shared.lock();
        st.kubelet.enabled = on;
        st.kubelet.synced_rv = 0;
        drop(st);
        self.shared.poke();
    }
}

fn lookup(shared: &Arc<Shared>, gvr: &Gvr) -> Result<ResourceInfo, ApiError> {
    shared.lock().resource(gvr).ok_or_else(ApiError::no_route)
}

impl Standin {
    /// Starts the stand-in on 127.0.0.1 with a random port (needs a tokio runtime).
    pub async fn start() -> Self {
        let (notify, _) = watch::channel(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            notify,
            cancel: CancellationToken::new(),
        });
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("kube-standin: cannot bind 127.0.0.1:0: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("kube-standin: no local address: {e}"),
        };
        let app = http::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("kube-standin server failed: {e}");
            }
        });
        let sim_shared = Arc::clone(&shared);
        let sim = tokio::spawn(async move {
            let mut rx = sim_shared.notify.subscribe();
            loop {
                sim_shared.with(|st| {
                    st.reconcile_workloads();
                    st.kubelet_scan();
                });
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = sim_shared.cancel.cancelled() => break,
                }
            }
        });
        Self {
            shared,
            addr,
            tasks: vec![server, sim],
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (no TLS, no auth, default namespace "default").
    pub fn client(&self) -> kube::Client {
        let uri = match self.url().parse() {
            Ok(u) => u,
            Err(e) => panic!("kube-standin: bad url: {e}"),
        };
        match kube::Client::try_from(kube::Config::new(uri)) {
            Ok(c) => c,
            Err(e) => panic!("kube-standin: cannot build client: {e}"),
        }
    }

    /// Appends `text` to what container `container` of pod `ns/pod` has logged (served by
    /// `GET …/pods/<pod>/log`; a `follow` request streams it as it comes, until the container
    /// has terminated or the pod is gone).
    pub fn append_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        self.shared
            .lock()
            .logs
            .entry((ns.into(), pod.into(), container.into()))
            .or_default()
            .push_str(text);
        self.shared.poke();
    }

    /// A kubeconfig pointing at this server, for a separately started process.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\nusers:\n- name: standin\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`Standin::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<std::path::Path>) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Serves another resource.
    pub fn register(&self, info: ResourceInfo) {
        self.shared.lock().register(info);
    }

    /// Stores the CRD (as `apiextensions.k8s.io/v1` object) and serves its versions.
    /// Creating a CRD over HTTP does the same.
    pub fn register_crd(&self, crd: &CustomResourceDefinition) -> Result<(), ApiError> {
        let v = serde_json::to_value(crd).map_err(|e| ApiError::bad_request(e.to_string()))?;
        self.register_crd_json(v)
    }

    /// Like [`Standin::register_crd`], from JSON.
    pub fn register_crd_json(&self, crd: Value) -> Result<(), ApiError> {
        let gvr = Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");
        self.create(&gvr, "", crd).map(|_| ())
    }

    /// Creates a namespace (phase Active).
    pub fn create_namespace(&self, name: &str) -> Result<Value, ApiError> {
        self.create(&Gvr::namespaces(), "", json!({"metadata": {"name": name}}))
    }

    /// One object, as a GET would return it (ns "" for cluster-scoped).
    pub fn get(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        View(&self.shared.lock()).get(gvr, ns, name)
    }

    /// All objects of a resource, optionally in one namespace.
    pub fn list(&self, gvr: &Gvr, ns: Option<&str>) -> Vec<Value> {
        View(&self.shared.lock()).list(gvr, ns)
    }

    /// Creates an object (status is dropped for status-subresource resources, like POST).
    pub fn create(&self, gvr: &Gvr, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        self.shared.with(|st| st.create(&res, ns, obj, false))
    }

    /// Creates an object keeping its `status` (to set up a scene).
    pub fn create_with_status(&self, gvr: &Gvr, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        self.shared.with(|st| st.create(&res, ns, obj, true))
    }

    /// PUT; a missing `metadata.resourceVersion` is filled with the current one.
    pub fn put(&self, gvr: &Gvr, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        let name = store::meta_str(&obj, "name").unwrap_or_default().to_string();
        self.shared.with(|st| {
            if store::meta_str(&obj, "resourceVersion").is_none()
                && let Ok(cur) = st.get(&res, ns, &name)
            {
                obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
            }
            st.update(&res, ns, &name, obj, false, None)
        })
    }

    /// JSON merge patch of the main resource by field manager `manager` (recorded in
    /// managedFields, as a real server does).
    pub fn patch_as(&self, manager: &str, gvr: &Gvr, ns: &str, name: &str, patch: Value) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        let body = patch.to_string();
        self.shared
            .with(|st| st.patch(&res, ns, name, PatchType::Merge, body.as_bytes(), false, Some(manager)))
            .map(|(o, _)| o)
    }

    /// JSON merge patch of the main resource.
    pub fn patch_json(&self, gvr: &Gvr, ns: &str, name: &str, patch: Value) -> Result<Value, ApiError> {
        self.patch_inner(gvr, ns, name, patch, false)
    }

    /// JSON merge patch of the status subresource (or of the object when there is none).
    pub fn patch_status(&self, gvr: &Gvr, ns: &str, name: &str, patch: Value) -> Result<Value, ApiError> {
        self.patch_inner(gvr, ns, name, patch, true)
    }

    fn patch_inner(&self, gvr: &Gvr, ns: &str, name: &str, patch: Value, status: bool) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        let body = patch.to_string();
        let status = status && res.status_subresource;
        self.shared
            .with(|st| st.patch(&res, ns, name, PatchType::Merge, body.as_bytes(), status, None))
            .map(|(o, _)| o)
    }

    /// DELETE with default options (finalizers and the pod termination delay apply).
    pub fn delete(&self, gvr: &Gvr, ns: &str, name: &str) -> Result<Value, ApiError> {
        let res = lookup(&self.shared, gvr)?;
        self.shared.with(|st| st.delete(&res, ns, name, &DeleteOpts::default()))
    }

    /// Waits until `cond` holds, re-checking after every write; no polling.
    pub async fn wait_for(
        &self,
        mut cond: impl FnMut(&View<'_>) -> bool,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_until(|v| cond(v).then_some(()), timeout).await
    }

    /// Waits until `f` returns `Some`, re-checking after every write; returns the value.
    pub async fn wait_until<T>(
        &self,
        mut f: impl FnMut(&View<'_>) -> Option<T>,
        timeout: Duration,
    ) -> Result<T, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.notify.subscribe();
        loop {
            rx.borrow_and_update();
            let found = {
                let st = self.shared.lock();
                f(&View(&st))
            };
            if let Some(t) = found {
                return Ok(t);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(WaitTimeout(timeout)),
            }
        }
    }

    /// Every write committed after resourceVersion `rv`, in order, with its commit time: what a
    /// watch from `rv` would replay, for measuring how long after a write another one came.
    /// Only what the history still holds (see [`Standin::set_history_limit`]).
    pub fn changes_since(&self, rv: u64) -> Vec<Change> {
        let st = self.shared.lock();
        let start = st.history.partition_point(|e| e.rv <= rv);
        st.history
            .range(start..)
            .map(|e| Change {
                resource_version: e.rv,
                group: e.group.clone(),
                resource: e.plural.clone(),
                namespace: e.ns.clone(),
                event: e.etype,
                object: e.object.clone(),
                at: e.at,
            })
            .collect()
    }

    /// Every distinct (verb, group, resource, subresource) requested so far.
    pub fn access_log(&self) -> BTreeSet<Access> {
        self.shared.lock().access.iter().map(|r| r.access.clone()).collect()
    }

    /// Every request so far, in order.
    pub fn access_records(&self) -> Vec<AccessRecord> {
        self.shared.lock().access.clone()
    }

    /// Forgets the access log.
    pub fn clear_access_log(&self) {
        self.shared.lock().access.clear();
    }

    /// Cuts the client `id` off the API in the way `how` says, until [`Standin::heal`].
    pub fn cut_off(&self, id: &str, how: Cut) {
        self.shared.lock().cuts.insert(id.into(), how);
        self.shared.poke();
    }

    /// Ends the cut of client `id`: held requests are served now.
    pub fn heal(&self, id: &str) {
        self.shared.lock().cuts.remove(id);
        self.shared.poke();
    }

    /// The URL client `id` reaches this server at: requests through it are recorded with the
    /// client's name and can be cut off ([`Standin::cut_off`]).
    pub fn url_for(&self, id: &str) -> String {
        format!("{}/clients/{id}", self.url())
    }

    /// A kube client that reaches this server as client `id`.
    pub fn client_for(&self, id: &str) -> kube::Client {
        let uri = match self.url_for(id).parse() {
            Ok(u) => u,
            Err(e) => panic!("kube-standin: bad url: {e}"),
        };
        match kube::Client::try_from(kube::Config::new(uri)) {
            Ok(c) => c,
            Err(e) => panic!("kube-standin: cannot build client: {e}"),
        }
    }

    /// A kubeconfig through which a separately started process reaches this server as client
    /// `id`.
    pub fn write_kubeconfig_for(&self, path: impl AsRef<std::path::Path>, id: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml().replace(&self.url(), &self.url_for(id)))
    }

    /// The next request with this RBAC verb on this plural resource fails with `code`
    /// (a Status with the matching reason). Calls queue up.
    pub fn fail_next(&self, verb: &str, resource: &str, code: u16) {
        self.shared.lock().faults.push(Fault {
            verb: verb.into(),
            resource: resource.into(),
            code,
        });
    }

    /// How long a deleted pod stays (with deletionTimestamp) before it is gone. Default 0.
    pub fn set_pod_termination(&self, d: Duration) {
        self.shared.lock().pod_termination = d;
    }

    /// How many watch events are kept for resuming watches (default 10 000). Older
    /// resourceVersions get 410 Gone.
    pub fn set_history_limit(&self, n: usize) {
        let mut st = self.shared.lock();
        st.history_limit = n.max(1);
        while st.history.len() > st.history_limit {
            if let Some(e) = st.history.pop_front() {
                st.compacted_through = e.rv;
            }
        }
    }

    /// While on, the first patch or update of each object (per verb and subresource) fails with
    /// 409 Conflict, as if someone had written it just before; the retry goes through.
    pub fn conflict_first_writes(&self, on: bool) {
        self.shared.lock().conflict_first_writes = on.then(Default::default);
    }

    /// Every write (create, update, patch, delete) fails with `code` for `d` from now.
    pub fn fail_writes_for(&self, code: u16, d: Duration) {
        self.shared.lock().writes_fail_until = Some((std::time::Instant::now() + d, code));
    }

    /// Ends every open watch without an error (a dropped connection): watchers resume from their
    /// last resourceVersion.
    pub fn drop_watches(&self) {
        self.shared.lock().watch_drop_epoch += 1;
        self.shared.poke();
    }

    /// Every request waits `d` before it is served (a slow API server).
    pub fn set_latency(&self, d: Duration) {
        self.shared.lock().latency = d;
    }

    /// Like an etcd compaction: drops the whole event history and ends every open watch
    /// with an ERROR event carrying 410 Gone, so watchers must re-list.
    pub fn compact(&self) {
        {
            let mut st = self.shared.lock();
            st.history.clear();
            st.compacted_through = st.rv;
            st.watch_epoch += 1;
        }
        self.shared.poke();
    }

    /// How often watches with allowWatchBookmarks get a BOOKMARK (default 1 s).
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.shared.lock().bookmark_interval = d;
    }

    /// Switches the Deployment/StatefulSet controller on or off (on by default).
    pub fn set_workloads_enabled(&self, on: bool) {
        let mut st = self.shared.lock();
        st.workloads_enabled = on;
        st.workloads_synced_rv = 0;
        drop(st);
        self.shared.poke();
    }

    /// The kubelet simulator for job pods.
    pub fn kubelet(&self) -> Kubelet {
        Kubelet {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }
}
