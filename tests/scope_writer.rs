//! The scope file's writer killed in the middle of its work leaves a valid file.
//!
//! The writer runs in a child process: this test binary again, running only `writer_child`
//! with `SCOPEGATE_WRITER_CHILD` set, which changes the scope file in a tight loop through the
//! same `ScopeWriter` the management API uses. The parent SIGKILLs it after a random delay, over
//! and over, and checks after every kill that the file loads, kept its comments, and is a
//! whole file (all 299 projects: never a mix of old and new). The file is large enough (300 projects)
//! that each write takes a while, so kills land in every phase: reading, validating, writing
//! the temporary file, flushing, renaming.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scopegate::manage::write::{Direction, Entry, Named, ScopeWriter};
use scopegate::scope::{self, ScopeLimits};
use scopegate::snapshot::PolicyStore;

const CHILD: &str = "SCOPEGATE_WRITER_CHILD";
const HEADER: &str = "# scope file under a writer that gets killed\n";

fn big_file() -> String {
    let mut s = String::from(HEADER);
    s.push_str("[defaults]\noutbound = true\ninbound = true\n\n");
    s.push_str("[[project]]\nid = 1\npath = \"acme/target\"   # the one being changed\n\n[project.inbound]\nenabled = false\nallow = []\n\n");
    for i in 2..300u64 {
        writeln!(
            s,
            "# project {i}\n[[project]]\nid = {i}\npath = \"g{}/p{i}\"\n[project.outbound]\nenabled = false\n",
            i % 37
        )
        .unwrap();
    }
    s
}

fn target() -> Named {
    Named {
        id: Some(1),
        path: Some("acme/target".into()),
    }
}

/// The child: change the file forever (until killed).
#[test]
fn writer_child() {
    let Ok(path) = std::env::var(CHILD) else {
        return; // an ordinary test run: nothing to do
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(PolicyStore::new(path.into(), ScopeLimits::default()));
        store.reload().await.unwrap();
        let writer = ScopeWriter::new(store);
        let mut n = 0u64;
        loop {
            n += 1;
            let id = 5000 + n % 60;
            writer
                .apply(move |doc, policy| {
                    let me = scopegate::project::ProjectIdentity {
                        id: Some(1),
                        path: Some("acme/target".into()),
                    };
                    let listed = policy.effective(&me).inbound.allowed_ids().any(|i| i == id);
                    if listed {
                        doc.remove_allow(&target(), Direction::Inbound, &[Entry::Id(id)]);
                    } else {
                        doc.add_allow(&target(), Direction::Inbound, &Entry::Id(id));
                    }
                    doc.set_enabled(&target(), Direction::Inbound, n.is_multiple_of(2));
                    Ok(())
                })
                .await
                .unwrap();
            println!("wrote {n}");
        }
    });
}

fn check_valid(path: &Path, round: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let loaded = scope::load_str("scopes.toml", &text, &ScopeLimits::default())
        .unwrap_or_else(|e| panic!("round {round}: the file does not load after a kill: {e}"));
    assert!(
        text.starts_with(HEADER),
        "round {round}: header comment lost"
    );
    assert!(
        text.contains("path = \"acme/target\"   # the one being changed"),
        "round {round}"
    );
    assert_eq!(loaded.policy.project_count(), 299, "round {round}");
    text
}

#[test]
fn a_writer_killed_mid_write_leaves_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scopes.toml");
    let initial = big_file();
    std::fs::write(&path, &initial).unwrap();
    let exe = std::env::current_exe().unwrap();
    // A small LCG: random enough kill points, reproducible from the printed seed.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut states = std::collections::HashSet::new();
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 24 && started.elapsed() < Duration::from_secs(60) {
        rounds += 1;
        let mut child = Command::new(&exe)
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD, &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + next() % 800));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        states.insert(check_valid(&path, rounds));
    }
    // The writers did get somewhere (the kills were not all before the first write).
    assert!(
        states.iter().any(|s| *s != initial),
        "no write completed in {rounds} rounds"
    );
    // A later writer cleans up the temporary files the killed ones left.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(PolicyStore::new(path.clone(), ScopeLimits::default()));
        store.reload().await.unwrap();
        ScopeWriter::new(store)
            .apply(|doc, _| {
                doc.set_enabled(&target(), Direction::Inbound, true);
                doc.add_allow(&target(), Direction::Inbound, &Entry::Id(9999));
                Ok(())
            })
            .await
            .unwrap();
    });
    check_valid(&path, rounds + 1);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "scopes.toml")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
