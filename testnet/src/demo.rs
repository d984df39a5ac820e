//! `polity-testnet demo`: the five-minute tour, run for real.
//!
//! Starts a 9-node testnet (3 regions on 2 continents), waits until every node sees
//! every other as a compatible peer, and decides one global task on each consensus
//! path (raft, bft, stake), each entered at another node: region groups of 3,
//! continent groups of their representatives, one global group. For each it prints
//! the certificate tree with who voted what, verifies the chain offline and asks the
//! entry node to verify it too. Then the testnet stays up for gRPC queries until
//! Ctrl-C (`--exit` stops after the demo).

use std::path::PathBuf;

use anyhow::{Context, ensure};
use polity_consensus::{Anchor, verify_in};
use polity_node::client::printable;
use polity_proto::{
    ConsensusPath, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskState,
    VerifyCertificateRequest, verify_certificate_request::Source,
};

use crate::cluster::{Launched, UpArgs, launch, print_table};
use crate::genesis::GENESIS_FILE;
use crate::rpc;
use crate::show::{certificate_tree_in, level_label};

/// `demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where node data dirs go (default: a fresh temporary dir, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop after the demo instead of keeping the testnet up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

/// The demo testnet's shape.
const NODES: usize = 9;
const REGIONS: usize = 3;
const CONTINENTS: usize = 2;
/// Members per region group: all three nodes of a region.
const REPLICATION: u32 = 3;

struct DemoTask {
    title: &'static str,
    /// Index of the entry node.
    entry: usize,
    request: SubmitTaskRequest,
}

fn tasks() -> Vec<DemoTask> {
    let global = Some(Scope {
        level: Level::Global as i32,
        name: String::new(),
    });
    let request = |capability: &str, payload: &[u8], policy: RiskPolicy| SubmitTaskRequest {
        capability: capability.into(),
        payload: payload.to_vec(),
        scope: global.clone(),
        replication: REPLICATION,
        policy: Some(policy),
        wait: true,
        ..SubmitTaskRequest::default()
    };
    vec![
        DemoTask {
            title: "global sum on the raft path (consistency 0.95 > 0.8)",
            entry: 0,
            request: request(
                "sum",
                b"19 23 2 -2",
                RiskPolicy {
                    consistency: 0.95,
                    ..RiskPolicy::default()
                },
            ),
        },
        DemoTask {
            title: "global word count on the bft path (adversarial risk 0.9 > 0.7)",
            entry: 4,
            request: request(
                "wordcount",
                b"many doubtful answers make one reliable answer",
                RiskPolicy {
                    adversarial_risk: 0.9,
                    ..RiskPolicy::default()
                },
            ),
        },
        DemoTask {
            title: "global sha256 on the stake path (low risk)",
            entry: 8,
            request: request(
                "sha256",
                b"hello, polity",
                RiskPolicy {
                    adversarial_risk: 0.1,
                    consistency: 0.1,
                    path_override: ConsensusPath::Unspecified as i32,
                },
            ),
        },
    ]
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temporary = match &args.dir {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let root = args
        .dir
        .clone()
        .or_else(|| temporary.clone())
        .expect("one of them is set");
    println!(
        "Starting {NODES} nodes ({REGIONS} regions on {CONTINENTS} continents) in {}",
        root.display()
    );
    let up = UpArgs {
        nodes: NODES,
        regions: REGIONS,
        continents: CONTINENTS,
        capabilities: Vec::new(),
        dir: root.clone(),
        detach: false,
        measure: false,
        timeout_s: 120,
        node_args: Vec::new(),
    };
    let Launched {
        nodes, converge_ms, ..
    } = launch(&up, &crate::cluster::default_capabilities()).await?;
    println!(
        "Discovery converged in {:.1} s: every node sees the other {} as compatible peers.\n",
        converge_ms as f64 / 1000.0,
        NODES - 1
    );
    print_table(&nodes);
    println!();

    let anchor = read_anchor(&root.join(GENESIS_FILE))?;
    println!(
        "Federation {:?}: genesis epoch {} ({}), {} members; every certificate below is \
         checked against it.\n",
        anchor.current().registry().federation,
        anchor.current().number(),
        &hex::encode(anchor.current().digest())[..16],
        anchor.current().members().len()
    );
    let result = decide_all(&nodes, &anchor).await;
    if let Err(error) = &result {
        eprintln!("demo failed: {error:#}");
    } else if !args.exit {
        let first = &nodes[0].endpoints;
        println!("The testnet stays up. Try, from another terminal:");
        println!("  polity topology --addr {}", first.grpc);
        println!(
            "  polity submit --addr {} --capability sha256 --payload hi --scope global --replication 3",
            first.grpc
        );
        println!("  polity trust --addr {}", first.grpc);
        println!("  curl {}/metrics", first.http);
        println!("Ctrl-C stops every node.");
        tokio::signal::ctrl_c().await?;
    }
    for node in nodes {
        if let Err(error) = node.stop() {
            eprintln!("{error:#}");
        }
    }
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    result?;
    println!("Demo finished.");
    Ok(())
}

/// The testnet's trust anchor, from its genesis file.
fn read_anchor(path: &std::path::Path) -> anyhow::Result<Anchor> {
    Ok(Anchor::from_chain(polity_node::registry::read_chain(
        path,
    )?)?)
}

async fn decide_all(nodes: &[crate::process::NodeProcess], anchor: &Anchor) -> anyhow::Result<()> {
    for (number, task) in tasks().into_iter().enumerate() {
        let entry = &nodes[task.entry];
        println!(
            "Task {}: {} — entered at {} ({})",
            number + 1,
            task.title,
            entry.spec.name,
            entry.spec.region
        );
        let mut client = rpc::federation(&entry.endpoints.grpc, None).await?;
        let record = client
            .submit_task(task.request)
            .await
            .map_err(|status| anyhow::anyhow!("submit failed: {}", status.message()))?
            .into_inner();
        ensure!(
            record.state == TaskState::Decided as i32,
            "task was not decided (state {}): {} {}",
            record.state,
            record.error,
            record.degraded_reason
        );
        let certificate = record
            .certificate
            .as_ref()
            .context("a decided task has a certificate")?;
        println!("  id     {}", hex::encode(&record.task_id));
        println!("  value  {}", printable(&record.value));
        for group in &record.groups {
            println!(
                "  group  {:<10} {:<12} {} agreed, {} disagreed, {} silent; {} ms",
                level_label(group.level),
                group.group,
                group.agreed.len(),
                group.disagreed.len(),
                group.timed_out.len(),
                group.latency_ms
            );
        }
        let (local, epoch) = verify_in(anchor, certificate, None)
            .map_err(|e| anyhow::anyhow!("offline verification failed: {e}"))?;
        println!(
            "  epoch  {} ({}), members drawn by the seat rule",
            epoch.number(),
            &hex::encode(epoch.digest())[..16]
        );
        for line in certificate_tree_in(certificate, Some(epoch)).lines() {
            println!("  {line}");
        }
        let remote = client
            .verify_certificate(VerifyCertificateRequest {
                source: Some(Source::TaskId(record.task_id.clone())),
            })
            .await?
            .into_inner();
        ensure!(
            remote.valid,
            "the node says the chain is invalid: {}",
            remote.error
        );
        println!(
            "  verified offline against the genesis (signatures, task binding, membership): \
             {} certificate(s), {} signature(s); the entry node agrees\n",
            local.certificates, local.signatures
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("polity-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
