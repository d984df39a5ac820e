//! The `polity` command line's own conveniences, run as a user runs them.

use std::process::Command;

fn polity(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_polity"))
        .args(args)
        .output()
        .expect("polity runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn completions_cover_every_shell_and_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (ok, script) = polity(&["completions", shell]);
        assert!(ok, "{shell}");
        assert!(
            script.contains("submit") && script.contains("verify"),
            "{shell}: {script}"
        );
    }
    let (ok, _) = polity(&["completions", "tcsh"]);
    assert!(!ok, "an unknown shell is refused");
}

#[test]
fn the_manual_page_is_roff_for_polity() {
    let (ok, page) = polity(&["man"]);
    assert!(ok);
    assert!(page.contains(".TH polity 1"), "{page}");
    assert!(
        page.contains("genesis") && page.contains("completions"),
        "{page}"
    );
}
