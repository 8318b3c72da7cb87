//! The command line: check, explain, demo.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn scopegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scopegate"))
}

fn root(p: &str) -> String {
    format!("{}/{p}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = scopegate()
        .args(["check", "--config", &root("config/scopegate.toml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = scopegate()
        .args(["check", "--scopes", &root("config/scopes.toml")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("projects"));
}

#[test]
fn check_lists_every_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scopes.toml");
    std::fs::write(
        &path,
        "[[project]]\nid = 1\npath = \"acme/a\"\n\n[[project]]\nid = 1\npath = \"acme/b\"\n\n[[project]]\nid = 3\npath = \"not a path\"\n",
    )
    .unwrap();
    let out = scopegate()
        .arg("check")
        .arg("--scopes")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scopes.toml:5") || err.contains("scopes.toml:6"),
        "duplicate named by line: {err}"
    );
    assert!(
        err.contains("scopes.toml:9") || err.contains("scopes.toml:11"),
        "bad path named by line: {err}"
    );
}

#[test]
fn explain_prints_the_decision() {
    let scopes = root("config/scopes.toml");
    let out = scopegate()
        .args([
            "explain",
            "--scopes",
            &scopes,
            "--origin",
            "acme/deploy-bot",
            "GET",
            "/api/v4/projects/acme%2Fapp/merge_requests",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("allow"), "{stdout}");
    let out = scopegate()
        .args([
            "explain",
            "--scopes",
            &scopes,
            "--origin",
            "10",
            "GET",
            "https://gl.example/api/v4/projects/999/issues",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("deny"), "{stdout}");
}

#[test]
fn demo_shows_one_allowed_and_one_denied_call() {
    let out = scopegate()
        .args(["demo", "--once", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("-> 200"), "{stdout}");
    assert!(stdout.contains("-> 403"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");
    assert!(
        stdout.contains(r#"-> 200 {"inbound_enabled":true,"outbound_enabled":true}"#),
        "{stdout}"
    );
}

/// Open inbound defaults without a lookup credential leave renamed projects' old Git paths
/// decided as unlisted, open projects: `check --config` says so; with the credential it does not.
#[test]
fn check_warns_about_old_paths_under_open_defaults_without_a_lookup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("scopes.toml"),
        "[defaults]\ninbound = false\n\n[[project]]\nid = 1\npath = \"acme/a\"\n",
    )
    .unwrap();
    let config = dir.path().join("scopegate.toml");
    let run = |settings: &str| {
        std::fs::write(&config, settings).unwrap();
        let out = scopegate()
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let without = run("upstream = \"http://127.0.0.1:1\"\nscopes = \"scopes.toml\"\n");
    assert!(without.contains("lookup_token_file"), "{without}");
    std::fs::write(dir.path().join("token"), "glpat-lookup\n").unwrap();
    let with = run(
        "upstream = \"http://127.0.0.1:1\"\nscopes = \"scopes.toml\"\nlookup_token_file = \"token\"\n",
    );
    assert!(!with.contains("lookup_token_file"), "{with}");
}
