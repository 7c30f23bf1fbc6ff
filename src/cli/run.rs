//! `vidi-operator run`: the Kubernetes controller against the current kube context.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use vidi_operator::api::VidiJob;
use vidi_operator::kube::cache::Cache;
use vidi_operator::kube::{PodDefaults, Scope, Settings};
use vidi_operator::telemetry::{self, Health, LogFormat, Metrics};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Watch only these namespaces (jobs, co-tenants, pods and claims), comma-separated.
    /// Default: all namespaces.
    #[arg(long, env = "VIDI_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "VIDI_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Take a Lease before acting, so only one replica acts at a time.
    #[arg(long, env = "VIDI_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "vidi-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else the kube context's namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity for the Lease and Events (default: POD_NAME, else the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Image VidiJobs run when spec.model.image is not set.
    #[arg(long, env = "VIDI_IMAGE", default_value = "ghcr.io/vidi-dev/vidi:0.1.0")]
    vidi_image: String,
    /// Image with this binary, for the GPU gate init container.
    #[arg(
        long,
        env = "VIDI_GATE_IMAGE",
        default_value = "ghcr.io/vidi-dev/vidi-operator:0.1.0"
    )]
    gate_image: String,
    /// How long the GPU gate waits for free memory before the attempt fails.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    gate_timeout: Duration,
    /// Report what would be suspended and run; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Log format.
    #[arg(long, value_enum, env = "VIDI_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_logging(args.log_format);
    let client = Client::try_default()
        .await
        .context("no usable kube context: set KUBECONFIG or run inside a cluster")?;
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("vidi-operator-{}", std::process::id()));
    let metrics = Metrics::default();
    let health = Health::default();

    let settings = Settings {
        scope: if args.watch_namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(args.watch_namespaces.clone())
        },
        dry_run: args.dry_run,
        pods: PodDefaults {
            vidi_image: args.vidi_image.clone(),
            gate_image: args.gate_image.clone(),
            gate_timeout: args.gate_timeout,
        },
        instance: identity.clone(),
    };

    // The jobs-by-phase gauge is filled at scrape time from the controller's cache.
    let jobs_cache: Arc<std::sync::Mutex<Option<Cache<VidiJob>>>> = Arc::default();
    let refresh = {
        let metrics = metrics.clone();
        let cache = jobs_cache.clone();
        Arc::new(move || {
            if let Ok(guard) = cache.lock()
                && let Some(store) = guard.as_ref()
            {
                metrics.set_phases(store.state().iter().map(|j| j.status.clone().unwrap_or_default().phase));
            }
        })
    };
    let server = tokio::spawn(telemetry::serve(
        args.metrics_addr,
        health.clone(),
        metrics.clone(),
        refresh,
    ));
    tracing::info!(addr = %args.metrics_addr, "serving /healthz, /readyz and /metrics");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .build()
            .await
            .context("setting up leader election")?;
        let (mut leading, _task) = manager.watch().await;
        tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), "waiting to become the leader");
        // A standby replica is healthy; it becomes ready to act once it leads.
        health.set_ready(true);
        while !*leading.borrow_and_update() {
            leading.changed().await.context("leader election stopped")?;
        }
        tracing::info!("leading: starting the controller");
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            while leading.changed().await.is_ok() {
                if !*leading.borrow() {
                    tracing::error!("lost the lease: stopping so that only the new leader acts");
                    let _ = stop_tx.send(true);
                    return;
                }
            }
        });
        health.set_ready(false);
    }

    let shutdown = {
        let mut stop_rx = stop_rx.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate() => {}
                _ = stop_rx.wait_for(|s| *s) => {}
            }
        }
    };
    let result = vidi_operator::kube::run(client, settings, metrics, health, jobs_cache, shutdown).await;
    server.abort();
    result.context("controller failed")?;
    if *stop_rx.borrow() {
        anyhow::bail!("lost leadership");
    }
    Ok(())
}

async fn terminate() {
    #[cfg(unix)]
    {
        if let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            sig.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}
