//! The operator's /metrics, scraped live while it runs jobs against the API stand-in: the
//! gauges the dashboard and alerts need (co-tenants held and for how long, the oldest waiting
//! job, jobs by phase) follow the world; and every metric name the chart's Grafana dashboard and
//! PrometheusRule use is one this scrape exports, so neither can drift from the code.
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod kube_support;
use kube_standin::{Gvr, PodOutcome};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};
use vidi_operator::telemetry::{Health, serve_on};

const WAIT: Duration = Duration::from_secs(20);
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600}"#;
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/vidi-operator");

fn job(name: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": {
        "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}, "hfCache": {"claimName": "hf-cache"}},
    }})
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `name{labels}` (exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Scrapes until `check` holds (the gauges are computed from caches that follow the world).
async fn scrape_until(addr: std::net::SocketAddr, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if check(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {what}; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every series name a scrape exposes: the samples, and for each `# TYPE` the names its samples
/// take (a family with no samples yet still counts: its TYPE line is there).
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The operator's metric names a PromQL expression (or any text) mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("vidi_operator_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_follows_holds_and_the_queue_and_has_every_name_the_chart_uses() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.kubelet().on_pod(|_| None);
    let op = Operator::start(&api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(serve_on(
        listener,
        Health::default(),
        op.metrics.clone(),
        Arc::new(|| {}),
    ));

    // Nothing yet: no hold, nobody waiting; every error kind at 0 once the controller runs.
    let idle = scrape_until(addr, "the controller's series", |t| {
        sample(t, r#"vidi_operator_reconcile_errors_total{error="Write"}"#).is_some()
    })
    .await;
    assert_eq!(sample(&idle, "vidi_operator_co_tenants_held"), Some(0.0), "{idle}");
    assert_eq!(sample(&idle, "vidi_operator_queue_oldest_seconds"), Some(0.0), "{idle}");
    assert_eq!(
        sample(&idle, r#"vidi_operator_reconcile_errors_total{error="Write"}"#),
        Some(0.0),
        "every error kind is exported from the start: {idle}"
    );

    api.create(&Gvr::vidijobs(), NS, job("first")).unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::vidijobs(), NS, "first")
                .is_some_and(|j| j["status"]["phase"] == "Running")
        },
        WAIT,
    )
    .await
    .expect("first runs");
    api.create(&Gvr::vidijobs(), NS, job("second")).unwrap();
    api.create(&Gvr::vidijobs(), NS, job("held-back")).unwrap();
    api.patch_json(&Gvr::vidijobs(), NS, "held-back", json!({"spec": {"suspend": true}}))
        .unwrap();

    let held =
        r#"vidi_operator_co_tenant_held_seconds{kind="Deployment",workload_namespace="media",workload="cosyvoice"}"#;
    // Stand-in timestamps have whole seconds: wait until the hold and the wait have lasted one.
    let text = scrape_until(addr, "a hold and a wait of a second or more", |t| {
        sample(t, held).is_some_and(|s| s >= 1.0)
            && sample(t, "vidi_operator_queue_oldest_seconds").is_some_and(|s| s >= 1.0)
            && sample(t, r#"vidi_operator_jobs{phase="Queued"}"#) == Some(1.0)
            && sample(t, r#"vidi_operator_jobs{phase="Pending"}"#) == Some(1.0)
    })
    .await;
    assert_eq!(sample(&text, "vidi_operator_co_tenants_held"), Some(1.0), "{text}");
    assert!(sample(&text, held).is_some_and(|s| s < 60.0), "{text}");
    assert_eq!(
        sample(&text, r#"vidi_operator_jobs{phase="Running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"vidi_operator_jobs{phase="Queued"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "vidi_operator_leader"),
        Some(0.0),
        "only `vidi-operator run` leads: {text}"
    );

    // The chart's dashboard and alert rules use only names this operator exports.
    let names = exported(&text);
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/files/dashboard.json")).expect("dashboard.json"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 9, "{queries:?}");
    let rules = std::fs::read_to_string(format!("{CHART}/templates/prometheusrule.yaml")).expect("rule template");
    for (what, text) in queries
        .iter()
        .map(|q| ("dashboard query", q.as_str()))
        .chain([("PrometheusRule", rules.as_str())])
    {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{what} {text:?} uses none of the operator's metrics");
        let unknown: Vec<_> = used.difference(&names).collect();
        assert!(
            unknown.is_empty(),
            "{what} {text:?} uses {unknown:?}, not in the scrape:\n{names:?}"
        );
    }
    for alert in [
        "co_tenant_held_seconds",
        "queue_oldest_seconds",
        "reconcile_errors_total",
        "leader",
    ] {
        assert!(rules.contains(&format!("vidi_operator_{alert}")), "no alert on {alert}");
    }

    // Once everything has ended: nothing held, nobody waiting.
    for (pod, name) in [("first-vidi-1", "first"), ("second-vidi-1", "second")] {
        api.wait_for(|v| v.get(&Gvr::pods(), NS, pod).is_some(), WAIT)
            .await
            .unwrap_or_else(|_| panic!("{pod} starts"));
        api.kubelet()
            .finish(NS, pod, PodOutcome::succeed().with_message(RESULT))
            .expect("finish");
        api.wait_for(
            |v| {
                v.get(&Gvr::vidijobs(), NS, name)
                    .is_some_and(|j| j["status"]["phase"] == "Succeeded")
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|_| panic!("{name} succeeds"));
    }
    // The caches follow the writes a moment later: the restore, then the job's last status.
    let text = scrape_until(addr, "both jobs done and the hold gone", |t| {
        sample(t, "vidi_operator_co_tenants_held") == Some(0.0)
            && sample(t, r#"vidi_operator_jobs{phase="Succeeded"}"#) == Some(2.0)
    })
    .await;
    assert_eq!(sample(&text, held), None, "a restored co-tenant has no series: {text}");
    assert_eq!(sample(&text, "vidi_operator_queue_oldest_seconds"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, r#"vidi_operator_jobs{phase="Succeeded"}"#),
        Some(2.0),
        "{text}"
    );

    // A stopped controller zeroes what it can no longer see.
    op.crash().await;
    let metrics_after = scrape(addr).await;
    assert_eq!(
        sample(&metrics_after, r#"vidi_operator_jobs{phase="Succeeded"}"#),
        Some(0.0)
    );
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            r#"sum(rate(vidi_operator_reconcile_errors_total{error!~"Replan"}[5m])) > 0 or vidi_operator_leader"#
        ),
        BTreeSet::from([
            "vidi_operator_reconcile_errors_total".into(),
            "vidi_operator_leader".into()
        ])
    );
}
