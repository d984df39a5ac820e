//! `polity-testnet up | status | down`: a local cluster of real node processes.
//!
//! `up` starts N nodes on 127.0.0.1 (ephemeral ports, a data dir each, node 0 as the
//! bootstrap peer of the others), shows a progress bar until every node has
//! discovered every other node's signed info, and prints a table. It then either
//! watches the nodes until Ctrl-C (reporting any that die) or, with `--detach`,
//! leaves them running and records them in `<dir>/testnet.json` for `status` and
//! `down`. A state file may also record a cluster that runs elsewhere (nodes marked
//! `remote`, e.g. the compose cluster's containers): `status`, `bench --dir` and
//! `chaos reliability --attach` then reach it over gRPC, and `down` refuses it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use polity_proto::{GetNodeInfoRequest, ListPeersRequest};
use serde::{Deserialize, Serialize};

use crate::genesis::{Founder, genesis_args, write_genesis};
use crate::process::{
    NodeProcess, NodeSpec, Starting, polity_binary, process_alive, rss_bytes, terminate,
};
use crate::rpc::{self, Token};

/// File that records a detached testnet.
pub const STATE_FILE: &str = "testnet.json";
/// Nodes in one testnet at most.
pub const NODES_MAX: usize = 500;
/// Nodes spawned at once while a testnet starts.
const START_WAVE: usize = 16;

#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Number of regions (nodes are dealt round-robin).
    #[arg(long, default_value_t = 2)]
    pub regions: usize,
    /// Number of continents (regions are dealt round-robin).
    #[arg(long, default_value_t = 1)]
    pub continents: usize,
    /// Capabilities of every node, as NAME=EXECUTOR (repeatable; default: echo,
    /// sha256, wordcount, sum builtins).
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// Where data dirs and the state file go.
    #[arg(long, default_value = "polity-testnet")]
    pub dir: PathBuf,
    /// Leave the nodes running and return (see `status` and `down`).
    #[arg(long)]
    pub detach: bool,
    /// Stop the nodes as soon as discovery converged, and print the measurements
    /// as JSON (for BENCHMARKS.md).
    #[arg(long)]
    pub measure: bool,
    /// Give up if discovery has not converged after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Extra flags for every `polity node` (repeatable), e.g. --node-arg=--stake=2.
    #[arg(long = "node-arg")]
    pub node_args: Vec<String>,
}

/// What "converged" means: every node sees every other one as a compatible peer
/// (`All`, the default), or every node of its own region (`Region`, with
/// `POLITY_TESTNET_CONVERGE=region`: it can seat every capability of its region,
/// which is what a bounded peer table promises at scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Converge {
    #[default]
    All,
    Region,
}

impl Converge {
    fn from_env() -> Converge {
        match std::env::var("POLITY_TESTNET_CONVERGE").as_deref() {
            Ok("region") => Converge::Region,
            _ => Converge::All,
        }
    }
}

/// One node of a recorded testnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub region: String,
    pub continent: String,
    pub peer_id: String,
    pub grpc: String,
    pub http: String,
    pub p2p: Vec<String>,
    /// Hex ed25519 public key (empty when the state file does not record it).
    #[serde(default)]
    pub public_key: String,
    /// Started by a supervisor (`chaos run --autoscale`) rather than by `up`.
    #[serde(default)]
    pub spawned: bool,
    /// Not a process of this machine (a container of `scripts/compose-up.sh`,
    /// another host): no pid to watch or signal. Whether it is up is asked over
    /// gRPC, and `down` leaves it to whoever runs it.
    #[serde(default)]
    pub remote: bool,
}

impl NodeRecord {
    /// Worth asking over gRPC: remote, or a local process still alive.
    pub fn maybe_alive(&self) -> bool {
        self.remote || process_alive(self.pid)
    }

    /// The local process's pid; `None` for a remote node.
    pub fn local_pid(&self) -> Option<u32> {
        (!self.remote).then_some(self.pid)
    }

    /// The pid column of `status`.
    fn pid_text(&self) -> String {
        match self.local_pid() {
            Some(pid) => pid.to_string(),
            None => "remote".to_string(),
        }
    }

