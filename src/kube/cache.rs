//! Watch caches: one shared reflector per kind and watched namespace, read through one `Cache`
//! per kind, with subscriptions that trigger reconciles. One watch per kind and namespace serves
//! every reader, so a reconcile never lists anything. Each cache keeps a side index (keys chosen
//! per kind: namespace, labels, holders, pools) updated from the same stream before any
//! subscriber hears of a change, so readers look objects up instead of scanning the cache.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The namespaces watched: all of them, or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespaces(Vec<String>),
}

impl Scope {
    fn parts(&self) -> Vec<Option<String>> {
        match self {
            Scope::All => vec![None],
            Scope::Namespaces(list) => list.iter().cloned().map(Some).collect(),
        }
    }

    /// Whether objects of `namespace` are watched.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespaces(list) => list.iter().any(|n| n == namespace),
        }
    }
}

/// One kind's cache over every watched namespace.
pub struct Cache<K: reflector::Lookup + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores: Vec<Store<K>>,
    /// One flag per store, set once its reflector has applied the first list. A watch channel
    /// wakes every waiter (`Store::wait_until_ready` keeps a single waker, which the next poller
    /// overwrites: a waiter could then sleep until its timeout).
    listed: Vec<watch::Receiver<bool>>,
    index: Arc<Index<K>>,
    /// Bumped after every change a store applied, and after every watch error: what
    /// [`Cache::seen`] waits on.
    applied: Arc<watch::Sender<u64>>,
    /// One flag per store: its watch's latest news was an error (it is retrying with backoff).
    /// Cleared by the next change it delivers.
    failing: Vec<Arc<AtomicBool>>,
}

impl<K: reflector::Lookup + Clone + 'static> Clone for Cache<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Cache {
            stores: self.stores.clone(),
            listed: self.listed.clone(),
            index: self.index.clone(),
            applied: self.applied.clone(),
            failing: self.failing.clone(),
        }
    }
}

/// The keys an object is indexed under.
pub type Keys<K> = fn(&K) -> Vec<String>;

/// Objects by key, kept from the watch stream. Keys are strings such as `ns:media` or
/// `label:media/app=cosyvoice` (see `observe` for each kind's keys).
pub struct Index<K: reflector::Lookup + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    keys: Keys<K>,
    maps: RwLock<IndexMaps<K>>,
}

struct IndexMaps<K: reflector::Lookup + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// One `Arc` per object and per key string, shared by both maps: at 10,000 jobs the index
    /// holds some 100,000 memberships.
    by_object: HashMap<Arc<ObjectRef<K>>, Vec<Arc<str>>>,
    by_key: HashMap<Arc<str>, HashSet<Arc<ObjectRef<K>>>>,
}

