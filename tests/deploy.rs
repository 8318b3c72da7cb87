//! The deployment files start the real binary, in front of the stand-in forge, with one allowed
//! and one denied job-token request through it:
//!
//! - the systemd unit (deploy/systemd/scopegate.service): its `ExecStart=` argv exactly, with the
//!   binary replaced by the one cargo built and `/etc/scopegate/...` moved under a temporary
//!   directory holding the files the unit's install steps put there (config/scopegate.toml and
//!   config/scopes.toml), its `Environment=` and `WorkingDirectory=`; then its `ExecReload=`
//!   (SIGHUP: a new generation), an edit of the scope file (picked up by the watcher through
//!   the sandbox's read-only view) and `KillSignal=` (SIGTERM, exit 0 within `TimeoutStopSec=`);
//! - the Kubernetes base (deploy/k8s/base): the Deployment container's `command` + `args`
//!   exactly, with the binary replaced and every volume laid out under a temporary directory
//!   the way the kubelet mounts it (a ConfigMap as `..<timestamp>/` + `..data` symlink + one
//!   symlink per key, an emptyDir as a directory); then a ConfigMap update as the kubelet does it
//!   (a new `..<timestamp>` directory and an atomic rename of `..data`) flips a decision with no
//!   signal or call: the watcher follows the swap. The management API answers 409 there (the
//!   ConfigMap's files are read-only), and the authorization log lands on the emptyDir.
//!
//! What is rewritten, and only that: in the settings file, `listen` and `admin` become free
//! loopback ports (after checking they match the ports the unit or the manifests expose),
//! `upstream` and `forge_external_url` become the stand-in forge's URL, and paths under the
//! unit's config directory or the pod's mount paths move under the temporary directory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, jobs, raw, BOT};
use scopegate::settings::Settings;
use scopegate::standin::{Directory, Standin, StandinProject, StandinUser};
use serde_yaml_ng::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn free_loopback() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The bot's job token (origin acme/deploy-bot, id 10) towards a project the example scope files
/// let it reach, and towards one they do not.
const ALLOWED: &str = "/api/v4/projects/acme%2Fapp/merge_requests";
const DENIED: &str = "/api/v4/projects/globex%2Ftool/merge_requests";

/// The settings file as the deployment ships it, with the listeners moved to free loopback ports,
/// the forge replaced by the stand-in and absolute `scopes` / `state_dir` paths moved under the
/// temporary root. Returns the rewritten text and the original listen / admin ports (to compare
/// with what the unit or the manifests expose).
fn rewrite_settings(
    text: &str,
    forge: &Standin,
    listen: SocketAddr,
    admin: SocketAddr,
    move_path: impl Fn(&str) -> Option<String>,
) -> (String, u16, u16) {
    let mut table: toml::Table = toml::from_str(text).unwrap();
    let port = |key: &str| -> u16 {
        let addr: SocketAddr = table[key].as_str().unwrap().parse().unwrap();
        addr.port()
    };
    let (listen_port, admin_port) = (port("listen"), port("admin"));
    table.insert("listen".into(), listen.to_string().into());
    table.insert("admin".into(), admin.to_string().into());
    table.insert("upstream".into(), forge.url().into());
    table.insert("forge_external_url".into(), forge.url().into());
    for key in ["scopes", "state_dir"] {
        let Some(path) = table.get(key).and_then(|v| v.as_str()).map(str::to_string) else {
            continue;
        };
        if Path::new(&path).is_absolute() {
            let moved = move_path(&path)
                .unwrap_or_else(|| panic!("{key} = {path:?} is outside the deployment's paths"));
            table.insert(key.into(), moved.into());
        }
    }
    (toml::to_string(&table).unwrap(), listen_port, admin_port)
}

