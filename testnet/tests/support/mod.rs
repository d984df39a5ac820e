//! Helpers shared by the process tests.
// Each test crate uses a part of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use polity_proto::ListPeersRequest;
use polity_testnet::genesis::{Founder, genesis_args, write_genesis};
use polity_testnet::process::{NodeProcess, NodeSpec, polity_binary};

/// Starts one node per entry of `node_args` in `region-0` (node i gets
/// `node_args[i]`; every node after the first bootstraps to node-0) and waits until
/// every node sees all the others as compatible peers serving `capability`.
pub async fn start_region(
    dir: &Path,
    capability: &str,
    node_args: Vec<Vec<String>>,
) -> Vec<NodeProcess> {
    let binary = polity_binary().unwrap();
    let founders: Vec<Founder> = (0..node_args.len())
        .map(|index| Founder {
            data_dir: dir.join(format!("node-{index}")),
            region: "region-0".into(),
            continent: "continent-0".into(),
        })
        .collect();
    let genesis = write_genesis(dir, &founders, &[capability.to_string()]).unwrap();
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for (index, mut extra_args) in node_args.into_iter().enumerate() {
        extra_args.extend(genesis_args(&genesis));
        if let Some(first) = nodes.first() {
            extra_args.push("--bootstrap".into());
            extra_args.push(first.endpoints.p2p[0].clone());
        }
        let spec = NodeSpec {
            name: format!("node-{index}"),
            data_dir: dir.join(format!("node-{index}")),
            region: "region-0".into(),
            continent: "continent-0".into(),
            extra_args,
        };
        nodes.push(NodeProcess::start(&binary, spec).unwrap());
    }
    for _ in 0..600 {
        let mut converged = true;
        for node in &nodes {
            let compatible = node
                .client()
                .await
                .unwrap()
                .list_peers(ListPeersRequest {
                    capability: capability.into(),
                    compatible_only: true,
                    ..ListPeersRequest::default()
                })
                .await
                .unwrap()
                .into_inner()
                .peers
                .len();
            converged &= compatible >= nodes.len() - 1;
        }
        if converged {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} nodes did not all see each other as compatible within a minute",
        nodes.len()
    );
}

/// The sum of the values of the `/metrics` lines of `node` that start with
/// `line_prefix`.
pub async fn metric(node: &NodeProcess, line_prefix: &str) -> f64 {
    let text = reqwest_text(&format!("{}/metrics", node.endpoints.http)).await;
    text.lines()
        .filter(|line| line.starts_with(line_prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A plain HTTP GET over a TCP socket (the node's /metrics), without an HTTP client
/// dependency.
pub async fn reqwest_text(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}
