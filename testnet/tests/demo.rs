//! The demo, end to end, as a user runs it (with --exit).

use std::process::Command;

#[test]
fn the_demo_runs_to_completion() {
    let dir = tempfile::tempdir().unwrap();
    // Cargo builds every binary of the workspace package under test; the polity
    // binary is a sibling of this test's target dir.
    let output = Command::new(env!("CARGO_BIN_EXE_polity-testnet"))
        .args(["demo", "--exit", "--dir"])
        .arg(dir.path())
        .env("POLITY_BIN", polity_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("verified offline").count(), 3, "{stdout}");
    for path in ["raft", "bft", "stake"] {
        assert!(
            stdout.contains("global \"global\" round") && stdout.contains(&format!("path {path}")),
            "a global certificate on the {path} path:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("value  \"42\""),
        "the global sum is 42:\n{stdout}"
    );
    assert!(stdout.contains("continent \"continent-1\""), "{stdout}");
}

fn polity_bin() -> std::path::PathBuf {
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_polity-testnet"));
    let bin = exe.with_file_name("polity");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` so the node binary is built",
        bin.display()
    );
    bin
}
