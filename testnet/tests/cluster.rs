//! Multi-process testnets: `up --detach`, `status`, `down`, and `up` again; and the
//! network-namespace cluster where the machine allows it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn polity_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_polity-testnet")).with_file_name("polity");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn testnet(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polity-testnet"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("POLITY_BIN", polity_bin())
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops the testnet even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = testnet(&["down"], self.0);
    }
}

#[test]
fn five_nodes_in_two_regions_discover_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let _down = Down(dir.path());
    for attempt in 0..2 {
        let output = testnet(
            &["up", "--nodes", "5", "--regions", "2", "--detach"],
            dir.path(),
        );
        assert!(
            output.status.success(),
            "up (attempt {attempt}) failed:\n{}",
            text(&output)
        );
        let up = text(&output);
        assert!(up.contains("discovery converged"), "{up}");
        assert_eq!(up.matches("region-0").count(), 3, "{up}");
        assert_eq!(up.matches("region-1").count(), 2, "{up}");

        let output = testnet(&["status"], dir.path());
        let status = text(&output);
        assert!(output.status.success(), "{status}");
        let rows: Vec<&str> = status
            .lines()
            .filter(|line| line.starts_with("node-"))
            .collect();
        assert_eq!(rows.len(), 5, "{status}");
        for row in rows {
            let columns: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(columns[2], "up", "{row}");
            assert_eq!(columns[3], "4", "every node knows the 4 others: {row}");
        }

        // The same, for scripts.
        let output = testnet(&["status", "--json"], dir.path());
        assert!(output.status.success(), "{}", text(&output));
        let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let nodes = document["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 5, "{document}");
        assert!(
            nodes
                .iter()
                .all(|node| node["state"] == "up" && node["peers"] == 4)
        );
        assert_eq!(document["dead"], 0);
        // Logs written to a file carry no terminal colour codes.
        let log = std::fs::read_to_string(dir.path().join("node-0/node.log")).unwrap();
        assert!(!log.is_empty() && !log.contains('\u{1b}'), "{log}");

        if attempt == 0 {
            check_topology_and_compatible_peers(dir.path());
        }

        let output = testnet(&["down"], dir.path());
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("stopped 5 node(s)"));
        let output = testnet(&["status"], dir.path());
        assert!(!output.status.success(), "no testnet after down");
    }
}

/// GetTopology groups the five nodes by continent and region; ListPeers with the
/// compatibility rule returns the four peers once their RTT is measured.
fn check_topology_and_compatible_peers(dir: &Path) {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("testnet.json")).unwrap()).unwrap();
    let grpc = state["nodes"][0]["grpc"].as_str().unwrap().to_string();
    let output = Command::new(polity_bin())
        .args(["topology", "--json", "--addr", &grpc])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let topology: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let regions = topology[0]["regions"].as_array().unwrap();
    assert_eq!(topology.as_array().unwrap().len(), 1, "{topology}");
    assert_eq!(regions.len(), 2, "{topology}");
    assert_eq!(
        regions[0]["nodes"].as_array().unwrap().len(),
        3,
        "{topology}"
    );
    assert_eq!(
        regions[1]["nodes"].as_array().unwrap().len(),
        2,
        "{topology}"
    );

    let started = std::time::Instant::now();
    loop {
        let output = Command::new(polity_bin())
            .args([
                "peers",
                "--json",
                "--capability",
                "sha256",
                "--compatible",
                "--addr",
                &grpc,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let peers: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        if peers.as_array().unwrap().len() == 4 {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 60,
            "compatible peers: {peers}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_dead_node_is_reported_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let _down = Down(dir.path());
    let output = testnet(
        &["up", "--nodes", "2", "--regions", "1", "--detach"],
        dir.path(),
    );
    assert!(output.status.success(), "{}", text(&output));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("testnet.json")).unwrap()).unwrap();
    let pid = state["nodes"][1]["pid"].as_u64().unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = text(&testnet(&["status"], dir.path()));
    assert!(status.contains("DEAD"), "{status}");
    assert!(status.contains("1 node(s) are dead"), "{status}");
}

#[test]
fn nodes_federate_across_network_namespaces() {
    let can_run = is_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|output| output.status.success());
    if !can_run {
        assert!(
            std::env::var("POLITY_REQUIRE_NETNS").is_err(),
            "POLITY_REQUIRE_NETNS is set, but this machine cannot create network namespaces"
        );
        eprintln!(
            "SKIPPED nodes_federate_across_network_namespaces: needs root and iproute2 (ip netns)"
        );
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-cluster.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(polity_bin())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "netns cluster failed:\n{}",
        text(&output)
    );
    assert!(
        text(&output).contains("OK: 3 nodes federated"),
        "{}",
        text(&output)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}
