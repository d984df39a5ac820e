//! `polity-testnet demo`: the five-minute tour, run for real.
//!
//! Until tasks are dispatched to peers (the federation issue), every group of a task
//! is its entry node alone, so the demo starts one node and shows everything a node
//! does through the real path: tasks at region, continent and global scope, the
//! certificate chain and who voted what, offline verification, and a restart that
//! keeps identity and certified results. `polity-testnet up` shows the p2p side.

use std::path::PathBuf;

use anyhow::{Context, bail, ensure};
use polity_consensus::verify_chain;
use polity_proto::{
    ConsensusPath, GetTaskRequest, Level, RiskPolicy, Scope, SubmitTaskRequest, TaskRecord,
    TaskState, VerifyCertificateRequest, verify_certificate_request::Source,
};

use crate::process::{NodeProcess, NodeSpec, polity_binary};
use crate::show::{certificate_tree, printable};

/// `demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where node data dirs go (default: a fresh temporary dir, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop after the demo instead of keeping the node up until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

struct DemoTask {
    title: &'static str,
    request: SubmitTaskRequest,
}

fn tasks() -> Vec<DemoTask> {
    let scope = |level: Level| {
        Some(Scope {
            level: level as i32,
            name: String::new(),
        })
    };
    let policy = |adversarial_risk: f64, path_override: ConsensusPath| {
        Some(RiskPolicy {
            adversarial_risk,
            consistency: 0.0,
            path_override: path_override as i32,
        })
    };
    vec![
        DemoTask {
            title: "sha256 of a payload in the node's region (stake path: low risk)",
            request: SubmitTaskRequest {
                capability: "sha256".into(),
                payload: b"hello, polity".to_vec(),
                scope: scope(Level::Region),
                policy: policy(0.1, ConsensusPath::Unspecified),
                wait: true,
                ..SubmitTaskRequest::default()
            },
        },
        DemoTask {
            title: "word count across the continent (bft path: adversarial risk 0.9)",
            request: SubmitTaskRequest {
                capability: "wordcount".into(),
                payload: b"many doubtful answers make one reliable answer".to_vec(),
                scope: scope(Level::Continent),
                policy: policy(0.9, ConsensusPath::Unspecified),
                wait: true,
                ..SubmitTaskRequest::default()
            },
        },
        DemoTask {
            title: "global sum, region -> continent -> global (bft by override)",
            request: SubmitTaskRequest {
                capability: "sum".into(),
                payload: b"19 23 2 -2".to_vec(),
                scope: scope(Level::Global),
                policy: policy(0.0, ConsensusPath::Bft),
                wait: true,
                ..SubmitTaskRequest::default()
            },
        },
    ]
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let binary = polity_binary()?;
    let temporary = match &args.dir {
        Some(_) => None,
        None => Some(tempfile_dir()?),
    };
    let root = args
        .dir
        .clone()
        .or_else(|| temporary.clone())
        .expect("one of them is set");
    let spec = NodeSpec {
        name: "node-0".into(),
        data_dir: root.join("node-0"),
        region: "eu-west".into(),
        continent: "europe".into(),
        extra_args: vec![
            "--capability".into(),
            "sha256=builtin:sha256".into(),
            "--capability".into(),
            "wordcount=builtin:wordcount".into(),
            "--capability".into(),
            "sum=builtin:sum".into(),
        ],
    };
    println!(
        "Starting node-0 (region eu-west, continent europe) in {}",
        spec.data_dir.display()
    );
    let node = NodeProcess::start(&binary, spec.clone())?;
    println!(
        "  peer id {}\n  gRPC    {}\n  HTTP    {}\n",
        node.endpoints.peer_id, node.endpoints.grpc, node.endpoints.http
    );

    let mut client = node.client().await?;
    let mut decided: Vec<TaskRecord> = Vec::new();
    for (number, task) in tasks().into_iter().enumerate() {
        println!("Task {}: {}", number + 1, task.title);
        let record = client
            .submit_task(task.request)
            .await
            .map_err(|status| anyhow::anyhow!("submit failed: {}", status.message()))?
            .into_inner();
        ensure!(
            record.state == TaskState::Decided as i32,
            "task was not decided: {} {}",
            record.error,
            record.degraded_reason
        );
        let certificate = record
            .certificate
            .as_ref()
            .context("a decided task has a certificate")?;
        println!("  id     {}", hex::encode(&record.task_id));
        println!("  value  {}", printable(&record.value));
        for line in certificate_tree(certificate).lines() {
            println!("  {line}");
        }
        let local = verify_chain(certificate)
            .map_err(|e| anyhow::anyhow!("offline verification failed: {e}"))?;
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
            "  verified offline: {} certificate(s), {} signature(s); the node agrees\n",
            local.certificates, local.signatures
        );
        decided.push(record);
    }

    println!("Restarting node-0 to show that identity and certified results survive...");
    let peer_id = node.endpoints.peer_id.clone();
    node.stop()?;
    let node = NodeProcess::start(&binary, spec)?;
    ensure!(
        node.endpoints.peer_id == peer_id,
        "the node came back with another identity"
    );
    let mut client = node.client().await?;
    for record in &decided {
        let stored = client
            .get_task(GetTaskRequest {
                task_id: record.task_id.clone(),
            })
            .await?
            .into_inner();
        if stored.certificate != record.certificate {
            bail!(
                "task {} changed across the restart",
                hex::encode(&record.task_id)
            );
        }
    }
    println!(
        "  same peer id, {} certified task(s) read back unchanged\n",
        decided.len()
    );

    if args.exit {
        node.stop()?;
    } else {
        println!("The node stays up. Try, from another terminal:");
        println!("  polity info --addr {}", node.endpoints.grpc);
        println!(
            "  polity get --addr {} {}",
            node.endpoints.grpc,
            hex::encode(&decided[0].task_id)
        );
        println!("  curl {}/metrics", node.endpoints.http);
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await?;
        node.stop()?;
    }
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    println!("Demo finished.");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("polity-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
