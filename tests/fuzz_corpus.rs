//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the same harnesses the
//! cargo-fuzz targets run (`scopegate::fuzzing`), so that every input the fuzzer ever kept is
//! re-checked by plain `cargo test` on a stable toolchain. A harness panics when an invariant
//! breaks; the test names the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 4] = [
    ("credentials", scopegate::fuzzing::credentials),
    ("target", scopegate::fuzzing::target),
    ("scope_file", scopegate::fuzzing::scope_file),
    ("body", scopegate::fuzzing::body),
];

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, harness: Harness) {
    let files = corpus_files(target);
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for file in &files {
        let data = std::fs::read(file).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(
            outcome.is_ok(),
            "{target}: corpus input {} broke an invariant",
            file.display()
        );
    }
}

#[test]
fn credentials_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn target_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn scope_file_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn body_corpus() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

/// Every fuzz target has a corpus directory and nothing else lives under `fuzz/corpus/`.
#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .expect("fuzz/corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut want: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    want.sort();
    assert_eq!(dirs, want);
}