/// The started binary; killed if a test fails before stopping it.
struct Gateway {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    fn spawn(
        argv: &[String],
        env: &[(String, String)],
        cwd: &Path,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Gateway {
        let log = cwd.join("scopegate.log");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(cwd)
            .stdout(Stdio::from(
                std::fs::File::create(cwd.join("stdout.log")).unwrap(),
            ))
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        Gateway {
            child,
            listen,
            admin,
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, ready_path: &str) {
        let admin = self.admin;
        let ready = eventually(Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(admin).await.is_ok()
                && get(admin, ready_path, None).await.0 == 200
        })
        .await;
        assert!(ready, "not ready; it printed:\n{}", self.output());
    }

    /// The allowed request reaches the forge; the denied one is answered 403 and does not.
    async fn allows_and_denies(&self, forge: &Standin) {
        forge.clear();
        let (status, body) = get(self.listen, ALLOWED, Some(BOT)).await;
        assert_eq!(status, 200, "allowed request: {body}");
        let (status, body) = get(self.listen, DENIED, Some(BOT)).await;
        assert_eq!(status, 403, "denied request: {body}");
        assert!(body.contains("globex/tool"), "{body}");
        let reached: Vec<String> = forge.requests().into_iter().map(|r| r.target).collect();
        assert_eq!(reached.len(), 1, "{reached:?}");
        assert!(reached[0].ends_with("/merge_requests"), "{reached:?}");
    }

    /// SIGTERM (both deployments' stop signal): the drain with nothing in flight ends at once,
    /// exit 0, within `deadline`.
    fn terminate(&mut self, deadline: Duration) {
        signal(&self.child, "-TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}; it printed:\n{}", self.output());
                return;
            }
            assert!(
                started.elapsed() < deadline,
                "still running {deadline:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// `generation` from the admin listener's `GET /-/policy`.
async fn generation(admin: SocketAddr) -> u64 {
    let (_, response) = get(admin, "/-/policy", None).await;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let policy: serde_json::Value = serde_json::from_str(body).unwrap();
    policy["generation"].as_u64().unwrap()
}

/// `eventually`, for 10 s, that the allowed request is now denied.
async fn flips_to_denied(listen: SocketAddr) -> bool {
    eventually(Duration::from_secs(10), move || async move {
        get(listen, ALLOWED, Some(BOT)).await.0 == 403
    })
    .await
}

/// One request on its own connection: (status, whole response).
async fn send(addr: SocketAddr, head: &str, headers: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{head} HTTP/1.1\r\nHost: gw\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw(addr, request.as_bytes()).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}

async fn get(addr: SocketAddr, path: &str, job_token: Option<&str>) -> (u16, String) {
    let auth = job_token
        .map(|t| format!("JOB-TOKEN: {t}\r\n"))
        .unwrap_or_default();
    send(addr, &format!("GET {path}"), &auth, "").await
}

/// Take acme/app (the allowed request's target) off the bot's outbound allowlist.
fn narrow(scopes: &str) -> String {
    let narrowed = scopes.replacen("allow = [\"acme/app\"", "allow = [\"acme/other\"", 1);
    assert_ne!(
        narrowed, scopes,
        "the bot's outbound allowlist was not found"
    );
    narrowed
}

// --- systemd ------------------------------------------------------------------------------------

/// `Key=value` lines of one section of a unit file (continuation lines joined), in order.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            current = line.to_string();
            continue;
        }
        if current != format!("[{section}]") {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (k, v) = pending.split_once('=').unwrap();
        out.push((k.trim().to_string(), v.trim().to_string()));
        pending.clear();
    }
    out
}

fn one<'a>(keys: &'a [(String, String)], key: &str) -> &'a str {
    let values: Vec<&str> = keys
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values.len(), 1, "{key}= should appear once: {values:?}");
    values[0]
}

