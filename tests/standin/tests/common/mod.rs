#![allow(dead_code)]

use kube_standin::Standin;
use serde_json::{Value, json};
use std::time::Duration;

pub const T: Duration = Duration::from_secs(5);

pub fn vidijob_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "vidijobs.vidi.dev"},
        "spec": {
            "group": "vidi.dev",
            "names": {"plural": "vidijobs", "singular": "vidijob", "kind": "VidiJob", "shortNames": ["vj"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "subresources": {"status": {}}
            }]
        }
    })
}

pub async fn standin() -> Standin {
    let api = Standin::start().await;
    api.register_crd_json(vidijob_crd()).expect("register CRD");
    api.create_namespace("ns").expect("namespace");
    api
}

pub fn vidijob(name: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
           "metadata": {"name": name}, "spec": {"query": "a dog", "video": {"url": "http://x/v.mp4"}}})
}

pub fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "main", "image": "busybox"}]}})
}
