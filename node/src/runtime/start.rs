//! Starts a node: storage, identity, task engine, gRPC and HTTP listeners; stops it
//! cleanly on SIGINT or SIGTERM.
//!
//! Start-up order matters: the store is opened first, so a second process on the
//! same data dir fails before it touches anything; the listeners are bound before
//! `endpoints.json` is written, so whoever reads that file can connect.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use polity_proto::admin_server::AdminServer;
use polity_proto::federation_server::FederationServer;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{
    Certificate as TlsCertificate, Identity as TlsIdentity, Server, ServerTlsConfig,
};

use std::collections::BTreeMap;

use crate::api::admin::AdminApi;
use crate::api::federation::{Api, Gate};
use crate::api::http::{HttpState, router};
use crate::chaos::Faults;
use crate::config::NodeConfig;
use crate::entry::TaskEngine;
use crate::member::Federation;
use crate::member::executor::{Executor, ExecutorSpec};
use crate::member::workers::Workers;
use crate::peers::{Compatibility, Peers};
use crate::raft::RaftGroups;
use crate::runtime::identity::Identity;
use crate::runtime::storage::{SledStore, Store};
use crate::telemetry::metrics::Metrics;
use polity_net::{LocalInfo, Multiaddr, NetConfig, NetEvent, NetHandle};
use polity_proto::NodeInfo;

