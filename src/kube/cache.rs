//! Watch caches: one shared reflector per kind and watched namespace, read through one `Cache`
//! per kind, with subscriptions that trigger reconciles. One watch per kind and namespace serves
//! every reader, so a reconcile never lists anything.
use std::sync::Arc;

use futures::StreamExt;
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
}

impl<K: reflector::Lookup + Clone + 'static> Clone for Cache<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Cache {
            stores: self.stores.clone(),
            listed: self.listed.clone(),
        }
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

    /// The store of the `index`-th watched namespace (a kube Controller reads one store).
    pub fn store(&self, index: usize) -> Option<Store<K>> {
        self.stores.get(index).cloned()
    }
}

/// Every change of one kind (deletions included), as a stream a controller can watch.
pub type Changes<K> = futures::channel::mpsc::UnboundedReceiver<K>;

/// Change streams by watched namespace, then by subscriber (taken as they are wired up).
pub type Subscriptions<K> = Vec<Vec<Option<Changes<K>>>>;

/// A kind's caches plus `subscribers` change streams per watched namespace; the reflectors run
/// as tasks pushed onto `tasks`. A change reaches every subscriber after the cache has it.
pub fn feed<K>(
    make_api: impl Fn(Option<&str>) -> Api<K>,
    scope: &Scope,
    subscribers: usize,
    trim: fn(&mut K),
    tasks: &mut Vec<JoinHandle<()>>,
) -> (Cache<K>, Subscriptions<K>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default + Send + Sync,
{
    let mut stores = Vec::new();
    let mut listed = Vec::new();
    let mut subs = Vec::new();
    for ns in scope.parts() {
        let (store, writer) = reflector::store();
        let (lists, listed_rx) = watch::channel(false);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..subscribers)
            .map(|_| futures::channel::mpsc::unbounded::<K>())
            .unzip();
        let events = watcher(make_api(ns.as_deref()), watcher::Config::default()).modify(trim);
        let reader = store.clone();
        // The store as it was when a re-list began: what is missing from the list was deleted
        // while no watch ran, and no Delete event will say so.
        let mut before: Option<Vec<Arc<K>>> = None;
        let stream = reflector::reflector(writer, events)
            .default_backoff()
            .map(move |event| match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o)) => Ok(vec![o]),
                Ok(watcher::Event::Init) => {
                    before = Some(reader.state());
                    Ok(Vec::new())
                }
                Ok(watcher::Event::InitDone) => {
                    // The reflector has applied the list to the store before it yields InitDone.
                    lists.send_if_modified(|l| !std::mem::replace(l, true));
                    let vanished = before
                        .take()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|o| reader.get(&ObjectRef::from_obj(&**o)).is_none())
                        .map(|o| (*o).clone())
                        .collect();
                    Ok(vanished)
                }
                Err(e) => Err(e),
            })
            .for_each(move |change| {
                match change {
                    Ok(objects) => {
                        for obj in objects {
                            for tx in &senders {
                                // A stopped controller no longer listens; the others still do.
                                let _ = tx.unbounded_send(obj.clone());
                            }
                        }
                    }
                    // The watcher retries with backoff; say so, or a stuck cache is invisible.
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&Default::default()), error = %e, "watch failed; retrying")
                    }
                }
                futures::future::ready(())
            });
        tasks.push(tokio::spawn(stream));
        stores.push(store);
        listed.push(listed_rx);
        subs.push(receivers.into_iter().map(Some).collect());
    }
    (Cache { stores, listed }, subs)
}

/// Drops what the caches never read: managedFields (often the largest part of an object).
pub fn trim_managed_fields<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Keeps only the managedFields entries that own `spec.replicas`: the operator reads them to
/// name who scaled a held co-tenant back up.
pub fn trim_to_replica_managers<K: kube::Resource>(obj: &mut K) {
    if let Some(fields) = obj.meta_mut().managed_fields.as_mut() {
        fields.retain(super::observe::sets_spec_replicas);
    }
}
