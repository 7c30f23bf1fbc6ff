//! Fixtures shared by the controller tests that run against the API stand-in.
#![allow(dead_code)] // each test file uses a different part

use kube::CustomResourceExt;
use kube_standin::{Gvr, Standin};
use serde_json::{Value, json};
use vidi_operator::api::VidiJob;

/// The namespace the tests' jobs live in.
pub const NS: &str = "media";

/// A stand-in serving the VidiJob CRD, with these PersistentVolumeClaims in `NS`.
pub async fn standin_with_claims(claims: &[&str]) -> Standin {
    let api = Standin::start().await;
    api.register_crd(&VidiJob::crd()).expect("CRD registers");
    for claim in claims {
        api.create(
            &Gvr::pvcs(),
            NS,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}}),
        )
        .expect("claim");
    }
    api
}

/// A Deployment whose pods carry `app: name`, opted in to yielding the GPU when `opt_in`.
pub fn deployment(name: &str, ns: &str, replicas: i32, opt_in: bool) -> Value {
    let mut labels = json!({"app": name});
    if opt_in {
        labels["vidi.dev/yield-gpu"] = json!("true");
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": name}]}}
        }
    })
}
