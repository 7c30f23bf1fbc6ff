//! Logs, metrics and the health endpoints.
mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

pub use metrics::{CoTenantLabels, ErrorLabels, Metrics, PhaseLabels, Source};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Colours only on a terminal: a log redirected to a file or read through `kubectl logs` gets no
/// escape codes.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Sets up `tracing` (RUST_LOG filters; default info).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// For the CLI commands whose progress already goes to stderr as plain lines: logs appear only
/// when RUST_LOG asks for them. `try_init` leaves an installed subscriber alone.
pub fn init_logging_on_request() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// What `/readyz` reports: ready once the caches are synced. With leader election a standby
/// that sees another replica lead is ready too; a replica that has just stopped leading is not,
/// until it sees who leads now (`vidi-operator run` sets it).
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Endpoints {
    health: Health,
    metrics: Metrics,
    refresh: Arc<dyn Fn() + Send + Sync>,
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends. `refresh` runs
/// before each scrape (it updates gauges computed from caches).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    health: Health,
    metrics: Metrics,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(Endpoints {
            health,
            metrics,
            refresh,
        });
    axum::serve(listener, app).await
}

async fn readyz(State(e): State<Endpoints>) -> (StatusCode, &'static str) {
    if e.health.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet")
    }
}

async fn scrape(State(e): State<Endpoints>) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (e.refresh)();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        e.metrics.encode(),
    )
}
