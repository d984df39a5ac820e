//! `polity-testnet flood`: hostile peers against one node of a running testnet, with
//! an honest probe alongside. Each hostile peer is a fresh identity (no registry
//! member), connected over libp2p like any peer, and sends, from `--concurrency`
//! loops at once, frames as large as the protocol allows on both protocols: round
//! messages for slots never assigned (the early buffer), assignments from a
//! stranger, epoch pushes that do not verify, and garbage. Meanwhile an honest
//! client submits region tasks to the target one at a time. The report: the
//! target's peak RSS (sampled from `/proc`, plus the kernel's high-water mark), what
//! the hostile requests got, and the honest tasks' p50 under flood next to idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use polity_net::{AppProtocol, LocalInfo, Multiaddr, NetConfig, NetHandle, NetMetrics, PeerId};
use polity_proto::{
    Ack, Assign, ConsensusRequest, EpochChain, EpochChange, Level, RoundEnvelope, RoundMessage,
    SignedStatement, SubmitTaskRequest, TaskRequest, TaskState, consensus_request, round_message,
    task_request,
};
use prost::Message;

use crate::cluster::{NodeRecord, TestnetState};
use crate::rpc;

/// Hostile frames are this large: a frame (4 MiB) less room for the envelope.
const FRAME_FILL_BYTES: usize = (4 << 20) - 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct FloodArgs {
    /// The detached testnet (`polity-testnet up --detach --dir DIR`).
    #[arg(long)]
    pub dir: std::path::PathBuf,
    /// The node to flood, by name (default: the first).
    #[arg(long)]
    pub target: Option<String>,
    /// Hostile identities, each its own libp2p connection.
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Requests each hostile peer keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds of flood (after 5 s of idle honest probing).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Members per honest region task.
    #[arg(long, default_value_t = 1)]
    pub replication: u32,
}

/// What the hostile requests got.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

pub async fn cli(args: FloodArgs) -> anyhow::Result<()> {
    let state = TestnetState::read(&args.dir)?
        .with_context(|| format!("no testnet in {}", args.dir.display()))?;
    let target = match &args.target {
        Some(name) => state.nodes.iter().find(|node| &node.name == name),
        None => state.nodes.first(),
    }
    .context("no such node")?
    .clone();
    let honest = Honest::new(&target, args.replication).await?;
    println!("idle: 5 s of honest region tasks at {}", target.name);
    let idle = honest.probe(Duration::from_secs(5)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_rss(target.pid, Arc::clone(&peak), Arc::clone(&stop)));
    let mut floods = Vec::new();
    let mut event_receivers = Vec::new();
    for seed in 0..args.peers {
        let (net, events) = hostile_peer(&target, seed).await?;
        event_receivers.push(events);
        for loop_index in 0..args.concurrency {
            let (net, counts, stop) = (net.clone(), Arc::clone(&counts), Arc::clone(&stop));
            let peer: PeerId = target.peer_id.parse()?;
            floods.push(tokio::spawn(flood(net, peer, loop_index, counts, stop)));
        }
    }
    println!(
        "flood: {} hostile peers x {} requests in flight, {} s, frames of {} bytes",
        args.peers, args.concurrency, args.duration, FRAME_FILL_BYTES
    );
    let under = honest.probe(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Release);
    for flood in floods {
        let _ = flood.await;
    }
    let _ = sampler.await;
    drop(event_receivers);
    report(
        &target,
        &counts,
        peak.load(Ordering::Acquire),
        &idle,
        &under,
    );
    Ok(())
}

fn report(target: &NodeRecord, counts: &Counts, peak_kib: u64, idle: &Probe, under: &Probe) {
    let get = |counter: &AtomicU64| counter.load(Ordering::Acquire);
    println!(
        "hostile: {} requests ({} MiB): {} accepted, {} refused, {} failed (reset, timeout)",
        get(&counts.sent),
        get(&counts.bytes) >> 20,
        get(&counts.accepted),
        get(&counts.refused),
        get(&counts.failed)
    );
    println!(
        "target {}: peak RSS {} MiB sampled, high-water mark {} MiB",
        target.name,
        peak_kib / 1024,
        proc_kib(target.pid, "VmHWM:") / 1024
    );
    for (label, probe) in [("idle", idle), ("under flood", under)] {
        println!(
            "honest {label}: {} decided of {} ({} failed); p50 {:.1} ms, p90 {:.1} ms",
            probe.decided,
            probe.sent,
            probe.sent - probe.decided,
            probe.percentile(0.5),
            probe.percentile(0.9)
        );
    }
}