/// systemd splits ExecStart= on whitespace, honouring quotes and `$VAR`; the unit keeps to plain
/// words so that this split is exactly systemd's.
fn plain_words(line: &str) -> Vec<String> {
    assert!(
        !line.contains(['"', '\'', '$', '%', '\\']) && !line.starts_with(['-', '@', ':', '+', '!']),
        "ExecStart= should be plain words: {line}"
    );
    line.split_whitespace().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_unit_execstart_serves_reloads_and_stops() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/scopegate.service")).unwrap();
    let service = unit_section(&unit, "Service");
    let config_dir = one(&service, "ReadOnlyPaths");
    assert_eq!(config_dir, "/etc/scopegate");
    // StateDirectory=scopegate is /var/lib/scopegate, the only writable path.
    assert_eq!(one(&service, "StateDirectory"), "scopegate");
    let state_dir = "/var/lib/scopegate";
    let root = tempfile::tempdir().unwrap();
    let under_root = |p: &str| root.path().join(p.trim_start_matches('/'));
    let move_path = |p: &str| {
        [config_dir, state_dir]
            .iter()
            .any(|d| p == *d || p.starts_with(&format!("{d}/")))
            .then(|| under_root(p).display().to_string())
    };

    // /etc/scopegate as the unit's install steps lay it out, from config/.
    let forge = Standin::start(jobs()).await.unwrap();
    let (listen, admin) = (free_loopback(), free_loopback());
    let etc = under_root(config_dir);
    std::fs::create_dir_all(&etc).unwrap();
    let shipped = std::fs::read_to_string(repo("config/scopegate.toml")).unwrap();
    let (settings, _, admin_port) = rewrite_settings(&shipped, &forge, listen, admin, move_path);
    assert_eq!(admin_port, 9090, "the unit's comments send ops to :9090");
    std::fs::write(etc.join("scopegate.toml"), settings).unwrap();
    let scopes = std::fs::read_to_string(repo("config/scopes.toml")).unwrap();
    std::fs::write(etc.join("scopes.toml"), &scopes).unwrap();
    assert_eq!(one(&service, "WorkingDirectory"), state_dir);
    let state = under_root(state_dir);
    std::fs::create_dir_all(&state).unwrap();

    // ExecStart=, exactly, but for the binary and the config directory.
    let mut argv = plain_words(one(&service, "ExecStart"));
    assert_eq!(argv[0], "/usr/local/bin/scopegate");
    argv[0] = env!("CARGO_BIN_EXE_scopegate").to_string();
    for arg in &mut argv[1..] {
        if let Some(moved) = move_path(arg) {
            *arg = moved;
        }
    }
    assert!(argv
        .iter()
        .any(|a| a.ends_with("etc/scopegate/scopegate.toml")));
    let env: Vec<(String, String)> = service
        .iter()
        .filter(|(k, _)| k == "Environment")
        .flat_map(|(_, v)| plain_words(v))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();

    let mut gw = Gateway::spawn(&argv, &env, &state, listen, admin);
    gw.wait_ready("/-/ready").await;
    gw.allows_and_denies(&forge).await;
    // The authorization log is in the state directory, nowhere under /etc/scopegate.
    assert!(state.join("authorizations.sqlite3").exists());
    assert!(!etc.join("state").exists());

    // ExecReload=, run as systemd would, with $MAINPID: SIGHUP reloads even an unchanged file
    // (the watcher does not), so a new generation is SIGHUP's doing.
    let before = generation(admin).await;
    let reload = one(&service, "ExecReload").replace("$MAINPID", &gw.child.id().to_string());
    let words: Vec<&str> = reload.split_whitespace().collect();
    assert_eq!(words[..2], ["/bin/kill", "-HUP"]);
    assert!(Command::new(words[0])
        .args(&words[1..])
        .status()
        .unwrap()
        .success());
    assert!(
        eventually(Duration::from_secs(10), move || async move {
            generation(admin).await > before
        })
        .await,
        "SIGHUP did not reload; it printed:\n{}",
        gw.output()
    );

    // Ops edit /etc/scopegate/scopes.toml: the watcher reloads it (watching needs only the read
    // access ReadOnlyPaths= leaves), and the decision flips.
    std::fs::write(etc.join("scopes.toml"), narrow(&scopes)).unwrap();
    assert!(
        flips_to_denied(listen).await,
        "the edit was not picked up; it printed:\n{}",
        gw.output()
    );

    // KillSignal= drains; TimeoutStopSec= leaves the drain deadline room.
    assert_eq!(one(&service, "KillSignal"), "SIGTERM");
    let stop = humantime::parse_duration(one(&service, "TimeoutStopSec")).unwrap();
    let drain = Settings::load(&etc.join("scopegate.toml"))
        .unwrap()
        .timeouts
        .drain;
    assert!(
        stop >= drain + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} leaves no margin over the {drain:?} drain"
    );
    gw.terminate(stop);
}