    /// The local process's resident memory; `None` for a remote node.
    fn rss_bytes(&self) -> Option<u64> {
        self.local_pid().and_then(rss_bytes)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestnetState {
    pub nodes: Vec<NodeRecord>,
    /// The API token file the nodes require, when they require one: `status` then
    /// reads each node's Admin status too.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl TestnetState {
    pub fn read(dir: &Path) -> anyhow::Result<Option<TestnetState>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state file (whole, then renamed over the old one, so a reader
    /// never sees half of it).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(STATE_FILE);
        let partial = dir.join(format!("{STATE_FILE}.partial"));
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
    }
}

/// What `up --measure` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub nodes: usize,
    pub start_ms: u64,
    pub converge_ms: u64,
    pub rss_bytes_mean: u64,
    pub rss_bytes_max: u64,
}

pub fn default_capabilities() -> Vec<String> {
    ["echo", "sha256", "wordcount", "sum"]
        .iter()
        .map(|name| format!("{name}=builtin:{name}"))
        .collect()
}

/// The plan of node `index`: its name, region and continent.
pub fn placement(index: usize, regions: usize, continents: usize) -> (String, String, String) {
    let region = index % regions;
    (
        format!("node-{index}"),
        format!("region-{region}"),
        format!("continent-{}", region % continents),
    )
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        bail!("--nodes must be in 1..={NODES_MAX}");
    }
    if args.regions == 0 || args.continents == 0 || args.continents > args.regions {
        bail!("need at least one region and one continent, and no more continents than regions");
    }
    ensure_no_testnet(&args.dir)?;
    let capabilities = if args.capabilities.is_empty() {
        default_capabilities()
    } else {
        args.capabilities.clone()
    };
    let Launched {
        mut nodes,
        start_ms,
        converge_ms,
    } = launch(&args, &capabilities).await?;
    println!(
        "{} node(s) started in {:.1} s; discovery converged in {:.1} s",
        nodes.len(),
        start_ms as f64 / 1000.0,
        converge_ms as f64 / 1000.0
    );
    print_table(&nodes);
    let records: Vec<NodeRecord> = nodes.iter().map(record_of).collect();

    if args.measure {
        // Let the nodes settle to their idle footprint before reading RSS.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss: Vec<u64> = records
            .iter()
            .filter_map(|node| rss_bytes(node.pid))
            .collect();
        let measurement = Measurement {
            nodes: nodes.len(),
            start_ms,
            converge_ms,
            rss_bytes_mean: rss.iter().sum::<u64>() / rss.len().max(1) as u64,
            rss_bytes_max: rss.iter().copied().max().unwrap_or(0),
        };
        println!("{}", serde_json::to_string(&measurement)?);
        for node in nodes {
            node.stop()?;
        }
        return Ok(());
    }
    if args.detach {
        TestnetState {
            nodes: records,
            token_file: token_file(&args.node_args),
        }
        .write(&args.dir)?;
        for node in nodes {
            node.detach();
        }
        println!(
            "Detached. polity-testnet status --dir {0} | polity-testnet down --dir {0}",
            args.dir.display()
        );
        return Ok(());
    }
    TestnetState {
        nodes: records,
        token_file: token_file(&args.node_args),
    }
    .write(&args.dir)?;
    println!("Running; Ctrl-C stops every node.");
    watch_until_interrupted(&mut nodes).await;
    let _ = std::fs::remove_file(args.dir.join(STATE_FILE));
    for node in nodes {
        if let Err(error) = node.stop() {
            eprintln!("{error:#}");
        }
    }
    println!("Testnet stopped.");
    Ok(())
}

