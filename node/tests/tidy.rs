//! The tidy test, as rust-analyzer's `xtask/src/tidy.rs`: the invariants that
//! ARCHITECTURE.md states as absences, checked by reading the workspace's source.
//! An invariant nobody enforces drifts; each check here fails with the file and line
//! that broke it.

use std::fs;
use std::path::{Path, PathBuf};

/// Files that may contain `unsafe`, and why.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[(
    "node/src/member/executor.rs",
    "setsid/kill on an exec executor's process group (libc)",
)];

/// Functions may be this long at most, outside tests.
const FUNCTION_LINES_MAX: usize = 80;
/// A comment within the lines just above a longer function that says why it is
/// better read whole (a table-like match, for instance).
const LONG_FUNCTION_MARKER: &str = "reads better whole";

/// What the pure parts must never name: async runtimes, storage, clocks, sockets,
/// files, ambient randomness.
const IMPURE: &[&str] = &[
    "tokio",
    "sled",
    "openraft",
    "std::time",
    "SystemTime",
    "Instant::now",
    "thread_rng",
    "rand::rng()",
    "OsRng",
    "std::net",
    "std::fs",
    "unix_ms",
    "OnceLock",
    "Mutex",
];

/// Words of [`IMPURE`] a pure file may still use, and why.
const IMPURE_ALLOWED: &[(&str, &[&str], &str)] = &[
    (
        "consensus/src/ids.rs",
        &["OnceLock", "Mutex"],
        "a process-wide memo of decompressed, checked member keys: without it \
         verify_statement costs 13 % more and verify_chain up to 44 % (criterion); a \
         caller-owned cache needs a verify entry point that takes checked keys",
    ),
    (
        "consensus/src/statement.rs",
        &["OnceLock", "Mutex"],
        "a process-wide memo of good signatures (the strict rule is a pure function of \
         key, message and signature): a member meets the same statements in its round, \
         in the certificate it adopts and in its parent's copy; a raft decision checked \
         54 signatures across 4 nodes without it (BENCHMARKS.md)",
    ),
];

/// This file names every forbidden word; it checks, it is not checked.
const THIS_FILE: &str = "node/tests/tidy.rs";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file of the workspace (not `target/`), relative to its root, with
/// its text.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = fs::read_dir(dir).expect("readable").flatten().collect();
        entries.sort_by_key(|entry| entry.path());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                    walk(&path, root, out);
                }
            } else if name.ends_with(".rs") && !path.ends_with(THIS_FILE) {
                let relative = path.strip_prefix(root).expect("inside").to_string_lossy();
                let text = fs::read_to_string(&path).expect("utf-8 source");
                out.push((relative.replace('\\', "/"), text));
            }
        }
    }
    let root = workspace();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    assert!(
        out.len() > 50,
        "found only {} sources under {root:?}",
        out.len()
    );
    out
}

/// Source that is not a test: under some `src/`, not a `tests.rs`, with every
/// top-level `#[cfg(test)]` module blanked out (lines kept, so numbers still match).
fn production(path: &str, text: &str) -> Option<String> {
    if !path.contains("/src/") || path.ends_with("/tests.rs") || path.contains("/benches/") {
        return None;
    }
    let is_module = |line: &str| {
        ["mod ", "pub mod ", "pub(crate) mod "]
            .iter()
            .any(|prefix| line.starts_with(prefix))
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut in_test_module = false;
    for (index, line) in lines.iter().enumerate() {
        let opens = *line == "#[cfg(test)]" && lines.get(index + 1).is_some_and(|l| is_module(l));
        if opens {
            in_test_module = true;
        }
        kept.push(if in_test_module { "" } else { *line });
        if in_test_module && *line == "}" {
            in_test_module = false;
        }
    }
    Some(kept.join("\n"))
}

/// Code with `//` comments removed, line by line (doc comments included): what
/// the compiler reads, near enough for a grep.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(index, line)| {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        (index + 1, code)
    })
}