impl<K> Index<K>
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn new(keys: Keys<K>) -> Self {
        Index {
            keys,
            maps: RwLock::new(IndexMaps {
                by_object: HashMap::new(),
                by_key: HashMap::new(),
            }),
        }
    }

    fn put(maps: &mut IndexMaps<K>, mut r: ObjectRef<K>, keys: Vec<String>) {
        Self::take(maps, &r);
        // The uid and resourceVersion play no part in lookups (nor in an ObjectRef's equality).
        r.extra = Default::default();
        let r = Arc::new(r);
        let mut shared = Vec::with_capacity(keys.len());
        for k in keys {
            let key: Arc<str> = match maps.by_key.get_key_value(k.as_str()) {
                Some((existing, _)) => existing.clone(),
                None => Arc::from(k),
            };
            maps.by_key.entry(key.clone()).or_default().insert(r.clone());
            shared.push(key);
        }
        maps.by_object.insert(r, shared);
    }

    fn take(maps: &mut IndexMaps<K>, r: &ObjectRef<K>) {
        for k in maps.by_object.remove(r).unwrap_or_default() {
            if let Some(set) = maps.by_key.get_mut(&*k) {
                set.remove(r);
                if set.is_empty() {
                    maps.by_key.remove(&*k);
                }
            }
        }
    }

    fn apply(&self, r: ObjectRef<K>, obj: &K) {
        let keys = (self.keys)(obj);
        if let Ok(mut maps) = self.maps.write() {
            Self::put(&mut maps, r, keys);
        }
    }

    fn delete(&self, r: &ObjectRef<K>) {
        if let Ok(mut maps) = self.maps.write() {
            Self::take(&mut maps, r);
        }
    }

    /// After a re-list of one store: `before` are the objects it held, `now` what it lists.
    fn relisted(&self, before: &[ObjectRef<K>], now: Vec<(ObjectRef<K>, Vec<String>)>) {
        if let Ok(mut maps) = self.maps.write() {
            for r in before {
                Self::take(&mut maps, r);
            }
            for (r, keys) in now {
                Self::put(&mut maps, r, keys);
            }
        }
    }

    /// The objects indexed under `key`.
    pub fn get(&self, key: &str) -> Vec<ObjectRef<K>> {
        self.maps
            .read()
            .map(|m| {
                m.by_key
                    .get(key)
                    .map(|s| s.iter().map(|r| (**r).clone()).collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// How many objects are indexed under `key`.
    pub fn count(&self, key: &str) -> usize {
        self.maps
            .read()
            .map(|m| m.by_key.get(key).map_or(0, HashSet::len))
            .unwrap_or(0)
    }
}

impl<K> Cache<K>
where
    K: reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// Every cached object.
    pub fn state(&self) -> Vec<Arc<K>> {
        match self.stores.as_slice() {
            [one] => one.state(),
            many => many.iter().flat_map(|s| s.state()).collect(),
        }
    }

    /// One object, wherever it is cached.
    pub fn get(&self, key: &ObjectRef<K>) -> Option<Arc<K>> {
        self.stores.iter().find_map(|s| s.get(key))
    }

    /// Every reflector has listed once.
    pub fn is_listed(&self) -> bool {
        self.listed.iter().all(|l| *l.borrow())
    }

    /// Resolves once every reflector has listed (false if one stopped first).
    pub async fn listed(&self) -> bool {
        for l in &self.listed {
            if l.clone().wait_for(|listed| *listed).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Whether a watch of this kind is failing: its latest news was an error, and no change has
    /// come through since.
    pub fn watch_failing(&self) -> bool {
        self.failing.iter().any(|f| f.load(Ordering::Relaxed))
    }

    /// Waits until the cached `key` (None once it is gone) passes `done`, for at most `within`;
    /// whether it did. A reconcile waits so for its own writes: the next plan then starts from
    /// a view that has them, rather than replanning them from a view that lags (a 409, or an
    /// Event published twice). While the kind's watch is failing nothing will come: it gives up
    /// at once (a reconcile would otherwise hold its slot for the whole wait, each time).
    pub async fn seen(
        &self,
        key: &ObjectRef<K>,
        done: impl Fn(Option<&K>) -> bool,
        within: std::time::Duration,
    ) -> bool {
        // Subscribed before the first look: a change applied in between still wakes this waiter.
        let mut applied = self.applied.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if done(self.get(key).as_deref()) {
                return true;
            }
            if self.watch_failing() {
                return false;
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The cached objects indexed under `key`.
    pub fn indexed(&self, key: &str) -> Vec<Arc<K>> {
        self.index.get(key).iter().filter_map(|r| self.get(r)).collect()
    }

    /// The side index.
    pub fn index(&self) -> &Index<K> {
        &self.index
    }

    /// The store of the `index`-th watched namespace (a kube Controller reads one store).
    pub fn store(&self, index: usize) -> Option<Store<K>> {
        self.stores.get(index).cloned()
    }
}

/// Every change of one kind (deletions included), as a stream kube-runtime's shared-stream
/// Controller API reads (`Controller::for_shared_stream`, `watches_shared_stream`): each object
/// once, behind an `Arc` shared with the cache and every subscriber, never copied per subscriber.
///
/// The feed dispatches itself rather than through the store's own `Writer::subscribe()`
/// (`ReflectHandle`), for two reasons found in kube-runtime 5.0:
/// - a shared store does not dispatch deletions (kube-rs/kube#1590), and a job must hear when a
///   co-tenant's last pod or a rival job is gone;
/// - a `ReflectHandle` whose object was deleted between dispatch and read returns `Pending`
///   without registering a waker, so the Controller never polls it again: its buffer fills and
///   the whole watch stops (the controller benchmark's pod feed froze this way, every job
///   stuck in Suspending).
pub type Changes<K> = futures::channel::mpsc::Receiver<Arc<K>>;

/// Changes a subscriber may have unread before the watch waits for it: a subscriber that stops
/// reading holds the watch back (the API server's TCP window fills) instead of growing a queue.
pub const SUBSCRIBER_BUFFER: usize = 256;

/// Change streams by watched namespace, then by subscriber (taken as they are wired up).
pub type Subscriptions<K> = Vec<Vec<Option<Changes<K>>>>;

/// A kind's caches plus `subscribers` change streams per watched namespace; the reflectors run
/// as tasks pushed onto `tasks`. One watch and one store per kind and namespace serve everyone.
/// The side index is updated before the store, and a subscriber hears of a change after both
/// have it.
pub fn feed<K>(
    make_api: impl Fn(Option<&str>) -> Api<K>,
    scope: &Scope,
    subscribers: usize,
    trim: fn(&mut K),
    keys: Keys<K>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> (Cache<K>, Subscriptions<K>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    let mut stores = Vec::new();
    let mut listed = Vec::new();
    let mut subs = Vec::new();
    let index = Arc::new(Index::new(keys));
    let applied = Arc::new(watch::channel(0u64).0);
    let mut failing = Vec::new();
    for ns in scope.parts() {
        let fails = Arc::new(AtomicBool::new(false));
        failing.push(fails.clone());
        let (store, writer) = reflector::store();
        let (lists, listed_rx) = watch::channel(false);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..subscribers)
            .map(|_| futures::channel::mpsc::channel::<Arc<K>>(SUBSCRIBER_BUFFER))
            .unzip();
        // The index follows the watch before the store does.
        let indexes = index.clone();
        let reader = store.clone();
        let mut relisting: Vec<(ObjectRef<K>, Vec<String>)> = Vec::new();
        let events = watcher(make_api(ns.as_deref()), watcher::Config::default())
            .modify(trim)
            .map(move |event| {
                match &event {
                    Ok(watcher::Event::Apply(o)) => indexes.apply(ObjectRef::from_obj(o), o),
                    Ok(watcher::Event::Delete(o)) => indexes.delete(&ObjectRef::from_obj(o)),
                    Ok(watcher::Event::Init) => relisting.clear(),
                    Ok(watcher::Event::InitApply(o)) => relisting.push((ObjectRef::from_obj(o), (indexes.keys)(o))),
                    // The store still holds what it had before the list; the reflector swaps in
                    // the list right after.
                    Ok(watcher::Event::InitDone) => {
                        let before: Vec<ObjectRef<K>> =
                            reader.state().iter().map(|o| ObjectRef::from_obj(&**o)).collect();
                        indexes.relisted(&before, std::mem::take(&mut relisting));
                    }
                    Err(_) => {}
                }
                event
            });
        let reader = store.clone();
        let bump = applied.clone();
        // The store as it was when a re-list began: what is missing from the list was deleted
        // while no watch ran, and no Delete event will say so.
        let mut before: Option<Vec<Arc<K>>> = None;
        let stream = reflector::reflector(writer, events)
            .default_backoff()
            .inspect(move |event| {
                fails.store(event.is_err(), Ordering::Relaxed);
                if matches!(
                    event,
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) | Err(_)
                ) {
                    bump.send_modify(|n| *n = n.wrapping_add(1));
                }
            })
            .map(move |event| match event {
                // The store's own Arc: the object is held once, however many subscribers read it.
                Ok(watcher::Event::Apply(o)) => Ok(vec![
                    reader.get(&ObjectRef::from_obj(&o)).unwrap_or_else(|| Arc::new(o)),
                ]),
                Ok(watcher::Event::Delete(o)) => Ok(vec![Arc::new(o)]),
                Ok(watcher::Event::InitApply(_)) => Ok(Vec::new()),
                Ok(watcher::Event::Init) => {
                    before = Some(reader.state());
                    Ok(Vec::new())
                }
                Ok(watcher::Event::InitDone) => {
                    lists.send_if_modified(|l| !std::mem::replace(l, true));
                    // Everything listed (a change may have been missed while no watch ran), then
                    // everything that vanished.
                    let mut changed = reader.state();
                    changed.extend(
                        before
                            .take()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|o| reader.get(&ObjectRef::from_obj(&**o)).is_none()),
                    );
                    Ok(changed)
                }
                Err(e) => Err(e),
            })
            .for_each(move |change| {
                let senders = senders.clone();
                async move {
                    match change {
                        Ok(objects) => {
                            for obj in objects {
                                for mut tx in senders.iter().cloned() {
                                    // A stopped controller no longer listens; the others still do.
                                    let _ = futures::SinkExt::send(&mut tx, obj.clone()).await;
                                }
                            }
                        }
                        // The watcher retries with backoff; say so, or a stuck cache is invisible.
                        Err(e) => {
                            tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying")
                        }
                    }
                }
            });
        tasks.push(tokio::spawn(stream));
        stores.push(store);
        listed.push(listed_rx);
        subs.push(receivers.into_iter().map(Some).collect());
    }
    (
        Cache {
            stores,
            listed,
            index,
            applied,
            failing,
        },
        subs,
    )
}

/// kubectl's copy of the whole object, which `kubectl apply` leaves on everything it applies.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn drop_last_applied<K: kube::Resource>(obj: &mut K) {
    if let Some(annotations) = obj.meta_mut().annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// Drops what the caches never read: managedFields (often the largest part of an object) and
/// kubectl's last-applied copy. Every write the operator makes is a patch, so nothing trimmed
/// here is ever written back.
pub fn trim_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    drop_last_applied(obj);
}

/// Keeps only the managedFields entries that own `spec.replicas`: the operator reads them to
/// name who scaled a held co-tenant back up.
pub fn trim_to_replica_managers<K: kube::Resource>(obj: &mut K) {
    if let Some(fields) = obj.meta_mut().managed_fields.as_mut() {
        fields.retain(super::observe::sets_spec_replicas);
    }
    drop_last_applied(obj);
}

/// Pods: of the spec only the node it runs on is read (containers, volumes and env are most
/// of a pod, and a cluster has many more pods than jobs).
pub fn trim_pod(pod: &mut Pod) {
    trim_managed_fields(pod);
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
}

/// Deployments: replicas, selector and marks are read, never the pod template nor the status.
pub fn trim_deployment(d: &mut Deployment) {
    trim_to_replica_managers(d);
    d.spec.template = Default::default();
    d.status = None;
}

/// StatefulSets: as Deployments, and their volume claim templates.
pub fn trim_statefulset(s: &mut StatefulSet) {
    trim_to_replica_managers(s);
    s.spec.template = Default::default();
    s.spec.volume_claim_templates = None;
    s.status = None;
}

/// Nodes: labels, capacity, allocatable and conditions are read; not the list of every image
/// the node holds (often the largest part of a Node).
pub fn trim_node(node: &mut Node) {
    trim_managed_fields(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}
