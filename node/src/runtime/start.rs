//! Starts a node: storage, identity, task engine, gRPC and HTTP listeners; stops it
//! cleanly on SIGINT or SIGTERM.
//!
//! Start-up order matters: the store is opened first, so a second process on the
//! same data dir fails before it touches anything; the listeners are bound before
//! `endpoints.json` is written, so whoever reads that file can connect.
//!
//! `run_until` reads as that order: one function per stage (storage and identity,
//! listeners, network and peer table, the node's parts, the gRPC and HTTP servers,
//! `endpoints.json`), then the wait for the stop signal and `Started::shut_down`, which
//! drains the servers before it stops raft and the network and flushes the store.

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
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{
    Certificate as TlsCertificate, Identity as TlsIdentity, Server, ServerTlsConfig,
};
use tonic_health::server::HealthReporter;

use std::collections::BTreeMap;

use crate::api::admin::AdminApi;
use crate::api::connections::CappedListener;
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
use crate::registry::{DevMember, RegistryState};
use crate::runtime::identity::Identity;
use crate::runtime::inbound;
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
    /// The addresses confirmed reachable from outside the node's network (AutoNAT
    /// dial-backs, `--external-address`), with the /p2p/ suffix; kept current
    /// while the node runs.
    #[serde(default)]
    pub reachable: Vec<String>,
    /// Circuit addresses reserved on relays, with the /p2p/ suffix.
    #[serde(default)]
    pub relayed: Vec<String>,
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

/// Runs a node until `stop` turns true. Each step below starts one stage; the order is
/// the module doc's: storage and identity, listeners, network and peer table, the
/// node's parts, the servers, `endpoints.json`, then the wait and the ordered shutdown.
pub async fn run_until(config: NodeConfig, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let opened = open_storage(&config)?;
    let metrics = Arc::new(Metrics::new());
    let executors = load_executors(&config)?;
    let capabilities: Vec<String> = executors.keys().cloned().collect();
    let listeners = Listeners::bind(&config, &opened.identity).await?;
    let (gate, token_configured) = start_gate(&config, &metrics, &stop)?;
    let network = start_network(&config, &opened, &metrics, &capabilities, &listeners).await?;
    let parts = build_parts(&config, &opened, &metrics, &network, executors, &stop).await?;
    let (requests_tx, requests_rx) = mpsc::channel(inbound::QUEUED_MAX);
    let peers_task = tokio::spawn(network.peers.clone().run(network.events, requests_tx));
    let requests_task = tokio::spawn(inbound::serve(Arc::clone(&parts.federation), requests_rx));
    let Listeners {
        grpc: grpc_listener,
        http: http_listener,
        tls,
        endpoints,
    } = listeners;
    let services = GrpcServices {
        api: Api::new(
            Arc::clone(&parts.engine),
            Arc::clone(&metrics),
            network.peers.clone(),
        ),
        admin: AdminApi::new(
            Arc::clone(&opened.registry),
            Arc::clone(&parts.faults),
            Arc::clone(&parts.workers),
            Arc::clone(&metrics),
            token_configured,
        ),
        gate,
    };
    let grpc_listener = CappedListener::new(
        grpc_listener,
        config.api.grpc_connections_max,
        Arc::clone(&metrics),
    );
    let (grpc, health_reporter) =
        grpc_server(&config, tls, grpc_listener, services, stop.clone()).await?;
    let listeners_bound = Arc::new(AtomicBool::new(false));
    let http = http_server(
        CappedListener::new(
            http_listener,
            config.api.http_connections_max,
            Arc::clone(&metrics),
        ),
        HttpState {
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&opened.store),
            listeners_bound: Arc::clone(&listeners_bound),
        },
        stop.clone(),
    );
    let p2p = (&network.net, network.p2p_addresses.as_slice());
    announce(&config, endpoints, p2p, &capabilities, stop.clone())?;
    listeners_bound.store(true, Ordering::Release);

    let started = Started {
        health_reporter,
        grpc_task: tokio::spawn(grpc),
        http_task: tokio::spawn(http),
        requests_task,
        peers_task,
    };
    let _ = stop.wait_for(|stopped| *stopped).await;
    started
        .shut_down(&parts, network.task, &opened.store, &config.data_dir)
        .await
}

/// The node's store and identity, checked against each other.
struct Opened {
    store: Arc<dyn Store>,
    /// The sled database under `store`, which the raft groups share (trees `raft/…`).
    db: sled::Db,
    identity: Identity,
    registry: Arc<RegistryState>,
}