/// A hostile peer with a fresh key, connected to `target`; its event receiver must
/// be kept alive as long as the peer floods.
async fn hostile_peer(
    target: &NodeRecord,
    seed: usize,
) -> anyhow::Result<(NetHandle, tokio::sync::mpsc::Receiver<polity_net::NetEvent>)> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    secret[0] = seed as u8;
    let bootstrap: Vec<Multiaddr> = target
        .p2p
        .iter()
        .filter_map(|address| address.parse().ok())
        .collect();
    if bootstrap.is_empty() {
        bail!("{} has no p2p address in the state file", target.name);
    }
    let config = NetConfig {
        secret_key: secret,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap,
        mdns: false,
        local: LocalInfo {
            region: "nowhere".into(),
            continent: "nowhere".into(),
            grpc_endpoint: "http://127.0.0.1:1".into(),
            version: "flood".into(),
            ..LocalInfo::default()
        },
    };
    let (net, events, _task) = polity_net::start(config, NetMetrics::default())?;
    Ok((net, events))
}

/// One hostile loop: the four kinds of frame in turn, until `stop`.
async fn flood(
    net: NetHandle,
    peer: PeerId,
    loop_index: usize,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut turn = loop_index as u64;
    while !stop.load(Ordering::Acquire) {
        turn += 1;
        let (protocol, bytes) = hostile_frame(turn);
        counts.sent.fetch_add(1, Ordering::AcqRel);
        counts.bytes.fetch_add(bytes.len() as u64, Ordering::AcqRel);
        let reply =
            tokio::time::timeout(Duration::from_secs(10), net.request(peer, protocol, bytes));
        match reply.await {
            Ok(Ok(reply)) => match Ack::decode(reply.as_slice()) {
                Ok(ack) if ack.accepted => counts.accepted.fetch_add(1, Ordering::AcqRel),
                _ => counts.refused.fetch_add(1, Ordering::AcqRel),
            },
            _ => {
                counts.failed.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(50)).await;
                0
            }
        };
    }
}

/// The `turn`-th hostile frame: an early round message for a fresh slot, an
/// assignment from a stranger, an epoch push that does not verify, or garbage.
fn hostile_frame(turn: u64) -> (AppProtocol, Vec<u8>) {
    let fill = vec![0x5a; FRAME_FILL_BYTES];
    let mut task_id = [0u8; 32];
    task_id[..8].copy_from_slice(&turn.to_le_bytes());
    match turn % 4 {
        0 => {
            let envelope = RoundEnvelope {
                task_id: task_id.to_vec(),
                level: Level::Region as i32,
                group: "nowhere".into(),
                message: Some(RoundMessage {
                    message: Some(round_message::Message::Statement(SignedStatement {
                        body: fill,
                        ..SignedStatement::default()
                    })),
                }),
            };
            let request = ConsensusRequest {
                request: Some(consensus_request::Request::Round(envelope)),
            };
            (AppProtocol::Consensus, request.encode_to_vec())
        }
        1 => {
            let request = TaskRequest {
                request: Some(task_request::Request::Assign(Assign {
                    task: fill,
                    ..Assign::default()
                })),
            };
            (AppProtocol::Task, request.encode_to_vec())
        }
        2 => {
            let chain = EpochChain {
                genesis: None,
                changes: vec![EpochChange {
                    proposal: fill,
                    certificate: None,
                }],
            };
            let request = TaskRequest {
                request: Some(task_request::Request::Epochs(chain)),
            };
            (AppProtocol::Task, request.encode_to_vec())
        }
        _ => (AppProtocol::Consensus, fill),
    }
}

/// Samples the target's resident memory every 100 ms into `peak` (KiB).
async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        peak.fetch_max(proc_kib(pid, "VmRSS:"), Ordering::AcqRel);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Region tasks submitted to the target one at a time.
struct Honest {
    client: polity_node::client::Client,
    region: String,
    replication: u32,
    nonce: AtomicU64,
}

/// What one probe saw.
struct Probe {
    sent: u64,
    decided: u64,
    latencies_ms: Vec<f64>,
}

impl Probe {
    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n => sorted[((n - 1) as f64 * q).round() as usize],
        }
    }
}

impl Honest {
    async fn new(target: &NodeRecord, replication: u32) -> anyhow::Result<Honest> {
        Ok(Honest {
            client: rpc::federation(&target.grpc, None).await?,
            region: target.region.clone(),
            replication,
            nonce: AtomicU64::new(getrandom::u64().context("nonce base")?),
        })
    }

    async fn probe(&self, duration: Duration) -> Probe {
        let started = Instant::now();
        let mut probe = Probe {
            sent: 0,
            decided: 0,
            latencies_ms: Vec::new(),
        };
        while started.elapsed() < duration {
            let request = SubmitTaskRequest {
                capability: "sha256".into(),
                payload: b"honest".to_vec(),
                scope: Some(polity_proto::Scope {
                    level: Level::Region as i32,
                    name: self.region.clone(),
                }),
                replication: self.replication,
                nonce: self.nonce.fetch_add(1, Ordering::AcqRel),
                wait: true,
                ..SubmitTaskRequest::default()
            };
            let sent = Instant::now();
            probe.sent += 1;
            let mut client = self.client.clone();
            let record = rpc::submit(
                &mut client,
                tonic::Request::new(request),
                Duration::from_secs(15),
            );
            if let Ok(record) = record.await
                && record.state == TaskState::Decided as i32
            {
                probe.decided += 1;
                probe
                    .latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        probe
    }
}
