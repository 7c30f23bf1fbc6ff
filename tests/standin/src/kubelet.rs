//! The kubelet simulator for "job" pods (pods not owned by a Deployment/StatefulSet) and the
//! workload controller simulator for Deployments/StatefulSets.

use crate::store::{DeleteOpts, Key, State, Timer, TimerAction, key, meta_str, now, uid_of};
use crate::{Gvr, PodOutcome};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub(crate) type Decide = Arc<dyn Fn(&Value) -> Option<PodOutcome> + Send + Sync>;

pub(crate) struct KubeletState {
    pub enabled: bool,
    pub seen: HashSet<String>,
    pub planned: HashMap<String, Option<PodOutcome>>,
    pub decide: Option<Decide>,
    pub by_name: BTreeMap<(String, String), PodOutcome>,
    pub nodes: Vec<(String, BTreeMap<String, String>)>,
    /// The resourceVersion the last scan looked at (0: none yet, scan everything).
    pub synced_rv: u64,
}

impl Default for KubeletState {
    fn default() -> Self {
        Self {
            enabled: true,
            seen: HashSet::new(),
            planned: HashMap::new(),
            decide: None,
            by_name: BTreeMap::new(),
            nodes: Vec::new(),
            synced_rv: 0,
        }
    }
}

impl KubeletState {
    pub(crate) fn forget(&mut self, uid: &str) {
        self.seen.remove(uid);
        self.planned.remove(uid);
    }

    /// The node a pod with this nodeSelector (and required node affinity) lands on; None when no
    /// configured node fits.
    fn pick_node(&self, pod: &Value) -> Option<String> {
        self.fitting_nodes(pod.get("spec").unwrap_or(&Value::Null))
            .into_iter()
            .next()
    }

    /// The configured nodes a pod spec fits, in order: its nodeSelector and its required node
    /// affinity (`matchExpressions` and `matchFields` on `metadata.name`, operators In and
    /// NotIn; terms ORed). Without configured nodes, [`crate::DEFAULT_NODE`].
    pub(crate) fn fitting_nodes(&self, spec: &Value) -> Vec<String> {
        if self.nodes.is_empty() {
            return vec![crate::DEFAULT_NODE.to_string()];
        }
        let sel = spec.get("nodeSelector").and_then(Value::as_object);
        let terms = spec
            .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array);
        let requirement_holds = |r: &Value, value: Option<&str>| {
            let values: Vec<&str> = r
                .get("values")
                .and_then(Value::as_array)
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match r.get("operator").and_then(Value::as_str) {
                Some("In") => value.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        };
        self.nodes
            .iter()
            .filter(|(_, labels)| {
                sel.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str()))
            })
            .filter(|(name, labels)| {
                terms.is_none_or(|terms| {
                    terms.iter().any(|t| {
                        let exprs = t.get("matchExpressions").and_then(Value::as_array);
                        let fields = t.get("matchFields").and_then(Value::as_array);
                        exprs.into_iter().flatten().all(|r| {
                            let key = r.get("key").and_then(Value::as_str).unwrap_or_default();
                            requirement_holds(r, labels.get(key).map(String::as_str))
                        }) && fields.into_iter().flatten().all(|r| {
                            r.get("key").and_then(Value::as_str) == Some("metadata.name")
                                && requirement_holds(r, Some(name.as_str()))
                        })
                    })
                })
            })
            .map(|(n, _)| n.clone())
            .collect()
    }
}

const WORKLOAD_KINDS: &[&str] = &["Deployment", "StatefulSet", "ReplicaSet", "DaemonSet"];

/// The objects of one group/plural: a contiguous range of the store's ordered keys.
fn kind_range<'a>(
    objects: &'a BTreeMap<Key, Value>,
    group: &'a str,
    plural: &'a str,
) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
    let start: Key = (group.to_string(), plural.to_string(), String::new(), String::new());
    objects
        .range(start..)
        .take_while(move |(k, _)| k.0 == group && k.1 == plural)
}

