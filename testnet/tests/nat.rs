//! A federation across two NATs, in network namespaces (`scripts/nat-cluster.sh`):
//! nodes behind different NATs reach each other through a relay, hole-punch to
//! direct connections, and decide a global task that verifies against the genesis.
//! Needs root, iproute2 and iptables; CI sets `POLITY_REQUIRE_NAT` so that a
//! machine that cannot run it fails instead of skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

fn polity_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_polity-testnet")).with_file_name("polity");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn can_run() -> bool {
    let succeeds = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    root && succeeds("ip", &["netns", "list"]) && succeeds("iptables", &["--version"])
}

#[test]
fn nodes_behind_two_nats_hole_punch_and_decide_a_global_task() {
    if !can_run() {
        assert!(
            std::env::var("POLITY_REQUIRE_NAT").is_err(),
            "POLITY_REQUIRE_NAT is set, but this machine cannot run the NAT test \
             (needs root, iproute2 and iptables)"
        );
        eprintln!("SKIPPED nodes_behind_two_nats_...: needs root, iproute2 and iptables");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nat-cluster.sh");
    let output = Command::new("bash")
        .arg(script)
        .arg(polity_bin())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "NAT cluster failed:\n{text}");
    assert!(
        text.contains("hole-punched to direct connections"),
        "{text}"
    );
    assert!(text.contains(", 0 relayed"), "{text}");
    eprintln!("{text}");
}
