//! The object store: every write goes through here, whether it came over HTTP or from a
//! simulator. All functions run under the stand-in's single lock.

use crate::error::ApiError;
use crate::kubelet::KubeletState;
use crate::selector::{FieldSelector, LabelSelector};
use crate::{Access, AccessRecord, Gvr, ResourceInfo};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Store key: (group, plural, namespace or "", name). Versions of one group share storage.
pub(crate) type Key = (String, String, String, String);

pub(crate) fn key(res: &ResourceInfo, ns: &str, name: &str) -> Key {
    let ns = if res.namespaced { ns } else { "" };
    (res.group.clone(), res.plural.clone(), ns.to_string(), name.to_string())
}

#[derive(Clone, Debug)]
pub(crate) struct StoredEvent {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub ns: String,
    pub etype: &'static str,
    pub object: Value,
    pub prev: Option<Value>,
    /// When the write was committed (monotonic clock).
    pub at: std::time::Instant,
}

#[derive(Clone, Debug)]
pub(crate) enum TimerAction {
    RemovePod {
        key: Key,
        uid: String,
    },
    KubeletStart {
        key: Key,
        uid: String,
    },
    KubeletFinish {
        key: Key,
        uid: String,
        outcome: crate::PodOutcome,
    },
    KubeletDeadline {
        key: Key,
        uid: String,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Timer {
    pub after: Duration,
    pub action: TimerAction,
}

#[derive(Clone, Debug)]
pub(crate) struct Fault {
    pub verb: String,
    pub resource: String,
    pub code: u16,
}

/// Patch flavours, chosen by the request's content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json` (RFC 7386)
    Merge,
    /// `application/json-patch+json` (RFC 6902)
    Json,
    /// `application/strategic-merge-patch+json` (applied as a merge patch)
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply, applied as a merge patch)
    Apply,
}

/// Options of a DELETE.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOpts {
    pub grace: Option<i64>,
    pub uid: Option<String>,
    pub rv: Option<String>,
    pub orphan: bool,
}

pub(crate) struct State {
    pub resources: BTreeMap<(String, String, String), ResourceInfo>,
    pub objects: BTreeMap<Key, Value>,
    pub rv: u64,
    pub history: VecDeque<StoredEvent>,
    pub history_limit: usize,
    /// Every event with rv <= this has been dropped from the history.
    pub compacted_through: u64,
    /// Bumped by `compact()`: open watches end with 410 Gone.
    pub watch_epoch: u64,
    pub pod_termination: Duration,
    pub grace_pending: HashSet<String>,
    pub timers: Vec<Timer>,
    pub access: Vec<AccessRecord>,
    pub faults: Vec<Fault>,
    /// Clients cut off the API, by name.
    pub cuts: HashMap<String, crate::Cut>,
    /// Requests of hung clients not served yet, by client.
    pub held: HashMap<String, usize>,
    /// While set: the first patch or update of each (verb, resource, subresource, namespace,
    /// name) fails with 409 Conflict; the keys already refused once.
    pub conflict_first_writes: Option<HashSet<String>>,
    /// Every write fails with this code until then.
    pub writes_fail_until: Option<(std::time::Instant, u16)>,
    /// Bumped by `drop_watches()`: open watches end without an error.
    pub watch_drop_epoch: u64,
    /// How long every request waits before it is served.
    pub latency: Duration,
    pub bookmark_interval: Duration,
    pub workloads_enabled: bool,
    /// The resourceVersion the workload controller's last pass looked at (0: none yet).
    pub workloads_synced_rv: u64,
    pub kubelet: KubeletState,
    /// openAPIV3Schema per (group, version, plural) of custom resources.
    pub schemas: BTreeMap<(String, String, String), Value>,
    /// Every object's key by uid, and the dependents of every owner uid (from ownerReferences):
    /// kept on every commit and removal, so garbage collection and the workload controller look
    /// objects up instead of scanning them all on each write (quadratic at 10,000 objects).
    pub by_uid: HashMap<String, Key>,
    pub dependents: HashMap<String, BTreeSet<Key>>,
    /// What each container has logged, by (namespace, pod, container) (see `pods/log`).
    pub logs: BTreeMap<(String, String, String), String>,
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(crate) fn random_suffix(n: usize) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..n).map(|_| ALPHA[fastrand::usize(..ALPHA.len())] as char).collect()
}