/// Opens the store first, so a second process on the same data dir fails before it
/// touches anything; then loads the identity key and checks that the store belongs to it.
fn open_storage(config: &NodeConfig) -> anyhow::Result<Opened> {
    let data_dir = config.data_dir.as_path();
    let sled_store = SledStore::open(data_dir)?;
    let db = sled_store.db();
    let store: Arc<dyn Store> = Arc::new(sled_store);
    let identity = Identity::load_or_create(data_dir)?;
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
    let dev = DevMember {
        region: config.region.clone(),
        continent: config.continent.clone(),
        capabilities: config.capabilities.keys().cloned().collect(),
    };
    let registry = RegistryState::open(data_dir, config.genesis.as_deref(), &identity, dev)?;
    Ok(Opened {
        store,
        db,
        identity,
        registry: Arc::new(registry),
    })
}

/// One executor per configured capability, by capability name.
fn load_executors(config: &NodeConfig) -> anyhow::Result<BTreeMap<String, Executor>> {
    let mut executors = BTreeMap::new();
    for (name, spec) in &config.capabilities {
        executors.insert(name.clone(), Executor::new(ExecutorSpec::parse(spec)?));
    }
    Ok(executors)
}

/// The gRPC and HTTP listeners, bound, and the endpoints they give (without the p2p
/// addresses, which the network reports later).
struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    tls: Option<ServerTlsConfig>,
    endpoints: EndpointsFile,
}

impl Listeners {
    /// Binds both listeners (ports chosen now, so the endpoints are known) and reads
    /// the TLS config, which decides the gRPC scheme.
    async fn bind(config: &NodeConfig, identity: &Identity) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC on {}", config.grpc_addr))?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding HTTP on {}", config.http_addr))?;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let tls = tls_config(config)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints = EndpointsFile {
            peer_id: identity.peer_id(),
            public_key: identity.public_key().to_string(),
            p2p: Vec::new(),
            reachable: Vec::new(),
            relayed: Vec::new(),
            grpc: format!("{scheme}://{}", display_addr(grpc_addr)),
            http: format!("http://{}", display_addr(http_addr)),
            pid: std::process::id(),
        };
        Ok(Listeners {
            grpc,
            http,
            tls,
            endpoints,
        })
    }
}

/// How often the gate forgets clients that have gone quiet.
const GATE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The API gate (token and rate limits) and whether a token is configured; starts the
/// task that forgets idle clients until `stop`.
fn start_gate(
    config: &NodeConfig,
    metrics: &Arc<Metrics>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<(Gate, bool)> {
    let token: Option<String> = match &config.api.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let token_configured = token.is_some();
    let gate = Gate::new(
        token,
        config.api.rate_limit_per_second,
        config.api.rate_limit_burst,
        Arc::clone(metrics),
    );
    {
        let gate = gate.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(GATE_SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = every.tick() => gate.forget_idle_clients(),
                    _ = stop.changed() => return,
                }
            }
        });
    }
    Ok((gate, token_configured))
}

/// The started network and the peer table over it.
struct Network {
    net: NetHandle,
    /// The network's events, until the peer table's task takes them.
    events: mpsc::Receiver<NetEvent>,
    /// The network's event loop; aborted last but one at shutdown.
    task: JoinHandle<()>,
    p2p_addresses: Vec<Multiaddr>,
    peers: Peers,
}

/// Starts libp2p with this node's advertised info, waits for its listen addresses and
/// builds the peer table, which announces them.
async fn start_network(
    config: &NodeConfig,
    opened: &Opened,
    metrics: &Arc<Metrics>,
    capabilities: &[String],
    listeners: &Listeners,
) -> anyhow::Result<Network> {
    let identity = &opened.identity;
    let local = LocalInfo {
        capabilities: capabilities.to_vec(),
        region: config.region.clone(),
        continent: config.continent.clone(),
        grpc_endpoint: listeners.endpoints.grpc.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        registry: opened.registry.mark(),
    };
    let net_config = NetConfig {
        secret_key: identity.secret_bytes(),
        listen: parse_multiaddrs(&config.listen)?,
        bootstrap: parse_multiaddrs(&config.bootstrap)?,
        mdns: config.mdns,
        local: local.clone(),
    };
    let reach = polity_net::ReachConfig {
        external_addresses: parse_multiaddrs(&config.external_addresses)?,
        relay_server: config.relay.limits(),
        peers_max: config.discovery.peers_max,
    };
    let (net, events, task) = polity_net::start_with(net_config, reach, metrics.net.clone())?;
    let p2p_addresses = wait_for_listen_addresses(&net).await;
    let peers = Peers::new(
        net.clone(),
        Arc::clone(&opened.store),
        Arc::clone(metrics),
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
            grpc_endpoint: local.grpc_endpoint,
            version: local.version,
            issued_at_ms: 0,
            listen_addrs: p2p_addresses.iter().map(ToString::to_string).collect(),
            ..NodeInfo::default()
        },
    );
    Ok(Network {
        net,
        events,
        task,
        p2p_addresses,
        peers,
    })
}

