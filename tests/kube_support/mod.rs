//! Fixtures shared by the controller tests that run against the API stand-in.
#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use kube::CustomResourceExt;
use kube_standin::{Gvr, Standin};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use vidi_operator::api::VidiJob;
use vidi_operator::kube::{PodDefaults, Scope, Settings};
use vidi_operator::telemetry::{Health, Metrics};

/// The real controller, in-process, against a stand-in; stopped when dropped.
pub struct Operator {
    task: JoinHandle<()>,
    pub metrics: Metrics,
    pub health: Health,
}

impl Operator {
    /// Watching every namespace.
    pub fn start(api: &Standin) -> Self {
        Self::with(api, Scope::All, false)
    }

    pub fn watching(api: &Standin, scope: Scope) -> Self {
        Self::with(api, scope, false)
    }

    /// With `--dry-run`.
    pub fn dry_run(api: &Standin) -> Self {
        Self::with(api, Scope::All, true)
    }

    fn with(api: &Standin, scope: Scope, dry_run: bool) -> Self {
        if std::env::var_os("VIDI_TEST_LOG").is_some() {
            vidi_operator::telemetry::init_logging(vidi_operator::telemetry::LogFormat::Text);
        }
        let settings = Settings {
            scope,
            dry_run,
            pods: PodDefaults {
                vidi_image: "vidi:test".into(),
                gate_image: "vidi-operator:test".into(),
                gate_timeout: Duration::from_secs(60),
            },
            instance: "test".into(),
        };
        let client = api.client();
        let metrics = Metrics::default();
        let health = Health::default();
        let (theirs, their_health) = (metrics.clone(), health.clone());
        let task = tokio::spawn(async move {
            let _ = vidi_operator::kube::run(
                client,
                settings,
                theirs,
                their_health,
                Arc::default(),
                std::future::pending(),
            )
            .await;
        });
        Operator { task, metrics, health }
    }

    /// A crash: the task is gone, only what it wrote survives.
    pub async fn crash(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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
