//! The health and metrics endpoints answer as probes and Prometheus expect.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vidi_operator::api::Phase;
use vidi_operator::telemetry::{Health, Metrics, serve_on};

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn healthz_readyz_and_metrics() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let health = Health::default();
    let metrics = Metrics::default();
    let scrapes = Arc::new(AtomicUsize::new(0));
    let refresh = {
        let (metrics, scrapes) = (metrics.clone(), scrapes.clone());
        Arc::new(move || {
            scrapes.fetch_add(1, Ordering::SeqCst);
            metrics.set_phases([Phase::Running, Phase::Queued, Phase::Queued].into_iter());
        })
    };
    tokio::spawn(serve_on(listener, health.clone(), metrics.clone(), refresh));

    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(
        get(addr, "/readyz").await.0,
        503,
        "not ready before the caches have listed"
    );
    health.set_ready(true);
    assert_eq!(get(addr, "/readyz").await.0, 200);

    metrics.reconciles.inc();
    metrics.suspends.inc();
    let (code, body) = get(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(scrapes.load(Ordering::SeqCst), 1, "gauges are refreshed on each scrape");
    assert!(body.contains("vidi_operator_reconciles_total 1"), "{body}");
    assert!(body.contains("vidi_operator_suspends_total 1"), "{body}");
    assert!(body.contains(r#"vidi_operator_jobs{phase="Queued"} 2"#), "{body}");
    assert!(body.contains(r#"vidi_operator_jobs{phase="Running"} 1"#), "{body}");
    assert!(body.contains(r#"vidi_operator_jobs{phase="Failed"} 0"#), "{body}");
    assert!(
        body.contains("vidi_operator_co_tenant_suspended_seconds_bucket"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
}