fn workload_owned(pod: &Value) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("kind")
                    .and_then(Value::as_str)
                    .is_some_and(|k| WORKLOAD_KINDS.contains(&k))
            })
        })
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("")
}

fn terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

fn containers(pod: &Value, field: &str) -> Vec<(String, String)> {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let s = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
                    (s("name"), s("image"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn cond(t: &str, status: bool, reason: Option<&str>) -> Value {
    let mut c = json!({"type": t, "status": if status {"True"} else {"False"}, "lastTransitionTime": now()});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    c
}

/// Status of a pod whose containers all run and are ready.
pub(crate) fn running_status(pod: &Value, node: &str) -> Value {
    let started = now();
    let cs: Vec<Value> = containers(pod, "containers")
        .into_iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": true, "started": true,
                   "restartCount": 0, "containerID": format!("containerd://{}", crate::store::random_suffix(12)),
                   "state": {"running": {"startedAt": started}}})
        })
        .collect();
    let ics: Vec<Value> = containers(pod, "initContainers")
        .into_iter()
        .map(|(name, image)| {
            json!({"name": name, "image": image, "imageID": "", "ready": true, "restartCount": 0,
                   "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": started}}})
        })
        .collect();
    let mut st = json!({
        "phase": "Running",
        "hostIP": "10.0.0.1",
        "podIP": format!("10.1.{}.{}", fastrand::u8(..), fastrand::u8(1..255)),
        "startTime": started,
        "qosClass": "BestEffort",
        "conditions": [cond("PodScheduled", true, None), cond("Initialized", true, None),
                       cond("ContainersReady", true, None), cond("Ready", true, None)],
        "containerStatuses": cs,
    });
    if !ics.is_empty() {
        st["initContainerStatuses"] = json!(ics);
    }
    let _ = node;
    st
}

