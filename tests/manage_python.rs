//! python-gitlab, unchanged, against the management API: its base URL pointed at the gateway's
//! `/-/scopegate` prefix in front of the stand-in forge (tests/python/manage_scope.py).
//!
//! It needs a virtual environment with python-gitlab (`.venv`), which `.ci/run` creates and
//! this test creates when missing. Without it the test fails, on purpose: CI must run it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::manage::{directory, DEVELOPER, MAINTAINER, MANAGED};
use common::{Harness, OTHER};

/// `.venv/bin/python` with python-gitlab; created here when missing (as `.ci/run` does), so
/// that `cargo test` works on a fresh machine. If it cannot be created, the test fails.
fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let has_gitlab = || {
        std::process::Command::new(&python)
            .args(["-c", "import gitlab"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_gitlab() {
        let venv = std::process::Command::new("python3")
            .args(["-m", "venv", ".venv"])
            .current_dir(&root)
            .status();
        assert!(
            venv.is_ok_and(|s| s.success()),
            "python3 -m venv .venv failed"
        );
        let pip = std::process::Command::new(root.join(".venv/bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "python-gitlab",
            ])
            .status();
        assert!(
            pip.is_ok_and(|s| s.success()),
            ".venv/bin/pip install python-gitlab failed"
        );
    }
    assert!(
        has_gitlab(),
        "{} cannot import python-gitlab",
        python.display()
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_gitlab_manages_the_job_token_scope() {
    let python = venv_python();
    let h = Harness::start(MANAGED).await;
    h.forge.set_directory(directory());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/manage_scope.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(h.url(""))
        .arg(&h.scopes)
        .env("MAINTAINER", MAINTAINER)
        .env("DEVELOPER", DEVELOPER)
        .env("OTHER_JOB_TOKEN", OTHER)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the python-gitlab script finished in time")
        .expect("python starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "python-gitlab script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}{stderr}");
    // The file it leaves behind is valid and kept its comments.
    let text = std::fs::read_to_string(&h.scopes).unwrap();
    scopegate::scope::load_str("scopes.toml", &text, &Default::default()).unwrap();
    assert!(text.contains("# the app: its maintainers manage it through the API"));
}