pub(crate) fn new_uid() -> String {
    let h = |n: usize| -> String { (0..n).map(|_| format!("{:x}", fastrand::u8(..16))).collect() };
    format!("{}-{}-4{}-a{}-{}", h(8), h(4), h(3), h(3), h(12))
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str().filter(|s| !s.is_empty())
}

pub(crate) fn uid_of(obj: &Value) -> String {
    meta_str(obj, "uid").unwrap_or_default().to_string()
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

/// Drops empty metadata collections, as the server's `omitempty` encoding does.
fn normalize_meta(obj: &mut Value) {
    if let Some(Value::Object(m)) = obj.get_mut("metadata") {
        for f in ["finalizers", "ownerReferences", "labels", "annotations"] {
            let empty = match m.get(f) {
                Some(Value::Array(a)) => a.is_empty(),
                Some(Value::Object(o)) => o.is_empty(),
                Some(Value::Null) => true,
                _ => false,
            };
            if empty {
                m.remove(f);
            }
        }
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The object without metadata, status and type fields: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(Value::Object(m)) = o.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    o
}

impl State {
    pub(crate) fn new() -> Self {
        let mut s = State {
            resources: BTreeMap::new(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit: 10_000,
            compacted_through: 0,
            watch_epoch: 0,
            pod_termination: Duration::ZERO,
            grace_pending: HashSet::new(),
            timers: Vec::new(),
            access: Vec::new(),
            faults: Vec::new(),
            cuts: HashMap::new(),
            held: HashMap::new(),
            conflict_first_writes: None,
            writes_fail_until: None,
            watch_drop_epoch: 0,
            latency: Duration::ZERO,
            bookmark_interval: Duration::from_secs(1),
            workloads_enabled: true,
            workloads_synced_rv: 0,
            kubelet: KubeletState::default(),
            schemas: BTreeMap::new(),
            by_uid: HashMap::new(),
            dependents: HashMap::new(),
            logs: BTreeMap::new(),
        };
        for (g, v, p, k, ns, st) in [
            ("", "v1", "pods", "Pod", true, true),
            ("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, true),
            ("", "v1", "namespaces", "Namespace", false, true),
            ("", "v1", "events", "Event", true, false),
            ("", "v1", "configmaps", "ConfigMap", true, false),
            ("", "v1", "secrets", "Secret", true, false),
            ("", "v1", "serviceaccounts", "ServiceAccount", true, false),
            ("", "v1", "nodes", "Node", false, true),
            ("apps", "v1", "deployments", "Deployment", true, true),
            ("apps", "v1", "statefulsets", "StatefulSet", true, true),
            (
                "autoscaling",
                "v2",
                "horizontalpodautoscalers",
                "HorizontalPodAutoscaler",
                true,
                true,
            ),
            ("events.k8s.io", "v1", "events", "Event", true, false),
            ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
            (
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
            ),
        ] {
            s.register(ResourceInfo {
                group: g.into(),
                version: v.into(),
                plural: p.into(),
                kind: k.into(),
                namespaced: ns,
                status_subresource: st,
                custom: false,
            });
        }
        s
    }

    pub(crate) fn register(&mut self, info: ResourceInfo) {
        self.resources
            .insert((info.group.clone(), info.version.clone(), info.plural.clone()), info);
    }

    pub(crate) fn resource(&self, gvr: &Gvr) -> Option<ResourceInfo> {
        self.resources
            .get(&(gvr.group.clone(), gvr.version.clone(), gvr.plural.clone()))
            .cloned()
    }

    /// Any served version of (group, plural).
    pub(crate) fn resource_gp(&self, group: &str, plural: &str) -> Option<ResourceInfo> {
        self.resources
            .values()
            .find(|r| r.group == group && r.plural == plural)
            .cloned()
    }

    /// Registers the versions a CustomResourceDefinition object serves.
    pub(crate) fn register_crd_value(&mut self, crd: &Value) -> Result<(), ApiError> {
        let bad = |what: &str| ApiError::bad_request(format!("CustomResourceDefinition: {what}"));
        let spec = crd.get("spec").ok_or_else(|| bad("spec is required"))?;
        let group = spec
            .get("group")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("spec.group is required"))?;
        let names = spec.get("names").ok_or_else(|| bad("spec.names is required"))?;
        let plural = names
            .get("plural")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("spec.names.plural is required"))?;
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("spec.names.kind is required"))?;
        let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("spec.versions is required"))?;
        for v in versions {
            if v.get("served").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("spec.versions[].name is required"))?;
            self.register(ResourceInfo {
                group: group.into(),
                version: name.into(),
                plural: plural.into(),
                kind: kind.into(),
                namespaced,
                status_subresource: v.pointer("/subresources/status").is_some(),
                custom: true,
            });
            match v.pointer("/schema/openAPIV3Schema") {
                Some(schema) => self
                    .schemas
                    .insert((group.into(), name.into(), plural.into()), schema.clone()),
                None => self
                    .schemas
                    .remove(&(group.to_string(), name.to_string(), plural.to_string())),
            };
        }
        Ok(())
    }

    // ---- low-level writes -------------------------------------------------------------------

    fn push_event(&mut self, key: &Key, etype: &'static str, object: Value, prev: Option<Value>) {
        self.history.push_back(StoredEvent {
            rv: self.rv,
            group: key.0.clone(),
            plural: key.1.clone(),
            ns: key.2.clone(),
            etype,
            object,
            prev,
            at: std::time::Instant::now(),
        });
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted_through = e.rv;
            }
        }
    }

    /// Stores `obj` under `key` with a fresh resourceVersion and records the event.
    pub(crate) fn commit(&mut self, key: Key, mut obj: Value, etype: &'static str) -> Value {
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let prev = self.objects.insert(key.clone(), obj.clone());
        if let Some(p) = &prev {
            self.unindex(&key, p);
        }
        self.index(&key, &obj);
        self.push_event(&key, etype, obj.clone(), prev);
        obj
    }

    /// Removes an object for real (DELETED event), then collects its dependents.
    pub(crate) fn remove_real(&mut self, key: &Key, gc: bool) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.unindex(key, &obj);
        self.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        self.push_event(key, "DELETED", obj.clone(), None);
        let uid = uid_of(&obj);
        self.grace_pending.remove(&uid);
        self.kubelet.forget(&uid);
        if key.0.is_empty() && key.1 == "namespaces" {
            let inside: Vec<Key> = self.objects.keys().filter(|k| k.2 == key.3).cloned().collect();
            for k in inside {
                if let Some(res) = self.resource_gp(&k.0, &k.1) {
                    let _ = self.delete(&res, &k.2, &k.3, &DeleteOpts::default());
                }
            }
        }
        if gc && !uid.is_empty() {
            self.collect_dependents(&uid);
        }
        Some(obj)
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.by_uid.contains_key(uid)
    }

    fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
        obj.pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("uid").and_then(Value::as_str))
    }

    fn index(&mut self, key: &Key, obj: &Value) {
        let uid = uid_of(obj);
        if !uid.is_empty() {
            self.by_uid.insert(uid, key.clone());
        }
        for owner in Self::owner_uids(obj) {
            self.dependents
                .entry(owner.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    fn unindex(&mut self, key: &Key, obj: &Value) {
        let uid = uid_of(obj);
        if self.by_uid.get(&uid) == Some(key) {
            self.by_uid.remove(&uid);
        }
        for owner in Self::owner_uids(obj) {
            if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(key);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    /// The objects whose ownerReferences name `uid`.
    pub(crate) fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Background garbage collection of the objects owned by `uid`.
    fn collect_dependents(&mut self, uid: &str) {
        let dependents = self.dependents_of(uid);
        for k in dependents {
            let Some(obj) = self.objects.get(&k).cloned() else {
                continue;
            };
            let Some(res) = self.resource_gp(&k.0, &k.1) else {
                continue;
            };
            let refs = obj
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let others_alive = refs.iter().any(|r| {
                let u = r.get("uid").and_then(Value::as_str).unwrap_or_default();
                u != uid && self.uid_exists(u)
            });
            if others_alive {
                let mut new = obj.clone();
                let kept: Vec<Value> = refs
                    .into_iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(uid))
                    .collect();
                meta_mut(&mut new).insert("ownerReferences".into(), Value::Array(kept));
                self.commit(k, new, "MODIFIED");
            } else if meta_str(&obj, "deletionTimestamp").is_none() {
                let _ = self.delete(&res, &k.2, &k.3, &DeleteOpts::default());
            }
        }
    }

    // ---- API operations ---------------------------------------------------------------------

    pub(crate) fn get(&self, res: &ResourceInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&key(res, ns, name))
            .map(|o| with_version(o, res))
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))
    }

    pub(crate) fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.0 == res.group && k.1 == res.plural)
            .filter(|(k, _)| ns.is_none_or(|ns| k.2 == ns))
            .filter(|(_, o)| labels.matches(o) && fields.matches(o))
            .map(|(_, o)| with_version(o, res))
            .collect()
    }

    fn check_type(&self, res: &ResourceInfo, body: &Value) -> Result<(), ApiError> {
        if let Some(k) = body.get("kind").and_then(Value::as_str)
            && !k.is_empty()
            && k != res.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                res.kind
            )));
        }
        if let Some(av) = body.get("apiVersion").and_then(Value::as_str)
            && !av.is_empty()
        {
            let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
            if group != res.group {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({av}) does not match the expected API version ({})",
                    res.api_version()
                )));
            }
        }
        Ok(())
    }

    /// Prunes unknown fields and checks the CRD schema (custom resources only).
    fn apply_schema(&self, res: &ResourceInfo, obj: &mut Value, name: &str) -> Result<(), ApiError> {
        let Some(schema) = self
            .schemas
            .get(&(res.group.clone(), res.version.clone(), res.plural.clone()))
        else {
            return Ok(());
        };
        let errs = crate::schema::apply(schema, obj);
        match errs.len() {
            0 => Ok(()),
            1 => Err(ApiError::invalid(
                &format!("{}.{}", res.kind, res.group),
                name,
                &res.group,
                &errs[0],
            )),
            _ => Err(ApiError::invalid(
                &format!("{}.{}", res.kind, res.group),
                name,
                &res.group,
                format!("[{}]", errs.join(", ")),
            )),
        }
    }

    fn validate_meta(&self, res: &ResourceInfo, obj: &Value, name: &str) -> Result<(), ApiError> {
        let invalid = |cause: String| ApiError::invalid(&res.kind, name, &res.group, cause);
        if let Some(labels) = obj.pointer("/metadata/labels") {
            let Some(m) = labels.as_object() else {
                return Err(invalid("metadata.labels: Invalid value: must be a map".into()));
            };
            for (k, v) in m {
                let ok = v.as_str().is_some_and(|v| {
                    v.len() <= 63
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                });
                if !ok || k.is_empty() {
                    return Err(invalid(format!(
                        "metadata.labels: Invalid value: \"{}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'",
                        v.as_str().unwrap_or_default()
                    )));
                }
            }
        }
        if let Some(a) = obj.pointer("/metadata/annotations")
            && !a.as_object().is_some_and(|m| m.values().all(Value::is_string))
        {
            return Err(invalid(
                "metadata.annotations: Invalid value: must be a map of strings".into(),
            ));
        }
        if let Some(f) = obj.pointer("/metadata/finalizers")
            && !f.as_array().is_some_and(|a| a.iter().all(Value::is_string))
        {
            return Err(invalid(
                "metadata.finalizers: Invalid value: must be a list of strings".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        mut body: Value,
        keep_status: bool,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        self.check_type(res, &body)?;
        body["apiVersion"] = json!(res.api_version());
        body["kind"] = json!(res.kind);
        let meta = meta_mut(&mut body);
        if res.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(ns));
                }
                Some(n) if n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                Some(_) => {}
            }
        } else {
            meta.remove("namespace");
        }
        let mut name = meta.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if name.is_empty() {
            let generate = meta.get("generateName").and_then(Value::as_str).unwrap_or_default();
            if generate.is_empty() {
                return Err(ApiError::invalid(
                    &res.kind,
                    "",
                    &res.group,
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{generate}{}", random_suffix(5));
            meta.insert("name".into(), json!(name));
        }
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name_ok = if res.plural == "namespaces" {
            is_dns_label(&name)
        } else {
            is_dns_subdomain(&name)
        };
        if !name_ok {
            return Err(ApiError::invalid(
                &res.kind,
                &name,
                &res.group,
                format!(
                    "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
                ),
            ));
        }
        let k = key(res, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(ApiError::already_exists(&res.group, &res.plural, &name));
        }
        let meta = meta_mut(&mut body);
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        meta.remove("selfLink");
        meta.remove("managedFields");
        if res.status_subresource && !keep_status {
            let obj = body.as_object_mut().expect("checked object");
            obj.remove("status");
            match (res.group.as_str(), res.plural.as_str()) {
                ("", "pods") => {
                    obj.insert("status".into(), json!({"phase": "Pending", "qosClass": "BestEffort"}));
                }
                ("", "namespaces") => {
                    obj.insert("status".into(), json!({"phase": "Active"}));
                }
                _ => {}
            }
        }
        normalize_meta(&mut body);
        self.validate_meta(res, &body, &name)?;
        self.apply_schema(res, &mut body, &name)?;
        if res.group == "apiextensions.k8s.io" && res.plural == "customresourcedefinitions" {
            self.register_crd_value(&body)?;
        }
        Ok(with_version(&self.commit(k, body, "ADDED"), res))
    }

    pub(crate) fn update(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
        manager: Option<&str>,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body of the request must be a JSON object"));
        }
        self.check_type(res, &body)?;
        let body_name = meta_str(&body, "name").unwrap_or_default();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && let Some(n) = meta_str(&body, "namespace")
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let k = key(res, ns, name);
        let old = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        match meta_str(&body, "resourceVersion") {
            None => {
                return Err(ApiError::invalid(
                    &res.kind,
                    name,
                    &res.group,
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            Some(rv) if Some(rv) != meta_str(&old, "resourceVersion") => {
                return Err(ApiError::modified(&res.group, &res.plural, name));
            }
            Some(_) => {}
        }
        self.write(res, k, old, body, status, manager.map(|m| (m, "Update")))
    }

    #[allow(clippy::too_many_arguments)] // mirrors the request: target, type, body, subresource, manager
    pub(crate) fn patch(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        status: bool,
        field_manager: Option<&str>,
    ) -> Result<(Value, bool), ApiError> {
        if ptype == PatchType::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if ptype == PatchType::Strategic && res.custom {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) if ptype == PatchType::Apply => {
                let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request(e.to_string()))?;
                serde_saphyr::from_str(text).map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            }
            Err(e) => return Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
        };
        if ptype == PatchType::Apply {
            if !parsed.is_object() {
                return Err(ApiError::bad_request("apply patch must be an object"));
            }
            for f in ["apiVersion", "kind"] {
                if parsed.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(format!(
                        "error decoding YAML: Object '{f}' is missing"
                    )));
                }
            }
            self.check_type(res, &parsed)?;
            if let Some(n) = meta_str(&parsed, "name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
        let k = key(res, ns, name);
        let Some(old) = self.objects.get(&k).cloned() else {
            if ptype == PatchType::Apply && !status {
                let mut obj = parsed;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                return self.create(res, ns, obj, false).map(|o| (o, true));
            }
            return Err(ApiError::not_found(&res.group, &res.plural, name));
        };
        let mut new = old.clone();
        match ptype {
            PatchType::Json => {
                let ops: json_patch::Patch = serde_json::from_value(parsed)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                for op in ops.0 {
                    // Like the server's json-patch library: testing a missing path for null passes.
                    if let json_patch::PatchOperation::Test(t) = &op
                        && t.value.is_null()
                        && new.pointer(t.path.as_str()).is_none()
                    {
                        continue;
                    }
                    json_patch::patch(&mut new, std::slice::from_ref(&op))
                        .map_err(|e| ApiError::invalid(&res.kind, name, &res.group, e))?;
                }
            }
            _ => {
                if !parsed.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                json_patch::merge(&mut new, &parsed);
            }
        }
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::modified(&res.group, &res.plural, name));
        }
        let operation = if ptype == PatchType::Apply { "Apply" } else { "Update" };
        self.write(res, k, old, new, status, field_manager.map(|m| (m, operation)))
            .map(|o| (o, false))
    }

    /// The common tail of PUT and PATCH. `manager`: (field manager, operation) to record in
    /// managedFields with the fields this write changed.
    pub(crate) fn write(
        &mut self,
        res: &ResourceInfo,
        k: Key,
        old: Value,
        mut new: Value,
        status: bool,
        manager: Option<(&str, &str)>,
    ) -> Result<Value, ApiError> {
        let name = k.3.clone();
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        self.check_type(res, &new)?;
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(ApiError::invalid(
                &res.kind,
                &name,
                &res.group,
                "metadata.name: Invalid value: field is immutable",
            ));
        }
        if status {
            let mut merged = old.clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new = merged;
        } else if res.status_subresource {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let meta = meta_mut(&mut new);
        for f in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(f) {
                Some(v) => {
                    meta.insert(f.into(), v.clone());
                }
                None => {
                    meta.remove(f);
                }
            }
        }
        meta.remove("managedFields");
        meta.remove("selfLink");
        let managed = managed_fields(&old, &new, status, manager);
        if let Some(m) = managed {
            meta_mut(&mut new).insert("managedFields".into(), m);
        }
        if meta_str(&old, "deletionTimestamp").is_some() {
            let before = finalizers(&old);
            let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &res.kind,
                    &name,
                    &res.group,
                    format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                ));
            }
        }
        normalize_meta(&mut new);
        self.validate_meta(res, &new, &name)?;
        self.apply_schema(res, &mut new, &name)?;
        if !status {
            immutable_fields(res, &old, &new, &name)?;
        }
        if !status && spec_part(&new) != spec_part(&old) {
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if without_rv(&new) == without_rv(&old) {
            return Ok(with_version(&old, res));
        }
        let stored = self.commit(k.clone(), new, "MODIFIED");
        if meta_str(&stored, "deletionTimestamp").is_some()
            && finalizers(&stored).is_empty()
            && !self.grace_pending.contains(&uid_of(&stored))
        {
            self.remove_real(&k, true);
        }
        Ok(with_version(&stored, res))
    }

    pub(crate) fn delete(
        &mut self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let k = key(res, ns, name);
        let old = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&res.group, &res.plural, name))?;
        let uid = uid_of(&old);
        if let Some(p) = &opts.uid
            && *p != uid
        {
            return Err(ApiError::conflict(
                &res.group,
                &res.plural,
                name,
                &format!("Precondition failed: UID in precondition: {p}, UID in object meta: {uid}"),
            ));
        }
        let rv = meta_str(&old, "resourceVersion").unwrap_or_default();
        if let Some(p) = &opts.rv
            && p != rv
        {
            return Err(ApiError::conflict(
                &res.group,
                &res.plural,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {p}, ResourceVersion in object meta: {rv}"
                ),
            ));
        }
        let is_pod = res.group.is_empty() && res.plural == "pods";
        if meta_str(&old, "deletionTimestamp").is_some() {
            // Already terminating; a zero grace period force-deletes a terminating pod.
            if is_pod && opts.grace == Some(0) && self.grace_pending.remove(&uid) && finalizers(&old).is_empty() {
                self.remove_real(&k, !opts.orphan);
            }
            return Ok(with_version(&old, res));
        }
        let delay = if is_pod && opts.grace != Some(0) {
            self.pod_termination
        } else {
            Duration::ZERO
        };
        if !finalizers(&old).is_empty() || !delay.is_zero() {
            let mut new = old.clone();
            let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
            let meta = meta_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(now()));
            meta.insert(
                "deletionGracePeriodSeconds".into(),
                json!(opts.grace.unwrap_or(if is_pod { 30 } else { 0 })),
            );
            meta.insert("generation".into(), json!(g + 1));
            if !delay.is_zero() {
                self.grace_pending.insert(uid.clone());
                self.timers.push(Timer {
                    after: delay,
                    action: TimerAction::RemovePod { key: k.clone(), uid },
                });
            }
            let stored = self.commit(k, new, "MODIFIED");
            return Ok(with_version(&stored, res));
        }
        let removed = self.remove_real(&k, !opts.orphan).unwrap_or(old);
        Ok(with_version(&removed, res))
    }

    pub(crate) fn fire(&mut self, action: TimerAction) {
        match action {
            TimerAction::RemovePod { key, uid } => {
                if !self.grace_pending.remove(&uid) {
                    return;
                }
                if let Some(o) = self.objects.get(&key)
                    && uid_of(o) == uid
                    && finalizers(o).is_empty()
                {
                    self.remove_real(&key, true);
                }
            }
            TimerAction::KubeletStart { key, uid } => self.kubelet_start(&key, &uid),
            TimerAction::KubeletFinish { key, uid, outcome } => self.kubelet_finish(&key, &uid, &outcome),
            TimerAction::KubeletDeadline { key, uid } => self.kubelet_deadline(&key, &uid),
        }
    }

    pub(crate) fn record(&mut self, rec: AccessRecord) {
        self.access.push(rec);
    }

    /// The failure an injected fault gives this request (`target`: namespace/name), if any.
    pub(crate) fn injected(&mut self, access: &Access, target: &str) -> Option<(u16, String)> {
        let write = matches!(
            access.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        );
        if write && let Some((until, code)) = self.writes_fail_until {
            if std::time::Instant::now() < until {
                return Some((code, format!("injected: writes fail with {code} for a while")));
            }
            self.writes_fail_until = None;
        }
        if matches!(access.verb.as_str(), "update" | "patch")
            && let Some(seen) = self.conflict_first_writes.as_mut()
        {
            let key = format!(
                "{} {}/{}/{} {target}",
                access.verb, access.group, access.resource, access.subresource
            );
            if seen.insert(key) {
                return Some((
                    409,
                    format!(
                        "Operation cannot be fulfilled on {} {target}: injected: the object has been modified; please apply your changes to the latest version and try again",
                        access.resource
                    ),
                ));
            }
        }
        self.take_fault(access).map(|code| {
            (
                code,
                format!("injected failure for {} {}", access.verb, access.resource),
            )
        })
    }

    pub(crate) fn take_fault(&mut self, access: &Access) -> Option<u16> {
        let i = self
            .faults
            .iter()
            .position(|f| f.verb == access.verb && f.resource == access.resource)?;
        Some(self.faults.remove(i).code)
    }
}

