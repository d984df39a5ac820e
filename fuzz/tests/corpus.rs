//! Replays every committed corpus file (`fuzz/corpus/<target>/*`) through its target
//! function: no AFL, a plain `cargo test`, so CI runs the corpora on every change.
//! A file that once crashed a target lives in the corpus and keeps it from coming back.

use std::path::Path;

use polity_fuzz::TARGETS;

#[test]
fn every_corpus_file_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (name, target) in TARGETS {
        let directory = root.join(name);
        let entries = std::fs::read_dir(&directory)
            .unwrap_or_else(|error| panic!("corpus {}: {error}", directory.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            target(&data);
            count += 1;
        }
        assert!(count > 0, "corpus {name} is empty");
        total += count;
    }
    assert!(total >= TARGETS.len());
}

#[test]
fn every_target_has_a_corpus_directory_and_a_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in TARGETS {
        assert!(root.join("corpus").join(name).is_dir(), "no corpus/{name}");
        let binary = root.join("src/bin").join(format!("fuzz_{name}.rs"));
        assert!(binary.is_file(), "no {}", binary.display());
    }
}

#[test]
fn the_seeds_reach_past_the_signatures() {
    let certificate = polity_fuzz::seeds::certificate(&[]);
    polity_consensus::verify_chain(&certificate).expect("the fast-path seed verifies");
    let attested = polity_fuzz::seeds::certificate(&[0, 1, 2]);
    polity_consensus::verify_chain(&attested).expect("the attested seed verifies");
    polity_fuzz::fixed_epoch();
}

#[test]
fn targets_return_on_empty_and_junk_input() {
    for (_, target) in TARGETS {
        target(&[]);
        target(&[0xff; 64]);
        target(&[1, 0x0a, 0x80]);
    }
}