/// The file a running node writes into its data dir with its bound addresses.
pub const ENDPOINTS_FILE: &str = "endpoints.json";
/// Headroom above the payload limit for the rest of a gRPC message.
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;
/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `endpoints.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointsFile {
    pub peer_id: String,
    pub public_key: String,
    /// libp2p listen addresses with the /p2p/<peer id> suffix, ready for --bootstrap.
    pub p2p: Vec<String>,
    /// e.g. "http://127.0.0.1:40123" (or https:// with TLS).
    pub grpc: String,
    pub http: String,
    pub pid: u32,
}

impl EndpointsFile {
    pub fn read(data_dir: &Path) -> anyhow::Result<EndpointsFile> {
        let path = data_dir.join(ENDPOINTS_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        let _ = stop_tx.send(true);
    });
    run_until(config, stop_rx).await
}

/// Runs a node until `stop` turns true.
pub async fn run_until(config: NodeConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let sled_store = SledStore::open(&data_dir)?;
    let db = sled_store.db();
    let store: Arc<dyn Store> = Arc::new(sled_store);
    let identity = Identity::load_or_create(&data_dir)?;
    match store.identity()? {
        Some(recorded) if recorded != identity.public_key() => bail!(
            "data dir {} belongs to node {recorded}, but its key file is for {}; \
             restore the original {} or use a fresh data dir",
            data_dir.display(),
            identity.public_key(),
            crate::runtime::identity::KEY_FILE
        ),
        Some(_) => {}
        None => {
            store.set_identity(&identity.public_key())?;
            store.flush()?;
        }
    }
    let metrics = Arc::new(Metrics::new());
    let mut executors = BTreeMap::new();
    for (name, spec) in &config.capabilities {
        executors.insert(name.clone(), Executor::new(ExecutorSpec::parse(spec)?));
    }
    let capabilities: Vec<String> = executors.keys().cloned().collect();

    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let tls = tls_config(&config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoints = EndpointsFile {
        peer_id: identity.peer_id(),
        public_key: identity.public_key().to_string(),
        p2p: Vec::new(),
        grpc: format!("{scheme}://{}", display_addr(grpc_addr)),
        http: format!("http://{}", display_addr(http_addr)),
        pid: std::process::id(),
    };

    let token: Option<String> = match &config.api.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let token_configured = token.is_some();
    let gate = Gate::new(
        token,
        config.api.rate_limit_per_second,
        config.api.rate_limit_burst,
        Arc::clone(&metrics),
    );
    {
        let gate = gate.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = every.tick() => gate.forget_idle_clients(),
                    _ = stop.changed() => return,
                }
            }
        });
    }
    let local = LocalInfo {
        capabilities: capabilities.clone(),
        region: config.region.clone(),
        continent: config.continent.clone(),
        stake: config.stake,
        grpc_endpoint: endpoints.grpc.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let net_config = NetConfig {
        secret_key: identity.secret_bytes(),
        listen: parse_multiaddrs(&config.listen)?,
        bootstrap: parse_multiaddrs(&config.bootstrap)?,
        mdns: config.mdns,
        local: local.clone(),
    };
    let (net, net_events, net_task) = polity_net::start(net_config, metrics.net.clone())?;
    let p2p_addresses = wait_for_listen_addresses(&net).await;
    let peers = Peers::new(
        net.clone(),
        Arc::clone(&store),
        Arc::clone(&metrics),
        Compatibility {
            overlap_min: config.discovery.capability_overlap_min,
            trust_min: config.discovery.trust_min,
            rtt_ms_max: config.discovery.rtt_ms_max,
        },
        NodeInfo {
            public_key: identity.public_key().0.to_vec(),
            peer_id: identity.peer_id(),
            capabilities: local.capabilities,
            region: local.region,
            continent: local.continent,
            stake: local.stake,
            grpc_endpoint: local.grpc_endpoint,
            version: local.version,
            issued_at_ms: 0,
            listen_addrs: p2p_addresses.iter().map(ToString::to_string).collect(),
        },
    );
    let raft = RaftGroups::new(identity.public_key(), db, net.clone(), Arc::clone(&metrics));
    let faults = Faults::new(identity.clone(), net.clone(), Arc::clone(&metrics));
    let plan = config.faults.to_plan().map_err(anyhow::Error::msg)?;
    faults.set(plan).await.map_err(anyhow::Error::msg)?;
    let workers = Arc::new(Workers::new(config.workers.clone()));
    tokio::spawn(watch_load(
        Arc::clone(&workers),
        Arc::clone(&metrics),
        stop.clone(),
    ));
    let federation = Federation::new(
        identity.clone(),
        net.clone(),
        peers.clone(),
        Arc::clone(&metrics),
        Arc::clone(&raft),
        executors,
        config.executor.clone(),
        config.tasks.member_rounds_max,
        Arc::clone(&faults),
        Arc::clone(&workers),
    );
    let engine = TaskEngine::new(
        identity.clone(),
        Arc::clone(&store),
        Arc::clone(&metrics),
        config.clone(),
        Arc::clone(&federation),
    );
    let interrupted = engine.recover_interrupted()?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "tasks interrupted by the last stop are marked failed"
        );
    }
    let (requests_tx, requests_rx) = mpsc::channel(PEER_REQUESTS_QUEUED_MAX);
    let peers_task = tokio::spawn(peers.clone().run(net_events, requests_tx));
    let requests_task = tokio::spawn(serve_peer_requests(Arc::clone(&federation), requests_rx));
    let api = Api::new(Arc::clone(&engine), Arc::clone(&metrics), peers);
    let message_bytes_max = config.api.payload_bytes_max + MESSAGE_OVERHEAD_BYTES;
    let federation = FederationServer::new(api)
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(
            message_bytes_max.max(crate::api::federation::CERTIFICATE_BYTES_MAX),
        );
    let admin = AdminServer::new(AdminApi::new(
        faults,
        workers,
        Arc::clone(&metrics),
        token_configured,
    ));
    let admin_gate = gate.clone();
    let admin = tonic::service::interceptor::InterceptedService::new(admin, move |request| {
        admin_gate.check(request)
    });
    let federation =
        tonic::service::interceptor::InterceptedService::new(federation, move |request| {
            gate.check(request)
        });
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<FederationServer<Api>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(polity_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let mut builder = Server::builder()
        .concurrency_limit_per_connection(config.api.concurrency_per_connection_max)
        .timeout(Duration::from_millis(config.tasks.deadline_ms_max + 5_000));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    let grpc_stop = stop.clone();
    let grpc = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(federation)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(grpc_listener),
            wait_until_true(grpc_stop),
        );

    let listeners_bound = Arc::new(AtomicBool::new(false));
    let http_state = HttpState {
        metrics: Arc::clone(&metrics),
        store: Arc::clone(&store),
        listeners_bound: Arc::clone(&listeners_bound),
    };
    let http_stop = stop.clone();
    let http = axum::serve(http_listener, router(http_state))
        .with_graceful_shutdown(wait_until_true(http_stop));

    endpoints.p2p = p2p_addresses
        .iter()
        .map(|address| format!("{address}/p2p/{}", endpoints.peer_id))
        .collect();
    write_endpoints(&data_dir, &endpoints)?;
    listeners_bound.store(true, Ordering::Release);
    tracing::info!(
        peer_id = %endpoints.peer_id,
        grpc = %endpoints.grpc,
        http = %endpoints.http,
        region = %config.region,
        continent = %config.continent,
        capabilities = ?capabilities,
        p2p = ?endpoints.p2p,
        "node ready"
    );

    let grpc_task = tokio::spawn(grpc);
    let http_task = tokio::spawn(async move { http.await });
    let _ = stop.wait_for(|stopped| *stopped).await;
    health_reporter
        .set_not_serving::<FederationServer<Api>>()
        .await;
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let grpc = grpc_task.await;
        let http = http_task.await;
        (grpc, http)
    })
    .await;
    match drained {
        Ok((grpc, http)) => {
            grpc.context("gRPC server task")?.context("gRPC server")?;
            http.context("HTTP server task")?.context("HTTP server")?;
        }
        Err(_) => tracing::warn!(
            "in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway"
        ),
    }
    // Dropping the last handles stops the network's event loop.
    requests_task.abort();
    raft.shutdown().await;
    net_task.abort();
    peers_task.abort();
    store.flush()?;
    let _ = std::fs::remove_file(data_dir.join(ENDPOINTS_FILE));
    tracing::info!("node stopped");
    Ok(())
}

/// How often worker slots adapt to load.
const LOAD_TICK: Duration = Duration::from_millis(500);
/// How often open failures past the recovery horizon are given up.
const RECOVERY_SWEEP_TICKS: u64 = 20;

/// Samples load, grows and shrinks worker slots, publishes them; sweeps the
/// recovery record.
async fn watch_load(workers: Arc<Workers>, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(LOAD_TICK);
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        workers.tick();
        metrics.set_workers(&workers.view());
        ticks += 1;
        if ticks.is_multiple_of(RECOVERY_SWEEP_TICKS) {
            metrics.recovery.sweep();
        }
    }
}

/// Peer requests waiting for a handler, and handled at once, at most.
const PEER_REQUESTS_QUEUED_MAX: usize = 1_024;
const PEER_REQUESTS_CONCURRENT_MAX: usize = 512;

/// Answers peers' task and consensus requests, at most
/// [`PEER_REQUESTS_CONCURRENT_MAX`] at once; the bounded queue in front pushes back.
async fn serve_peer_requests(federation: Arc<Federation>, mut requests: mpsc::Receiver<NetEvent>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(PEER_REQUESTS_CONCURRENT_MAX));
    while let Some(event) = requests.recv().await {
        let NetEvent::Request {
            peer,
            protocol,
            bytes,
            responder,
        } = event
        else {
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let federation = Arc::clone(&federation);
        tokio::spawn(async move {
            let reply = federation.handle_request(peer, protocol, bytes).await;
            responder.respond(reply);
            drop(permit);
        });
    }
}

fn parse_multiaddrs(addresses: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addresses
        .iter()
        .map(|address| {
            address
                .parse()
                .with_context(|| format!("bad multiaddr {address:?}"))
        })
        .collect()
}

/// How long start-up waits for the p2p listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// The p2p listen addresses, once the transports have bound them (ports chosen).
async fn wait_for_listen_addresses(net: &NetHandle) -> Vec<Multiaddr> {
    let started = std::time::Instant::now();
    loop {
        let addresses = net.listen_addresses().await.unwrap_or_default();
        if !addresses.is_empty() || started.elapsed() > LISTEN_WAIT {
            return addresses;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_until_true(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn display_addr(addr: SocketAddr) -> String {
    // A wildcard bind is reachable on loopback; advertise that instead of 0.0.0.0.
    if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn write_endpoints(data_dir: &Path, endpoints: &EndpointsFile) -> anyhow::Result<()> {
    let path = data_dir.join(ENDPOINTS_FILE);
    let temporary = data_dir.join(format!("{ENDPOINTS_FILE}.tmp"));
    std::fs::write(&temporary, serde_json::to_vec_pretty(endpoints)?)?;
    // Rename is atomic: a reader sees the old file or the whole new one.
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading API token file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("API token file {} is empty", path.display());
    }
    Ok(token)
}

fn tls_config(config: &NodeConfig) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let mut tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls.client_ca {
        tls = tls.client_ca_root(TlsCertificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}