/// The fields that differ between `old` and `new` under the roots a manager can own, as FieldsV1
/// (`{"f:spec": {"f:replicas": {}}}`).
fn changed_fields(old: &Value, new: &Value) -> Value {
    fn diff(old: Option<&Value>, new: Option<&Value>) -> Option<Value> {
        let empty = Value::Object(serde_json::Map::new());
        let (old, new) = match (old, new) {
            (None, Some(b @ Value::Object(_))) => (Some(&empty), Some(b)),
            (Some(a @ Value::Object(_)), None) => (Some(a), Some(&empty)),
            other => other,
        };
        match (old, new) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut out = serde_json::Map::new();
                for key in a.keys().chain(b.keys()) {
                    if out.contains_key(&format!("f:{key}")) {
                        continue;
                    }
                    if let Some(d) = diff(a.get(key), b.get(key)) {
                        out.insert(format!("f:{key}"), d);
                    }
                }
                (!out.is_empty()).then_some(Value::Object(out))
            }
            (a, b) if a == b => None,
            _ => Some(json!({})),
        }
    }
    let mut out = serde_json::Map::new();
    for root in ["spec", "status"] {
        if let Some(d) = diff(old.get(root), new.get(root)) {
            out.insert(format!("f:{root}"), d);
        }
    }
    for field in ["labels", "annotations"] {
        if let Some(d) = diff(
            old.pointer(&format!("/metadata/{field}")),
            new.pointer(&format!("/metadata/{field}")),
        ) {
            let meta = out.entry("f:metadata").or_insert_with(|| json!({}));
            meta[format!("f:{field}")] = d;
        }
    }
    Value::Object(out)
}