fn terminated(code: i32, reason: Option<&str>, message: Option<&str>) -> Value {
    let reason = reason.unwrap_or(if code == 0 { "Completed" } else { "Error" });
    let mut t = json!({"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()});
    if let Some(m) = message {
        t["message"] = json!(m);
    }
    json!({"terminated": t})
}

/// Status of a pod that has ended with `o`.
fn final_status(pod: &Value, o: &PodOutcome) -> Value {
    let pod_level = matches!(o.reason.as_deref(), Some("DeadlineExceeded" | "Evicted"));
    let mut failed_init = false;
    let ics: Vec<Value> = containers(pod, "initContainers")
        .into_iter()
        .enumerate()
        .map(|(i, (name, image))| {
            let state = if failed_init {
                json!({"waiting": {"reason": "PodInitializing"}})
            } else {
                let io = o.init.get(i).cloned().unwrap_or_default();
                failed_init = io.exit_code != 0;
                terminated(io.exit_code, io.reason.as_deref(), io.message.as_deref())
            };
            json!({"name": name, "image": image, "imageID": "", "ready": false, "restartCount": 0, "state": state})
        })
        .collect();
    let cs: Vec<Value> = containers(pod, "containers")
        .into_iter()
        .map(|(name, image)| {
            let state = if failed_init {
                json!({"waiting": {"reason": "PodInitializing"}})
            } else if pod_level {
                terminated(o.exit_code, Some("Error"), None)
            } else {
                terminated(o.exit_code, o.reason.as_deref(), o.message.as_deref())
            };
            json!({"name": name, "image": image, "imageID": "", "ready": false, "started": false,
                   "restartCount": 0, "state": state})
        })
        .collect();
    let ok = !failed_init && !pod_level && o.exit_code == 0;
    let mut st = pod.get("status").cloned().unwrap_or_else(|| json!({}));
    st["phase"] = json!(if ok { "Succeeded" } else { "Failed" });
    st["containerStatuses"] = json!(cs);
    if !ics.is_empty() {
        st["initContainerStatuses"] = json!(ics);
    }
    if st.get("startTime").is_none() {
        st["startTime"] = json!(now());
    }
    let why = if ok { "PodCompleted" } else { "PodFailed" };
    st["conditions"] = json!([
        cond("PodScheduled", true, None),
        cond("Initialized", !failed_init, None),
        cond("ContainersReady", false, Some(why)),
        cond("Ready", false, Some(why))
    ]);
    if pod_level {
        st["reason"] = json!(o.reason);
        st["message"] = json!(o.message.clone().unwrap_or_else(|| match o.reason.as_deref() {
            Some("DeadlineExceeded") => "Pod was active on the node longer than the specified deadline".into(),
            _ => "The node was low on resource.".into(),
        }));
    }
    st
}

fn pods_gvr() -> Gvr {
    Gvr::pods()
}

impl State {
    fn set_status(&mut self, k: &Key, status: Value) {
        if let Some(old) = self.objects.get(k).cloned() {
            let mut new = old.clone();
            new["status"] = status;
            if new != old {
                self.commit(k.clone(), new, "MODIFIED");
            }
        }
    }

    fn live_pod(&self, k: &Key, uid: &str) -> Option<Value> {
        self.objects
            .get(k)
            .filter(|o| uid_of(o) == uid && !terminal(o))
            .cloned()
    }

    /// Admits every job pod the kubelet has not seen yet (looking only at the pods written since
    /// the last scan, when the history still reaches back that far).
    pub(crate) fn kubelet_scan(&mut self) {
        if !self.kubelet.enabled {
            self.kubelet.synced_rv = 0;
            return;
        }
        let changed = self.written_since(self.kubelet.synced_rv).map(|events| {
            events
                .filter(|e| e.group.is_empty() && e.plural == "pods" && e.etype != "DELETED")
                .filter_map(|e| {
                    meta_str(&e.object, "name")
                        .map(|n| (e.group.clone(), e.plural.clone(), e.ns.clone(), n.to_string()))
                })
                .collect::<BTreeSet<Key>>()
        });
        self.kubelet.synced_rv = self.rv;
        let candidates: Vec<(&Key, &Value)> = match &changed {
            Some(keys) => keys.iter().filter_map(|k| self.objects.get_key_value(k)).collect(),
            None => kind_range(&self.objects, "", "pods").collect(),
        };
        let new: Vec<Key> = candidates
            .into_iter()
            .filter(|(_, o)| {
                !workload_owned(o)
                    && matches!(phase(o), "" | "Pending")
                    && o.pointer("/status/startTime").is_none()
                    && meta_str(o, "deletionTimestamp").is_none()
                    && !self.kubelet.seen.contains(&uid_of(o))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in new {
            self.kubelet_admit(&k);
        }
    }

    /// The history events after `rv`, or `None` when the history no longer reaches back that far
    /// (or `rv` is 0: never scanned), so the caller must look at everything.
    fn written_since(&self, rv: u64) -> Option<impl Iterator<Item = &crate::store::StoredEvent>> {
        if rv == 0 || rv < self.compacted_through {
            return None;
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Some(self.history.range(start..))
    }

    pub(crate) fn kubelet_admit(&mut self, k: &Key) {
        let Some(pod) = self.objects.get(k).cloned() else {
            return;
        };
        let uid = uid_of(&pod);
        if !self.kubelet.seen.insert(uid.clone()) {
            return;
        }
        let existing = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let Some(node) = existing.map(String::from).or_else(|| self.kubelet.pick_node(&pod)) else {
            let mut st = pod.get("status").cloned().unwrap_or_else(|| json!({}));
            st["phase"] = json!("Pending");
            st["conditions"] = json!([{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: node(s) didn't match Pod's node affinity/selector.",
                "lastTransitionTime": now()}]);
            self.set_status(k, st);
            return;
        };
        let outcome = self
            .kubelet
            .by_name
            .get(&(k.2.clone(), k.3.clone()))
            .cloned()
            .or_else(|| self.kubelet.decide.as_ref().and_then(|d| d(&pod)));
        let mut new = pod.clone();
        new["spec"]["nodeName"] = json!(node);
        new["status"]["phase"] = json!("Pending");
        new["status"]["conditions"] = json!([cond("PodScheduled", true, None)]);
        self.commit(k.clone(), new, "MODIFIED");
        let init_fails = outcome
            .as_ref()
            .is_some_and(|o| o.init.iter().any(|i| i.exit_code != 0));
        if init_fails {
            let o = outcome.unwrap_or_default();
            self.schedule_end(k, &uid, &pod, o);
        } else {
            self.kubelet.planned.insert(uid.clone(), outcome);
            self.timers.push(Timer {
                after: Duration::ZERO,
                action: TimerAction::KubeletStart { key: k.clone(), uid },
            });
        }
    }

    fn schedule_end(&mut self, k: &Key, uid: &str, pod: &Value, o: PodOutcome) {
        let deadline = pod
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_u64)
            .map(Duration::from_secs);
        let action = match deadline {
            Some(d) if d < o.after => (
                d,
                TimerAction::KubeletDeadline {
                    key: k.clone(),
                    uid: uid.into(),
                },
            ),
            _ => (
                o.after,
                TimerAction::KubeletFinish {
                    key: k.clone(),
                    uid: uid.into(),
                    outcome: o,
                },
            ),
        };
        self.timers.push(Timer {
            after: action.0,
            action: action.1,
        });
    }

    pub(crate) fn kubelet_start(&mut self, k: &Key, uid: &str) {
        let Some(pod) = self.live_pod(k, uid) else { return };
        if phase(&pod) != "Pending" || meta_str(&pod, "deletionTimestamp").is_some() {
            return;
        }
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.set_status(k, running_status(&pod, &node));
        match self.kubelet.planned.remove(uid).flatten() {
            Some(o) => self.schedule_end(k, uid, &pod, o),
            None => {
                if let Some(d) = pod.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_u64) {
                    self.timers.push(Timer {
                        after: Duration::from_secs(d),
                        action: TimerAction::KubeletDeadline {
                            key: k.clone(),
                            uid: uid.into(),
                        },
                    });
                }
            }
        }
    }

    pub(crate) fn kubelet_finish(&mut self, k: &Key, uid: &str, o: &PodOutcome) {
        let Some(pod) = self.live_pod(k, uid) else { return };
        self.set_status(k, final_status(&pod, o));
    }

    pub(crate) fn kubelet_deadline(&mut self, k: &Key, uid: &str) {
        let o = PodOutcome::exit(137).with_reason("DeadlineExceeded");
        self.kubelet_finish(k, uid, &o);
    }

    /// Manual finish: ends the pod now with `o`, whatever was planned.
    pub(crate) fn kubelet_finish_now(&mut self, ns: &str, name: &str, o: &PodOutcome) -> Result<(), crate::ApiError> {
        let res = self.resource(&pods_gvr()).ok_or_else(crate::ApiError::no_route)?;
        let k = key(&res, ns, name);
        let pod = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| crate::ApiError::not_found("", "pods", name))?;
        let uid = uid_of(&pod);
        self.kubelet_admit(&k);
        self.kubelet.planned.remove(&uid);
        self.kubelet_finish(&k, &uid, o);
        Ok(())
    }

    // ---- workload controller ----------------------------------------------------------------

    pub(crate) fn reconcile_workloads(&mut self) {
        if !self.workloads_enabled {
            self.workloads_synced_rv = 0;
            return;
        }
        let Some(pods_res) = self.resource(&pods_gvr()) else {
            return;
        };
        // Only workloads written since the last pass, or whose pods were: nothing else can
        // change what a pass does. Everything when the history no longer reaches back.
        let dirty = self.written_since(self.workloads_synced_rv).map(|events| {
            let mut keys = BTreeSet::new();
            for e in events {
                if e.group == "apps" && (e.plural == "deployments" || e.plural == "statefulsets") {
                    if let Some(n) = meta_str(&e.object, "name") {
                        keys.insert((e.group.clone(), e.plural.clone(), e.ns.clone(), n.to_string()));
                    }
                } else if e.group.is_empty() && e.plural == "pods" {
                    let refs = e.object.pointer("/metadata/ownerReferences").and_then(Value::as_array);
                    for r in refs.into_iter().flatten() {
                        let plural = match r.get("kind").and_then(Value::as_str) {
                            Some("Deployment") => "deployments",
                            Some("StatefulSet") => "statefulsets",
                            _ => continue,
                        };
                        if let Some(n) = r.get("name").and_then(Value::as_str) {
                            keys.insert(("apps".to_string(), plural.to_string(), e.ns.clone(), n.to_string()));
                        }
                    }
                }
            }
            keys
        });
        self.workloads_synced_rv = self.rv;
        if dirty.as_ref().is_some_and(BTreeSet::is_empty) {
            return;
        }
        for gvr in [Gvr::deployments(), Gvr::statefulsets()] {
            let Some(res) = self.resource(&gvr) else { continue };
            let keys: Vec<Key> = match &dirty {
                Some(dirty) => dirty
                    .iter()
                    .filter(|k| k.0 == res.group && k.1 == res.plural)
                    .cloned()
                    .collect(),
                None => kind_range(&self.objects, &res.group, &res.plural)
                    .map(|(k, _)| k.clone())
                    .collect(),
            };
            for k in keys {
                self.reconcile_one(&res, &pods_res, &k);
            }
        }
    }

    fn reconcile_one(&mut self, res: &crate::ResourceInfo, pods_res: &crate::ResourceInfo, k: &Key) {
        let Some(owner) = self.objects.get(k).cloned() else {
            return;
        };
        if meta_str(&owner, "deletionTimestamp").is_some() {
            return;
        }
        let sts = res.kind == "StatefulSet";
        let (ns, name, uid) = (k.2.clone(), k.3.clone(), uid_of(&owner));
        let replicas = owner
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        let mut candidates: Vec<Key> = self.dependents_of(&uid);
        let owned = |st: &State, candidates: &[Key]| -> Vec<(Key, Value)> {
            candidates
                .iter()
                .filter_map(|pk| st.objects.get(pk).map(|p| (pk, p)))
                .filter(|(pk, p)| {
                    pk.2 == ns
                        && p.pointer("/metadata/ownerReferences")
                            .and_then(Value::as_array)
                            .is_some_and(|rs| {
                                rs.iter().any(|r| {
                                    r.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                                        && r.get("controller").and_then(Value::as_bool) == Some(true)
                                })
                            })
                })
                .map(|(pk, p)| (pk.clone(), p.clone()))
                .collect()
        };
        let pods = owned(self, &candidates);
        let mut active: Vec<(Key, Value)> = pods
            .iter()
            .filter(|(_, p)| meta_str(p, "deletionTimestamp").is_none())
            .cloned()
            .collect();
        let template = owner.pointer("/spec/template").cloned().unwrap_or_else(|| json!({}));
        // Replicas spread over the nodes their template fits (fewest of this workload's pods
        // first, then the order the nodes were added), as a topology spread would.
        let fitting = self.kubelet.fitting_nodes(template.get("spec").unwrap_or(&Value::Null));
        let mut per_node: BTreeMap<String, usize> = fitting.iter().map(|n| (n.clone(), 0)).collect();
        for (_, p) in &active {
            if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str)
                && let Some(count) = per_node.get_mut(n)
            {
                *count += 1;
            }
        }
        let mut next_node = || -> String {
            let Some(node) = fitting
                .iter()
                .min_by_key(|n| per_node.get(*n).copied().unwrap_or(0))
                .cloned()
            else {
                return crate::DEFAULT_NODE.to_string();
            };
            *per_node.entry(node.clone()).or_default() += 1;
            node
        };
        let make_pod = |pod_name: Option<String>, node: String| -> Value {
            let mut meta = json!({
                "namespace": ns,
                "labels": template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
                "ownerReferences": [{"apiVersion": res.api_version(), "kind": res.kind, "name": name,
                                     "uid": uid, "controller": true, "blockOwnerDeletion": true}],
            });
            if let Some(a) = template.pointer("/metadata/annotations") {
                meta["annotations"] = a.clone();
            }
            match pod_name {
                Some(n) => meta["name"] = json!(n),
                None => meta["generateName"] = json!(format!("{name}-")),
            }
            let mut spec = template
                .get("spec")
                .cloned()
                .unwrap_or_else(|| json!({"containers": []}));
            spec["nodeName"] = json!(node);
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec});
            pod["status"] = running_status(&pod, &node);
            pod
        };
        if sts {
            for i in 0..replicas {
                let pod_name = format!("{name}-{i}");
                if !pods.iter().any(|(pk, _)| pk.3 == pod_name)
                    && let Ok(pod) = self.create(pods_res, &ns, make_pod(Some(pod_name), next_node()), true)
                {
                    candidates.push(key(pods_res, &ns, meta_str(&pod, "name").unwrap_or_default()));
                }
            }
            let ordinal = |n: &str| {
                n.rsplit_once('-')
                    .and_then(|(_, o)| o.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
            };
            active.sort_by_key(|(pk, _)| std::cmp::Reverse(ordinal(&pk.3)));
            for (pk, _) in active.iter().filter(|(pk, _)| ordinal(&pk.3) >= replicas) {
                let _ = self.delete(pods_res, &pk.2, &pk.3, &DeleteOpts::default());
            }
        } else if active.len() < replicas {
            for _ in active.len()..replicas {
                if let Ok(pod) = self.create(pods_res, &ns, make_pod(None, next_node()), true) {
                    candidates.push(key(pods_res, &ns, meta_str(&pod, "name").unwrap_or_default()));
                }
            }
        } else if active.len() > replicas {
            // As the ReplicaSet controller ranks pods: unscheduled first, then pending, then
            // running but not ready; among equals the lowest
            // controller.kubernetes.io/pod-deletion-cost goes first, then the newest.
            let rank = |p: &Value| {
                let ready = p
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true));
                if p.pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    0
                } else {
                    match p.pointer("/status/phase").and_then(Value::as_str) {
                        Some("Pending") => 1,
                        Some("Unknown") => 2,
                        _ if !ready => 3,
                        _ => 4,
                    }
                }
            };
            let cost = |p: &Value| {
                p.pointer("/metadata/annotations/controller.kubernetes.io~1pod-deletion-cost")
                    .and_then(Value::as_str)
                    .and_then(|c| c.trim().parse::<i32>().ok())
                    .unwrap_or(0)
            };
            active.sort_by(|a, b| {
                let ts = |p: &Value| meta_str(p, "creationTimestamp").unwrap_or_default().to_string();
                rank(&a.1)
                    .cmp(&rank(&b.1))
                    .then(cost(&a.1).cmp(&cost(&b.1)))
                    .then(ts(&b.1).cmp(&ts(&a.1)))
                    .then(b.0.3.cmp(&a.0.3))
            });
            let extra = active.len() - replicas;
            for (pk, _) in active.iter().take(extra) {
                let _ = self.delete(pods_res, &pk.2, &pk.3, &DeleteOpts::default());
            }
        }
        // Status from what exists now.
        let now_active: Vec<Value> = owned(self, &candidates)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| meta_str(p, "deletionTimestamp").is_none())
            .collect();
        let ready = now_active.iter().filter(|p| phase(p) == "Running").count();
        let Some(current) = self.objects.get(k).cloned() else {
            return;
        };
        let mut status = current.get("status").cloned().unwrap_or_else(|| json!({}));
        status["replicas"] = json!(now_active.len());
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(ready);
        status["updatedReplicas"] = json!(now_active.len());
        if sts {
            status["currentReplicas"] = json!(now_active.len());
        }
        status["observedGeneration"] = current.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
        let mut new = current.clone();
        new["status"] = status;
        if new != current {
            let _ = self.write(
                res,
                k.clone(),
                current,
                new,
                true,
                Some(("kube-controller-manager", "Update")),
            );
        }
    }
}