/// Refuses a dir whose recorded testnet still has a live node (its data dirs
/// would be wiped under it).
pub fn ensure_no_testnet(dir: &Path) -> anyhow::Result<()> {
    if let Some(state) = TestnetState::read(dir)?
        && state.nodes.iter().any(NodeRecord::maybe_alive)
    {
        bail!(
            "a testnet is already running in {} (polity-testnet down --dir {} first)",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A started testnet whose discovery converged.
pub struct Launched {
    pub nodes: Vec<NodeProcess>,
    pub start_ms: u64,
    pub converge_ms: u64,
}

/// Starts `args.nodes` node processes in `args.dir` (fresh data dirs) and waits until
/// every node knows every other one as a compatible peer. On failure every started
/// node is stopped.
pub async fn launch(args: &UpArgs, capabilities: &[String]) -> anyhow::Result<Launched> {
    let binary = polity_binary()?;
    std::fs::create_dir_all(&args.dir)?;
    let started = Instant::now();
    let bar = ProgressBar::new(args.nodes as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<22} [{bar:40}] {pos}/{len}").expect("valid template"),
    );
    bar.set_message("starting nodes");
    let genesis = found_federation(args, capabilities)?;
    // The first two nodes start one by one (the others bootstrap to them); the rest
    // are spawned in waves and start in parallel.
    let spec_of =
        |index: usize, seeds: &[NodeProcess]| node_spec(args, capabilities, index, seeds, &genesis);
    let mut nodes: Vec<NodeProcess> = Vec::with_capacity(args.nodes);
    for index in 0..args.nodes.min(2) {
        let spec = spec_of(index, &nodes);
        nodes.push(NodeProcess::start(&binary, spec)?);
        bar.inc(1);
    }
    let mut next = nodes.len();
    while next < args.nodes {
        let wave_end = (next + START_WAVE).min(args.nodes);
        let starting = (next..wave_end)
            .map(|index| Starting::spawn(&binary, spec_of(index, &nodes)))
            .collect::<anyhow::Result<Vec<Starting>>>()?;
        for node in starting {
            nodes.push(node.wait()?);
            bar.inc(1);
        }
        next = wave_end;
    }
    let start_ms = started.elapsed().as_millis() as u64;
    bar.finish_and_clear();

    let converged = Instant::now();
    let timeout = Duration::from_secs(args.timeout_s);
    // Compatibility is judged for a capability: the first one every node serves.
    let capability = capabilities
        .first()
        .and_then(|spec| spec.split('=').next())
        .unwrap_or("echo");
    let token = match token_file(&args.node_args) {
        Some(path) => Some(Token::read(&path)?),
        None => None,
    };
    let converge = Converge::from_env();
    let waited = wait_for_discovery(&nodes, capability, token.as_ref(), timeout, converge);
    if let Err(error) = waited.await {
        for node in nodes {
            let _ = node.stop();
        }
        return Err(error);
    }
    let converge_ms = converged.elapsed().as_millis() as u64;
    Ok(Launched {
        nodes,
        start_ms,
        converge_ms,
    })
}

/// A fresh testnet's federation: old node data (identities, ledgers) goes, every
/// node gets a new key, and one genesis lists them all. Returns the genesis path.
fn found_federation(args: &UpArgs, capabilities: &[String]) -> anyhow::Result<PathBuf> {
    let founders: Vec<Founder> = (0..args.nodes)
        .map(|index| {
            let (name, region, continent) = placement(index, args.regions, args.continents);
            let data_dir = args.dir.join(&name);
            let _ = std::fs::remove_dir_all(&data_dir);
            Founder {
                data_dir,
                region,
                continent,
            }
        })
        .collect();
    write_genesis(&args.dir, &founders, capabilities)
}

/// The spec of node `index` of a fresh testnet (see [`found_federation`]),
/// bootstrapping to the first two of `seeds`.
fn node_spec(
    args: &UpArgs,
    capabilities: &[String],
    index: usize,
    seeds: &[NodeProcess],
    genesis: &Path,
) -> NodeSpec {
    let (name, region, continent) = placement(index, args.regions, args.continents);
    let data_dir = args.dir.join(&name);
    let mut extra_args = genesis_args(genesis);
    for capability in capabilities {
        extra_args.push("--capability".to_string());
        extra_args.push(capability.clone());
    }
    // Bootstrap to the first two nodes (two, so node 0 is no single point).
    for seed in seeds.iter().take(2) {
        if let Some(address) = seed.endpoints.p2p.first() {
            extra_args.push("--bootstrap".to_string());
            extra_args.push(address.clone());
        }
    }
    extra_args.extend(args.node_args.iter().cloned());
    NodeSpec {
        name,
        data_dir,
        region,
        continent,
        extra_args,
    }
}

/// The API token file named in node flags (`--api-token-file=PATH` or
/// `--api-token-file PATH`), the last one when several are given.
pub fn token_file(node_args: &[String]) -> Option<PathBuf> {
    let mut found = None;
    let mut args = node_args.iter();
    while let Some(arg) = args.next() {
        if let Some(path) = arg.strip_prefix("--api-token-file=") {
            found = Some(PathBuf::from(path));
        } else if arg == "--api-token-file" {
            found = args.next().map(PathBuf::from);
        }
    }
    found
}

/// Polls every node's ListPeers until each knows all others as compatible peers.
async fn wait_for_discovery(
    nodes: &[NodeProcess],
    capability: &str,
    token: Option<&Token>,
    timeout: Duration,
    converge: Converge,
) -> anyhow::Result<()> {
    // The views each node must hold: every other node, or every other of its region.
    let wanted: Vec<usize> = nodes
        .iter()
        .map(|node| match converge {
            Converge::All => nodes.len() - 1,
            Converge::Region => {
                let region = &node.spec.region;
                nodes.iter().filter(|n| n.spec.region == *region).count() - 1
            }
        })
        .collect();
    let expected: usize = wanted.iter().sum();
    let bar = ProgressBar::new(expected as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:<22} [{bar:40}] {pos}/{len}").expect("valid template"),
    );
    bar.set_message("discovering peers");
    let mut clients = Vec::with_capacity(nodes.len());
    for node in nodes {
        let client = rpc::federation(&node.endpoints.grpc, token.map(|t| t.value.as_str()))
            .await
            .with_context(|| format!("connecting to node {}", node.spec.name))?;
        clients.push(client);
    }
    let started = Instant::now();
    loop {
        let mut known = 0;
        for ((client, node), wanted) in clients.iter_mut().zip(nodes).zip(&wanted) {
            let region = match converge {
                Converge::All => String::new(),
                Converge::Region => node.spec.region.clone(),
            };
            // Compatible: signed info known, trust above the floor, latency measured.
            let peers = client
                .list_peers(ListPeersRequest {
                    capability: capability.to_string(),
                    compatible_only: true,
                    region,
                    ..ListPeersRequest::default()
                })
                .await
                .map(|response| response.into_inner().peers)
                .unwrap_or_default();
            known += peers
                .iter()
                .filter(|peer| peer.info.is_some())
                .count()
                .min(*wanted);
        }
        bar.set_position(known as u64);
        if known >= expected {
            bar.finish_and_clear();
            return Ok(());
        }
        if started.elapsed() > timeout {
            bar.abandon();
            bail!(
                "discovery did not converge in {timeout:?}: {known} of {expected} peer views known"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn record_of(node: &NodeProcess) -> NodeRecord {
    NodeRecord {
        name: node.spec.name.clone(),
        pid: node.endpoints.pid,
        data_dir: node.spec.data_dir.clone(),
        region: node.spec.region.clone(),
        continent: node.spec.continent.clone(),
        peer_id: node.endpoints.peer_id.clone(),
        grpc: node.endpoints.grpc.clone(),
        http: node.endpoints.http.clone(),
        p2p: node.endpoints.p2p.clone(),
        public_key: node.endpoints.public_key.clone(),
        spawned: false,
        remote: false,
    }
}

pub fn print_table(nodes: &[NodeProcess]) {
    println!(
        "{:<9} {:<54} {:<10} {:<12} {:<24} HTTP",
        "node", "peer id", "region", "continent", "gRPC"
    );
    for node in nodes {
        println!(
            "{:<9} {:<54} {:<10} {:<12} {:<24} {}",
            node.spec.name,
            node.endpoints.peer_id,
            node.spec.region,
            node.spec.continent,
            node.endpoints.grpc,
            node.endpoints.http
        );
    }
}

async fn watch_until_interrupted(nodes: &mut [NodeProcess]) {
    let mut reported = vec![false; nodes.len()];
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = every.tick() => {
                for (index, node) in nodes.iter_mut().enumerate() {
                    if let Some(status) = node.exit_status() && !reported[index] {
                        reported[index] = true;
                        eprintln!("node {} (pid {}) DIED: {status}; its log: {}",
                            node.spec.name, node.endpoints.pid, node.spec.data_dir.join("node.log").display());
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    #[arg(long, default_value = "polity-testnet")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Print one JSON document (`{"nodes": [...], "dead": N}`) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One node as `status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub name: String,
    /// The local pid, or "remote".
    pub pid: String,
    /// up, UNREACHABLE or DEAD.
    pub state: &'static str,
    /// Peers it knows with their info; `None` when it did not answer.
    pub peers: Option<usize>,
    pub rss_mib: Option<f64>,
    pub region: String,
    pub continent: String,
    /// original or spawned.
    pub origin: &'static str,
    /// From its Admin status (only with the testnet's token).
    pub worker_slots: Option<u32>,
    pub load: Option<f64>,
    pub reliability: Option<f64>,
    pub grpc: String,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let Some(state) = TestnetState::read(&args.dir.dir)? else {
        bail!("no testnet recorded in {}", args.dir.dir.display());
    };
    // A token in the state: the nodes require it, and it opens their Admin status.
    let token = match &state.token_file {
        Some(path) => Some(Token::read(path)?),
        None => None,
    };
    let mut rows = Vec::with_capacity(state.nodes.len());
    for node in &state.nodes {
        rows.push(status_row(node, token.as_ref()).await);
    }
    let dead = rows.iter().filter(|row| row.state == "DEAD").count();
    if args.json {
        let document = serde_json::json!({ "nodes": rows, "dead": dead });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!(
        "{:<9} {:<8} {:<8} {:>6} {:>9} {:<10} {:<12} {:<8} {:>5} {:>5} {:>7} gRPC",
        "node",
        "pid",
        "state",
        "peers",
        "rss MiB",
        "region",
        "continent",
        "origin",
        "slots",
        "load",
        "reliab"
    );
    let dash = || "-".to_string();
    for row in &rows {
        println!(
            "{:<9} {:<8} {:<8} {:>6} {:>9} {:<10} {:<12} {:<8} {:>5} {:>5} {:>7} {}",
            row.name,
            row.pid,
            row.state,
            row.peers.map(|n| n.to_string()).unwrap_or_else(dash),
            row.rss_mib.map(|m| format!("{m:.1}")).unwrap_or_else(dash),
            row.region,
            row.continent,
            row.origin,
            row.worker_slots.map(|n| n.to_string()).unwrap_or_else(dash),
            row.load.map(|l| format!("{l:.2}")).unwrap_or_else(dash),
            row.reliability
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(dash),
            row.grpc
        );
    }
    if dead > 0 {
        println!("{dead} node(s) are dead.");
    }
    Ok(())
}

/// Asks one node how it is (peers, and its Admin status when there is a token).
async fn status_row(node: &NodeRecord, token: Option<&Token>) -> StatusRow {
    let alive = node.maybe_alive();
    let peers = if alive {
        known_peers(&node.grpc, token).await
    } else {
        None
    };
    let admin = match (token, alive) {
        (Some(token), true) => {
            rpc::node_status_within(&node.grpc, token, Duration::from_secs(3)).await
        }
        _ => None,
    };
    let state = match (alive, peers) {
        (false, _) => "DEAD",
        (true, None) => "UNREACHABLE",
        (true, Some(_)) => "up",
    };
    StatusRow {
        name: node.name.clone(),
        pid: node.pid_text(),
        state,
        peers,
        rss_mib: node.rss_bytes().map(|b| b as f64 / 1048576.0),
        region: node.region.clone(),
        continent: node.continent.clone(),
        origin: if node.spawned { "spawned" } else { "original" },
        worker_slots: admin.as_ref().map(|s| s.worker_slots),
        load: admin.as_ref().map(|s| s.load),
        reliability: admin.as_ref().map(|s| s.reliability),
        grpc: node.grpc.clone(),
    }
}

async fn known_peers(grpc: &str, token: Option<&Token>) -> Option<usize> {
    let peers = async {
        let mut client = rpc::federation(grpc, token.map(|t| t.value.as_str()))
            .await
            .ok()?;
        client.get_node_info(GetNodeInfoRequest {}).await.ok()?;
        let peers = client
            .list_peers(ListPeersRequest::default())
            .await
            .ok()?
            .into_inner()
            .peers;
        Some(peers.iter().filter(|peer| peer.info.is_some()).count())
    };
    tokio::time::timeout(Duration::from_secs(5), peers)
        .await
        .ok()
        .flatten()
}

pub async fn down(args: DirArgs) -> anyhow::Result<()> {
    let Some(state) = TestnetState::read(&args.dir)? else {
        println!("no testnet recorded in {}", args.dir.display());
        return Ok(());
    };
    if state.nodes.iter().any(|node| node.remote) {
        bail!(
            "the cluster recorded in {} runs elsewhere (containers or other hosts): \
             stop it where it runs, e.g. scripts/compose-up.sh --down",
            args.dir.display()
        );
    }
    for node in &state.nodes {
        if process_alive(node.pid) {
            terminate(node.pid);
        }
    }
    let started = Instant::now();
    while state.nodes.iter().any(|node| process_alive(node.pid)) {
        if started.elapsed() > crate::process::STOP_GRACE {
            for node in state.nodes.iter().filter(|node| process_alive(node.pid)) {
                eprintln!("node {} ignored SIGTERM; killing it", node.name);
                crate::process::kill(node.pid);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(args.dir.join(STATE_FILE))?;
    println!("stopped {} node(s)", state.nodes.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_among_node_flags() {
        let args = |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        assert_eq!(token_file(&args(&["--stake=2"])), None);
        assert_eq!(
            token_file(&args(&["--api-token-file=/a", "--stake=2"])),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            token_file(&args(&["--api-token-file", "/a", "--api-token-file", "/b"])),
            Some(PathBuf::from("/b"))
        );
        assert_eq!(token_file(&args(&["--api-token-file"])), None);
    }
}