/// `old`'s managedFields plus this write's entry: the fields it changed, under its manager,
/// operation and subresource (merged into that manager's entry if it has one). Simplified: the
/// fields are not taken away from other managers.
fn managed_fields(old: &Value, new: &Value, status: bool, manager: Option<(&str, &str)>) -> Option<Value> {
    let mut entries: Vec<Value> = old
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some((name, operation)) = manager {
        let fields = changed_fields(old, new);
        if fields.as_object().is_some_and(|f| !f.is_empty()) {
            let subresource = if status { json!("status") } else { Value::Null };
            let same =
                |e: &Value| e["manager"] == name && e["operation"] == operation && e["subresource"] == subresource;
            let entry = match entries.iter().position(same) {
                Some(i) => entries.remove(i),
                None => json!({"manager": name, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": {}}),
            };
            let mut entry = entry;
            let mut merged = entry["fieldsV1"].clone();
            json_patch::merge(&mut merged, &fields);
            entry["fieldsV1"] = merged;
            entry["time"] = json!(now());
            entry["apiVersion"] = new["apiVersion"].clone();
            if status {
                entry["subresource"] = subresource;
            }
            entries.push(entry);
        }
    }
    (!entries.is_empty()).then_some(Value::Array(entries))
}

/// The update validation of built-in kinds that operators most often trip over.
fn immutable_fields(res: &ResourceInfo, old: &Value, new: &Value, name: &str) -> Result<(), ApiError> {
    let invalid = |cause: String| Err(ApiError::invalid(&res.kind, name, &res.group, cause));
    let spec = |o: &Value| o.get("spec").cloned().unwrap_or(Value::Null);
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "pods") => {
            // Only container images, activeDeadlineSeconds and added tolerations may change.
            let strip = |o: &Value| {
                let mut s = spec(o);
                for list in ["containers", "initContainers"] {
                    if let Some(Value::Array(cs)) = s.get_mut(list) {
                        for c in cs {
                            if let Some(m) = c.as_object_mut() {
                                m.remove("image");
                            }
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                }
                s
            };
            if strip(old) != strip(new) {
                return invalid(
                    "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations)".into(),
                );
            }
        }
        ("apps", "deployments") | ("apps", "statefulsets") => {
            let fields: &[&str] = if res.plural == "statefulsets" {
                &["selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"]
            } else {
                &["selector"]
            };
            for f in fields {
                if spec(old).get(*f) != spec(new).get(*f) {
                    return invalid(format!("spec.{f}: Invalid value: field is immutable"));
                }
            }
        }
        ("", "persistentvolumeclaims") => {
            let strip = |o: &Value| {
                let mut s = spec(o);
                if let Some(m) = s.as_object_mut() {
                    m.remove("resources");
                    m.remove("volumeAttributesClassName");
                }
                s
            };
            if strip(old) != strip(new) {
                return invalid("spec: Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// The object as served under `res`'s version.
pub(crate) fn with_version(obj: &Value, res: &ResourceInfo) -> Value {
    let mut o = obj.clone();
    if o.is_object() {
        o["apiVersion"] = json!(res.api_version());
    }
    o
}
