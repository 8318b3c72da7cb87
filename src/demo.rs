//! `scopegate demo`: a stand-in forge and the gateway on loopback, one allowed and one denied
//! call, so a newcomer sees enforcement work with no GitLab at hand.

use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::cli::DemoArgs;
use crate::settings::Settings;
use crate::standin::{Directory, Standin, StandinJob, StandinProject, StandinUser};

/// The demo's scope file: a bot project that may reach one customer project, and a second
/// customer whose project it must not reach.
pub const DEMO_SCOPES: &str = r#"# scopegate demo scope file
[defaults]
outbound = true
inbound = true

[[project]]
id = 10
path = "acme/deploy-bot"
[project.outbound]
enabled = true
allow = ["acme/app"]

[[project]]
id = 12
path = "acme/app"
[project.inbound]
enabled = true
allow = ["acme/deploy-bot"]

[[project]]
id = 13
path = "globex/secret-sauce"
"#;

pub const DEMO_TOKEN: &str = "glcbt-demo-deploy-bot-job";

/// A personal access token of acme/app's Maintainer on the stand-in forge.
pub const DEMO_MAINTAINER: &str = "glpat-demo-app-maintainer";

pub async fn run(args: &DemoArgs) -> ExitCode {
    match walkthrough(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn walkthrough(args: &DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let forge = Standin::start(vec![StandinJob {
        token: DEMO_TOKEN.into(),
        job_id: 501,
        project_id: 10,
        project_path: "acme/deploy-bot".into(),
    }])
    .await?;
    forge.set_directory(Directory {
        users: vec![StandinUser {
            token: DEMO_MAINTAINER.into(),
            username: "maria".into(),
            projects: vec![(12, 40)],
            groups: vec![],
        }],
        projects: [
            (10, "acme/deploy-bot"),
            (12, "acme/app"),
            (13, "globex/secret-sauce"),
        ]
        .into_iter()
        .map(|(id, path)| StandinProject {
            id,
            path: path.into(),
            public: false,
        })
        .collect(),
        groups: vec![],
        job_users: vec![],
    });
    let dir = tempfile_dir()?;
    let scopes = dir.join("scopes.toml");
    std::fs::write(&scopes, DEMO_SCOPES)?;

    let mut settings = Settings {
        listen: args.listen,
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: Some(forge.url()),
        scopes: Some(scopes.clone()),
        state_dir: dir.join("state"),
        ..Settings::default()
    };
    let running = match crate::start(settings.clone()).await {
        Ok(r) => r,
        Err(crate::StartError::Bind { .. }) => {
            settings.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            crate::start(settings).await?
        }
        Err(e) => return Err(e.into()),
    };
    let gw = format!("http://{}", running.listen);

    println!("scopegate demo");
    println!("==============");
    println!(
        "stand-in forge: {}   (job token {DEMO_TOKEN} belongs to project 10 acme/deploy-bot)",
        forge.url()
    );
    println!("gateway:        {gw}");
    println!("admin:          http://{}/-/policy", running.admin);
    println!("scope file:     {}", scopes.display());
    println!();
    println!("acme/deploy-bot may reach acme/app (its outbound allowlist, and acme/app's inbound");
    println!("allowlist); globex/secret-sauce is another customer's project and is out of scope.");
    println!();

    let allowed = "/api/v4/projects/acme%2Fapp/merge_requests";
    let denied = "/api/v4/projects/globex%2Fsecret-sauce/repository/files/README.md/raw?ref=main";
    for (what, path) in [("allowed", allowed), ("denied", denied)] {
        println!("# {what}:");
        println!("curl -i -H 'JOB-TOKEN: {DEMO_TOKEN}' '{gw}{path}'");
        let (status, body) = get(&format!("{gw}{path}"), ("JOB-TOKEN", DEMO_TOKEN)).await?;
        println!("-> {status} {body}");
        println!();
    }
    let reached: Vec<String> = forge
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.target))
        .collect();
    println!("what reached the forge: {reached:?}");
    println!("(the allowed call, rewritten to the numeric id it was decided on; the denied one never left the gateway)");
    println!();
    println!("# acme/app's maintainer reads its job token settings through the gateway's copy of");
    println!("# GitLab's API (python-gitlab works too: base URL {gw}/-/scopegate):");
    let scope = "/-/scopegate/api/v4/projects/acme%2Fapp/job_token_scope";
    println!("curl -i -H 'PRIVATE-TOKEN: {DEMO_MAINTAINER}' '{gw}{scope}'");
    let (status, body) = get(&format!("{gw}{scope}"), ("PRIVATE-TOKEN", DEMO_MAINTAINER)).await?;
    println!("-> {status} {body}");
    println!(
        "(also .../allowlist, .../groups_allowlist, .../authorizations; POST, PATCH and DELETE change {})",
        scopes.display()
    );

    if args.once {
        running.shutdown();
        running.wait().await;
        return Ok(());
    }
    println!();
    println!("The gateway stays up: try your own curl calls, or `curl http://{}/metrics`. Ctrl-C stops it.", running.admin);
    tokio::signal::ctrl_c().await?;
    running.shutdown();
    Ok(())
}

async fn get(
    url: &str,
    (name, value): (&str, &str),
) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = http::Request::get(url)
        .header(name, value)
        .body(Empty::new())?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("scopegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