// --- Kubernetes ---------------------------------------------------------------------------------

fn base_documents() -> Vec<Value> {
    let dir = repo("deploy/k8s/base");
    let k: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let mut docs = Vec::new();
    for file in k["resources"].as_sequence().unwrap() {
        let text = std::fs::read_to_string(dir.join(file.as_str().unwrap())).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            docs.push(serde::Deserialize::deserialize(doc).unwrap());
        }
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A ConfigMap volume as the kubelet writes it: the keys in `..<timestamp>/` with the volume's
/// `defaultMode`, `..data` pointing at that directory, and a symlink per key through `..data`.
fn write_configmap(dir: &Path, data: &BTreeMap<String, String>, mode: u32, stamp: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let version = format!("..{stamp}");
    std::fs::create_dir(dir.join(&version)).unwrap();
    for (key, value) in data {
        let file = dir.join(&version).join(key);
        std::fs::write(&file, value).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let staged = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&version, &staged).unwrap();
    // The swap: one rename, so a reader sees the old or the new set, never a mix.
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for key in data.keys() {
        let link = dir.join(key);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

fn configmap_data(cm: &Value) -> BTreeMap<String, String> {
    cm["data"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_deployment_and_configmaps_serve_and_live_reload() {
    let docs = base_documents();
    let deployment = find(&docs, "Deployment", "scopegate");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);

    // The pod's filesystem: every volume mount under a temporary root.
    let root = tempfile::tempdir().unwrap();
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(
                m.get("subPath").is_none(),
                "a subPath mount never sees ConfigMap updates: {m:?}"
            );
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let under_root = |p: &str| root.path().join(p.trim_start_matches('/'));
    let move_path = |p: &str| {
        mounts
            .iter()
            .any(|(_, m)| p == m || p.starts_with(&format!("{m}/")))
            .then(|| under_root(p).display().to_string())
    };

    // command + args, exactly, but for the binary and the mount paths.
    let mut argv = str_list(&c["command"]);
    assert_eq!(argv, ["/usr/local/bin/scopegate"], "the image's binary");
    argv.extend(str_list(&c["args"]));
    let config_at = argv.iter().position(|a| a == "--config").unwrap() + 1;
    let settings_path = argv[config_at].clone();
    argv[0] = env!("CARGO_BIN_EXE_scopegate").to_string();
    for arg in &mut argv[1..] {
        if let Some(moved) = move_path(arg) {
            *arg = moved;
        }
    }

    let forge = Standin::start(jobs()).await.unwrap();
    let (listen, admin) = (free_loopback(), free_loopback());
    let mut settings_port = (0, 0);
    let mut scopes_mount = None;
    let mut writable = Vec::new();
    for volume in pod["volumes"].as_sequence().unwrap() {
        let name = volume["name"].as_str().unwrap();
        let (_, mount_path) = mounts.iter().find(|(n, _)| n == name).unwrap();
        let dir = under_root(mount_path);
        if let Some(cm_name) = volume["configMap"]["name"].as_str() {
            let mut data = configmap_data(find(&docs, "ConfigMap", cm_name));
            for (key, value) in data.iter_mut() {
                if format!("{mount_path}/{key}") == settings_path {
                    let (text, l, a) = rewrite_settings(value, &forge, listen, admin, move_path);
                    *value = text;
                    settings_port = (l, a);
                }
            }
            // The kubelet's default is 0644.
            let mode = volume["configMap"]["defaultMode"].as_u64().unwrap_or(0o644);
            let mode = u32::try_from(mode).unwrap();
            if data.contains_key("scopes.toml") {
                scopes_mount = Some((dir.clone(), data.clone(), mode));
            }
            write_configmap(&dir, &data, mode, "2026_01_01_00_00_00.000000001");
        } else {
            assert!(volume.get("emptyDir").is_some(), "{volume:?}");
            std::fs::create_dir_all(&dir).unwrap();
            writable.push(dir);
        }
    }
    let (scopes_dir, scopes_data, scopes_mode) =
        scopes_mount.expect("a ConfigMap holds scopes.toml");

    // The ports and paths the manifests use are the ones the settings file opens.
    let port_of = |name: &str| -> u16 {
        let ports = c["ports"].as_sequence().unwrap();
        let p = ports.iter().find(|p| p["name"] == name).unwrap();
        u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap()
    };
    assert_eq!(settings_port, (port_of("http"), port_of("admin")));
    let service = find(&docs, "Service", "scopegate");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"],
        port_of("admin").to_string().as_str()
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/-/ready");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/-/health");

    // The pod's security posture (the restricted Pod Security Standard and more).
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(str_list(&sc["capabilities"]["drop"]), ["ALL"]);
    for kind in ["requests", "limits"] {
        assert!(c["resources"][kind]["memory"].is_string(), "{kind}");
    }

    let env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .map(|e| {
            e.iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        v["value"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut gw = Gateway::spawn(&argv, &env, root.path(), listen, admin);
    let ready_path = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    gw.wait_ready(ready_path).await;
    for probe in ["startupProbe", "livenessProbe"] {
        let path = c[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(get(admin, path, None).await.0, 200, "{probe} {path}");
    }
    let metrics_path = annotations["prometheus.io/path"].as_str().unwrap();
    let (status, metrics) = get(admin, metrics_path, None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("scopegate_policy_generation"), "{metrics}");
    gw.allows_and_denies(&forge).await;

    // The authorization log lives on the pod's emptyDir: the root filesystem is read-only.
    let settings = Settings::load(&under_root(&settings_path)).unwrap();
    assert!(
        writable.iter().any(|w| settings.state_dir.starts_with(w)),
        "state_dir {:?} is not on an emptyDir",
        settings.state_dir
    );
    assert!(settings.state_dir.join("authorizations.sqlite3").exists());

    // The scope file comes from the ConfigMap: a maintainer's change through the management API
    // is refused with 409, and the policy stays as the ConfigMap says.
    const MAINTAINER: &str = "glpat-acme-app-maintainer";
    forge.set_directory(Directory {
        users: vec![StandinUser {
            token: MAINTAINER.into(),
            username: "maintainer".into(),
            projects: vec![(11, 40)],
            groups: vec![],
        }],
        projects: vec![StandinProject {
            id: 11,
            path: "acme/app".into(),
            public: false,
        }],
        ..Directory::default()
    });
    let (status, response) = send(
        listen,
        "PATCH /-/scopegate/api/v4/projects/11/job_token_scope",
        &format!("PRIVATE-TOKEN: {MAINTAINER}\r\nContent-Type: application/json\r\n"),
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(status, 409, "{response}");
    assert!(response.contains("managed elsewhere"), "{response}");
    gw.allows_and_denies(&forge).await;

    // `kubectl apply` of an edited scope ConfigMap, as the kubelet then writes it: the watcher
    // follows the new `..data`; no signal, no call, no restart.
    let before = generation(admin).await;
    let mut edited = scopes_data;
    let scopes = edited.get_mut("scopes.toml").unwrap();
    *scopes = narrow(scopes);
    write_configmap(
        &scopes_dir,
        &edited,
        scopes_mode,
        "2026_01_01_00_01_00.000000002",
    );
    assert!(
        flips_to_denied(listen).await,
        "the ..data swap was not picked up; it printed:\n{}",
        gw.output()
    );
    assert!(generation(admin).await > before);

    // Termination: the preStop sleep, then SIGTERM and the drain, inside the grace period.
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    let pre_stop = Duration::from_secs(
        c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap(),
    );
    let drain = settings.timeouts.drain;
    assert!(
        grace >= pre_stop + drain + Duration::from_secs(5),
        "terminationGracePeriodSeconds {grace:?} < preStop {pre_stop:?} + drain {drain:?} + 5s"
    );
    gw.terminate(drain);
}
