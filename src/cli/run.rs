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
    /// How long a Lease stays valid without renewal: a standby takes over this long after the
    /// leader stopped renewing (crashed). Must be longer than --lease-grace.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long before the Lease expires the leader renews it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lease_grace: Duration,
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
    let server = tokio::spawn({
        let (addr, health, metrics) = (args.metrics_addr, health.clone(), metrics.clone());
        async move {
            if let Err(e) = telemetry::serve(addr, health, metrics, refresh).await {
                tracing::error!(%addr, error = %e, "cannot serve /healthz, /readyz and /metrics");
            }
        }
    });
    tracing::info!(addr = %args.metrics_addr, "serving /healthz, /readyz and /metrics");

    // With leader election: the lease watch, whose task releases the Lease once the receiver
    // (held by `shutdown`) is dropped.
    let mut lease = None;
    if args.leader_election {
        let (duration, grace) = (args.lease_duration.as_secs(), args.lease_grace.as_secs());
        if grace == 0 || grace >= duration {
            anyhow::bail!("--lease-grace must be at least 1s and shorter than --lease-duration ({duration}s)");
        }
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string());
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&namespace)
            .with_identity(&identity)
            .with_duration(duration)
            .with_grace(grace)
            .build()
            .await
            .context("setting up leader election")?;
        let (mut leading, task) = manager.watch().await;
        tracing::info!(lease = %format!("{namespace}/{}", args.lease_name), "waiting to become the leader");
        // A standby replica is healthy; it becomes ready to act once it leads.
        health.set_ready(true);
        tokio::select! {
            waited = leading.wait_for(|l| *l) => { waited.context("leader election stopped")?; }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate() => return Ok(()),
        }
        tracing::info!("leading: starting the controller");
        health.set_ready(false);
        lease = Some((leading, task));
    }

    let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let lost = lost.clone();
        let mut leading = lease.as_ref().map(|(leading, _)| leading.clone());
        async move {
            let lost_lease = async {
                match leading.as_mut() {
                    Some(leading) => {
                        let _ = leading.wait_for(|l| !*l).await;
                        tracing::error!("lost the lease: stopping so that only the new leader acts");
                        lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate() => {}
                _ = lost_lease => {}
            }
        }
    };
    let result = vidi_operator::kube::run(client, settings, metrics, health, jobs_cache, shutdown).await;
    server.abort();
    if let Some((leading, task)) = lease {
        // Dropping the last receiver makes the lease task release the Lease, so a standby takes
        // over at once instead of after --lease-duration.
        drop(leading);
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("could not release the lease in time; a standby takes over once it expires");
        }
    }
    result.context("controller failed")?;
    if lost.load(std::sync::atomic::Ordering::SeqCst) {
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