fn check(violations: Vec<String>, rule: &str) {
    assert!(
        violations.is_empty(),
        "{rule}:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn the_pure_core_touches_no_runtime_clock_disk_or_socket() {
    let pure = |path: &str| {
        path.starts_with("consensus/src/")
            || path == "node/src/entry/engine.rs"
            || path == "node/src/entry/plan.rs"
    };
    let mut violations = Vec::new();
    for (path, text) in sources().iter().filter(|(path, _)| pure(path)) {
        let Some(code) = production(path, text) else {
            continue;
        };
        let allowed: &[&str] = IMPURE_ALLOWED
            .iter()
            .find(|(allowed, _, _)| allowed == path)
            .map_or(&[], |(_, words, _)| words);
        for (line, code) in code_lines(&code) {
            for word in IMPURE.iter().filter(|word| code.contains(*word)) {
                if !allowed.contains(word) {
                    violations.push(format!("{path}:{line}: `{word}`"));
                }
            }
        }
    }
    check(
        violations,
        "the pure core names a runtime, a clock, a disk or a socket",
    );
    let manifest = fs::read_to_string(workspace().join("consensus/Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("consensus has dependencies");
    for crate_name in ["tokio", "sled", "openraft", "libp2p", "tonic", "axum"] {
        assert!(
            !dependencies.contains(crate_name),
            "consensus/Cargo.toml depends on {crate_name}"
        );
    }
}

#[test]
fn no_channel_is_unbounded() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        for (line, code) in code_lines(&text) {
            if code.contains("unbounded_channel") || code.contains("mpsc::unbounded") {
                violations.push(format!("{path}:{line}"));
            }
        }
    }
    check(
        violations,
        "an unbounded channel (every queue needs a bound)",
    );
}

#[test]
fn unsafe_code_stays_in_its_allow_list() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        if UNSAFE_ALLOWED.iter().any(|(allowed, _)| *allowed == path) {
            continue;
        }
        for (line, code) in code_lines(&text) {
            if code.contains("unsafe {")
                || code.contains("unsafe fn")
                || code.contains("unsafe impl")
            {
                violations.push(format!("{path}:{line}"));
            }
        }
    }
    check(violations, "unsafe code outside UNSAFE_ALLOWED");
}

#[test]
fn public_apis_return_typed_errors_not_strings() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        let Some(code) = production(&path, &text) else {
            continue;
        };
        let mut signature: Option<(usize, String)> = None;
        for (line, code) in code_lines(&code) {
            let trimmed = code.trim_start();
            if trimmed.starts_with("pub fn ") || trimmed.starts_with("pub async fn ") {
                signature = Some((line, String::new()));
            }
            if let Some((start, text)) = signature.as_mut() {
                text.push_str(code);
                if code.contains('{') || code.trim_end().ends_with(';') {
                    let compact: String = text.split_whitespace().collect();
                    if compact.contains("->Result<") && compact.contains(",String>") {
                        violations.push(format!("{path}:{start}"));
                    }
                    signature = None;
                }
            }
        }
    }
    check(violations, "a public function returns Result<_, String>");
}

#[test]
fn functions_stay_short_outside_tests() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        let Some(code) = production(&path, &text) else {
            continue;
        };
        let lines: Vec<&str> = code.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            let is_fn = ["fn ", "pub fn ", "async fn ", "pub async fn ", "const fn "]
                .iter()
                .chain(&["pub(crate) fn ", "pub(super) fn ", "pub(crate) async fn "])
                .chain(&["pub(super) async fn ", "pub const fn "])
                .any(|prefix| trimmed.starts_with(prefix));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let closing = format!("{indent}}}");
            let Some(length) = lines[start..].iter().position(|l| *l == closing) else {
                continue;
            };
            let marked = lines[start.saturating_sub(6)..start]
                .iter()
                .any(|l| l.contains(LONG_FUNCTION_MARKER));
            if length + 1 > FUNCTION_LINES_MAX && !marked {
                let name = trimmed.split('(').next().unwrap_or(trimmed);
                violations.push(format!(
                    "{path}:{}: {name} ({} lines)",
                    start + 1,
                    length + 1
                ));
            }
        }
    }
    check(
        violations,
        "a function over FUNCTION_LINES_MAX lines (split it, or say above it why it \
         reads better whole)",
    );
}

#[test]
fn every_source_file_is_in_the_codemap() {
    let map = fs::read_to_string(workspace().join("ARCHITECTURE.md")).unwrap();
    let mut violations = Vec::new();
    for (path, _) in sources() {
        let in_src = path.contains("/src/") || path.ends_with("build.rs");
        if !in_src || path.ends_with("/tests.rs") || path.starts_with("proto/src/gen") {
            continue;
        }
        if !map.contains(&format!("`{path}`")) {
            violations.push(path);
        }
    }
    check(
        violations,
        "a source file ARCHITECTURE.md's codemap does not name",
    );
}