/// The node's parts over the network: raft groups, faults, workers, the federation
/// (member side) and the task engine (entry side).
struct Parts {
    raft: Arc<RaftGroups>,
    faults: Arc<Faults>,
    workers: Arc<Workers>,
    federation: Arc<Federation>,
    engine: Arc<TaskEngine>,
}

/// Builds the parts in dependency order, applies the configured faults, starts the load
/// watcher, and marks tasks the last stop interrupted as failed.
async fn build_parts(
    config: &NodeConfig,
    opened: &Opened,
    metrics: &Arc<Metrics>,
    network: &Network,
    executors: BTreeMap<String, Executor>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Parts> {
    let identity = &opened.identity;
    let net = &network.net;
    let raft = RaftGroups::new(
        identity.signing_key().clone(),
        opened.db.clone(),
        net.clone(),
        Arc::clone(metrics),
    );
    let faults = Faults::new(identity.clone(), net.clone(), Arc::clone(metrics));
    let plan = config.faults.to_plan().map_err(anyhow::Error::msg)?;
    faults.set(plan).await.map_err(anyhow::Error::msg)?;
    let workers = Arc::new(Workers::new(config.workers.clone()));
    tokio::spawn(watch_load(
        Arc::clone(&workers),
        Arc::clone(metrics),
        stop.clone(),
    ));
    let federation = Federation::new(
        identity.clone(),
        net.clone(),
        network.peers.clone(),
        Arc::clone(metrics),
        Arc::clone(&raft),
        executors,
        config.executor.clone(),
        config.tasks.member_rounds_max,
        Arc::clone(&faults),
        Arc::clone(&workers),
        Arc::clone(&opened.registry),
    );
    tokio::spawn(sync_epochs(Arc::clone(&federation), stop.clone()));
    tokio::spawn(crate::raft::follow_registry(
        Arc::clone(&raft),
        Arc::clone(&opened.registry),
        stop.clone(),
    ));
    let engine = TaskEngine::new(
        identity.clone(),
        Arc::clone(&opened.store),
        Arc::clone(metrics),
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
    Ok(Parts {
        raft,
        faults,
        workers,
        federation,
        engine,
    })
}

/// The gRPC services before the gate wraps them.
struct GrpcServices {
    api: Api,
    admin: AdminApi,
    gate: Gate,
}

/// The gRPC server (health, reflection, federation and admin, both behind the gate),
/// ready to serve until `stop`; and the health reporter shutdown flips to not serving.
async fn grpc_server(
    config: &NodeConfig,
    tls: Option<ServerTlsConfig>,
    listener: CappedListener,
    services: GrpcServices,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    impl Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
    HealthReporter,
)> {
    let GrpcServices { api, admin, gate } = services;
    let message_bytes_max = config.api.payload_bytes_max + MESSAGE_OVERHEAD_BYTES;
    let federation = FederationServer::new(api)
        .max_decoding_message_size(message_bytes_max)
        .max_encoding_message_size(
            message_bytes_max.max(crate::api::federation::CERTIFICATE_BYTES_MAX),
        );
    let admin = AdminServer::new(admin);
    let admin_gate = gate.clone();
    let admin = InterceptedService::new(admin, move |request| admin_gate.check(request));
    let federation = InterceptedService::new(federation, move |request| gate.check(request));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<FederationServer<Api>>().await;
    // Both reflection protocols: v1, and v1alpha for the clients that speak only it
    // (Python's grpcio-reflection, older grpcurl, Evans, Postman).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(polity_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let mut builder = Server::builder()
        .concurrency_limit_per_connection(config.api.concurrency_per_connection_max)
        .timeout(Duration::from_millis(config.tasks.deadline_ms_max + 5_000));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    let grpc = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(federation)
        .add_service(admin)
        .serve_with_incoming_shutdown(listener.into_stream(), wait_until_true(stop));
    Ok((grpc, health_reporter))
}

/// The HTTP server (`/metrics`, health, ledger), ready to serve until `stop`.
fn http_server(
    listener: CappedListener,
    state: HttpState,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let http = axum::serve(listener, router(state)).with_graceful_shutdown(wait_until_true(stop));
    async move { http.await }
}

/// Writes `endpoints.json` with the p2p addresses filled in, and keeps its
/// reachable and relayed addresses current from then on. Called only once every
/// listener is bound, so whoever reads the file can connect.
fn announce(
    config: &NodeConfig,
    mut endpoints: EndpointsFile,
    (net, p2p_addresses): (&NetHandle, &[Multiaddr]),
    capabilities: &[String],
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    endpoints.p2p = p2p_addresses
        .iter()
        .map(|address| format!("{address}/p2p/{}", endpoints.peer_id))
        .collect();
    write_endpoints(&config.data_dir, &endpoints)?;
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
    let data_dir = config.data_dir.clone();
    tokio::spawn(keep_endpoints_current(
        net.clone(),
        endpoints,
        data_dir,
        stop,
    ));
    Ok(())
}

/// How often `endpoints.json` is brought up to date with the node's reachability.
const ENDPOINTS_REFRESH: Duration = Duration::from_secs(2);

/// Rewrites `endpoints.json` whenever the confirmed or relayed addresses change
/// (AutoNAT confirms one, a relay accepts a reservation), until the node stops.
async fn keep_endpoints_current(
    net: NetHandle,
    mut endpoints: EndpointsFile,
    data_dir: std::path::PathBuf,
    mut stop: watch::Receiver<bool>,
) {
    let suffix = |address: &Multiaddr| {
        let text = address.to_string();
        if text.contains("/p2p/") && !text.ends_with("/p2p-circuit") {
            text
        } else {
            format!("{text}/p2p/{}", endpoints.peer_id)
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ENDPOINTS_REFRESH) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let Ok(reach) = net.reachability().await else {
            return;
        };
        let reachable: Vec<String> = reach.confirmed.iter().map(suffix).collect();
        let relayed: Vec<String> = reach.relayed.iter().map(suffix).collect();
        if reachable == endpoints.reachable && relayed == endpoints.relayed || *stop.borrow() {
            continue;
        }
        endpoints.reachable = reachable;
        endpoints.relayed = relayed;
        if let Err(error) = write_endpoints(&data_dir, &endpoints) {
            tracing::warn!(%error, "cannot update endpoints.json");
        }
    }
}

/// The tasks serving while the node runs; [`Started::shut_down`] stops them.
struct Started {
    health_reporter: HealthReporter,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    http_task: JoinHandle<std::io::Result<()>>,
    requests_task: JoinHandle<()>,
    peers_task: JoinHandle<()>,
}

impl Started {
    /// Stops the node in order: reports not serving, drains the tasks in flight (new
    /// submissions refused; up to [`SHUTDOWN_GRACE`] to finish, the rest recorded as
    /// interrupted), lets the gRPC and HTTP servers drain for up to
    /// [`SHUTDOWN_GRACE`], then stops peer requests, the raft groups, the network and
    /// the peer table, flushes the store and removes `endpoints.json`.
    /// Raft stops after the servers because in-flight requests may still commit.
    async fn shut_down(
        self,
        parts: &Parts,
        net_task: JoinHandle<()>,
        store: &Arc<dyn Store>,
        data_dir: &Path,
    ) -> anyhow::Result<()> {
        self.health_reporter
            .set_not_serving::<FederationServer<Api>>()
            .await;
        let (finished, interrupted) = parts.engine.drain(SHUTDOWN_GRACE).await;
        tracing::info!(finished, interrupted, "tasks in flight drained");
        let grpc_task = self.grpc_task;
        let http_task = self.http_task;
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
        self.requests_task.abort();
        parts.raft.shutdown().await;
        net_task.abort();
        self.peers_task.abort();
        store.flush()?;
        let _ = std::fs::remove_file(data_dir.join(ENDPOINTS_FILE));
        tracing::info!("node stopped");
        Ok(())
    }
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

/// How often a node looks for a peer at a newer registry epoch than its own.
const EPOCH_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Catches up with registry epochs this node missed (it was down, or a push was
/// lost): peers announce their epoch in NodeInfo, and one that is ahead is asked.
async fn sync_epochs(federation: Arc<Federation>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(EPOCH_SYNC_INTERVAL);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        federation.pull_epochs().await;
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
