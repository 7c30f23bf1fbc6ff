//! `vidi-operator run`: the Kubernetes controller against the current kube context.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use vidi_operator::api::VidiJob;
use vidi_operator::kube::cache::Cache;
use vidi_operator::kube::lease::{Leadership, LeaseSettings, Role};
use vidi_operator::kube::{Clients, PodDefaults, Scope, Settings};
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
    /// How long a Lease stays valid without renewal, in whole seconds: a standby takes over
    /// this long after it last saw the leader renew.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long after its latest successful renewal the leader keeps acting (its own clock).
    /// Shorter than --lease-duration: the leader stops before any standby can take over.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// How often the leader renews the Lease and a standby looks at it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
    /// The longest any API request other than a watch may take. Shorter than --lease-duration.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
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
    let config = kube::Config::infer()
        .await
        .context("no usable kube context: set KUBECONFIG or run inside a cluster")?;
    let watch = Client::try_from(config.clone()).context("building the kube client")?;
    // Every request but a watch is bounded, so a hung request cannot outlive the Lease.
    let mut bounded = config;
    bounded.connect_timeout = Some(args.request_timeout);
    bounded.read_timeout = Some(args.request_timeout);
    bounded.write_timeout = Some(args.request_timeout);
    // kube's client would retry 429/503/504 inside one call for minutes; the Lease loop and the
    // controller's requeues retry instead, so one call stays within the timeout.
    bounded.default_retry = false;
    let api = Client::try_from(bounded).context("building the kube client")?;
    let clients = Clients { watch, api };
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

    // The controller fills the scrape-time gauges (jobs by phase, holds, queue) from its caches.
    let jobs_cache: Arc<std::sync::Mutex<Option<Cache<VidiJob>>>> = Arc::default();
    let refresh = Arc::new(|| {});
    // Bound before anything else starts: a port already taken is an error now, not a probe that
    // fails later; and the log names the port actually bound (`--metrics-addr 127.0.0.1:0`).
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
    let addr = listener.local_addr().unwrap_or(args.metrics_addr);
    let server = tokio::spawn({
        let (health, metrics) = (health.clone(), metrics.clone());
        async move {
            if let Err(e) = telemetry::serve_on(listener, health, metrics, refresh).await {
                tracing::error!(%addr, error = %e, "cannot serve /healthz, /readyz and /metrics");
            }
        }
    });
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");

    let stop = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate() => {}
        }
    };
    tokio::pin!(stop);

    if !args.leader_election {
        // Every replica without leader election acts.
        metrics.leader.set(1);
        let result = tokio::select! {
            r = vidi_operator::kube::run(clients, settings, metrics, health, jobs_cache, std::future::pending()) => r,
            _ = &mut stop => Ok(()),
        };
        server.abort();
        return result.context("controller failed");
    }

    let lease = LeaseSettings {
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| clients.api.default_namespace().to_string()),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: args.lease_duration,
        renew_deadline: args.renew_deadline,
        retry_period: args.retry_period,
        request_timeout: args.request_timeout,
    };
    lease.check()?;
    let lease_name = format!("{}/{}", lease.namespace, lease.name);
    let leadership = Leadership::start(clients.api.clone(), lease);
    let mut role = leadership.role();
    let result = loop {
        tracing::info!(lease = %lease_name, "waiting to become the leader");
        // A standby that sees a live leader is ready (a rolling update waits for it); a replica
        // that has just stopped leading is not, until it sees who leads now.
        let leading = async {
            loop {
                let now = *role.borrow_and_update();
                health.set_ready(now == Role::Standby);
                if now == Role::Leading {
                    return true;
                }
                if role.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            led = leading => if !led { break Err(anyhow::anyhow!("leader election stopped")) },
            _ = &mut stop => break Ok(()),
        }
        tracing::info!("leading: starting the controller");
        health.set_ready(false);
        metrics.leader.set(1);
        let controller = vidi_operator::kube::run(
            clients.clone(),
            settings.clone(),
            metrics.clone(),
            health.clone(),
            jobs_cache.clone(),
            std::future::pending(),
        );
        let deposed = async {
            let _ = role.wait_for(|r| *r != Role::Leading).await;
        };
        // Dropping the controller future stops its reconciles, watches and sweep at once.
        tokio::select! {
            r = controller => break r.context("controller failed"),
            _ = deposed => {
                metrics.leader.set(0);
                health.set_ready(false);
                tracing::error!("stopped leading: the controller is stopped; acting again only after winning the Lease");
            }
            _ = &mut stop => break Ok(()),
        }
    };
    // Releases the Lease if this replica still leads, so a standby takes over at once.
    leadership.stop().await;
    server.abort();
    result
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
