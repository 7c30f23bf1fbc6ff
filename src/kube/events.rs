//! Events, through one kube `Recorder` per job.
//!
//! kube's `Recorder` folds a repeated Event into a series, and for that keeps every Event it
//! published for 6 minutes and sweeps that whole cache on every publish. One Recorder for the
//! whole controller therefore cost O(every Event of the last 6 minutes) per Event (5,000 of them
//! at 1,000 jobs: a tenth of the controller's CPU) and held them all in memory. An Event's key
//! includes the object it is about, so a Recorder per job folds exactly the same Events while
//! sweeping only that job's; it is dropped once its job has ended, and while it waits in the queue.
use std::collections::HashMap;
use std::sync::Mutex;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use crate::api::VidiJob;

pub struct Recorders {
    client: Client,
    reporter: Reporter,
    by_job: Mutex<HashMap<ObjectRef<VidiJob>, Recorder>>,
}

impl Recorders {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorders {
            client,
            reporter,
            by_job: Mutex::new(HashMap::new()),
        }
    }

    /// The recorder of `job` (created on first use; clones share its cache).
    pub fn of(&self, job: &ObjectRef<VidiJob>) -> Recorder {
        let make = || Recorder::new(self.client.clone(), self.reporter.clone());
        match self.by_job.lock() {
            Ok(mut map) => map.entry(job.clone()).or_insert_with(make).clone(),
            Err(_) => make(),
        }
    }

    /// `job` has ended (or is gone): its Events need no folding any more.
    pub fn forget(&self, job: &ObjectRef<VidiJob>) {
        if let Ok(mut map) = self.by_job.lock() {
            map.remove(job);
        }
    }
}
